// LayerNorm on the GPU: one warp per row, two passes (mean, then centred variance) over a row held in L1.
#include "common.cuh"

namespace tgc {

namespace {
__global__ void layernorm_kernel(float* __restrict__ out, const float* __restrict__ inp, const float* __restrict__ w,
                                 const float* __restrict__ b, int M, int C, float eps) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= M) return;
    const float* x = inp + (int64_t)row * C;
    float s = 0.f;
    for (int c = lane; c < C; c += 32) s += x[c];
    const float mean = warp_sum(s) / C;
    float v = 0.f;
    for (int c = lane; c < C; c += 32) v += (x[c] - mean) * (x[c] - mean);
    const float rstd = rsqrtf(warp_sum(v) / C + eps);
    float* o = out + (int64_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = (x[c] - mean) * rstd * w[c] + b[c];
}
}  // namespace

void launch_layernorm(float* out /*[M,C]*/, const float* inp /*[M,C]*/, const float* w /*[C]*/, const float* b /*[C]*/,
                      int M, int C, float eps, cudaStream_t s) {
    layernorm_kernel<<<(M + 7) / 8, 256, 0, s>>>(out, inp, w, b, M, C, eps);
    TGC_LAUNCHED("layernorm");
}

}  // namespace tgc
