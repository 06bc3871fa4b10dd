// Plain C++ interface of the CUDA backend, so the pybind11 module (compiled by the host compiler) never
// includes CUDA headers. Pointers named h_* are host memory; everything else lives on the device.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../csrc/forward.h"

namespace tgc {

using tg::DType, tg::F32, tg::F16, tg::BF16;  // int8 is cpu-only

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

using tg::Config;
using tg::WeightRef;

struct EngineImpl;
struct SequenceImpl;

class Engine {
  public:
    Engine(const Config& c, const tg::Weights& host);  // uploads every weight once (host pointers in `host`)
    ~Engine();
    std::shared_ptr<EngineImpl> impl;
};

// One KV cache on the device and its position.
class Sequence {
  public:
    explicit Sequence(const Engine& e);
    ~Sequence();
    int pos() const;
    void reset();
    void copy_from(const Sequence& other);  // fork: this becomes other's prefix
    std::unique_ptr<SequenceImpl> impl;
};

struct BatchItem {
    Sequence* seq;
    const int32_t* h_tokens;  // [n], appended at seq->pos()
    int n;
    int want;      // tg::Want
    int skip = 0;  // WANT_ALL: the first `skip` rows are context only (no logits)
};

// One forward over every item's tokens (csrc/forward.h). h_logits: [tg::logit_rows, n_vocab] host floats;
// h_argmax / h_n_exact: per WANT_ARGMAX item (no head screen on CUDA: n_exact = n_vocab).
void forward(const Engine& e, const BatchItem* items, int n_items, float* h_logits, int32_t* h_argmax,
             int32_t* h_n_exact);

}  // namespace tgc
