// Token + position embedding on the GPU: out[T,C] = wte[tokens[t]] + wpe[pos + t]; pos read from the device.
#include "common.cuh"

namespace tgc {

namespace {
template <typename WT>
__global__ void embedding_kernel(float* out, const int32_t* tokens, const WT* wte, const float* wpe, int T, int C,
                                 const int* d_pos) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)T * C) return;
    const int t = (int)(i / C), c = (int)(i % C);
    out[i] = load_w(wte, (int64_t)tokens[t] * C + c) + wpe[(int64_t)(*d_pos + t) * C + c];
}
}  // namespace

void launch_embedding(float* out /*[T,C]*/, const int32_t* tokens /*[T]*/, const void* wte /*[V,C]*/,
                      const float* wpe /*[n_ctx,C]*/, int T, int C, const int* d_pos, int wdtype, cudaStream_t s) {
    const unsigned blocks = (unsigned)(((int64_t)T * C + 255) / 256);
    if (wdtype == F32)
        embedding_kernel<<<blocks, 256, 0, s>>>(out, tokens, (const float*)wte, wpe, T, C, d_pos);
    else if (wdtype == F16)
        embedding_kernel<<<blocks, 256, 0, s>>>(out, tokens, (const __half*)wte, wpe, T, C, d_pos);
    else
        embedding_kernel<<<blocks, 256, 0, s>>>(out, tokens, (const __nv_bfloat16*)wte, wpe, T, C, d_pos);
    TGC_LAUNCHED("embedding");
}

}  // namespace tgc
