// Linear layer kernels for one ISA level: out[M,N] (+)= act(inp[M,K] . (W[N,K] * s[N])^T + b[N]).
//
// One arithmetic for every output element, whatever M, the row's place in the batch or the thread split (row
// invariance: a sequence's values do not depend on what it is batched with). Output (m, n) is a dot product of
// two contiguous rows in vector steps of VW k's (the last one zero-padded past K): even steps FMA into one vector
// accumulator, odd steps into another, each in k order from 0; then hsum(acc0 + acc1) with one fixed reduction
// tree; then the epilogue in vector arithmetic (times the int8 row scale, plus bias, GELU, plus out), tails
// included (a padded vector: sgelu would differ from vgelu). This is the old decode GEMV's order, so decode keeps
// its speed: weight rows are read as plain sequential streams, no transposition. The prefill GEMM computes the
// same thing on packed operands (gemm_tile). The order differs between ISA levels (lane count), not within one.
// Small M (decode): each thread walks S distant parts of its rows in lockstep (S DRAM streams), every weight
// read once for all M rows. Larger M (prefill): A in L2-sized blocks of rows, W in L1-sized groups of rows.
#include "omp_compat.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "matmul.h"
#include "simd.h"

namespace TG_ISA_NS {

namespace {

// Weight rows per thread in flight at small M: one from each of S distant parts of the thread's rows (S DRAM
// streams). On the 2-core Zen 3 host one stream per thread left DRAM bandwidth unused: a 124M decode step took
// ~27 ms (fp32) with 1 stream, ~20.5 ms with 4 (2 in between, 8 no better). With two accumulators per output
// (see tile) 4 rows keep 8 FMA chains in flight.
constexpr int S = 4;
constexpr int R_WIDE = S;
constexpr int SMALL_M = 16;  // up to this many rows: the streaming driver
constexpr int NC = 256;      // large M: output columns per epilogue block
#if defined(TG_AVX512)
constexpr int MT_G = 4;    // GEMM register tile: MT_G x 4 accumulators + 4 weight vectors + 1
constexpr int MT_MAX = 3;  // register tiles: MT x 4 x 2 accumulators + 4 weight vectors + 1 (32 registers)
constexpr int R_MT2 = 4;   // weight rows per tile with 2 or 3 rows of A
#else
constexpr int MT_G = 2;
constexpr int MT_MAX = 2;  // 16 vector registers: 2 x 2 x 2 accumulators
constexpr int R_MT2 = 2;
#endif

static inline int imax(int a, int b) { return a > b ? a : b; }

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
static inline void hsum4(const V* v, float* out) {
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

// p[0:n] (n < VW) and zeros, as a vector of floats.
template <typename WT>
inline V load_tail(const WT* p, int n) {
    WT t[VW];
    std::memset(t, 0, sizeof t);  // zero bits are 0.0 in every stored type
    std::memcpy(t, p, n * sizeof(WT));
    return vload_w(t);
}

// s[i * R + j] = a[i] . w[j] over K for MT rows of A and R weight rows: THE arithmetic of an output element
// before the epilogue (see the file head): vector steps of VW k's, even steps into one accumulator and odd steps
// into another (two FMA chains per output: a decode row then needs only 4 weight rows in flight for 8 chains),
// the last step zero-padded past K; then hsum(acc0 + acc1). gemm_tile below is the same on packed operands.
template <int MT, int R, typename WT>
inline void tile(float* C, int ldc, const int* col /*[R]*/, const float* const* a /*[MT]*/, const WT* const* w /*[R]*/,
                 int K) {
    V acc0[MT][R], acc1[MT][R], wv[R];
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < R; j++) acc0[i][j] = vzero(), acc1[i][j] = vzero();
    const int kv = K - K % VW, k2 = K - K % (2 * VW);
    for (int k = 0; k < k2; k += 2 * VW) {
        for (int j = 0; j < R; j++) wv[j] = vload_w(w[j] + k);
        for (int i = 0; i < MT; i++) {
            const V av = vload(a[i] + k);
            for (int j = 0; j < R; j++) acc0[i][j] = vfma(av, wv[j], acc0[i][j]);
        }
        for (int j = 0; j < R; j++) wv[j] = vload_w(w[j] + k + VW);
        for (int i = 0; i < MT; i++) {
            const V av = vload(a[i] + k + VW);
            for (int j = 0; j < R; j++) acc1[i][j] = vfma(av, wv[j], acc1[i][j]);
        }
    }
    if (k2 < kv) {  // one more full step: an even one
        for (int j = 0; j < R; j++) wv[j] = vload_w(w[j] + k2);
        for (int i = 0; i < MT; i++) {
            const V av = vload(a[i] + k2);
            for (int j = 0; j < R; j++) acc0[i][j] = vfma(av, wv[j], acc0[i][j]);
        }
    }
    if (kv < K) {  // the padded step, even or odd by its index
        const bool odd = (kv / VW) & 1;
        for (int j = 0; j < R; j++) wv[j] = load_tail(w[j] + kv, K - kv);
        for (int i = 0; i < MT; i++) {
            const V av = load_tail(a[i] + kv, K - kv);
            for (int j = 0; j < R; j++) {
                if (odd)
                    acc1[i][j] = vfma(av, wv[j], acc1[i][j]);
                else
                    acc0[i][j] = vfma(av, wv[j], acc0[i][j]);
            }
        }
    }
    for (int i = 0; i < MT; i++) {
        float y[R];
        V t[R];
        for (int j = 0; j < R; j++) t[j] = vadd(acc0[i][j], acc1[i][j]);
        int j = 0;
        for (; j + 4 <= R; j += 4) hsum4(t + j, y + j);
        for (; j < R; j++) y[j] = hsum(t[j]);
        for (j = 0; j < R; j++) C[(size_t)i * ldc + col[j]] = y[j];
    }
}

// C[i * ldc + col[j]] = a[i] . w[j] for mt <= MT_MAX rows of A and r weight rows, in the widest tiles that fit.
template <typename WT>
void tiles(float* C, int ldc, const int* col, const float* const* a, int mt, const WT* const* w, int r, int K) {
    int j = 0;
    if (mt == 1)
        for (; j + R_WIDE <= r; j += R_WIDE) tile<1, R_WIDE>(C, ldc, col + j, a, w + j, K);
    for (; j + R_MT2 <= r; j += R_MT2) {
        switch (mt) {
            case 1: tile<1, R_MT2>(C, ldc, col + j, a, w + j, K); break;
            case 2: tile<2, R_MT2>(C, ldc, col + j, a, w + j, K); break;
#if defined(TG_AVX512)
            default: tile<3, R_MT2>(C, ldc, col + j, a, w + j, K); break;
#endif
        }
    }
    for (; j < r; j++) {
        switch (mt) {
            case 1: tile<1, 1>(C, ldc, col + j, a, w + j, K); break;
            case 2: tile<2, 1>(C, ldc, col + j, a, w + j, K); break;
#if defined(TG_AVX512)
            default: tile<3, 1>(C, ldc, col + j, a, w + j, K); break;
#endif
        }
    }
}

// ---- packed operands (large M) ------------------------------------------------------------------------------
// The two accumulators of an output are independent chains (even steps, odd steps), so the GEMM runs them one
// after the other: the packed operands hold the even steps first, then the odd ones (step k at position
// pos(k)), and each pass needs a single accumulator per output (a 4 x 4 tile fits in registers with its
// operands; with two accumulators per output GCC re-loaded the weights for every FMA).
inline int pos(int k, int steps) { return (k & 1) ? (steps + 1) / 2 + k / 2 : k / 2; }

// Wp[pos(step)][r][VW] <- w[0:r][0:K] widened to float (exact), zero-padded past K.
template <typename WT>
inline void pack_w(float* Wp, const WT* const* w, int r, int K) {
    const int steps = (K + VW - 1) / VW;
    for (int k = 0; k < steps; k++) {
        float* d = Wp + (size_t)pos(k, steps) * r * VW;
        const int n = imin(VW, K - k * VW);
        for (int j = 0; j < r; j++)
            vstore(d + j * VW, n == VW ? vload_w(w[j] + k * VW) : load_tail(w[j] + k * VW, n));
    }
}

// Ap[pos(step)][mt][VW] <- A[mt rows, :] (row stride K), zero-padded past K.
inline void pack_a(float* Ap, const float* A, int mt, int K) {
    const int steps = (K + VW - 1) / VW;
    for (int k = 0; k < steps; k++) {
        float* d = Ap + (size_t)pos(k, steps) * mt * VW;
        const int n = imin(VW, K - k * VW);
        for (int i = 0; i < mt; i++) {
            const float* src = A + (int64_t)i * K + k * VW;
            vstore(d + i * VW, n == VW ? vload(src) : load_tail(src, n));
        }
    }
}

// acc[i][j] (+)= ap . wp over packed positions [p0, p1): one FMA chain per output.
template <int MT, int R>
inline void gemm_run(V (&acc)[MT][R], const float* ap, const float* wp, int rw, int p0, int p1) {
    for (int p = p0; p < p1; p++) {
        V wv[R];
        for (int j = 0; j < R; j++) wv[j] = vload(wp + ((size_t)p * rw + j) * VW);
        for (int i = 0; i < MT; i++) {
            const V av = vload(ap + ((size_t)p * MT + i) * VW);
            for (int j = 0; j < R; j++) acc[i][j] = vfma(av, wv[j], acc[i][j]);
        }
    }
}

// tile's arithmetic on packed operands. half 0 / 1: positions [p0, p1) of the even / odd half, the accumulator
// starting from zero (first) or from st[.][half] and stored back, or (fin, odd half) reduced with the even
// half's: s[i * R + j] = hsum(acc_even + acc_odd). half -1: the whole of K in this call (even half [0, p0), odd
// half [p0, p1)). Storing a vector accumulator and loading it back is exact, so blocking K changes nothing.
// st: [MT][R][2][VW]; ap: [pos][MT][VW]; wp: [pos][rw][VW], rows j0..j0+R of rw.
template <int MT, int R>
inline void gemm_tile(float* s, float* st, const float* ap, const float* wp, int rw, int p0, int p1, int half,
                      bool first, bool fin) {
    V acc[MT][R];
    if (half < 0) {
        for (int i = 0; i < MT; i++)
            for (int j = 0; j < R; j++) acc[i][j] = vzero();
        gemm_run<MT, R>(acc, ap, wp, rw, 0, p0);
        for (int i = 0; i < MT; i++)
            for (int j = 0; j < R; j++) vstore(st + ((i * R + j) * 2) * VW, acc[i][j]), acc[i][j] = vzero();
        gemm_run<MT, R>(acc, ap, wp, rw, p0, p1);
        half = 1;
    } else {
        for (int i = 0; i < MT; i++)
            for (int j = 0; j < R; j++) acc[i][j] = first ? vzero() : vload(st + ((i * R + j) * 2 + half) * VW);
        gemm_run<MT, R>(acc, ap, wp, rw, p0, p1);
    }
    for (int i = 0; i < MT; i++) {
        if (fin) {
            V t[R];
            for (int j = 0; j < R; j++) {
                const V even = half ? vload(st + ((i * R + j) * 2) * VW) : acc[i][j];
                const V odd = half ? acc[i][j] : vzero();  // K of one step: no odd half (tile adds zero too)
                t[j] = vadd(even, odd);
            }
            int j = 0;
            for (; j + 4 <= R; j += 4) hsum4(t + j, s + i * R + j);
            for (; j < R; j++) s[i * R + j] = hsum(t[j]);
        } else {
            for (int j = 0; j < R; j++) vstore(st + ((i * R + j) * 2 + half) * VW, acc[i][j]);
        }
    }
}

// C[i * ldc + j] for an mt x r block (mt <= MT_G, r <= 4), one k-block (see gemm_tile); st: 2 * mt * r vectors.
inline void gemm_tiles(float* C, int ldc, float* st, const float* ap, int mt, const float* wp, int r, int p0, int p1,
                       int half, bool first, bool fin) {
    float s[MT_G * 4] = {};
    int j0 = 0;
    auto put = [&](int rr) {
        if (fin)
            for (int i = 0; i < mt; i++)
                for (int j = 0; j < rr; j++) C[(size_t)i * ldc + j0 + j] = s[i * rr + j];
        j0 += rr;
    };
    for (; j0 + 4 <= r;) {
        float* sj = st + (size_t)j0 * mt * 2 * VW;
        switch (mt) {
            case 1: gemm_tile<1, 4>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
#if defined(TG_AVX512)
            case 2: gemm_tile<2, 4>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
            case 3: gemm_tile<3, 4>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
#endif
            default: gemm_tile<MT_G, 4>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
        }
        put(4);
    }
    for (; j0 < r;) {
        float* sj = st + (size_t)j0 * mt * 2 * VW;
        switch (mt) {
            case 1: gemm_tile<1, 1>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
#if defined(TG_AVX512)
            case 2: gemm_tile<2, 1>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
            case 3: gemm_tile<3, 1>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
#endif
            default: gemm_tile<MT_G, 1>(s, sj, ap, wp + j0 * VW, r, p0, p1, half, first, fin); break;
        }
        put(1);
    }
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

// C[m * ldc + col[j]] = A[m] . w[j] for all M rows of A and r weight rows.
template <typename WT>
void rows_all_m(float* C, int ldc, const int* col, const float* A, int M, int K, const WT* const* w, int r) {
    const float* a[MT_MAX];
    for (int m0 = 0; m0 < M; m0 += MT_MAX) {
        const int mt = imin(MT_MAX, M - m0);
        for (int i = 0; i < mt; i++) a[i] = A + (int64_t)(m0 + i) * K;
        tiles(C + (size_t)m0 * ldc, ldc, col, a, mt, w, r, K);
    }
}

struct FloatScratch {  // per-call scratch, allocated outside parallel regions so that a failure can throw
    float* p;
    explicit FloatScratch(size_t n) : p((float*)std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64)) {
        if (!p) throw std::bad_alloc();
    }
    ~FloatScratch() { std::free(p); }
};

// ---- small M: S streams per thread ----------------------------------------------------------------
template <typename WT>
void gemm_small(float* out, const float* A, const WT* W, const float* ws, const float* b, int M, int N, int K,
                int flags) {
    const int nt = imin(tg::num_threads(), imax(1, N / 64));
    const int max_len = (N + nt - 1) / nt;
    FloatScratch scratch((size_t)M * max_len * nt);
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const int beg = (int)((int64_t)N * tid / nth), end = (int)((int64_t)N * (tid + 1) / nth);
        const int len = end - beg, per = len / S;
        float* C = scratch.p + (size_t)M * max_len * tid;
        const WT* w[R_WIDE];
        int col[R_WIDE];
        int i = 0;
        for (; i < per; i++) {  // S distant parts of [beg, end) in lockstep
            for (int s = 0; s < S; s++) col[s] = s * per + i, w[s] = W + (int64_t)(beg + col[s]) * K;
            rows_all_m(C, len, col, A, M, K, w, R_WIDE);
        }
        int r = 0;  // what is left, in groups of up to R_WIDE: the parts' last rows, then the rows past the parts
        auto add = [&](int c) {
            col[r] = c, w[r] = W + (int64_t)(beg + c) * K;
            if (++r == R_WIDE) rows_all_m(C, len, col, A, M, K, w, r), r = 0;
        };
        for (int s = 0; s < S; s++)
            for (int c = s * per + i; c < (s + 1) * per; c++) add(c);
        for (int c = S * per; c < len; c++) add(c);
        if (r) rows_all_m(C, len, col, A, M, K, w, r);
        for (int m = 0; m < M; m++)
            epilogue(out + (int64_t)m * N + beg, C + (size_t)m * len, ws ? ws + beg : nullptr, b ? b + beg : nullptr,
                     len, flags);
    }
}

// ---- larger M: blocks of A rows (L2) by groups of W rows (L1) ------------------------------------------
template <typename WT>
void gemm(float* out, const float* A, const WT* W, const float* ws, const float* b, int M, int N, int K,
          int flags) {
    const int nt = imin(tg::num_threads(), imax(1, N / 16));
    // rows of A per block: the block stays in L2 (<= 256 KB) while every W group of the thread passes over it
    const int kp = (K + VW - 1) / VW * VW, steps = kp / VW;
    // rows of A per block: the packed block stays in L2 (<= 768 KB) while the thread's weight rows pass over it;
    // each block re-packs the weights, so larger is better while it fits (T = 512, K = 768, 1 thread, Zen 5:
    // 0.83-0.85 of OpenBLAS with 192 rows, 0.78 with 96, 0.71 with 48)
    const int MC = imax(MT_G, imin(192, (192 * 1024 / kp) / MT_G * MT_G));
    constexpr int KB = 1024 / VW;  // vector steps per k-block: 4 packed weight rows, 16 KB, stay in L1
    const size_t per_thread = (size_t)MC * NC + (size_t)MC * kp + (size_t)4 * kp + (size_t)MC * 4 * 2 * VW;
    FloatScratch scratch(per_thread * nt);
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const int beg = (int)((int64_t)N * tid / nth), end = (int)((int64_t)N * (tid + 1) / nth);
        float* C = scratch.p + per_thread * tid;
        float* Ap = C + (size_t)MC * NC;  // the A block, packed by MT-row tiles (each thread its own: no barrier)
        float* Wp = Ap + (size_t)MC * kp;
        float* st = Wp + (size_t)4 * kp;  // accumulators between k-blocks: 2 vectors per output
        const WT* w[4];
        for (int m0 = 0; m0 < M; m0 += MC) {
            const int mc = imin(MC, M - m0);
            for (int i0 = 0; i0 < mc; i0 += MT_G)
                pack_a(Ap + (size_t)i0 * kp, A + (int64_t)(m0 + i0) * K, imin(MT_G, mc - i0), K);
            for (int n0 = beg; n0 < end; n0 += NC) {
                const int nc = imin(NC, end - n0);
                for (int j0 = 0; j0 < nc; j0 += 4) {  // 4 weight rows against every tile of the A block
                    const int r = imin(4, nc - j0);
                    for (int j = 0; j < r; j++) w[j] = W + (int64_t)(n0 + j0 + j) * K;
                    pack_w(Wp, w, r, K);  // aligned floats, f16/bf16/int8 widened once for all tiles
                    // the next group's rows into L2 while this one computes: the packer then need not wait on
                    // L3/DRAM (it stalled for ~15% of a T = 512 GEMM)
                    if (n0 + j0 + 4 < end) {
                        const char* nx = (const char*)(W + (int64_t)(n0 + j0 + 4) * K);
                        const size_t bytes = (size_t)imin(4, end - (n0 + j0 + 4)) * K * sizeof(WT);
                        for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(nx + o, 0, 2);
                    }
                    const int ne = (steps + 1) / 2;  // even steps, then odd ones
                    if (ne <= KB && steps > 1) {  // all of K in one call per tile
                        for (int i0 = 0; i0 < mc; i0 += MT_G)
                            gemm_tiles(C + (size_t)i0 * NC + j0, NC, st + (size_t)i0 * 4 * 2 * VW,
                                       Ap + (size_t)i0 * kp, imin(MT_G, mc - i0), Wp, r, ne, steps, -1, true, true);
                        continue;
                    }
                    for (int half = 0; half < 2; half++) {
                        const int h0 = half ? ne : 0, h1 = half ? steps : ne;
                        const bool fin_half = half == 1 || steps == 1;
                        for (int p0 = h0; p0 < h1; p0 += KB) {
                            const int p1 = imin(h1, p0 + KB);
                            for (int i0 = 0; i0 < mc; i0 += MT_G)
                                gemm_tiles(C + (size_t)i0 * NC + j0, NC, st + (size_t)i0 * 4 * 2 * VW,
                                           Ap + (size_t)i0 * kp, imin(MT_G, mc - i0), Wp, r, p0, p1, half, p0 == h0,
                                           fin_half && p1 == h1);
                        }
                    }
                }
                for (int m = 0; m < mc; m++)
                    epilogue(out + (int64_t)(m0 + m) * N + n0, C + (size_t)m * NC, ws ? ws + n0 : nullptr,
                             b ? b + n0 : nullptr, nc, flags);
            }
        }
    }
}

template <typename WT>
void matmul_t(float* out, const float* inp, const WT* w, const float* ws, const float* b, int M, int N, int K,
              int flags) {
    if (M <= SMALL_M || K <= 0)  // K == 0: every sum is 0 (the GEMM's blocking needs K > 0)
        gemm_small(out, inp, w, ws, b, M, N, K, flags);
    else
        gemm(out, inp, w, ws, b, M, N, K, flags);
}

// out[idx[i]] = x . W[idx[i]] (* ws[idx[i]]): matmul's value of each listed row, no bias, no flags.
template <typename WT>
void rows_t(float* out, const float* x, const WT* W, const float* ws, const int32_t* idx, int n, int K) {
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
        rows_all_m(c, R_WIDE, col, x, 1, K, w, r);
        epilogue(y, c, ws ? s : nullptr, nullptr, r, 0);
        for (int j = 0; j < r; j++) out[id[j]] = y[j];
    }
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
    else
        matmul_t(out, inp, (const int8_t*)w, ws, b, M, N, K, flags);
}

void matmul_rows(float* out, const float* x, const void* w, const float* ws, const int32_t* rows, int n, int K,
                 int wdtype) {
    if (n <= 0) return;
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
