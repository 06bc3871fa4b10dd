// Plain C++ interface to device memory and to single kernels on device pointers, for the _cuda bindings'
// DeviceArray: tests and benches that allocate and copy once, then time only the kernels. No CUDA headers here
// (the pybind11 module is compiled by the host compiler). Everything runs on the legacy default stream.
#pragma once
#include <cstddef>
#include <cstdint>

namespace tgc::dev {

void* alloc(size_t bytes);
void release(void* p) noexcept;
void upload(void* d, const void* h, size_t bytes);    // waits for the copy
void download(void* h, const void* d, size_t bytes);  // waits for earlier kernels, then the copy
void synchronize();                                   // waits for every launched kernel; throws on a kernel fault
// A device int holding `pos` (read by the kernels that take d_pos), from a shared table kept for the process:
// no copy per call. pos in [0, 1 << 20).
const int* position(int pos);

// Kernel launches on device pointers: asynchronous (launch errors throw at once, faults at synchronize()).
void matmul(float* out, const float* inp, const void* w, const float* b, int M, int N, int K, int wdtype, int flags);
void layernorm(float* out, const float* inp, const float* w, const float* b, int M, int C, float eps);
void layernorm_matmul(float* out, const float* inp, const float* ln_w, const float* ln_b, float eps, float* ln_out,
                      const void* w, const float* b, int M, int N, int K, int wdtype, int flags);
void attention(float* out, const float* qkv, float* kc, float* vc, int T, const int* d_pos, int H, int hd, int n_ctx,
               float* scratch);
size_t attention_scratch_floats(int H, int hd, int n_ctx);
void gelu(float* out, const float* inp, int64_t n);
void argmax(const float* logits, int n, int* out_index);

// argmax on a host array: copy in, one kernel, 4 bytes back.
int argmax_host(const float* h_logits, int n);

}  // namespace tgc::dev
