// Linear layer on the GPU: out[M,N] (+)= act(inp[M,K] . W[N,K]^T + b[N]); W float32, float16 or bfloat16.
// M == 1 (decode): one warp per output row, 16-byte loads, warp reduction: bound by HBM bandwidth.
// M > 1 (prefill), fp32 weights: 64x64 shared-memory tiles, 4x4 outputs per thread (exact fp32).
// M > 1, fp16/bf16 weights: tensor cores (WMMA 16x16x16, fp32 accumulation); the activations are rounded to the
// weights' 16-bit type on their way into shared memory, as every fp16/bf16 GEMM does.
#include <mma.h>

#include "common.cuh"

namespace tgc {

namespace {

__device__ __forceinline__ float epilogue(float acc, const float* b, int n, int flags) {
    if (b) acc += b[n];
    if (flags & GELU) acc = gelu_tanh(acc);
    return acc;
}

__device__ __forceinline__ void store(float* out, int64_t i, float y, int flags) {
    out[i] = (flags & ACCUM) ? out[i] + y : y;
}

// 16 bytes of weights -> floats, dotted with the matching x
__device__ __forceinline__ float dot16(const float* w, const float* x) {
    float4 a = *reinterpret_cast<const float4*>(w), v = *reinterpret_cast<const float4*>(x);
    return a.x * v.x + a.y * v.y + a.z * v.z + a.w * v.w;
}
template <typename H2, typename Conv>
__device__ __forceinline__ float dot16_half(const void* w, const float* x, Conv conv) {
    uint4 raw = *reinterpret_cast<const uint4*>(w);
    const H2* h = reinterpret_cast<const H2*>(&raw);
    float4 x0 = *reinterpret_cast<const float4*>(x), x1 = *reinterpret_cast<const float4*>(x + 4);
    float2 f0 = conv(h[0]), f1 = conv(h[1]), f2 = conv(h[2]), f3 = conv(h[3]);
    return f0.x * x0.x + f0.y * x0.y + f1.x * x0.z + f1.y * x0.w + f2.x * x1.x + f2.y * x1.y + f3.x * x1.z + f3.y * x1.w;
}
__device__ __forceinline__ float dot16(const __half* w, const float* x) {
    return dot16_half<__half2>(w, x, [](__half2 h) { return __half22float2(h); });
}
__device__ __forceinline__ float dot16(const __nv_bfloat16* w, const float* x) {
    return dot16_half<__nv_bfloat162>(w, x, [](__nv_bfloat162 h) { return __bfloat1622float2(h); });
}

// One output row per warp: lanes stride over K (16-byte loads when vec), then a warp reduction.
template <typename WT>
__device__ __forceinline__ void gemv_row(float* __restrict__ out, const float* __restrict__ x, const WT* __restrict__ W,
                                         const float* __restrict__ b, int row, int K, int flags, bool vec, int lane) {
    const WT* w = W + (int64_t)row * K;
    float acc = 0.f;
    if (vec) {
        constexpr int E = 16 / sizeof(WT);  // elements per 16-byte load
#pragma unroll 4
        for (int k = lane * E; k < K; k += 32 * E) acc += dot16(w + k, x + k);
    } else {
        for (int k = lane; k < K; k += 32) acc += load_w(w, k) * x[k];
    }
    acc = warp_sum(acc);
    if (lane == 0) store(out, row, epilogue(acc, b, row, flags), flags);
}

// blockIdx.y: the input row (of M), each with exactly the M == 1 arithmetic (row-invariant batched decode).
template <typename WT>
__global__ void gemv_kernel(float* __restrict__ out, const float* __restrict__ x, const WT* __restrict__ W,
                            const float* __restrict__ b, int N, int K, int flags, bool vec) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row < N) gemv_row(out + (int64_t)blockIdx.y * N, x + (int64_t)blockIdx.y * K, W, b, row, K, flags, vec, lane);
}

// LayerNorm folded into the GEMV's prologue (decode): every block normalises the one input row into shared
// memory (the row is in L2, a few KB), with layernorm_kernel's arithmetic, then runs the GEMV on it. Saves the
// LayerNorm launch and its output's round trip.
template <typename WT>
__global__ void ln_gemv_kernel(float* __restrict__ out, const float* __restrict__ x, const float* __restrict__ lw,
                               const float* __restrict__ lb, float eps, const WT* __restrict__ W,
                               const float* __restrict__ b, int N, int K, int flags, bool vec) {
    extern __shared__ float4 xs4[];  // K floats, 16-byte aligned for the vector path
    float* xs = reinterpret_cast<float*>(xs4);
    __shared__ float stats[2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warp == 0) {
        float s = 0.f;
        for (int c = lane; c < K; c += 32) s += x[c];
        const float mean = warp_sum(s) / K;
        float v = 0.f;
        for (int c = lane; c < K; c += 32) v += (x[c] - mean) * (x[c] - mean);
        const float rstd = rsqrtf(warp_sum(v) / K + eps);
        if (lane == 0) stats[0] = mean, stats[1] = rstd;
    }
    __syncthreads();
    const float mean = stats[0], rstd = stats[1];
    for (int c = threadIdx.x; c < K; c += blockDim.x) xs[c] = (x[c] - mean) * rstd * lw[c] + lb[c];
    __syncthreads();
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    if (row < N) gemv_row(out, xs, W, b, row, K, flags, vec, lane);
}

constexpr int TM = 64, TN = 64, TK = 16;

template <typename WT>
__global__ void __launch_bounds__(256) gemm_kernel(float* __restrict__ out, const float* __restrict__ A,
                                                   const WT* __restrict__ W, const float* __restrict__ b, int M, int N,
                                                   int K, int flags) {
    __shared__ float As[TK][TM + 4];
    __shared__ float Ws[TK][TN + 4];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += TK) {
        for (int i = threadIdx.x; i < TM * TK; i += 256) {  // coalesced along k, stored transposed
            const int r = i / TK, kk = i % TK, m = m0 + r, n = n0 + r, k = k0 + kk;
            As[kk][r] = (m < M && k < K) ? A[(int64_t)m * K + k] : 0.f;
            Ws[kk][r] = (n < N && k < K) ? load_w(W, (int64_t)n * K + k) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float a[4], w[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i], w[i] = Ws[kk][tx + 16 * i];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * w[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
            if (m < M && n < N) store(out, (int64_t)m * N + n, epilogue(acc[i][j], b, n, flags), flags);
        }
}

// 64x64 output tile per block of 4 warps (each 32x32 = 2x2 fragments), k-steps of 32.
constexpr int WM = 64, WN = 64, WK = 32, WLD = WK + 8, CLD = 32 + 4;

__device__ __forceinline__ __half to16(float x, __half*) { return __float2half(x); }
__device__ __forceinline__ __nv_bfloat16 to16(float x, __nv_bfloat16*) { return __float2bfloat16(x); }

template <typename WT>
__global__ void __launch_bounds__(128) gemm_wmma_kernel(float* __restrict__ out, const float* __restrict__ A,
                                                        const WT* __restrict__ W, const float* __restrict__ b, int M,
                                                        int N, int K, int flags) {
    using namespace nvcuda;
    __shared__ __align__(32) WT As[WM][WLD];  // [m][k]
    __shared__ __align__(32) WT Bs[WN][WLD];  // [n][k]: B(k, n) read as col_major
    __shared__ __align__(32) float Cs[4][32][CLD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wm = warp >> 1, wn = warp & 1;
    const int m0 = blockIdx.y * WM, n0 = blockIdx.x * WN;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
    for (int k0 = 0; k0 < K; k0 += WK) {
        for (int i = threadIdx.x; i < WM * WK; i += 128) {  // coalesced along k; zero padding at the edges
            const int r = i / WK, kk = i % WK, k = k0 + kk;
            As[r][kk] = to16((m0 + r < M && k < K) ? A[(int64_t)(m0 + r) * K + k] : 0.f, (WT*)nullptr);
            Bs[r][kk] = (n0 + r < N && k < K) ? W[(int64_t)(n0 + r) * K + k] : to16(0.f, (WT*)nullptr);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < WK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], &As[wm * 32 + i * 16][kk], WLD);
#pragma unroll
            for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], &Bs[wn * 32 + j * 16][kk], WLD);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&Cs[warp][i * 16][j * 16], acc[i][j], CLD, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 32 * 32; e += 32) {  // fused epilogue: bias, GELU or residual add
        const int r = e / 32, c = e % 32, m = m0 + wm * 32 + r, n = n0 + wn * 32 + c;
        if (m < M && n < N) store(out, (int64_t)m * N + n, epilogue(Cs[warp][r][c], b, n, flags), flags);
    }
}

template <typename WT>
void launch_t(float* out, const float* inp, const WT* w, const float* b, int M, int N, int K, int flags, cudaStream_t s,
              bool rows = false) {
    if (M == 1 || rows) {
        const bool vec = (K % (16 / (int)sizeof(WT)) == 0) && ((uintptr_t)w % 16 == 0) && ((uintptr_t)inp % 16 == 0);
        const int threads = 256, rows_per_block = threads / 32;
        dim3 grid((N + rows_per_block - 1) / rows_per_block, M);
        gemv_kernel<WT><<<grid, threads, 0, s>>>(out, inp, w, b, N, K, flags, vec);
    } else if constexpr (sizeof(WT) == 2) {
        dim3 grid((N + WN - 1) / WN, (M + WM - 1) / WM);
        gemm_wmma_kernel<WT><<<grid, 128, 0, s>>>(out, inp, w, b, M, N, K, flags);
    } else {
        dim3 grid((N + TN - 1) / TN, (M + TM - 1) / TM);
        gemm_kernel<WT><<<grid, 256, 0, s>>>(out, inp, w, b, M, N, K, flags);
    }
    TGC_LAUNCHED("matmul");
}

template <typename WT>
void launch_ln_gemv(float* out, const float* inp, const float* lw, const float* lb, float eps, const WT* w,
                    const float* b, int N, int K, int flags, cudaStream_t s) {
    const bool vec = (K % (16 / (int)sizeof(WT)) == 0) && ((uintptr_t)w % 16 == 0);
    const int threads = 256, rows_per_block = threads / 32;
    ln_gemv_kernel<WT><<<(N + rows_per_block - 1) / rows_per_block, threads, (size_t)K * sizeof(float), s>>>(
        out, inp, lw, lb, eps, w, b, N, K, flags, vec);
    TGC_LAUNCHED("layernorm+matmul");
}

}  // namespace

void launch_layernorm_matmul(float* out, const float* inp, const float* ln_w, const float* ln_b, float eps,
                             float* ln_out, const void* w, const float* b, int M, int N, int K, int wdtype, int flags,
                             cudaStream_t s) {
    if (M < 1 || N < 1) return;
    if (M > 1 || K > LN_GEMV_MAX_K) {  // prefill, or a row too wide for shared memory: the two kernels
        launch_layernorm(ln_out, inp, ln_w, ln_b, M, K, eps, s);
        launch_matmul(out, ln_out, w, b, M, N, K, wdtype, flags, s);
    } else if (wdtype == F32) {
        launch_ln_gemv(out, inp, ln_w, ln_b, eps, (const float*)w, b, N, K, flags, s);
    } else if (wdtype == F16) {
        launch_ln_gemv(out, inp, ln_w, ln_b, eps, (const __half*)w, b, N, K, flags, s);
    } else {
        launch_ln_gemv(out, inp, ln_w, ln_b, eps, (const __nv_bfloat16*)w, b, N, K, flags, s);
    }
}

void launch_matmul(float* out /*[M,N]*/, const float* inp /*[M,K]*/, const void* w /*[N,K]*/, const float* b /*[N]*/,
                   int M, int N, int K, int wdtype, int flags, cudaStream_t s) {
    if (wdtype == F32)
        launch_t(out, inp, (const float*)w, b, M, N, K, flags, s);
    else if (wdtype == F16)
        launch_t(out, inp, (const __half*)w, b, M, N, K, flags, s);
    else
        launch_t(out, inp, (const __nv_bfloat16*)w, b, M, N, K, flags, s);
}

void launch_matmul_rows(float* out /*[M,N]*/, const float* inp /*[M,K]*/, const void* w /*[N,K]*/,
                        const float* b /*[N]*/, int M, int N, int K, int wdtype, int flags, cudaStream_t s) {
    if (M < 1 || N < 1) return;
    if (wdtype == F32)
        launch_t(out, inp, (const float*)w, b, M, N, K, flags, s, true);
    else if (wdtype == F16)
        launch_t(out, inp, (const __half*)w, b, M, N, K, flags, s, true);
    else
        launch_t(out, inp, (const __nv_bfloat16*)w, b, M, N, K, flags, s, true);
}

}  // namespace tgc
