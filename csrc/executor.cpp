// Plan executor for the CPU backend (baseline flags; calls kernels through the dispatched table).
#include "executor.h"

#include <cstdlib>
#include <new>
#include <string>

namespace tg {

void FreeDeleter::operator()(float* p) const { std::free(p); }

static FloatBuf zeros(size_t n) {
    // calloc: the pages of a large cache are not touched (not in RSS) until a position is written
    float* p = (float*)std::calloc(n ? n : 1, sizeof(float));
    if (!p) throw std::bad_alloc();
    return FloatBuf(p);
}

Engine::Engine(const Config& c, std::vector<PlanRow> p, std::vector<WeightRef> w)
    : cfg(c), plan(std::move(p)), weights(std::move(w)) {
    TG_CHECK(c.n_embd % c.n_head == 0, "n_embd must be divisible by n_head");
    const int C = c.n_embd;
    const int widths[N_BUF] = {C, C, 3 * C, C, c.d_ff, c.n_vocab};
    for (int i = 0; i < N_BUF; i++) width[i] = widths[i];
    const int64_t nw = (int64_t)weights.size();
    for (int64_t i = 0; i < nw; i++)
        TG_CHECK(weights[i].ptr && (weights[i].dtype != I8 || weights[i].scale),
                 "weight " << i << ": missing data" << (weights[i].dtype == I8 ? " or int8 row scales" : ""));
    auto wref = [&](int64_t id, const char* what, size_t row) -> const WeightRef& {
        TG_CHECK(id >= 0 && id < nw, "plan row " << row << ": " << what << " id " << id << " out of range");
        return weights[id];
    };
    auto buf_ok = [&](int64_t b, size_t row) {
        TG_CHECK(b >= 0 && b < N_BUF, "plan row " << row << ": buffer id " << b << " out of range");
    };
    for (size_t r = 0; r < plan.size(); r++) {
        const PlanRow& op = plan[r];
        const int64_t o = op[1], in = op[2], wi = op[3], bi = op[4], fl = op[5], layer = op[6];
        switch (op[0]) {
            case OP_EMBED: {
                buf_ok(o, r);
                const WeightRef &wte = wref(wi, "wte", r), &wpe = wref(bi, "wpe", r);
                TG_CHECK(wte.rows == c.n_vocab && wte.cols == C, "wte: expected [" << c.n_vocab << ", " << C << "], got ["
                                                                      << wte.rows << ", " << wte.cols << "]");
                TG_CHECK(wpe.rows == c.n_ctx && wpe.cols == C && wpe.dtype == F32,
                         "wpe: expected float32 [" << c.n_ctx << ", " << C << "], got [" << wpe.rows << ", " << wpe.cols << "]");
                break;
            }
            case OP_LAYERNORM: {
                buf_ok(o, r), buf_ok(in, r);
                for (int64_t id : {wi, bi}) {
                    const WeightRef& v = wref(id, "layernorm param", r);
                    TG_CHECK(v.rows == width[in] && v.cols == 1 && v.dtype == F32,
                             "plan row " << r << ": layernorm param expected float32 [" << width[in] << "], got [" << v.rows
                                         << "]");
                }
                break;
            }
            case OP_LINEAR: {
                buf_ok(o, r), buf_ok(in, r);
                const WeightRef& W = wref(wi, "matrix", r);
                TG_CHECK(W.rows == width[o] && W.cols == width[in],
                         "plan row " << r << ": matrix expected [" << width[o] << ", " << width[in] << "], got [" << W.rows
                                     << ", " << W.cols << "]");
                if (bi >= 0) {
                    const WeightRef& b = wref(bi, "bias", r);
                    TG_CHECK(b.rows == width[o] && b.cols == 1 && b.dtype == F32,
                             "plan row " << r << ": bias expected float32 [" << width[o] << "], got [" << b.rows << "]");
                }
                TG_CHECK(!((fl & PF_GELU) && (fl & PF_ACCUM)), "plan row " << r << ": GELU with ACCUM is not supported");
                TG_CHECK(o != in, "plan row " << r << ": matmul in place is not supported");
                if (o == BUF_LOGITS) head_row = (int64_t)r;
                break;
            }
            case OP_ATTENTION:
                buf_ok(o, r), buf_ok(in, r);
                TG_CHECK(layer >= 0 && layer < c.n_layer, "plan row " << r << ": layer " << layer << " out of range");
                TG_CHECK(width[in] == 3 * C && width[o] == C, "plan row " << r << ": attention needs QKV in, C-wide out");
                break;
            default:
                TG_CHECK(false, "plan row " << r << ": unknown op " << op[0]);
        }
    }
}

void Engine::set_head_screen(HeadScreen s) {
    TG_CHECK(!screen_owner_, "set_head_screen: the head screen is already set");
    TG_CHECK(head_row >= 0, "set_head_screen: the plan has no LM head");
    TG_CHECK(s.q && s.qs && s.err, "set_head_screen: q, qs and err are all needed");
    TG_CHECK(weights[plan[head_row][3]].dtype != I8, "set_head_screen: an int8 head has nothing to screen");
    screen_owner_ = std::make_unique<HeadScreen>(s);
    screen_.store(screen_owner_.get(), std::memory_order_release);
}

Session::Session(std::shared_ptr<const Engine> e) : e_(std::move(e)) {
    const Config& c = e_->cfg;
    const size_t cache = (size_t)c.n_layer * c.n_ctx * c.n_embd;  // per layer [H, n_ctx, hd]
    kc_ = zeros(cache);
    vc_ = zeros(cache);
    for (int b = 0; b < BUF_LOGITS; b++) bufs_[b] = zeros((size_t)c.n_ctx * e_->width[b]);
    head_scratch_ = zeros(c.n_vocab);
}

void Session::forward(const int32_t* tokens, int T, float* logits, bool all_logits) {
    run(tokens, T, logits, all_logits, nullptr, nullptr);
}

int Session::forward_argmax(const int32_t* tokens, int T, int* n_exact) {
    const int64_t h = e_->head_row;
    TG_CHECK(h >= 0 && e_->plan[h][4] < 0 && !(e_->plan[h][5] & (PF_GELU | PF_ACCUM)),
             "forward_argmax: the plan has no plain (bias-free, no epilogue) LM head");
    int best = -1;
    run(tokens, T, head_scratch_.get(), false, &best, n_exact);
    return best;
}

void Session::run(const int32_t* tokens, int T, float* logits, bool all_logits, int* head_argmax, int* n_exact) {
    const Engine& e = *e_;
    const Config& c = e.cfg;
    TG_CHECK(T >= 1, "forward: no tokens");
    TG_CHECK(pos_ + T <= c.n_ctx, "forward: " << pos_ << " cached + " << T << " new tokens exceed the context of "
                                               << c.n_ctx);
    for (int t = 0; t < T; t++)
        TG_CHECK(tokens[t] >= 0 && tokens[t] < c.n_vocab,
                 "forward: token id " << tokens[t] << " outside 0.." << c.n_vocab - 1);
    const KernelTable& k = kernels();
    const int hd = c.n_embd / c.n_head;
    const size_t layer_cache = (size_t)c.n_ctx * c.n_embd;
    auto buf = [&](int64_t id) -> float* { return id == BUF_LOGITS ? logits : bufs_[id].get(); };
    for (const PlanRow& op : e.plan) {
        const int o = (int)op[1], in = (int)op[2], fl = (int)op[5];
        const bool last = (fl & PF_LAST) && !all_logits;
        const int r0 = last ? T - 1 : 0, M = T - r0;
        // the logits buffer holds only the rows this call returns
        auto row = [&](int id, int r) { return buf(id) + (int64_t)(id == BUF_LOGITS ? 0 : r) * e.width[id]; };
        switch (op[0]) {
            case OP_EMBED:
                k.embedding(buf(o), tokens, e.weights[op[3]].ptr, e.weights[op[3]].scale,
                            (const float*)e.weights[op[4]].ptr, T, c.n_embd, pos_, e.weights[op[3]].dtype);
                break;
            case OP_LAYERNORM:
                k.layernorm(row(o, r0), row(in, r0), (const float*)e.weights[op[3]].ptr,
                            (const float*)e.weights[op[4]].ptr, M, e.width[in], c.eps);
                break;
            case OP_LINEAR: {
                const WeightRef& W = e.weights[op[3]];
                if (head_argmax && o == BUF_LOGITS) {  // the last row's argmax, screened when a screen is set
                    const Engine::HeadScreen* sc = e.head_screen();
                    if (sc && screen_rest_ > 0) screen_rest_--, sc = nullptr;
                    *head_argmax = k.matmul_argmax(head_scratch_.get(), row(in, T - 1), W.ptr, W.scale,
                                                   sc ? sc->q : nullptr, sc ? sc->qs : nullptr, sc ? sc->err : nullptr,
                                                   (int)W.rows, (int)W.cols, W.dtype, n_exact);
                    // a screen that kept over a quarter of the rows cost its own bytes on top of the whole head's:
                    // read the head directly for the next 15 steps, then try again (caps the loss at ~0.5%)
                    if (sc && *n_exact == W.rows) screen_rest_ = 15;
                    break;
                }
                const float* b = op[4] >= 0 ? (const float*)e.weights[op[4]].ptr : nullptr;
                k.matmul(row(o, r0), row(in, r0), W.ptr, W.scale, b, M, (int)W.rows, (int)W.cols, W.dtype,
                         ((fl & PF_GELU) ? GELU : 0) | ((fl & PF_ACCUM) ? ACCUM : 0));
                break;
            }
            case OP_ATTENTION:
                k.attention(buf(o), buf(in), kc_.get() + op[6] * layer_cache, vc_.get() + op[6] * layer_cache, T, pos_,
                            c.n_head, hd, c.n_ctx);
                break;
        }
    }
    pos_ += T;
}

}  // namespace tg
