// Elementwise GELU (tanh form). The model fuses it into the matmul epilogue; this kernel is for tests/benches.
#include "common.cuh"

namespace tgc {

namespace {
__global__ void gelu_kernel(float* out, const float* inp, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = gelu_tanh(inp[i]);
}
}  // namespace

void launch_gelu(float* out /*[n]*/, const float* inp /*[n]*/, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    const int64_t blocks = (n + 255) / 256;
    gelu_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, s>>>(out, inp, n);
    TGC_LAUNCHED("gelu");
}

}  // namespace tgc
