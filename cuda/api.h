// Plain C++ interface of the CUDA backend, so the pybind11 module (compiled by the host compiler) never
// includes CUDA headers. Pointers named h_* are host memory; everything else lives on the device.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../csrc/plan.h"

namespace tgc {

using tgplan::DType, tgplan::F32, tgplan::F16, tgplan::BF16;  // int8 is cpu-only

int device_count(std::string* why);  // 0 and a reason when there is no usable device / driver
std::string device_name(int dev);
std::string runtime_version();

// Kernel entry points on host arrays (copy in, run, copy out): for tests and benches of single kernels.
void matmul_host(float* h_out, const float* h_inp, const void* h_w, const float* h_b, int M, int N, int K, int wdtype,
                 int flags);
void layernorm_host(float* h_out, const float* h_inp, const float* h_w, const float* h_b, int M, int C, float eps);
void attention_host(float* h_out, const float* h_qkv, float* h_kc, float* h_vc, int T, int pos0, int H, int hd, int n_ctx);
void gelu_host(float* h_out, const float* h_inp, int64_t n);
void embedding_host(float* h_out, const int32_t* h_tokens, const void* h_wte, const float* h_wpe, int T, int C, int V,
                    int n_ctx, int pos0, int wdtype);

using tgplan::Config;
using tgplan::PlanRow;
using HostWeight = tgplan::WeightRef;  // scale unused: int8 is cpu-only

struct EngineImpl;
struct SessionImpl;

class Engine {
  public:
    Engine(const Config& c, const std::vector<PlanRow>& plan, const std::vector<HostWeight>& weights);  // uploads once
    ~Engine();
    std::shared_ptr<EngineImpl> impl;
};

class Session {
  public:
    explicit Session(const Engine& e);  // allocates the KV cache and activations on the device
    ~Session();
    void forward(const int32_t* h_tokens, int T, float* h_logits, bool all_logits);
    int pos() const;
    void reset();

  private:
    std::unique_ptr<SessionImpl> impl_;
};

}  // namespace tgc
