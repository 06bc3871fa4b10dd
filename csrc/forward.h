// The GPT-2 forward pass, written once over named weights, for a batch of sequences; both native executors
// instantiate it (csrc/executor.cpp with the CPU kernel table, cuda/executor.cu with the CUDA launchers).
// A batch is ragged: sequence s contributes rows [row0_s, row0_s + n_s) of every activation, prefill and decode
// rows alike. Matmuls, LayerNorm and GELU run over all rows at once; attention runs per sequence over its own KV
// cache. python/tinygpt/gpt2.py is the same model in NumPy and holds the weight schema (names and shapes).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tg {

// Weight dtype codes, the same in both backends and their bindings (python/tinygpt/dtypes.py: `code`).
// I8: symmetric, one float scale per output row (cpu backend only).
enum DType : int { F32 = 0, F16 = 1, BF16 = 2, I8 = 3, BF16A = 4 };  // BF16A: bf16 weights, activations rounded to bf16 (matmul only)
// Matmul epilogue flags, the same in both backends.
enum MatmulFlags : int { GELU = 1, ACCUM = 2 };

struct Config {
    int n_vocab, n_ctx, n_embd, n_head, n_layer, d_ff;
    float eps;
};

// A weight as the host hands it over (or, in the CUDA engine, as uploaded): data, dtype, int8 row scales, shape.
struct WeightRef {
    const void* ptr = nullptr;
    int dtype = F32;
    const float* scale = nullptr;  // int8 only: [rows]
    int64_t rows = 0, cols = 0;    // cols = 1 for a vector
    const float* f32() const { return (const float*)ptr; }
};

struct LayerWeights {
    WeightRef ln_1_w, ln_1_b;      // [C]
    WeightRef attn_w, attn_b;      // c_attn [3C, C], [3C]
    WeightRef attn_proj_w, attn_proj_b;  // attn.c_proj [C, C], [C]
    WeightRef ln_2_w, ln_2_b;      // [C]
    WeightRef fc_w, fc_b;          // mlp.c_fc [d_ff, C], [d_ff]
    WeightRef mlp_proj_w, mlp_proj_b;  // mlp.c_proj [C, d_ff], [C]
};

struct Weights {
    WeightRef wte, wpe;  // [n_vocab, C] (matrix dtype), [n_ctx, C] float32
    std::vector<LayerWeights> layers;
    WeightRef ln_f_w, ln_f_b;
    WeightRef head;  // wte (tied) or lm_head.weight [n_vocab, C]
};

// What a sequence wants back from a forward: nothing, the last row's logits, every new row's logits, or the
// argmax of the last row's logits.
enum Want : int { WANT_NONE = 0, WANT_LAST = 1, WANT_ALL = 2, WANT_ARGMAX = 3 };

// Logit rows a batch returns, in item order: WANT_LAST 1, WANT_ALL n (argmax rows use the executor's scratch).
// A WANT_ALL item's first `skip` rows are context only: their logits are neither computed nor returned.
template <class Item>
int64_t logit_rows(const Item* items, int n_items) {
    int64_t r = 0;
    for (int i = 0; i < n_items; i++)
        r += items[i].want == WANT_ALL ? items[i].n - items[i].skip : items[i].want == WANT_LAST;
    return r;
}

// np.argmax semantics: the first NaN if there is one, else the first maximum.
inline int32_t first_argmax(const float* v /*[N]*/, int N) {
    int best = 0;
    for (int n = 0; n < N; n++) {
        if (v[n] != v[n]) return n;
        if (v[n] > v[best]) best = n;
    }
    return best;
}

// Activation buffers of one forward, each [rows, width].
enum Buf : int { BUF_X = 0, BUF_H, BUF_QKV, BUF_ATT, BUF_FC, N_BUF };
inline int64_t buf_width(const Config& c, int b) {
    const int64_t C = c.n_embd;
    switch (b) {
        case BUF_QKV: return 3 * C;
        case BUF_FC: return c.d_ff;
        default: return C;
    }
}

// Calls `fn(name, ref)` for every weight in the schema order (names as python/tinygpt/gpt2.py): the bindings fill
// a Weights from named arrays with it.
template <class Fn>
void for_each_weight(Weights& w, const Config& c, bool tied_head, Fn&& fn) {
    fn("wte.weight", w.wte);
    fn("wpe.weight", w.wpe);
    w.layers.resize(c.n_layer);
    for (int i = 0; i < c.n_layer; i++) {
        LayerWeights& L = w.layers[i];
        const std::string p = "h." + std::to_string(i) + ".";
        fn(p + "ln_1.weight", L.ln_1_w), fn(p + "ln_1.bias", L.ln_1_b);
        fn(p + "attn.c_attn.weight", L.attn_w), fn(p + "attn.c_attn.bias", L.attn_b);
        fn(p + "attn.c_proj.weight", L.attn_proj_w), fn(p + "attn.c_proj.bias", L.attn_proj_b);
        fn(p + "ln_2.weight", L.ln_2_w), fn(p + "ln_2.bias", L.ln_2_b);
        fn(p + "mlp.c_fc.weight", L.fc_w), fn(p + "mlp.c_fc.bias", L.fc_b);
        fn(p + "mlp.c_proj.weight", L.mlp_proj_w), fn(p + "mlp.c_proj.bias", L.mlp_proj_b);
    }
    fn("ln_f.weight", w.ln_f_w), fn("ln_f.bias", w.ln_f_b);
    if (!tied_head) fn("lm_head.weight", w.head);
}

// Expected shape of every weight (rows, cols; cols = 1 for vectors) and whether it is a matrix (matrix dtype) or
// a float32 vector/table; `check(ref, rows, cols, matrix, name)` is called for each.
template <class Check>
void check_weight_shapes(const Weights& w, const Config& c, Check&& check) {
    const int64_t C = c.n_embd, F = c.d_ff, V = c.n_vocab;
    check(w.wte, V, C, true, "wte.weight");
    check(w.wpe, (int64_t)c.n_ctx, C, false, "wpe.weight");
    for (const LayerWeights& L : w.layers) {
        check(L.ln_1_w, C, 1, false, "ln_1.weight"), check(L.ln_1_b, C, 1, false, "ln_1.bias");
        check(L.attn_w, 3 * C, C, true, "attn.c_attn.weight"), check(L.attn_b, 3 * C, 1, false, "attn.c_attn.bias");
        check(L.attn_proj_w, C, C, true, "attn.c_proj.weight"), check(L.attn_proj_b, C, 1, false, "attn.c_proj.bias");
        check(L.ln_2_w, C, 1, false, "ln_2.weight"), check(L.ln_2_b, C, 1, false, "ln_2.bias");
        check(L.fc_w, F, C, true, "mlp.c_fc.weight"), check(L.fc_b, F, 1, false, "mlp.c_fc.bias");
        check(L.mlp_proj_w, C, F, true, "mlp.c_proj.weight"), check(L.mlp_proj_b, C, 1, false, "mlp.c_proj.bias");
    }
    check(w.ln_f_w, C, 1, false, "ln_f.weight"), check(w.ln_f_b, C, 1, false, "ln_f.bias");
    check(w.head, V, C, true, "lm_head.weight");
}

// One forward over `rows` rows of `n_seq` sequences. Ops supplies the activation buffers and the kernels:
//   float* buf(Buf)                                   [rows, buf_width] activations
//   void embedding(float* x, int s)                   x rows of sequence s = wte[token] + wpe[position]
//   void layernorm(float* out, const float* in, const WeightRef& w, const WeightRef& b, int M)
//   void matmul(float* out, const float* in, const WeightRef& W, const WeightRef* b, int M, int flags)
//   void attention(float* out, const float* qkv, int layer, int s)   rows of sequence s only
//   int  last_layer_from()                            the last layer's MLP runs on rows from here on (rows: none)
//   int  gather_outputs(float* dst, const float* x)   copies the rows that need logits to dst; returns how many
//   void head(const float* h, int n_out)              logits (or their argmax) of the gathered, normed rows
template <class Ops>
void gpt2_forward(Ops& k, const Config& c, const Weights& w, int rows, int n_seq) {
    float *x = k.buf(BUF_X), *h = k.buf(BUF_H), *qkv = k.buf(BUF_QKV), *att = k.buf(BUF_ATT), *fc = k.buf(BUF_FC);
    for (int s = 0; s < n_seq; s++) k.embedding(x, s);
    const int64_t C = c.n_embd, F = c.d_ff;
    for (int l = 0; l < c.n_layer; l++) {
        const LayerWeights& L = w.layers[l];
        k.layernorm(h, x, L.ln_1_w, L.ln_1_b, rows);
        k.matmul(qkv, h, L.attn_w, &L.attn_b, rows, 0);
        for (int s = 0; s < n_seq; s++) k.attention(att, qkv, l, s);  // every row: it fills the KV cache
        // After the last layer's attention only rows that give an output matter (a prefill chunk: none; a scoring
        // window: the scored rows); the matmuls are row invariant, so trimming changes no bit of what is returned.
        const int64_t lo = l == c.n_layer - 1 ? k.last_layer_from() : 0;
        const int M = rows - (int)lo;
        if (M <= 0) continue;
        k.matmul(x + lo * C, att + lo * C, L.attn_proj_w, &L.attn_proj_b, M, ACCUM);  // residual add fused
        k.layernorm(h + lo * C, x + lo * C, L.ln_2_w, L.ln_2_b, M);
        k.matmul(fc + lo * F, h + lo * C, L.fc_w, &L.fc_b, M, GELU);
        k.matmul(x + lo * C, fc + lo * F, L.mlp_proj_w, &L.mlp_proj_b, M, ACCUM);
    }
    const int n_out = k.gather_outputs(att, x);  // usually one row per sequence: norm and head only those
    if (n_out == 0) return;
    k.layernorm(h, att, w.ln_f_w, w.ln_f_b, n_out);
    k.head(h, n_out);
}

}  // namespace tg
