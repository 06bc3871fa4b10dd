// CPU executor: gpt2_forward (forward.h) instantiated with the dispatched kernel table. Compiled with baseline
// flags only; every kernel call goes through the per-ISA table.
#include "executor.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <unordered_set>
#include <vector>

namespace tg {

void FreeDeleter::operator()(float* p) const { std::free(p); }

static FloatBuf alloc_floats(size_t n, bool zero) {
    // calloc: the pages of a large cache are not touched (not in RSS) until a position is written
    float* p = (float*)(zero ? std::calloc(n ? n : 1, sizeof(float)) : std::malloc((n ? n : 1) * sizeof(float)));
    if (!p) throw std::bad_alloc();
    return FloatBuf(p);
}

Engine::Engine(const Config& c, Weights weights, bool bf16_act)
    : cfg(c), w(std::move(weights)), bf16_activations(bf16_act) {
    TG_CHECK(c.n_vocab > 0 && c.n_ctx > 0 && c.n_embd > 0 && c.n_head > 0 && c.n_layer > 0 && c.d_ff > 0,
             "Engine: every config size must be positive");
    TG_CHECK(c.n_embd % c.n_head == 0, "Engine: n_embd must be divisible by n_head");
    TG_CHECK((int)w.layers.size() == c.n_layer, "Engine: expected " << c.n_layer << " layers, got " << w.layers.size());
    check_weight_shapes(w, c, [](const WeightRef& r, int64_t rows, int64_t cols, bool matrix, const char* name) {
        TG_CHECK(r.ptr, name << ": missing");
        TG_CHECK(r.rows == rows && r.cols == cols,
                 name << ": expected [" << rows << ", " << cols << "], got [" << r.rows << ", " << r.cols << "]");
        TG_CHECK(matrix || r.dtype == F32, name << ": must be float32");
        TG_CHECK(r.dtype != I8 || r.scale, name << ": int8 weights need row scales");
    });
    TG_CHECK(w.wte.dtype != I8 || w.wte.scale, "wte: int8 needs row scales");
    TG_CHECK(!bf16_act || (w.head.dtype == BF16 && w.wte.dtype == BF16),
             "Engine: bf16_activations needs bfloat16 weights");
}

void Engine::set_head_screen(HeadScreen s) {
    TG_CHECK(!screen_owner_, "set_head_screen: the head screen is already set");
    TG_CHECK(s.q && s.qs && s.err, "set_head_screen: q, qs and err are all needed");
    TG_CHECK(w.head.dtype != I8, "set_head_screen: an int8 head has nothing to screen");
    screen_owner_ = std::make_unique<HeadScreen>(s);
    screen_.store(screen_owner_.get(), std::memory_order_release);
}

Sequence::Sequence(std::shared_ptr<const Engine> e) : e_(std::move(e)) {
    const Config& c = e_->cfg;
    const size_t cache = (size_t)c.n_layer * c.n_ctx * c.n_embd;  // per layer [H, n_ctx, hd]
    kc_ = alloc_floats(cache, true);
    vc_ = alloc_floats(cache, true);
}

void Sequence::copy_from(const Sequence& o) {
    TG_CHECK(o.e_.get() == e_.get(), "fork: sequences of different engines");
    const Config& c = e_->cfg;
    const int hd = c.n_embd / c.n_head;
    const size_t block = (size_t)c.n_ctx * hd, n = (size_t)o.pos * hd;
    for (size_t b = 0; b < (size_t)c.n_layer * c.n_head; b++) {
        std::memcpy(kc_.get() + b * block, o.kc_.get() + b * block, n * sizeof(float));
        std::memcpy(vc_.get() + b * block, o.vc_.get() + b * block, n * sizeof(float));
    }
    pos = o.pos;
    screen_rest = 0;
}

namespace {

struct CpuOps {
    const Engine& e;
    const Config& c;
    const KernelTable& k;
    const BatchItem* items;
    std::vector<int> row0;                       // first row of each item
    std::vector<int> logit_src, argmax_src;      // rows whose logits / argmax are wanted
    std::vector<int> argmax_item;                // the item of each argmax row
    int rows = 0;
    FloatBuf act;
    float* bufs[N_BUF];
    float* logits;
    int32_t *argmax, *n_exact;

    float* buf(Buf b) { return bufs[b]; }

    void embedding(float* x, int s) {
        const BatchItem& it = items[s];
        k.embedding(x + (int64_t)row0[s] * c.n_embd, it.tokens, e.w.wte.ptr, e.w.wte.scale, e.w.wpe.f32(), it.n,
                    c.n_embd, it.seq->pos, e.w.wte.dtype);
    }
    void layernorm(float* out, const float* in, const WeightRef& w, const WeightRef& b, int M) {
        k.layernorm(out, in, w.f32(), b.f32(), M, c.n_embd, c.eps);
    }
    void matmul(float* out, const float* in, const WeightRef& W, const WeightRef* b, int M, int flags) {
        const int dt = W.dtype == BF16 && e.bf16_activations ? (int)BF16A : W.dtype;
        k.matmul(out, in, W.ptr, W.scale, b ? b->f32() : nullptr, M, (int)W.rows, (int)W.cols, dt, flags);
    }
    void attention(float* out, const float* qkv, int layer, int s) {
        const BatchItem& it = items[s];
        const int C = c.n_embd, hd = C / c.n_head;
        const size_t layer_cache = (size_t)c.n_ctx * C;
        k.attention(out + (int64_t)row0[s] * C, qkv + (int64_t)row0[s] * 3 * C, it.seq->k_cache() + layer * layer_cache,
                    it.seq->v_cache() + layer * layer_cache, it.n, it.seq->pos, c.n_head, hd, c.n_ctx);
    }
    int last_layer_from() const {
        int lo = rows;
        if (!logit_src.empty()) lo = std::min(lo, logit_src.front());
        if (!argmax_src.empty()) lo = std::min(lo, argmax_src.front());
        return lo;
    }
    int gather_outputs(float* dst, const float* x) {
        const int C = c.n_embd;
        int o = 0;
        for (const std::vector<int>* src : {&logit_src, &argmax_src})
            for (int r : *src) std::memcpy(dst + (int64_t)(o++) * C, x + (int64_t)r * C, C * sizeof(float));
        return o;
    }
    void head(const float* h, int n_out) {
        const WeightRef& W = e.w.head;
        const int C = c.n_embd, V = c.n_vocab, nl = (int)logit_src.size(), na = (int)argmax_src.size();
        if (nl) matmul(logits, h, W, nullptr, nl, 0);
        if (na == 0) return;
        FloatBuf scratch = alloc_floats((size_t)na * V, false);
        const float* ha = h + (int64_t)nl * C;
        // Greedy rows of sequences whose screen pays are screened together (the int8 copy of the head read once for
        // all of them, then only the rows that can win); the others share one GEMM over the whole head. A screen
        // that kept over a quarter of the rows cost its own bytes on top of the whole head's: that sequence reads
        // the head directly for the next 15 steps, then tries again (caps the loss at ~0.5%).
        const Engine::HeadScreen* sc = e.bf16_activations ? nullptr : e.head_screen();
        const int dt = e.bf16_activations ? (int)BF16A : W.dtype;
        std::vector<int> order;  // argmax rows, screened ones first
        int ns = 0;
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < na; i++) {
                Sequence& seq = *items[argmax_item[i]].seq;
                const bool screened = sc && seq.screen_rest == 0;
                if (screened == (pass == 0)) order.push_back(i), ns += screened;
            }
        bool in_order = true;
        for (int i = 0; i < na; i++) in_order = in_order && order[i] == i;
        FloatBuf gathered;
        const float* xa = ha;
        if (!in_order) {
            gathered = alloc_floats((size_t)na * C, false);
            for (int j = 0; j < na; j++)
                std::memcpy(gathered.get() + (int64_t)j * C, ha + (int64_t)order[j] * C, C * sizeof(float));
            xa = gathered.get();
        }
        std::vector<int32_t> best(na), ne(na);
        if (ns)
            k.matmul_argmax(scratch.get(), xa, W.ptr, W.scale, sc->q, sc->qs, sc->err, ns, V, C, dt, best.data(),
                            ne.data());
        if (na > ns)
            k.matmul_argmax(scratch.get(), xa + (int64_t)ns * C, W.ptr, W.scale, nullptr, nullptr, nullptr, na - ns, V,
                            C, dt, best.data() + ns, ne.data() + ns);
        for (int j = 0; j < na; j++) {
            const int item = argmax_item[order[j]];
            Sequence& seq = *items[item].seq;
            argmax[item] = best[j];
            n_exact[item] = ne[j];
            if (j < ns) {
                seq.screened_steps++;
                if (ne[j] == V) seq.screen_rest = 15;
            } else if (sc && seq.screen_rest > 0) {
                seq.screen_rest--;
            }
        }
    }
};

}  // namespace

void forward(const Engine& e, const BatchItem* items, int n_items, float* logits, int32_t* argmax, int32_t* n_exact) {
    const Config& c = e.cfg;
    TG_CHECK(n_items >= 1, "forward: no sequences");
    std::unordered_set<const Sequence*> seen;
    int64_t rows = 0;
    for (int i = 0; i < n_items; i++) {
        const BatchItem& it = items[i];
        TG_CHECK(it.seq && &it.seq->engine() == &e, "forward: item " << i << " is not a sequence of this engine");
        TG_CHECK(seen.insert(it.seq).second, "forward: a sequence appears twice in one batch");
        TG_CHECK(it.n >= 1, "forward: item " << i << " has no tokens");
        TG_CHECK(it.want >= WANT_NONE && it.want <= WANT_ARGMAX, "forward: bad want code " << it.want);
        TG_CHECK(it.skip == 0 || (it.want == WANT_ALL && it.skip > 0 && it.skip < it.n),
                 "forward: item " << i << ": skip " << it.skip << " needs want=all and 0 <= skip < " << it.n);
        TG_CHECK(it.seq->pos + it.n <= c.n_ctx, "forward: " << it.seq->pos << " cached + " << it.n
                                                            << " new tokens exceed the context of " << c.n_ctx);
        for (int t = 0; t < it.n; t++)
            TG_CHECK(it.tokens[t] >= 0 && it.tokens[t] < c.n_vocab,
                     "forward: token id " << it.tokens[t] << " outside 0.." << c.n_vocab - 1);
        rows += it.n;
    }
    TG_CHECK(rows <= (int64_t)1 << 24, "forward: " << rows << " rows in one batch is too many");
    CpuOps ops{e, c, kernels(), items, {}, {}, {}, {}, (int)rows, nullptr, {}, logits, argmax, n_exact};
    int r = 0;
    for (int i = 0; i < n_items; i++) {
        const BatchItem& it = items[i];
        ops.row0.push_back(r);
        if (it.want == WANT_ALL)
            for (int t = it.skip; t < it.n; t++) ops.logit_src.push_back(r + t);
        else if (it.want == WANT_LAST)
            ops.logit_src.push_back(r + it.n - 1);
        else if (it.want == WANT_ARGMAX)
            ops.argmax_src.push_back(r + it.n - 1), ops.argmax_item.push_back(i);
        r += it.n;
    }
    int64_t total = 0;
    for (int b = 0; b < N_BUF; b++) total += buf_width(c, b) * rows;
    ops.act = alloc_floats((size_t)total, false);
    float* p = ops.act.get();
    for (int b = 0; b < N_BUF; b++) ops.bufs[b] = p, p += buf_width(c, b) * rows;
    gpt2_forward(ops, c, e.w, (int)rows, n_items);
    for (int i = 0; i < n_items; i++) items[i].seq->pos += items[i].n;
}

}  // namespace tg
