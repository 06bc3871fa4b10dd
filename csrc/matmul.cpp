// Linear layer kernels for one ISA level: out[M,N] (+)= act(inp[M,K] . W[N,K]^T + b[N]).
// M == 1 (decode): GEMV, rows of W split across threads, each thread reading 4 distant rows at once; memory-bound.
// M > 1 (prefill): each thread owns a contiguous range of NR-column panels; per k-block, A is packed MR-row
// interleaved and each W panel is packed (and widened from f16/bf16) into a KC x NR block, and a MR x NR
// register tile runs over both; compute-bound (~130 GFLOP/s of ~190 peak on 2 Zen 3 cores, AVX2).
#include "omp_compat.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>

#include "simd.h"

namespace TG_ISA_NS {

namespace {

constexpr int KC = 256;     // k-block: a packed panel is KC x NR floats (32 KB with AVX-512)
constexpr int NR = 2 * VW;  // panel width: two vectors
constexpr int MR = 6;       // register tile rows: MR x 2 accumulators + 2 B vectors + 1 broadcast

inline float epilogue(float acc, const float* b, int n, int flags) {
    if (b) acc += b[n];
    if (flags & tg::GELU) acc = sgelu(acc);
    return acc;
}

// ---- GEMV (M == 1) ------------------------------------------------------------------------------
// Each thread owns a contiguous range of rows, cut into S equal parts that it walks in lockstep: S sequential
// streams per thread, far apart in memory. On the 2-core Zen 3 host one stream per thread left DRAM read
// bandwidth unused: a 124M decode step took ~27 ms (fp32) / ~16.5 ms (bf16) with 1 stream, ~20.5 / ~12 ms with
// 4; 2 streams were in between and 8 no better than 4.
// A accumulators per stream keep S * A >= 8 independent FMA chains in flight.
template <int S, int A, typename WT>
inline void gemv_rows(float* out /*[N]*/, const float* x /*[K]*/, const WT* W /*[N,K]*/, const float* ws /*[N]*/,
                      const float* b /*[N]*/, int beg, int end, int K, int flags) {
    const int per = (end - beg) / S;
    const int ka = K - K % (A * VW), kv = K - K % VW;
    for (int i = 0; i < per; i++) {
        const WT* w[S];
        V acc[S][A];
        for (int s = 0; s < S; s++) {
            w[s] = W + (int64_t)(beg + s * per + i) * K;
            for (int a = 0; a < A; a++) acc[s][a] = vzero();
        }
        for (int k = 0; k < ka; k += A * VW)
            for (int a = 0; a < A; a++) {
                const V xv = vload(x + k + a * VW);
                for (int s = 0; s < S; s++) acc[s][a] = vfma(vload_w(w[s] + k + a * VW), xv, acc[s][a]);
            }
        for (int k = ka; k < kv; k += VW) {
            const V xv = vload(x + k);
            for (int s = 0; s < S; s++) acc[s][0] = vfma(vload_w(w[s] + k), xv, acc[s][0]);
        }
        for (int s = 0; s < S; s++) {
            V t = acc[s][0];
            for (int a = 1; a < A; a++) t = vadd(t, acc[s][a]);
            float y = vsum(t);
            for (int k = kv; k < K; k++) y += sload_w(w[s] + k) * x[k];
            const int n = beg + s * per + i;
            if (ws) y *= ws[n];  // int8: the row scale factors out of the dot product
            y = epilogue(y, b, n, flags);
            out[n] = (flags & tg::ACCUM) ? out[n] + y : y;
        }
    }
    // leftover rows: same A, so every row's value is the same arithmetic wherever the thread split falls
    if (S > 1 && beg + S * per < end) gemv_rows<1, A>(out, x, W, ws, b, beg + S * per, end, K, flags);
}

constexpr int GEMV_S = 4, GEMV_A = 2;

template <typename WT>
void gemv(float* out /*[N]*/, const float* x /*[K]*/, const WT* W /*[N,K]*/, const float* ws /*[N] or null*/,
          const float* b /*[N]*/, int N, int K, int flags) {
#pragma omp parallel num_threads(tg::num_threads())
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int beg = (int)((int64_t)N * id / nt), end = (int)((int64_t)N * (id + 1) / nt);
        gemv_rows<GEMV_S, GEMV_A>(out, x, W, ws, b, beg, end, K, flags);
    }
}

// np.argmax semantics: the first NaN if there is one, else the first maximum.
inline int first_argmax(const float* v /*[N]*/, int N) {
    int best = 0;
    for (int n = 0; n < N; n++) {
        if (v[n] != v[n]) return n;
        if (v[n] > v[best]) best = n;
    }
    return best;
}

// Greedy head: see matmul_argmax below. Screening pass, then exact rows for the survivors.
template <typename WT>
int argmax_t(float* scratch /*[N]*/, const float* x /*[K]*/, const WT* W /*[N,K]*/, const float* ws /*[N] or null*/,
             const int8_t* q /*[N,K] or null*/, const float* qs /*[N]*/, const float* err /*[N,3]*/, int N, int K,
             int* n_exact) {
    double n2 = 0, n1 = 0;
    for (int k = 0; k < K; k++) n2 += (double)x[k] * x[k], n1 += std::fabs((double)x[k]);
    n2 = std::sqrt(n2) * (1 + 1e-12), n1 *= 1 + 1e-12;
    bool screened = q && std::isfinite(n2) && std::isfinite(n1);
    // |exact_n - a_n| <= min(||x||_2 ||e_n||_2, ||x||_1 max|e_n|) + ||x||_2 * rounding_n  (e_n: quantization error)
    auto bound = [&](int n) {
        const float* e = err + 3 * (int64_t)n;
        return std::min(n2 * e[0], n1 * e[1]) + n2 * e[2];
    };
    if (screened) {
        gemv(scratch, x, q, qs, nullptr, N, K, 0);  // a_n ~ x . W[n]
        double lo = -INFINITY;
        for (int n = 0; n < N && screened; n++) {
            const double a = scratch[n], bnd = bound(n);
            screened = std::isfinite(a) && std::isfinite(bnd);
            if (a - bnd > lo) lo = a - bnd;
        }
        // survivors: rows whose upper bound reaches the best lower bound (the slack covers double rounding and
        // float32 underflow)
        auto survives = [&](int n) {
            const double a = scratch[n], bnd = bound(n);
            return a + bnd + 1e-15 * (std::fabs(a) + bnd + std::fabs(lo)) + 1e-30 >= lo;
        };
        int cnt = 0;
        for (int n = 0; n < N && screened; n++) cnt += survives(n);
        // a screen too loose to pay (x near 0, flat rows): one parallel pass over every row is cheaper than many
        // single rows
        screened = screened && cnt <= N / 4;
        if (screened) {
            int best = -1;
            float bestv = 0;
            for (int n = 0; n < N && screened; n++) {
                if (!survives(n)) continue;
                gemv_rows<1, GEMV_A>(scratch, x, W, ws, nullptr, n, n + 1, K, 0);
                screened = scratch[n] == scratch[n];  // a NaN (overflow) row: let the full pass order it
                if (best < 0 || scratch[n] > bestv) best = n, bestv = scratch[n];
            }
            if (screened) {
                *n_exact = cnt;
                return best;
            }
        }
    }
    gemv(scratch, x, W, ws, nullptr, N, K, 0);  // no screen, or non-finite values: every row
    *n_exact = N;
    return first_argmax(scratch, N);
}

// ---- GEMM (M > 1) -------------------------------------------------------------------------------
#if defined(TG_AVX2)
// 8 weights of any stored type as 8 floats (simd.h's cvt8_*, for the AVX2 and the AVX-512 builds alike).
static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load8(const f16_t* p) { return cvt8_f16((const uint16_t*)p); }
static inline __m256 load8(const bf16_t* p) { return cvt8_bf16((const uint16_t*)p); }
static inline __m256 load8(const int8_t* p) { return cvt8_i8(p); }

static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}
#endif

// Bp[kc, NR] <- W[n0:n0+ncols, k0:k0+kc] transposed and widened to float (int8: times its row scale);
// columns past ncols are zero. Full panels go through 8x8 register transposes.
template <typename WT>
void pack_panel(float* Bp /*[kc, NR]*/, const WT* W /*[N,K]*/, const float* ws /*[N] or null*/, int n0, int ncols,
                int k0, int kc, int K) {
#if defined(TG_AVX2)
    if (ncols == NR && kc % 8 == 0) {
        for (int jb = 0; jb < NR; jb += 8) {
            __m256 sc[8];
            for (int j = 0; j < 8; j++) sc[j] = _mm256_set1_ps(ws ? ws[n0 + jb + j] : 1.0f);
            for (int kk = 0; kk < kc; kk += 8) {
                __m256 r[8];
                for (int j = 0; j < 8; j++) {
                    r[j] = load8(W + (int64_t)(n0 + jb + j) * K + k0 + kk);
                    if (ws) r[j] = _mm256_mul_ps(r[j], sc[j]);
                }
                transpose8(r);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(Bp + (kk + i) * NR + jb, r[i]);
            }
        }
        return;
    }
#endif
    for (int j = 0; j < ncols; j++) {
        const WT* row = W + (int64_t)(n0 + j) * K + k0;
        const float s = ws ? ws[n0 + j] : 1.0f;  // int8: dequantize while packing (times 1 is exact otherwise)
        for (int kk = 0; kk < kc; kk++) Bp[kk * NR + j] = sload_w(row + kk) * s;
    }
    for (int j = ncols; j < NR; j++)
        for (int kk = 0; kk < kc; kk++) Bp[kk * NR + j] = 0.0f;
}

// Ap[kc, MRt] <- A[MRt rows, k0:k0+kc] (row stride lda): the micro-kernel's broadcasts then read one stream.
inline void pack_a(float* Ap, const float* A, int lda, int mr, int kc) {
    for (int i = 0; i < mr; i++)
        for (int kk = 0; kk < kc; kk++) Ap[kk * mr + i] = A[(int64_t)i * lda + kk];
}

// C[MRt, NR] (+)= Ap[kc, MRt]^T . Bp[kc, NR]; C row stride ldc.
template <int MRt>
inline void micro(float* C, int ldc, const float* Ap, const float* Bp, int kc, bool add) {
    V acc0[MRt], acc1[MRt];
    for (int i = 0; i < MRt; i++) acc0[i] = vzero(), acc1[i] = vzero();
    for (int kk = 0; kk < kc; kk++) {
        V b0 = vload(Bp + kk * NR), b1 = vload(Bp + kk * NR + VW);
        for (int i = 0; i < MRt; i++) {
            V a = vset1(Ap[kk * MRt + i]);
            acc0[i] = vfma(a, b0, acc0[i]);
            acc1[i] = vfma(a, b1, acc1[i]);
        }
    }
    for (int i = 0; i < MRt; i++) {
        float* c = C + (int64_t)i * ldc;
        if (add) acc0[i] = vadd(acc0[i], vload(c)), acc1[i] = vadd(acc1[i], vload(c + VW));
        vstore(c, acc0[i]);
        vstore(c + VW, acc1[i]);
    }
}

inline void micro_any(int mr, float* C, int ldc, const float* Ap, const float* Bp, int kc, bool add) {
    switch (mr) {
        case 6: micro<6>(C, ldc, Ap, Bp, kc, add); break;
        case 5: micro<5>(C, ldc, Ap, Bp, kc, add); break;
        case 4: micro<4>(C, ldc, Ap, Bp, kc, add); break;
        case 3: micro<3>(C, ldc, Ap, Bp, kc, add); break;
        case 2: micro<2>(C, ldc, Ap, Bp, kc, add); break;
        default: micro<1>(C, ldc, Ap, Bp, kc, add); break;
    }
}

template <typename WT>
void gemm(float* out /*[M,N]*/, const float* A /*[M,K]*/, const WT* W /*[N,K]*/, const float* ws /*[N] or null*/,
          const float* b /*[N]*/, int M, int N, int K, int flags) {
    const int npanels = (N + NR - 1) / NR;
    const int nt = imin(tg::num_threads(), npanels);
    // Each thread accumulates its panels in a private [M, NR * panels] tile, then applies the epilogue.
    // Scratch is allocated here, outside the parallel region, so a failure can throw.
    const int max_width = ((npanels + nt - 1) / nt) * NR;
    const size_t per_thread = (size_t)M * max_width + (size_t)KC * NR + (size_t)KC * ((M + MR - 1) / MR) * MR;
    float* scratch = (float*)std::malloc(per_thread * nt * sizeof(float));
    if (!scratch) throw std::bad_alloc();
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const int p0 = (int)((int64_t)npanels * tid / nth), p1 = (int)((int64_t)npanels * (tid + 1) / nth);
        const int width = (p1 - p0) * NR;
        float* Cbuf = scratch + per_thread * tid;
        float* Bp = Cbuf + (size_t)M * max_width;
        float* Ap = Bp + (size_t)KC * NR;  // [M/MR tiles][kc][MR]
        for (int k0 = 0; k0 < K; k0 += KC) {
            const int kc = imin(KC, K - k0);
            for (int m0 = 0; m0 < M; m0 += MR)  // each thread packs the whole A block: no barrier needed
                pack_a(Ap + (size_t)(m0 / MR) * KC * MR, A + (int64_t)m0 * K + k0, K, imin(MR, M - m0), kc);
            for (int p = p0; p < p1; p++) {
                const int n0 = p * NR, ncols = imin(NR, N - n0);
                pack_panel(Bp, W, ws, n0, ncols, k0, kc, K);
                float* C = Cbuf + (p - p0) * NR;
                for (int m0 = 0; m0 < M; m0 += MR)
                    micro_any(imin(MR, M - m0), C + (int64_t)m0 * width, width, Ap + (size_t)(m0 / MR) * KC * MR, Bp,
                              kc, k0 > 0);
            }
        }
        for (int m = 0; m < M; m++) {
            const float* c = Cbuf + (int64_t)m * width;
            float* o = out + (int64_t)m * N;
            const int nbeg = p0 * NR, nend = imin(N, p1 * NR);
            if (!(flags & tg::GELU) && b && nend - nbeg >= VW) {
                int n = nbeg;
                for (; n + VW <= nend; n += VW) {
                    V y = vadd(vload(c + (n - nbeg)), vload(b + n));
                    vstore(o + n, (flags & tg::ACCUM) ? vadd(vload(o + n), y) : y);
                }
                for (; n < nend; n++) {
                    float y = c[n - nbeg] + b[n];
                    o[n] = (flags & tg::ACCUM) ? o[n] + y : y;
                }
            } else if ((flags & tg::GELU) && !(flags & tg::ACCUM)) {
                int n = nbeg;
                for (; n + VW <= nend; n += VW) {
                    V y = vload(c + (n - nbeg));
                    if (b) y = vadd(y, vload(b + n));
                    vstore(o + n, vgelu(y));
                }
                for (; n < nend; n++) o[n] = epilogue(c[n - nbeg], b, n, flags);
            } else {
                for (int n = nbeg; n < nend; n++) {
                    float y = epilogue(c[n - nbeg], b, n, flags);
                    o[n] = (flags & tg::ACCUM) ? o[n] + y : y;
                }
            }
        }
    }
    std::free(scratch);
}

template <typename WT>
void matmul_t(float* out, const float* inp, const WT* w, const float* ws, const float* b, int M, int N, int K,
              int flags) {
    if (M == 1)
        gemv(out, inp, w, ws, b, N, K, flags);
    else
        gemm(out, inp, w, ws, b, M, N, K, flags);
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

}  // namespace TG_ISA_NS

namespace TG_ISA_NS {

// Index of the largest of x . W[n]^T over rows n (np.argmax of what matmul with M == 1, no bias, writes: the first
// maximum, or the first NaN), without evaluating every row exactly. q[N,K] int8 with row scales qs[N] is a
// screening copy of W; err[n] = (||e_n||_2, max|e_n|, r_n) for its quantization error e_n = W[n] - qs[n] q[n] and
// the float32 rounding coefficient r_n, so that |x . W[n] (as the GEMV computes it) - x . q[n] * qs[n] (as the
// int8 GEMV computes it)| <= min(||x||_2 ||e_n||_2, ||x||_1 max|e_n|) + ||x||_2 r_n (weights.py: head_screen).
// Rows whose screening interval cannot reach the best lower bound are skipped; the rest are evaluated with the
// GEMV's own per-row arithmetic, so the answer is bit-for-bit the argmax of the full GEMV. q == null, any
// non-finite screening value, or over a quarter of the rows surviving: every row (one parallel GEMV).
// scratch: [N] floats (exact values of the evaluated rows on return); *n_exact: rows evaluated exactly.
int matmul_argmax(float* scratch /*[N]*/, const float* x /*[K]*/, const void* w /*[N,K]*/,
                  const float* ws /*[N], int8 W only*/, const int8_t* q /*[N,K] or null*/, const float* qs /*[N]*/,
                  const float* err /*[N,3]*/, int N, int K, int wdtype, int* n_exact) {
    if (wdtype == tg::F32) return argmax_t(scratch, x, (const float*)w, nullptr, q, qs, err, N, K, n_exact);
    if (wdtype == tg::F16) return argmax_t(scratch, x, (const f16_t*)w, nullptr, q, qs, err, N, K, n_exact);
    if (wdtype == tg::BF16) return argmax_t(scratch, x, (const bf16_t*)w, nullptr, q, qs, err, N, K, n_exact);
    return argmax_t(scratch, x, (const int8_t*)w, ws, nullptr, qs, err, N, K, n_exact);  // int8: nothing to screen
}

}  // namespace TG_ISA_NS
