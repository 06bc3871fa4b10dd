// Linear layer kernels for one ISA level: out[M,N] (+)= act(inp[M,K] . (W[N,K] * s[N])^T + b[N]).
//
// One arithmetic for every output element, whatever M, the row's place in the batch or the thread split (row
// invariance: a sequence's values do not depend on what it is batched with). Output (m, n) is a dot product of
// two contiguous rows: one vector accumulator from 0, lane l taking k = l, l + VW, l + 2 VW, ... in order
// (zero-padded past K), then one fixed reduction tree (hsum), then the epilogue in vector arithmetic (times the
// int8 row scale, plus bias, GELU, plus out), tails included (a padded vector: sgelu would differ from vgelu).
// Lanes over K let the decode GEMV read weight rows as plain sequential streams (no transposition, the DRAM
// floor), and the prefill GEMM read them in place: a register tile of MT rows of A by R rows of W.
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

// Distant row streams per thread at small M (one weight row from each in a tile of R_WIDE rows). The old row
// GEMV (2 accumulators per row) was best with 4 streams per thread; one accumulator per row needs 8 rows in
// flight, and 8 distant rows beat 4 x 2 adjacent ones for int8 (1 thread, busy Zen 5: 7-11 vs 4-5 GB/s at
// K = 768), fp32 alike.
constexpr int S = 8;
constexpr int SMALL_M = 16;  // up to this many rows: the streaming driver
constexpr int NC = 256;      // large M: output columns per epilogue block
#if defined(TG_AVX512)
constexpr int MT_MAX = 4;  // register tiles: MT x R accumulators + R weight vectors + 1 (32 vector registers)
constexpr int R_WIDE = 8;  // small M, MT <= 2: 8 (or 16) independent chains
#else
constexpr int MT_MAX = 2;  // 16 vector registers
constexpr int R_WIDE = 8;
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

// p[0:n] (n < VW) and zeros, as a vector of floats.
template <typename WT>
inline V load_tail(const WT* p, int n) {
    WT t[VW];
    std::memset(t, 0, sizeof t);  // zero bits are 0.0 in every stored type
    std::memcpy(t, p, n * sizeof(WT));
    return vload_w(t);
}

// s[i * R + j] = a[i] . w[j] over K for MT rows of A and R weight rows: THE arithmetic of an output element
// before the epilogue (see the file head). Every path of matmul and matmul_rows goes through here.
template <int MT, int R, typename WT>
inline void tile(float* s /*[MT][R]*/, const float* const* a /*[MT]*/, const WT* const* w /*[R]*/, int K) {
    V acc[MT][R];
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < R; j++) acc[i][j] = vzero();
    const int kv = K - K % VW;
    for (int k = 0; k < kv; k += VW) {
        V wv[R];
        for (int j = 0; j < R; j++) wv[j] = vload_w(w[j] + k);
        for (int i = 0; i < MT; i++) {
            const V av = vload(a[i] + k);
            for (int j = 0; j < R; j++) acc[i][j] = vfma(av, wv[j], acc[i][j]);
        }
    }
    if (kv < K) {
        V wv[R];
        for (int j = 0; j < R; j++) wv[j] = load_tail(w[j] + kv, K - kv);
        for (int i = 0; i < MT; i++) {
            const V av = load_tail(a[i] + kv, K - kv);
            for (int j = 0; j < R; j++) acc[i][j] = vfma(av, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < R; j++) s[i * R + j] = hsum(acc[i][j]);
}

// s[i * r + j] for mt <= MT_MAX rows of A and r <= R_WIDE weight rows, in the widest tiles that fit.
template <typename WT>
void tiles(float* s, const float* const* a, int mt, const WT* const* w, int r, int K) {
    float t[MT_MAX * R_WIDE];
    int j0 = 0;
    auto put = [&](int rr) {
        for (int i = 0; i < mt; i++)
            for (int j = 0; j < rr; j++) s[i * r + j0 + j] = t[i * rr + j];
        j0 += rr;
    };
    if (r == R_WIDE && mt == 1) tile<1, R_WIDE>(t, a, w, K), put(R_WIDE);
#if defined(TG_AVX512)
    else if (r == R_WIDE && mt == 2) tile<2, R_WIDE>(t, a, w, K), put(R_WIDE);
#endif
    for (; j0 + 4 <= r;) {
        switch (mt) {
            case 1: tile<1, 4>(t, a, w + j0, K); break;
            case 2: tile<2, 4>(t, a, w + j0, K); break;
#if defined(TG_AVX512)
            case 3: tile<3, 4>(t, a, w + j0, K); break;
            default: tile<4, 4>(t, a, w + j0, K); break;
#endif
        }
        put(4);
    }
    for (; j0 < r;) {
        switch (mt) {
            case 1: tile<1, 1>(t, a, w + j0, K); break;
            case 2: tile<2, 1>(t, a, w + j0, K); break;
#if defined(TG_AVX512)
            case 3: tile<3, 1>(t, a, w + j0, K); break;
            default: tile<4, 1>(t, a, w + j0, K); break;
#endif
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

// C[m * ldc + col[j]] = A[m] . w[j] for all M rows of A and r <= R_WIDE weight rows.
template <typename WT>
void rows_all_m(float* C, int ldc, const int* col, const float* A, int M, int K, const WT* const* w, int r) {
    float s[MT_MAX * R_WIDE];
    const float* a[MT_MAX];
    for (int m0 = 0; m0 < M; m0 += MT_MAX) {
        const int mt = imin(MT_MAX, M - m0);
        for (int i = 0; i < mt; i++) a[i] = A + (int64_t)(m0 + i) * K;
        tiles(s, a, mt, w, r, K);
        for (int i = 0; i < mt; i++)
            for (int j = 0; j < r; j++) C[(int64_t)(m0 + i) * ldc + col[j]] = s[i * r + j];
    }
}

struct FloatScratch {  // per-call scratch, allocated outside parallel regions so that a failure can throw
    float* p;
    explicit FloatScratch(size_t n) : p((float*)std::malloc(n * sizeof(float))) {
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
        constexpr int RS = R_WIDE / S;  // consecutive rows per stream in one tile
        int i = 0;
        for (; i + RS <= per; i += RS) {  // S distant parts of [beg, end) in lockstep
            for (int s = 0; s < S; s++)
                for (int j = 0; j < RS; j++) col[s * RS + j] = s * per + i + j;
            for (int j = 0; j < R_WIDE; j++) w[j] = W + (int64_t)(beg + col[j]) * K;
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
    const int MC = imax(MT_MAX, imin(64, (64 * 1024 / imax(K, 1)) / MT_MAX * MT_MAX));
    FloatScratch scratch((size_t)MC * NC * nt);
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const int beg = (int)((int64_t)N * tid / nth), end = (int)((int64_t)N * (tid + 1) / nth);
        float* C = scratch.p + (size_t)MC * NC * tid;
        const WT* w[4];
        int col[4];
        for (int m0 = 0; m0 < M; m0 += MC) {
            const int mc = imin(MC, M - m0);
            for (int n0 = beg; n0 < end; n0 += NC) {
                const int nc = imin(NC, end - n0);
                for (int j0 = 0; j0 < nc; j0 += 4) {
                    const int r = imin(4, nc - j0);
                    for (int j = 0; j < r; j++) col[j] = j0 + j, w[j] = W + (int64_t)(n0 + j0 + j) * K;
                    rows_all_m(C, NC, col, A + (int64_t)m0 * K, mc, K, w, r);
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
    if (M <= SMALL_M)
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
