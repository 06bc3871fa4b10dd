// Device memory and single-kernel launches on device pointers (device_api.h), for tests and kernel benches.
#include <memory>
#include <mutex>
#include <vector>

#include "common.cuh"
#include "device_api.h"

namespace tgc::dev {

void* alloc(size_t bytes) {
    void* p = nullptr;
    TGC_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}
void release(void* p) noexcept {
    if (p) cudaFree(p);
}
void upload(void* d, const void* h, size_t bytes) {
    if (bytes) TGC_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
}
void download(void* h, const void* d, size_t bytes) {
    TGC_CHECK(cudaDeviceSynchronize());  // a kernel fault surfaces here, not as a failed copy
    if (bytes) TGC_CHECK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}
void synchronize() { TGC_CHECK(cudaDeviceSynchronize()); }

const int* position(int pos) {
    // One table 0..n-1 grown by doubling; old tables are kept (a queued kernel may still read one).
    static std::mutex mu;
    static std::vector<DeviceBuffer> tables;
    static int n = 0;
    if (pos < 0 || pos >= (1 << 20)) throw std::invalid_argument("position out of range");
    std::lock_guard<std::mutex> lock(mu);
    if (pos >= n) {
        int m = 1024;
        while (m <= pos) m *= 2;
        std::vector<int> h(m);
        for (int i = 0; i < m; i++) h[i] = i;
        DeviceBuffer t((size_t)m * sizeof(int));
        upload(t.p, h.data(), (size_t)m * sizeof(int));
        tables.push_back(std::move(t));
        n = m;
    }
    return tables.back().as<int>() + pos;
}

void matmul(float* out, const float* inp, const void* w, const float* b, int M, int N, int K, int wdtype, int flags) {
    if (M > 0 && N > 0) launch_matmul(out, inp, w, b, M, N, K, wdtype, flags, 0);
}
void layernorm(float* out, const float* inp, const float* w, const float* b, int M, int C, float eps) {
    if (M > 0) launch_layernorm(out, inp, w, b, M, C, eps, 0);
}
void layernorm_matmul(float* out, const float* inp, const float* ln_w, const float* ln_b, float eps, float* ln_out,
                      const void* w, const float* b, int M, int N, int K, int wdtype, int flags) {
    launch_layernorm_matmul(out, inp, ln_w, ln_b, eps, ln_out, w, b, M, N, K, wdtype, flags, 0);
}
void attention(float* out, const float* qkv, float* kc, float* vc, int T, const int* d_pos, int H, int hd, int n_ctx,
               float* scratch) {
    launch_attention(out, qkv, kc, vc, T, d_pos, H, hd, n_ctx, scratch, 0);
}
size_t attention_scratch_floats(int H, int hd, int n_ctx) { return tgc::attention_scratch_floats(H, hd, n_ctx); }
void gelu(float* out, const float* inp, int64_t n) { launch_gelu(out, inp, n, 0); }
void argmax(const float* logits, int n, int* out_index) { tgc::argmax(logits, n, out_index, 0); }

int argmax_host(const float* h_logits, int n) {
    if (n < 1) throw std::invalid_argument("argmax: empty logits");
    DeviceBuffer x((size_t)n * 4), idx(sizeof(int));
    upload(x.p, h_logits, (size_t)n * 4);
    tgc::argmax(x.as<float>(), n, idx.as<int>(), 0);
    int i = -1;
    download(&i, idx.p, sizeof(int));
    return i;
}

}  // namespace tgc::dev
