// CUDA helpers shared by the kernel files: checked calls that throw (never exit), weight loads that widen
// f16/bf16 to float, warp reductions, and the tanh GELU.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "api.h"

namespace tgc {

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        std::string mem;
        if (e == cudaErrorMemoryAllocation && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
            mem = " (device memory free " + std::to_string(free_b >> 20) + " MiB of " + std::to_string(total_b >> 20) + " MiB)";
        cudaGetLastError();  // clear a sticky-free error so the process can go on
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e) + mem);
    }
}
#define TGC_CHECK(call) ::tgc::check((call), #call)
#define TGC_LAUNCHED(name) ::tgc::check(cudaGetLastError(), name)

__device__ __forceinline__ float load_w(const float* w, int64_t i) { return w[i]; }
__device__ __forceinline__ float load_w(const __half* w, int64_t i) { return __half2float(w[i]); }
__device__ __forceinline__ float load_w(const __nv_bfloat16* w, int64_t i) { return __bfloat162float(w[i]); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

using tg::ACCUM;  // matmul epilogue flags: csrc/forward.h
using tg::GELU;

// Launchers (stream-ordered, no sync). Shapes as in csrc/common.h.
void launch_matmul(float* out, const float* inp, const void* w, const float* b, int M, int N, int K, int wdtype,
                   int flags, cudaStream_t s);
// Every row with the M == 1 GEMV's arithmetic (batched decode rows: a row's value never depends on M).
void launch_matmul_rows(float* out, const float* inp, const void* w, const float* b, int M, int N, int K, int wdtype,
                        int flags, cudaStream_t s);
void launch_layernorm(float* out, const float* inp, const float* w, const float* b, int M, int C, float eps,
                      cudaStream_t s);
// out = matmul(layernorm(inp)). M == 1 (decode): one kernel, the LayerNorm in the GEMV's prologue; ln_out is
// not written. M > 1 or K > LN_GEMV_MAX_K: layernorm into ln_out [M, K], then matmul.
constexpr int LN_GEMV_MAX_K = 8192;  // the normalised row in shared memory (32 KB, under the 48 KB default)
void launch_layernorm_matmul(float* out, const float* inp, const float* ln_w, const float* ln_b, float eps,
                             float* ln_out, const void* w, const float* b, int M, int N, int K, int wdtype, int flags,
                             cudaStream_t s);
// pos0 is read from device memory (d_pos) so a captured graph can be replayed at every position.
void launch_attention(float* out, const float* qkv, float* kc, float* vc, int T, const int* d_pos, int H, int hd,
                      int n_ctx, float* scratch, cudaStream_t s);
size_t attention_scratch_floats(int H, int hd, int n_ctx);
void launch_gelu(float* out, const float* inp, int64_t n, cudaStream_t s);
void launch_embedding(float* out, const int32_t* tokens, const void* wte, const float* wpe, int T, int C,
                      const int* d_pos, int wdtype, cudaStream_t s);
// Greedy step: out_index[0] = np.argmax(logits[:n]) (first max; the first NaN if any), computed on the device.
void argmax(const float* logits, int n, int* out_index, cudaStream_t s);

// RAII device buffer
struct DeviceBuffer {
    void* p = nullptr;
    size_t bytes = 0;
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t n) : bytes(n) { TGC_CHECK(cudaMalloc(&p, n ? n : 1)); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) {
            if (p) cudaFree(p);
            p = o.p, bytes = o.bytes, o.p = nullptr;
        }
        return *this;
    }
    ~DeviceBuffer() { if (p) cudaFree(p); }
    template <typename T> T* as() const { return static_cast<T*>(p); }
};

}  // namespace tgc
