// Greedy decoding's LM head: the argmax of x . W^T over the vocabulary without evaluating every row exactly.
// An int8 copy of the head screens the rows (python/tinygpt/backends/head_screen.py builds it and explains the
// bound); only rows that can still be the argmax are evaluated, with matmul's own arithmetic (matmul_rows).
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "omp_compat.h"

#include "matmul.h"
#include "simd.h"

namespace TG_ISA_NS {

void matmul(float*, const float*, const void*, const float*, const float*, int, int, int, int, int);

namespace {

// np.argmax semantics: the first NaN if there is one, else the first maximum.
int first_argmax(const float* v /*[N]*/, int N) {
    int best = 0;
    for (int n = 0; n < N; n++) {
        if (v[n] != v[n]) return n;
        if (v[n] > v[best]) best = n;
    }
    return best;
}

struct IntBuf {
    int32_t* p;
    explicit IntBuf(size_t n) : p((int32_t*)std::malloc(n * sizeof(int32_t))) {
        if (!p) throw std::bad_alloc();
    }
    ~IntBuf() { std::free(p); }
};

// The screen of one row, given a[n] ~ x . W[n] from the int8 copy in scratch[0:N]; -1 when it cannot decide
// (non-finite values, possible float32 overflow, or too loose to pay). idx: [N / 4 + 1] ints of room.
int screened_argmax(float* scratch, int32_t* idx, const float* x, const void* w, const float* qs, const float* err,
                    int N, int K, int wdtype, int32_t* n_exact) {
    double n2 = 0, n1 = 0;
    for (int k = 0; k < K; k++) n2 += (double)x[k] * x[k], n1 += std::fabs((double)x[k]);
    n2 = std::sqrt(n2) * (1 + 1e-12), n1 *= 1 + 1e-12;
    if (!std::isfinite(n2) || !std::isfinite(n1)) return -1;
    // |exact_n - a_n| <= min(||x||_2 ||e_n||_2, ||x||_1 max|e_n|) + ||x||_2 * rounding_n  (e_n: quantization error)
    auto bound = [&](int n) {
        const float* e = err + 3 * (int64_t)n;
        return std::min(n2 * e[0], n1 * e[1]) + n2 * e[2];
    };
    double lo = -INFINITY;
    for (int n = 0; n < N; n++) {
        const double a = scratch[n], bnd = bound(n);
        // The bound assumes no float32 overflow in the exact row: every partial sum of x . W[n] is at most
        // ||x||_1 max|W[n]| (max|W[n]| <= 127 qs[n] (1 + 2^-23)); a row that could overflow (a corrupt or extreme
        // head) sends the whole step to the full pass, which orders infinities as np.argmax does.
        if (!std::isfinite(a) || !std::isfinite(bnd) || !(n1 * 127.0 * qs[n] * (1 + 1e-3) < FLT_MAX)) return -1;
        if (a - bnd > lo) lo = a - bnd;
    }
    // survivors: rows whose upper bound reaches the best lower bound (the slack covers double rounding and
    // float32 underflow)
    int cnt = 0;
    for (int n = 0; n < N; n++) {
        const double a = scratch[n], bnd = bound(n);
        if (a + bnd + 1e-15 * (std::fabs(a) + bnd + std::fabs(lo)) + 1e-30 >= lo) idx[cnt++] = n;
        // a screen too loose to pay (x near 0, flat rows): one parallel pass over every row is cheaper
        if (cnt > N / 4) return -1;
    }
    matmul_rows(scratch, x, w, nullptr, idx, cnt, K, wdtype);
    int best = -1;
    float bestv = 0;
    for (int i = 0; i < cnt; i++) {
        const int n = idx[i];
        if (scratch[n] != scratch[n]) return -1;  // a NaN row: let the full pass order it
        if (best < 0 || scratch[n] > bestv) best = n, bestv = scratch[n];
    }
    *n_exact = cnt;
    return best;
}

}  // namespace

// For each of M rows x[m]: the index of the largest of x[m] . W[n]^T over rows n (np.argmax of what matmul, no
// bias, writes: the first maximum, or the first NaN), without evaluating every row exactly. q[N,K] int8 with row
// scales qs[N] is a screening copy of W, read once for all M rows; err[n] = (||e_n||_2, max|e_n|, r_n) for its
// quantization error e_n = W[n] - qs[n] q[n] and the float32 rounding coefficient r_n, so that |x . W[n] (as matmul
// computes it) - x . q[n] * qs[n] (as the int8 matmul computes it)| <= min(||x||_2 ||e_n||_2, ||x||_1 max|e_n|) +
// ||x||_2 r_n (backends/head_screen.py). Rows whose screening interval cannot reach the best lower bound are
// skipped; the rest are evaluated with matmul's own per-row arithmetic, so each answer is bit-for-bit the argmax
// of the full matmul. q == null, any non-finite screening value, a row that could overflow float32, or over a
// quarter of the rows surviving: that x takes the full pass (one matmul for all such x). scratch: [M, N] floats;
// n_exact[m]: rows evaluated exactly for x[m].
void matmul_argmax(float* scratch /*[M,N]*/, const float* x /*[M,K]*/, const void* w /*[N,K]*/,
                   const float* ws /*[N], int8 W only*/, const int8_t* q /*[N,K] or null*/, const float* qs /*[N]*/,
                   const float* err /*[N,3]*/, int M, int N, int K, int wdtype, int32_t* best /*[M]*/,
                   int32_t* n_exact /*[M]*/) {
    if (M <= 0) return;
    IntBuf full((size_t)M);
    int nf = 0;
    if (q && wdtype != tg::I8) {  // int8: nothing to screen
        matmul(scratch, x, q, qs, nullptr, M, N, K, tg::I8, 0);  // a_n ~ x . W[n], the int8 copy read once
        const size_t room = (size_t)N / 4 + 1;
        IntBuf idx(room * M);
        if (M == 1) {  // matmul_rows then uses every thread
            best[0] = screened_argmax(scratch, idx.p, x, w, qs, err, N, K, wdtype, n_exact);
        } else {  // one row per thread (matmul_rows runs single-threaded inside)
#pragma omp parallel for num_threads(imin(tg::num_threads(), M)) schedule(dynamic)
            for (int m = 0; m < M; m++)
                best[m] = screened_argmax(scratch + (int64_t)m * N, idx.p + room * m, x + (int64_t)m * K, w, qs, err,
                                          N, K, wdtype, n_exact + m);
        }
        for (int m = 0; m < M; m++)
            if (best[m] < 0) full.p[nf++] = m;
    } else {
        for (int m = 0; m < M; m++) full.p[nf++] = m;
    }
    if (nf == 0) return;
    const float* xf = x;
    std::unique_ptr<float[]> gathered;
    if (nf < M) {  // the undecided rows, contiguous
        gathered.reset(new float[(size_t)nf * K]);
        for (int i = 0; i < nf; i++)
            std::memcpy(gathered.get() + (int64_t)i * K, x + (int64_t)full.p[i] * K, sizeof(float) * K);
        xf = gathered.get();
    }
    matmul(scratch, xf, w, ws, nullptr, nf, N, K, wdtype, 0);
    for (int i = 0; i < nf; i++) {
        best[full.p[i]] = first_argmax(scratch + (int64_t)i * N, N);
        n_exact[full.p[i]] = N;
    }
}

}  // namespace TG_ISA_NS
