// Runs a tinygpt plan (python/tinygpt/plan.py) natively: an Engine holds the weights (borrowed pointers)
// and the plan; a Session owns one KV cache and the activation buffers and appends tokens at its position.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "plan.h"

namespace tg {

using namespace tgplan;

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
