// Runs a tinygpt plan (python/tinygpt/plan.py) natively: an Engine holds the weights (borrowed pointers)
// and the plan; a Session owns one KV cache and the activation buffers and appends tokens at its position.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"

namespace tg {

enum Op : int { OP_EMBED = 1, OP_LAYERNORM = 2, OP_LINEAR = 3, OP_ATTENTION = 4 };
enum Buf : int { BUF_X = 0, BUF_H, BUF_QKV, BUF_ATT, BUF_FC, BUF_LOGITS, N_BUF };
enum PlanFlags : int { PF_GELU = 1, PF_ACCUM = 2, PF_LAST = 4 };

struct Config {
    int n_vocab, n_ctx, n_embd, n_head, n_layer, d_ff;
    float eps;
};

struct WeightRef {
    const void* ptr;
    int dtype;            // F32 / F16 / BF16 / I8
    const float* scale;   // I8 only: [rows]
    int64_t rows, cols;   // cols = 1 for a vector
};

using PlanRow = std::array<int64_t, 8>;  // op, out, in, weight, bias, flags, layer, unused

struct Engine {
    Config cfg;
    std::vector<PlanRow> plan;
    std::vector<WeightRef> weights;
    int width[N_BUF];
    Engine(const Config& c, std::vector<PlanRow> p, std::vector<WeightRef> w);  // validates everything
};

struct FreeDeleter {
    void operator()(float* p) const;
};
using FloatBuf = std::unique_ptr<float, FreeDeleter>;

class Session {
  public:
    explicit Session(std::shared_ptr<const Engine> e);
    // Append T tokens at pos(); writes logits[T or 1, n_vocab] (all rows, or only the last).
    void forward(const int32_t* tokens, int T, float* logits, bool all_logits);
    int pos() const { return pos_; }
    void reset() { pos_ = 0; }

  private:
    std::shared_ptr<const Engine> e_;
    FloatBuf kc_, vc_, bufs_[BUF_LOGITS];
    int pos_ = 0;
};

}  // namespace tg
