// Runs a tinygpt plan (python/tinygpt/plan.py) natively: an Engine holds the weights (borrowed pointers)
// and the plan; a Session owns one KV cache and the activation buffers and appends tokens at its position.
#pragma once
#include <array>
#include <atomic>
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
    int64_t head_row = -1;  // the plan row of the LM head
    Engine(const Config& c, std::vector<PlanRow> p, std::vector<WeightRef> w);  // validates everything
    // Greedy decoding's screening copy of the LM head (matmul_argmax's q, qs, err), borrowed like the weights.
    // Set at most once, possibly while sessions run (they read it atomically); null: greedy reads the whole head.
    struct HeadScreen {
        const int8_t* q;   // [n_vocab, n_embd]
        const float* qs;   // [n_vocab]
        const float* err;  // [n_vocab, 3]
    };
    void set_head_screen(HeadScreen s);
    const HeadScreen* head_screen() const { return screen_.load(std::memory_order_acquire); }

  private:
    std::unique_ptr<HeadScreen> screen_owner_;
    std::atomic<const HeadScreen*> screen_{nullptr};
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
    // Append T tokens; returns np.argmax of the last position's logits without materialising them all
    // (Engine::head_screen() screens the head); *n_exact: head rows evaluated exactly.
    int forward_argmax(const int32_t* tokens, int T, int* n_exact);
    int pos() const { return pos_; }
    void reset() { pos_ = 0; }

  private:
    std::shared_ptr<const Engine> e_;
    FloatBuf kc_, vc_, bufs_[BUF_LOGITS], head_scratch_;
    int pos_ = 0;
    int screen_rest_ = 0;  // greedy steps left that skip a head screen which did not prune last time
    // runs the plan; head_argmax null: the head writes logits, else its argmax goes there
    void run(const int32_t* tokens, int T, float* logits, bool all_logits, int* head_argmax, int* n_exact);
};

}  // namespace tg
