// The CPU backend's engine: an Engine holds the weights (borrowed pointers) and the greedy head screen; a
// Sequence owns one KV cache and a position; forward() runs the GPT-2 forward (csrc/forward.h) over a batch of
// sequences in one call.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "forward.h"

namespace tg {

struct Engine {
    Config cfg;
    Weights w;
    // bf16_activations: bfloat16 matrices multiply activations rounded to bf16 (tg::BF16A: AVX512_BF16 where the
    // CPU has it); greedy steps then read the whole head (the screen's bound is for float32 activations).
    const bool bf16_activations;
    Engine(const Config& c, Weights weights, bool bf16_activations = false);  // validates every shape and dtype
    // Greedy decoding's screening copy of the LM head (head_argmax's q, qs, err), borrowed like the weights.
    // Set at most once, possibly while forwards run (they read it atomically); null: greedy reads the whole head.
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

class Sequence {
  public:
    explicit Sequence(std::shared_ptr<const Engine> e);
    int pos = 0;                 // tokens in the cache
    int screen_rest = 0;         // greedy steps left that skip a head screen which did not prune last time
    int64_t screened_steps = 0;  // greedy steps whose head went through the screen
    float* k_cache() { return kc_.get(); }  // [n_layer, H, n_ctx, hd]
    float* v_cache() { return vc_.get(); }
    void copy_from(const Sequence& other);  // fork: this becomes other's prefix (positions [0, other.pos))
    const Engine& engine() const { return *e_; }

  private:
    std::shared_ptr<const Engine> e_;
    FloatBuf kc_, vc_;
};

struct BatchItem {
    Sequence* seq;
    const int32_t* tokens;  // [n], appended at seq->pos
    int n;
    int want;
    int skip = 0;  // WANT_ALL: the first `skip` rows are context only (no logits); 0 <= skip < n
};

// One forward over every item's tokens. logits: [logit_rows, n_vocab], the items' rows in item order.
// argmax[i] / n_exact[i]: for WANT_ARGMAX items, np.argmax of the last row's logits and the head rows evaluated
// exactly (the screened head; see head_argmax.cpp). Every position advances by its n.
void forward(const Engine& e, const BatchItem* items, int n_items, float* logits, int32_t* argmax, int32_t* n_exact);

}  // namespace tg
