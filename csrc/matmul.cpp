// Linear layer kernels for one ISA level: out[M,N] (+)= act(inp[M,K] . (W[N,K] * s[N])^T + b[N]).
//
// One arithmetic for every output element, whatever M, the row's place in the batch or the thread split (row
// invariance: a sequence's values do not depend on what it is batched with). Output (m, n) is a dot product of
// two contiguous rows in vector steps of VW k's (the last one zero-padded past K), all into one vector
// accumulator in k order from 0; then hsum(acc) with one fixed reduction tree; then the epilogue in vector
// arithmetic (times the int8 row scale, plus bias, GELU, plus out), tails included (a padded vector: sgelu would
// differ from vgelu). Weight rows are read as plain sequential streams, no transposition. One accumulator per
// output (not two chains) so that up to 8 rows of A share one pass over the weights in registers: decode of a
// batch of 8 reads each weight once. The prefill GEMM computes the same thing on packed operands (gemm_tile).
// The order differs between ISA levels (lane count), not within one.
// Small M (decode): each thread walks S distant parts of its rows in lockstep (S DRAM streams), every weight
// read once for up to MT_MAX rows. Larger M (prefill): A in L2-sized blocks of rows, W in L1-sized groups of rows,
// each thread's weights packed once per call in L3-sized chunks.
#include "omp_compat.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <vector>

#include "matmul.h"
#include "simd.h"

namespace TG_ISA_NS {

namespace {

// Small M: each thread walks S distant parts of its rows (S DRAM streams), G weight rows per group (G / S
// consecutive rows from each part), every row read once from DRAM for up to MT_MAX rows of A. On the 2-core
// Zen 3 host one stream per thread left DRAM bandwidth unused: a 124M decode step took ~27 ms (fp32) with 1
// stream, ~20.5 ms with 4 (2 in between, 8 no better).
constexpr int S = 4;
constexpr int G = 24;        // divisible by S and by every register tile's R below
constexpr int SMALL_M = 16;  // up to this many rows: the streaming driver
constexpr int NC = 256;      // large M: output columns per epilogue block
#if defined(TG_AVX512)
// 32 vector registers: up to 24 accumulators + the operands of one step. One row of A (decode of one sequence):
// 4 weight rows, one from each stream (with 8, two per stream, 16-bit and int8 weights streamed at ~36 / 31
// GB/s instead of ~50, DRAM-cold GEMV, 2 threads, quiet Zen 5; fp32 the same either way).
constexpr int MT_MAX = 8;
constexpr int MT_G = 4, RG = 6;  // GEMM register tile: 4 A rows (L2) x 6 packed weight rows (L1); 3 x 8 was ~8% slower
static constexpr int r_for(int mt) { return mt == 1 ? 4 : mt <= 3 ? 8 : mt == 4 ? 6 : mt <= 6 ? 4 : 3; }
#else
// 16 vector registers: 12 accumulators + operands
constexpr int MT_MAX = 4;
constexpr int MT_G = 3, RG = 4;
static constexpr int r_for(int mt) { return mt == 1 ? 4 : mt == 2 ? 6 : mt == 3 ? 4 : 3; }
#endif
static_assert(G % S == 0, "G rows come from S streams");
constexpr int PF_AHEAD = 1024;  // bytes ahead in a weight row (software prefetch at M >= 2, see tile)

static inline int imax(int a, int b) { return a > b ? a : b; }
// threads for the streaming driver over N weight rows (at least 64 rows each)
static inline int small_m_threads(int N) { return imin(tg::num_threads(), imax(1, N / 64)); }

// The one reduction tree: lane j + lane j + VW/2, then j + j + VW/4, ..., down to one float.
static inline float hsum(V v) {
#if defined(TG_AVX2)
#if defined(TG_AVX512)
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
#else
    const __m256 h = v;
#endif
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
#else
    return (v.x[0] + v.x[2]) + (v.x[1] + v.x[3]);
#endif
}

// out[i] = hsum(v[i]) for 4 vectors at once, bit for bit (the same pairs added in the same tree, transposed:
// ~13 instructions instead of ~32 on AVX-512).
static inline __attribute__((always_inline)) void hsum4(const V* v, float* out) {
#if defined(TG_AVX512) && !defined(TG_SIMDE_AVX512)  // (SIMDe 0.7 lacks some of these: the plain tree there)
    const V s01 = vadd(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 2, 3, 2)));  // j + j + 8
    const V s23 = vadd(_mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(3, 2, 3, 2)));
    V t = vadd(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
               _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));  // j + j + 4: quad i is v[i]'s
    t = vadd(t, _mm512_shuffle_ps(t, t, _MM_SHUFFLE(3, 2, 3, 2)));         // j + j + 2
    t = vadd(t, _mm512_movehdup_ps(t));                                     // j + j + 1: lane 4 i
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                                                      0, 0, 12, 8, 4, 0), t)));
#else
    for (int i = 0; i < 4; i++) out[i] = hsum(v[i]);
#endif
}

// s[j] = hsum(acc[j]) for R accumulators, 4 at a time where possible (the same bits either way).
template <int R>
static inline __attribute__((always_inline)) void hsum_row(const V* acc, float* s) {
    constexpr int R4 = R / 4 * 4;
    TG_UNROLL for (int j = 0; j < R4; j += 4) hsum4(acc + j, s + j);
    TG_UNROLL for (int j = R4; j < R; j++) s[j] = hsum(acc[j]);
}

// p[0:n] (n < VW) and zeros, as a vector of floats.
template <typename WT>
inline V load_tail(const WT* p, int n) {
    WT t[VW];
    std::memset(t, 0, sizeof t);  // zero bits are 0.0 in every stored type
    std::memcpy(t, p, n * sizeof(WT));
    return vload_w(t);
}

// o[0:n] (+)= act(c[0:n] * s[0:n] + b[0:n]) (s, b optional): vector arithmetic for every element, the tail
// through a padded vector, so no element's value depends on where a segment or a thread's range ends.
inline void epilogue(float* o, const float* c, const float* s, const float* b, int n, int flags) {
    for (int j = 0; j < n; j += VW) {
        const int w = imin(VW, n - j);
        alignas(64) float tc[VW], ts[VW], tb[VW], to[VW];
        const float *pc = c + j, *ps = s ? s + j : nullptr, *pb = b ? b + j : nullptr;
        float* po = o + j;
        if (w < VW) {
            for (int i = 0; i < VW; i++) {
                tc[i] = i < w ? pc[i] : 0.0f;
                ts[i] = i < w && s ? ps[i] : 0.0f;
                tb[i] = i < w && b ? pb[i] : 0.0f;
                to[i] = i < w && (flags & tg::ACCUM) ? po[i] : 0.0f;
            }
            pc = tc, ps = s ? ts : nullptr, pb = b ? tb : nullptr, po = to;
        }
        V y = vload(pc);
        if (ps) y = vmul(y, vload(ps));
        if (pb) y = vadd(y, vload(pb));
        if (flags & tg::GELU) y = vgelu(y);
        if (flags & tg::ACCUM) y = vadd(vload(po), y);
        vstore(po, y);
        if (w < VW)
            for (int i = 0; i < w; i++) o[j + i] = to[i];
    }
}

struct FloatScratch {  // per-call scratch, allocated outside parallel regions so that a failure can throw
    float* p;
    explicit FloatScratch(size_t n) : p((float*)std::aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) / 64 * 64)) {
        if (!p) throw std::bad_alloc();
    }
    ~FloatScratch() { std::free(p); }
};

// The prefill GEMM's scratch (packed A blocks and weight chunks, up to ~9 MB per thread), leased from a small
// pool for the call. Allocating it per call gave it back to the kernel, which page-faulted it in again on the next
// call: up to ~30% of a T = 512 GEMM. The pool keeps at most two idle buffers (two callers at once each keep
// theirs; more get fresh ones), so the memory kept does not grow with the number of calling threads.
class GemmWorkspace {
  public:
    explicit GemmWorkspace(size_t n) : p(nullptr) {
        if (n == 0) return;
        {  // the smallest idle buffer that is large enough, else the largest (to be replaced)
            std::lock_guard<std::mutex> lock(pool().mu);
            std::vector<Buf>& idle = pool().idle;
            auto better = [n](const Buf& a, const Buf& b) {
                if ((a.n >= n) != (b.n >= n)) return a.n >= n;
                return a.n >= n ? a.n < b.n : a.n > b.n;
            };
            auto it = std::min_element(idle.begin(), idle.end(), better);
            if (it != idle.end()) buf_ = *it, idle.erase(it);
        }
        if (buf_.n < n) {
            std::free(buf_.p);
            buf_ = {};
            buf_.p = (float*)std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
            if (!buf_.p) throw std::bad_alloc();
            buf_.n = n;
        }
        p = buf_.p;
    }
    ~GemmWorkspace() {
        if (!buf_.p) return;
        std::lock_guard<std::mutex> lock(pool().mu);
        if (pool().idle.size() < 2)
            pool().idle.push_back(buf_);
        else
            std::free(buf_.p);
    }
    GemmWorkspace(const GemmWorkspace&) = delete;
    GemmWorkspace& operator=(const GemmWorkspace&) = delete;
    float* p;

  private:
    struct Buf {
        float* p = nullptr;
        size_t n = 0;
    };
    struct Pool {
        std::mutex mu;
        std::vector<Buf> idle;
        ~Pool() {
            for (Buf& b : idle) std::free(b.p);
        }
    };
    static Pool& pool() {
        static Pool pool;
        return pool;
    }
    Buf buf_;
};

// The arithmetic of a dot product, by operand types. Float activations, weights WT widened to float (exact):
// steps of VW k's, one FMA per step.
template <typename WT_>
struct DotF {
    using AT = float;
    using WT = WT_;
    static constexpr int KS = VW;  // k's per step
    static V a(const float* p) { return vload(p); }
    static V w(const WT* p) { return vload_w(p); }
    static V a_tail(const float* p, int n) { return load_tail(p, n); }
    static V w_tail(const WT* p, int n) { return load_tail(p, n); }
    static V fma(V acc, V a, V w) { return vfma(a, w, acc); }
};

#include "matmul_tiles.inc"

// ---- packed operands (large M) ------------------------------------------------------------------------------
// Wp[step][r][VW] <- w[0:r][0:K] widened to float (exact), zero-padded past K.
template <typename WT>
inline void pack_w(float* Wp, const WT* const* w, int r, int K) {
    const int steps = (K + VW - 1) / VW;
    for (int k = 0; k < steps; k++) {
        float* d = Wp + (size_t)k * r * VW;
        const int n = imin(VW, K - k * VW);
        for (int j = 0; j < r; j++)
            vstore(d + j * VW, n == VW ? vload_w(w[j] + k * VW) : load_tail(w[j] + k * VW, n));
    }
}

// Ap[step][mt][VW] <- A[mt rows, :] (row stride K), zero-padded past K.
inline void pack_a(float* Ap, const float* A, int mt, int K) {
    const int steps = (K + VW - 1) / VW;
    for (int k = 0; k < steps; k++) {
        float* d = Ap + (size_t)k * mt * VW;
        const int n = imin(VW, K - k * VW);
        for (int i = 0; i < mt; i++) {
            const float* src = A + (int64_t)i * K + k * VW;
            vstore(d + i * VW, n == VW ? vload(src) : load_tail(src, n));
        }
    }
}

// tile's arithmetic on packed operands over steps [p0, p1): the accumulators start from zero (first) or from
// st, and end in st, or (fin) reduced into C[i * ldc + j] = hsum(acc[i][j]). Storing a vector accumulator and
// loading it back is exact, so blocking K changes nothing. st: [MT][R][VW]; ap: [step][MT][VW]; wp: [step][rw][VW].
template <int MT, int R>
static inline __attribute__((always_inline)) void gemm_tile_body(float* C, int ldc, float* st, const float* ap,
                                                                 const float* wp, int rw, int p0, int p1, bool first,
                                                                 bool fin) {
    V acc[MT][R];
    TG_UNROLL for (int i = 0; i < MT; i++)
        TG_UNROLL for (int j = 0; j < R; j++) acc[i][j] = first ? vzero() : vload(st + (i * R + j) * VW);
    for (int p = p0; p < p1; p++) {
        const float* a = ap + (size_t)p * MT * VW;
        const float* w = wp + (size_t)p * rw * VW;
        step<DotF<float>, MT, R>(acc, [&](int i) { return vload(a + i * VW); }, [&](int j) { return vload(w + j * VW); });
    }
    if (fin) {
        float s[MT * R];
        hsum_row<MT * R>(&acc[0][0], s);
        TG_UNROLL for (int i = 0; i < MT; i++)
            TG_UNROLL for (int j = 0; j < R; j++) C[(size_t)i * ldc + j] = s[i * R + j];
    } else {
        TG_UNROLL for (int i = 0; i < MT; i++)
            TG_UNROLL for (int j = 0; j < R; j++) vstore(st + (i * R + j) * VW, acc[i][j]);
    }
}

// With AVX2 and up, one function per (first, fin): the accumulators then stay in registers from start to end (with
// run-time flags GCC built them on the stack and copied them in and out around the k loop, ~6% of a K = 768
// GEMM). At the portable level run-time flags: constant ones let GCC split its 4-float structs into scalar lanes
// and the loop went scalar (51 -> 16 GFLOP/s).
template <int MT, int R, bool FIRST, bool FIN>
void gemm_tile(float* C, int ldc, float* st, const float* ap, const float* wp, int rw, int p0, int p1) {
    gemm_tile_body<MT, R>(C, ldc, st, ap, wp, rw, p0, p1, FIRST, FIN);
}
template <int MT, int R>
void gemm_tile_rt(float* C, int ldc, float* st, const float* ap, const float* wp, int rw, int p0, int p1, bool first,
                  bool fin) {
    gemm_tile_body<MT, R>(C, ldc, st, ap, wp, rw, p0, p1, first, fin);
}

template <int MT, int R>
inline void gemm_tile_fl(float* C, int ldc, float* st, const float* ap, const float* wp, int rw, int p0, int p1,
                         bool first, bool fin) {
#if defined(TG_AVX2)
    if (first && fin) gemm_tile<MT, R, true, true>(C, ldc, st, ap, wp, rw, p0, p1);
    else if (first) gemm_tile<MT, R, true, false>(C, ldc, st, ap, wp, rw, p0, p1);
    else if (fin) gemm_tile<MT, R, false, true>(C, ldc, st, ap, wp, rw, p0, p1);
    else gemm_tile<MT, R, false, false>(C, ldc, st, ap, wp, rw, p0, p1);
#else
    gemm_tile_rt<MT, R>(C, ldc, st, ap, wp, rw, p0, p1, first, fin);
#endif
}

template <int MT>
inline void gemm_tiles_mt(float* C, int ldc, float* st, const float* ap, const float* wp, int r, int p0, int p1,
                          bool first, bool fin) {
    int j0 = 0;
    for (; j0 + RG <= r; j0 += RG)
        gemm_tile_fl<MT, RG>(C + j0, ldc, st + (size_t)j0 * MT * VW, ap, wp + j0 * VW, r, p0, p1, first, fin);
    for (; j0 < r; j0++)
        gemm_tile_fl<MT, 1>(C + j0, ldc, st + (size_t)j0 * MT * VW, ap, wp + j0 * VW, r, p0, p1, first, fin);
}

// C[i * ldc + j] for an mt x r block (mt <= MT_G, r <= RG), steps [p0, p1) (see gemm_tile); st: mt * r vectors.
inline void gemm_tiles(float* C, int ldc, float* st, const float* ap, int mt, const float* wp, int r, int p0, int p1,
                       bool first, bool fin) {
    switch (mt) {
        case 1: gemm_tiles_mt<1>(C, ldc, st, ap, wp, r, p0, p1, first, fin); break;
        case 2: gemm_tiles_mt<2>(C, ldc, st, ap, wp, r, p0, p1, first, fin); break;
        case 3: gemm_tiles_mt<3>(C, ldc, st, ap, wp, r, p0, p1, first, fin); break;
#if defined(TG_AVX512)
        case 4: gemm_tiles_mt<4>(C, ldc, st, ap, wp, r, p0, p1, first, fin); break;
        case 5: gemm_tiles_mt<5>(C, ldc, st, ap, wp, r, p0, p1, first, fin); break;
        case 6: gemm_tiles_mt<6>(C, ldc, st, ap, wp, r, p0, p1, first, fin); break;
#endif
    }
}

// ---- larger M: blocks of A rows (L2) by groups of W rows (L1) ------------------------------------------
// Each thread takes a contiguous part of the columns, in chunks of up to 8 MB of packed weight rows (L3). A chunk
// is packed once, by the first block of A rows, and kept for the later blocks: the weights then come from DRAM
// once per call, not once per block.
template <typename WT>
void gemm(float* out, const float* A, const WT* W, const float* ws, const float* b, int M, int N, int K,
          int flags) {
    const int nt = imin(tg::num_threads(), imax(1, N / 16));
    const int kp = (K + VW - 1) / VW * VW, steps = kp / VW;
    // rows of A per block: the packed block stays in L2 (<= 768 KB) while the thread's weight rows pass over it
    // (T = 512, K = 768, 1 thread, Zen 5: 0.83-0.85 of OpenBLAS with 192 rows, 0.78 with 96, 0.71 with 48, when
    // each block re-packed the weights). Blocks of near-equal size, so that none is a short remainder.
    const int MCMAX = imax(MT_G, imin(192, (192 * 1024 / kp) / MT_G * MT_G));
    const int nb = (M + MCMAX - 1) / MCMAX;
    const int MC = ((M + nb - 1) / nb + MT_G - 1) / MT_G * MT_G;
    constexpr int KB = 24 * 1024 / (RG * VW * 4);  // steps per k-block: the packed weight group (24 KB) stays in L1
    // weight rows per chunk: up to 8 MB packed per thread, less with many threads (their chunks share the L3)
    const size_t ch_bytes = std::min<size_t>((size_t)8 << 20, std::max<size_t>((size_t)1 << 20, ((size_t)16 << 20) / nt));
    const int CH = imax(RG, (int)(ch_bytes / ((size_t)kp * sizeof(float))) / RG * RG);
    const int wrows = imin(CH, (N + RG - 1) / RG * RG);  // the packed chunk's rows (no chunk is longer)
    const bool accum = flags & tg::ACCUM;  // (otherwise the sums go straight into out, the epilogue in place)
    const size_t per_thread = (accum ? (size_t)MC * NC : 0) + (size_t)MC * kp + (size_t)wrows * kp + (size_t)MC * RG * VW;
    GemmWorkspace lease(per_thread * nt);
    float* scratch = lease.p;
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const int beg = (int)((int64_t)N * tid / nth), end = (int)((int64_t)N * (tid + 1) / nth);
        float* Cs = scratch + per_thread * tid;
        float* Ap = Cs + (accum ? (size_t)MC * NC : 0);  // the A block, packed by MT_G-row tiles (each thread its own)
        float* Wp = Ap + (size_t)MC * kp;                 // this chunk's weight rows, packed by groups of RG
        float* st = Wp + (size_t)wrows * kp;               // accumulators between k-blocks: 1 vector per output
        const WT* w[RG];
        for (int c0 = beg; c0 < end; c0 += CH) {
            const int ce = imin(end, c0 + CH);
            for (int m0 = 0; m0 < M; m0 += MC) {
                const int mc = imin(MC, M - m0);
                for (int i0 = 0; i0 < mc; i0 += MT_G)
                    pack_a(Ap + (size_t)i0 * kp, A + (int64_t)(m0 + i0) * K, imin(MT_G, mc - i0), K);
                for (int n0 = c0; n0 < ce; n0 += NC) {
                    const int nc = imin(NC, ce - n0);
                    float* C = accum ? Cs : out + (int64_t)m0 * N + n0;
                    const int ldc = accum ? NC : N;
                    for (int j0 = 0; j0 < nc; j0 += RG) {  // RG weight rows against every tile of the A block
                        const int r = imin(RG, nc - j0);
                        float* wp = Wp + (size_t)(n0 - c0 + j0) * kp;
                        if (m0 == 0) {
                            for (int j = 0; j < r; j++) w[j] = W + (int64_t)(n0 + j0 + j) * K;
                            pack_w(wp, w, r, K);  // aligned floats, f16/bf16/int8 widened once for all tiles
                            // the next group's rows into L2 while this one computes: the packer then need not wait
                            // on L3/DRAM (it stalled for ~15% of a T = 512 GEMM)
                            if (n0 + j0 + RG < ce) {
                                const char* nx = (const char*)(W + (int64_t)(n0 + j0 + RG) * K);
                                const size_t bytes = (size_t)imin(RG, ce - (n0 + j0 + RG)) * K * sizeof(WT);
                                for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(nx + o, 0, 2);
                            }
                        }
                        for (int p0 = 0; p0 < steps; p0 += KB) {
                            const int p1 = imin(steps, p0 + KB);
                            for (int i0 = 0; i0 < mc; i0 += MT_G)
                                gemm_tiles(C + (size_t)i0 * ldc + j0, ldc, st + (size_t)i0 * RG * VW,
                                           Ap + (size_t)i0 * kp, imin(MT_G, mc - i0), wp, r, p0, p1, p0 == 0,
                                           p1 == steps);
                        }
                    }
                    if (accum || ws || b || (flags & tg::GELU))
                        for (int m = 0; m < mc; m++)
                            epilogue(out + (int64_t)(m0 + m) * N + n0, C + (size_t)m * ldc, ws ? ws + n0 : nullptr,
                                     b ? b + n0 : nullptr, nc, flags);
                }
            }
        }
    }
}

template <typename WT>
void matmul_t(float* out, const float* inp, const WT* w, const float* ws, const float* b, int M, int N, int K,
              int flags) {
    if (M <= SMALL_M || K <= 0)  // K == 0: every sum is 0 (the GEMM's blocking needs K > 0)
        gemm_small<DotF<WT>>(out, inp, w, ws, b, M, N, K, flags);
    else
        gemm(out, inp, w, ws, b, M, N, K, flags);
}

// out[idx[i]] = x . W[idx[i]] (* ws[idx[i]]): matmul's value of each listed row, no bias, no flags.
template <typename WT>
void rows_t(float* out, const float* x, const WT* W, const float* ws, const int32_t* idx, int n, int K) {
    constexpr int R_WIDE = r_for(1);
    const int ngroups = (n + R_WIDE - 1) / R_WIDE;
    const int nt = imin(tg::num_threads(), imax(1, ngroups / 8));
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int g = 0; g < ngroups; g++) {
        const int r = imin(R_WIDE, n - g * R_WIDE);
        const int32_t* id = idx + g * R_WIDE;
        const WT* w[R_WIDE];
        int col[R_WIDE];
        alignas(64) float c[R_WIDE], s[R_WIDE], y[R_WIDE];
        for (int j = 0; j < r; j++) col[j] = j, w[j] = W + (int64_t)id[j] * K, s[j] = ws ? ws[id[j]] : 0.0f;
        rows_all_m<DotF<WT>>(c, R_WIDE, col, x, 1, K, w, r);
        epilogue(y, c, ws ? s : nullptr, nullptr, r, 0);
        for (int j = 0; j < r; j++) out[id[j]] = y[j];
    }
}

// ---- bf16 weights, activations rounded to bf16 (tg::BF16A) ----------------------------------------------
// float -> bf16 bits, round to nearest even (NaN stays NaN): what vcvtne2ps2bf16 does for normal numbers.
inline uint16_t to_bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

#if defined(TG_AVX512) && !defined(TG_SIMDE_AVX512) && defined(__GNUC__) && !defined(__clang__)
#define TG_BF16DOT 1
// With AVX512_BF16 (Zen 4/5, Cooper Lake, Sapphire Rapids): vdpbf16ps, 32 products per instruction (twice the
// fp32 FMA rate), on bf16 rows of A and W read in place. Per output: one accumulator, steps of 32 k's in k order
// (lane l takes k0 + 2l + 1, then k0 + 2l, each product added with a float32 rounding, denormals flushed), the
// last step zero-padded; then the same hsum and epilogue as above. Only these functions are compiled for the
// extension; matmul() calls them after checking the CPU has it.
#pragma GCC push_options
#pragma GCC target("avx512bf16")
namespace bh {
#include "matmul_tiles.inc"
}  // namespace bh

struct DotBH {
    using AT = uint16_t;
    using WT = bf16_t;
    static constexpr int KS = 32;
    static __m512bh ld(const void* p) { return (__m512bh)_mm512_loadu_si512(p); }
    static __m512bh ld_tail(const void* p, int n) {
        return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1ull << n) - 1), p);
    }
    static __m512bh a(const uint16_t* p) { return ld(p); }
    static __m512bh w(const bf16_t* p) { return ld(p); }
    static __m512bh a_tail(const uint16_t* p, int n) { return ld_tail(p, n); }
    static __m512bh w_tail(const bf16_t* p, int n) { return ld_tail(p, n); }
    static V fma(V acc, __m512bh a, __m512bh w) { return _mm512_dpbf16_ps(acc, a, w); }
};

// dst[0:n] = bf16(src[0:n]), round to nearest even.
void round_row_bh(uint16_t* dst, const float* src, int n) {
    for (int k = 0; k < n; k += 32) {
        const int m = imin(32, n - k);
        const __mmask16 lo = (__mmask16)((1u << imin(16, m)) - 1), hi = (__mmask16)(m > 16 ? (1u << (m - 16)) - 1 : 0);
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + k + 16), _mm512_maskz_loadu_ps(lo, src + k));
        _mm512_mask_storeu_epi16(dst + k, (__mmask32)((1ull << m) - 1), (__m512i)v);
    }
}

void matmul_bh(float* out, const float* inp, const bf16_t* W, const float* b, int M, int N, int K, int flags) {
    FloatScratch ab(((size_t)M * K + 1) / 2);  // A as bf16
    uint16_t* A = (uint16_t*)ab.p;
#pragma omp parallel for num_threads(imin(tg::num_threads(), imax(1, M / 8))) schedule(static)
    for (int m = 0; m < M; m++) round_row_bh(A + (int64_t)m * K, inp + (int64_t)m * K, K);
    if (M <= SMALL_M) return bh::gemm_small<DotBH>(out, A, W, nullptr, b, M, N, K, flags);
    // Blocks of A rows (256 KB of bf16, in L2) times chunks of weight rows, as tasks taken in turn by whichever
    // thread is free (block-major, so both threads share a block). Static halves per block left threads waiting
    // at barriers: a 1024-token forward took ~501 ms against ~483 (2 threads, Zen 5; the fp32 GEMM's 256-column
    // chunks gained nothing, so it keeps its static halves). Within a task, tiles of A rows meet L2-sized parts of
    // the chunk (gemm_block_range), in k-blocks for long rows (gemm_kblock_range, K > 1536: 1024 rows, 2 threads,
    // Zen 5, with accumulate, GFLOP/s against whole rows: K = 3072 ~500 -> ~600, K = 5120 ~527 -> ~690, K = 6400
    // ~530 -> ~590, where whole rows had taken gemm_small_range's order). Any split and order give the same bits.
    const int nt = small_m_threads(N);
    const int MB = imax(MT_MAX, (128 * 1024 / imax(1, K)) / MT_MAX * MT_MAX);
    const int CH = imax(G, (N + 4 * nt - 1) / (4 * nt) / G * G);  // ~4 chunks per thread and block
    const int nb = (M + MB - 1) / MB, nc = (N + CH - 1) / CH;
    const bool kblock = K > bh::KBLK;
    const size_t st_n = kblock ? (size_t)bh::block_part_rows<DotBH>(K) * MT_MAX * VW : 0;  // k-block accumulators
    const size_t acc_n = flags & tg::ACCUM ? (size_t)MB * CH : 0;
    FloatScratch scratch((acc_n + st_n) * nt);
#pragma omp parallel num_threads(nt)
    {
        float* sc = scratch.p + (acc_n + st_n) * omp_get_thread_num();
        float* st = sc + acc_n;
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < nb * nc; t++) {
            const int m0 = t / nc * MB, n0 = t % nc * CH;
            if (kblock)
                bh::gemm_kblock_range<DotBH>(out + (int64_t)m0 * N, A + (int64_t)m0 * K, W, b, imin(MB, M - m0), N,
                                             K, flags, n0, imin(N, n0 + CH), sc, st);
            else
                bh::gemm_block_range<DotBH>(out + (int64_t)m0 * N, A + (int64_t)m0 * K, W, b, imin(MB, M - m0), N, K,
                                            flags, n0, imin(N, n0 + CH), sc);
        }
    }
}
#pragma GCC pop_options

bool cpu_has_bf16dot() {
    static const bool yes = __builtin_cpu_supports("avx512bf16");
    return yes;
}
#endif

// BF16A: with vdpbf16ps where the CPU has it; elsewhere the activations rounded to bf16 (as floats) times the
// widened weights, in this level's float order (the products are exact either way; the sums' order differs).
void matmul_bf16a(float* out, const float* inp, const bf16_t* W, const float* b, int M, int N, int K, int flags) {
#if defined(TG_BF16DOT)
    if (cpu_has_bf16dot()) return matmul_bh(out, inp, W, b, M, N, K, flags);
#endif
    FloatScratch ar((size_t)M * K);
    for (int64_t i = 0; i < (int64_t)M * K; i++) {
        const uint32_t u = (uint32_t)to_bf16(inp[i]) << 16;
        std::memcpy(ar.p + i, &u, 4);
    }
    matmul_t(out, ar.p, W, nullptr, b, M, N, K, flags);
}

}  // namespace

void matmul(float* out /*[M,N]*/, const float* inp /*[M,K]*/, const void* w /*[N,K]*/, const float* ws /*[N]*/,
            const float* b /*[N]*/, int M, int N, int K, int wdtype, int flags) {
    if (M <= 0 || N <= 0) return;
    if (wdtype == tg::F32)
        matmul_t(out, inp, (const float*)w, nullptr, b, M, N, K, flags);
    else if (wdtype == tg::F16)
        matmul_t(out, inp, (const f16_t*)w, nullptr, b, M, N, K, flags);
    else if (wdtype == tg::BF16)
        matmul_t(out, inp, (const bf16_t*)w, nullptr, b, M, N, K, flags);
    else if (wdtype == tg::BF16A)
        matmul_bf16a(out, inp, (const bf16_t*)w, b, M, N, K, flags);
    else
        matmul_t(out, inp, (const int8_t*)w, ws, b, M, N, K, flags);
}

void matmul_rows(float* out, const float* x, const void* w, const float* ws, const int32_t* rows, int n, int K,
                 int wdtype) {
    if (n <= 0) return;
    if (wdtype == tg::BF16A) throw std::invalid_argument("matmul_rows: no row evaluation for bf16 activations");
    if (wdtype == tg::F32)
        rows_t(out, x, (const float*)w, nullptr, rows, n, K);
    else if (wdtype == tg::F16)
        rows_t(out, x, (const f16_t*)w, nullptr, rows, n, K);
    else if (wdtype == tg::BF16)
        rows_t(out, x, (const bf16_t*)w, nullptr, rows, n, K);
    else
        rows_t(out, x, (const int8_t*)w, ws, rows, n, K);
}

}  // namespace TG_ISA_NS
