// CUDA executor: gpt2_forward (csrc/forward.h) instantiated with the CUDA launchers, and the host-side entry
// points. Weights are uploaded once per Engine, which also owns the stream and the activation scratch of batched
// forwards (one forward at a time per engine). A Sequence owns its KV cache; a single sequence's one-token step
// is captured once as a CUDA graph over buffers that sequence owns (kernels read the position from device
// memory) and replayed, with one small host->device copy (token, position) and one device->host copy (logits).
#include <cstring>
#include <mutex>
#include <vector>

#include "common.cuh"

namespace tgc {


int device_count(std::string* why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {  // e.g. cudaErrorInsufficientDriver on a machine with no driver
        if (why) *why = cudaGetErrorString(e);
        cudaGetLastError();
        return 0;
    }
    if (n == 0 && why) *why = "no CUDA device found";
    return n;
}

std::string device_name(int dev) {
    cudaDeviceProp p;
    TGC_CHECK(cudaGetDeviceProperties(&p, dev));
    return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
           std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

std::string runtime_version() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

static size_t dtype_size(int dt) { return dt == F32 ? 4 : 2; }

// ---- single kernels on host arrays ---------------------------------------------------------------------
namespace {
template <typename T>
DeviceBuffer upload(const T* h, size_t bytes) {
    DeviceBuffer d(bytes);
    if (bytes) TGC_CHECK(cudaMemcpy(d.p, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
void download(void* h, const DeviceBuffer& d, size_t bytes) {
    TGC_CHECK(cudaDeviceSynchronize());
    if (bytes) TGC_CHECK(cudaMemcpy(h, d.p, bytes, cudaMemcpyDeviceToHost));
}
DeviceBuffer upload_pos(int pos) { return upload(&pos, sizeof(int)); }
}  // namespace

void matmul_host(float* h_out, const float* h_inp, const void* h_w, const float* h_b, int M, int N, int K, int wdtype,
                 int flags) {
    auto out = upload(h_out, (size_t)M * N * 4), inp = upload(h_inp, (size_t)M * K * 4);
    auto w = upload((const char*)h_w, (size_t)N * K * dtype_size(wdtype));
    DeviceBuffer b = h_b ? upload(h_b, (size_t)N * 4) : DeviceBuffer();
    launch_matmul(out.as<float>(), inp.as<float>(), w.p, h_b ? b.as<float>() : nullptr, M, N, K, wdtype, flags, 0);
    download(h_out, out, (size_t)M * N * 4);
}

void layernorm_host(float* h_out, const float* h_inp, const float* h_w, const float* h_b, int M, int C, float eps) {
    auto out = upload(h_out, (size_t)M * C * 4), inp = upload(h_inp, (size_t)M * C * 4);
    auto w = upload(h_w, (size_t)C * 4), b = upload(h_b, (size_t)C * 4);
    launch_layernorm(out.as<float>(), inp.as<float>(), w.as<float>(), b.as<float>(), M, C, eps, 0);
    download(h_out, out, (size_t)M * C * 4);
}

void attention_host(float* h_out, const float* h_qkv, float* h_kc, float* h_vc, int T, int pos0, int H, int hd, int n_ctx) {
    const size_t C = (size_t)H * hd, cache = (size_t)H * n_ctx * hd * 4;
    auto out = upload(h_out, T * C * 4), qkv = upload(h_qkv, T * 3 * C * 4);
    auto kc = upload(h_kc, cache), vc = upload(h_vc, cache), pos = upload_pos(pos0);
    DeviceBuffer scratch(attention_scratch_floats(H, hd, n_ctx) * 4);
    launch_attention(out.as<float>(), qkv.as<float>(), kc.as<float>(), vc.as<float>(), T, pos.as<int>(), H, hd, n_ctx,
                     scratch.as<float>(), 0);
    download(h_out, out, T * C * 4);
    download(h_kc, kc, cache);
    download(h_vc, vc, cache);
}

void gelu_host(float* h_out, const float* h_inp, int64_t n) {
    auto out = upload(h_out, (size_t)n * 4), inp = upload(h_inp, (size_t)n * 4);
    launch_gelu(out.as<float>(), inp.as<float>(), n, 0);
    download(h_out, out, (size_t)n * 4);
}

void embedding_host(float* h_out, const int32_t* h_tokens, const void* h_wte, const float* h_wpe, int T, int C, int V,
                    int n_ctx, int pos0, int wdtype) {
    auto out = upload(h_out, (size_t)T * C * 4), tok = upload(h_tokens, (size_t)T * 4);
    auto wte = upload((const char*)h_wte, (size_t)V * C * dtype_size(wdtype)), wpe = upload(h_wpe, (size_t)n_ctx * C * 4);
    auto pos = upload_pos(pos0);
    launch_embedding(out.as<float>(), tok.as<int32_t>(), wte.p, wpe.as<float>(), T, C, pos.as<int>(), wdtype, 0);
    download(h_out, out, (size_t)T * C * 4);
}

// ---- engine and sequences ------------------------------------------------------------------------------
struct EngineImpl {
    Config cfg;
    std::vector<DeviceBuffer> store;  // the uploaded weights
    tg::Weights w;                    // the same, as device pointers
    std::mutex mu;                    // one forward at a time: they share the stream and the scratch below
    cudaStream_t stream = nullptr;
    DeviceBuffer act, logits, tokens, pos, attn_scratch;
    int64_t act_rows = 0, logit_rows_cap = 0, token_cap = 0, pos_cap = 0;

    ~EngineImpl() {
        if (stream) cudaStreamDestroy(stream);
    }
};

Engine::Engine(const Config& c, const tg::Weights& host) : impl(std::make_shared<EngineImpl>()) {
    if (device_count(nullptr) <= 0) throw std::runtime_error("no CUDA device available");
    EngineImpl& E = *impl;
    E.cfg = c;
    auto up = [&](const WeightRef& h) {
        if (h.dtype == tg::I8) throw std::invalid_argument("int8 weights are supported by the cpu backend only");
        E.store.push_back(upload((const char*)h.ptr, (size_t)h.rows * h.cols * dtype_size(h.dtype)));
        WeightRef d = h;
        d.ptr = E.store.back().p;
        return d;
    };
    E.w.wte = up(host.wte), E.w.wpe = up(host.wpe);
    for (const tg::LayerWeights& L : host.layers) {
        tg::LayerWeights d;
        d.ln_1_w = up(L.ln_1_w), d.ln_1_b = up(L.ln_1_b), d.attn_w = up(L.attn_w), d.attn_b = up(L.attn_b);
        d.attn_proj_w = up(L.attn_proj_w), d.attn_proj_b = up(L.attn_proj_b);
        d.ln_2_w = up(L.ln_2_w), d.ln_2_b = up(L.ln_2_b), d.fc_w = up(L.fc_w), d.fc_b = up(L.fc_b);
        d.mlp_proj_w = up(L.mlp_proj_w), d.mlp_proj_b = up(L.mlp_proj_b);
        E.w.layers.push_back(d);
    }
    E.w.ln_f_w = up(host.ln_f_w), E.w.ln_f_b = up(host.ln_f_b);
    E.w.head = host.head.ptr == host.wte.ptr ? E.w.wte : up(host.head);
    TGC_CHECK(cudaStreamCreateWithFlags(&E.stream, cudaStreamNonBlocking));
    E.attn_scratch = DeviceBuffer(attention_scratch_floats(c.n_head, c.n_embd / c.n_head, c.n_ctx) * 4);
}
Engine::~Engine() = default;

// Buffers of one forward: activations [rows, buf_width] each, the head's output rows, tokens and positions.
struct Scratch {
    float* bufs[tg::N_BUF];
    float* logits;
    int32_t* tokens;
    int* pos;  // [n_seq]
};

static int64_t act_floats(const Config& c, int64_t rows) {
    int64_t n = 0;
    for (int b = 0; b < tg::N_BUF; b++) n += tg::buf_width(c, b) * rows;
    return n;
}
static void carve(Scratch& s, const Config& c, float* act, int64_t rows) {
    for (int b = 0; b < tg::N_BUF; b++) s.bufs[b] = act, act += tg::buf_width(c, b) * rows;
}

struct SequenceImpl {
    std::shared_ptr<EngineImpl> e;
    DeviceBuffer kc, vc;  // [n_layer, H, n_ctx, hd]
    int pos_ = 0;
    // the one-token step's own buffers, so its captured graph never goes stale
    DeviceBuffer step_act, step_logits, step_io;  // io: token, pos
    int* h_io = nullptr;                          // pinned: token, pos
    float* h_logits = nullptr;                    // pinned: one row of logits
    cudaGraphExec_t graph = nullptr;

    ~SequenceImpl() {
        if (graph) cudaGraphExecDestroy(graph);
        if (h_io) cudaFreeHost(h_io);
        if (h_logits) cudaFreeHost(h_logits);
    }
};

Sequence::Sequence(const Engine& eng) : impl(std::make_unique<SequenceImpl>()) {
    SequenceImpl& s = *impl;
    s.e = eng.impl;
    const Config& c = s.e->cfg;
    const size_t cache = (size_t)c.n_layer * c.n_ctx * c.n_embd * 4;
    s.kc = DeviceBuffer(cache);
    s.vc = DeviceBuffer(cache);
}
Sequence::~Sequence() = default;
int Sequence::pos() const { return impl->pos_; }
void Sequence::reset() { impl->pos_ = 0; }

void Sequence::copy_from(const Sequence& o) {
    SequenceImpl &s = *impl, &src = *o.impl;
    if (s.e != src.e) throw std::invalid_argument("fork: sequences of different engines");
    const Config& c = s.e->cfg;
    const size_t hd = c.n_embd / c.n_head, block = (size_t)c.n_ctx * hd * 4, n = (size_t)src.pos_ * hd * 4;
    if (n) {
        TGC_CHECK(cudaMemcpy2D(s.kc.p, block, src.kc.p, block, n, (size_t)c.n_layer * c.n_head, cudaMemcpyDeviceToDevice));
        TGC_CHECK(cudaMemcpy2D(s.vc.p, block, src.vc.p, block, n, (size_t)c.n_layer * c.n_head, cudaMemcpyDeviceToDevice));
    }
    s.pos_ = src.pos_;
}

namespace {

struct CudaOps {
    const Config& c;
    const tg::Weights& w;
    const BatchItem* items;
    int n_items, rows;
    const std::vector<int>& row0;
    Scratch s;
    float* attn_scratch;
    cudaStream_t st;
    std::vector<std::pair<int, int>> out_ranges;  // (first row, rows) copied to the head, logits first then argmax

    float* buf(tg::Buf b) { return s.bufs[b]; }
    void embedding(float* x, int i) {
        launch_embedding(x + (int64_t)row0[i] * c.n_embd, s.tokens + row0[i], w.wte.ptr, w.wpe.f32(), items[i].n,
                         c.n_embd, s.pos + i, w.wte.dtype, st);
    }
    void layernorm(float* out, const float* in, const WeightRef& g, const WeightRef& b, int M) {
        launch_layernorm(out, in, g.f32(), b.f32(), M, c.n_embd, c.eps, st);
    }
    // Row invariance: a sequence's rows take the arithmetic its own chunk size picks (one new token: the GEMV's;
    // more: the GEMM's), never the batch's total M. Consecutive items of one kind share a launch.
    void matmul(float* out, const float* in, const WeightRef& W, const WeightRef* b, int M, int flags) {
        const int N = (int)W.rows, K = (int)W.cols;
        const float* bp = b ? b->f32() : nullptr;
        if (M != rows) {  // the head over gathered output rows: one GEMV per row
            launch_matmul_rows(out, in, W.ptr, bp, M, N, K, W.dtype, flags, st);
            return;
        }
        for (int i = 0; i < n_items;) {
            const bool one = items[i].n == 1;
            int j = i, r = 0;
            while (j < n_items && (items[j].n == 1) == one) r += items[j++].n;
            const int64_t r0 = row0[i];
            if (one)
                launch_matmul_rows(out + r0 * N, in + r0 * K, W.ptr, bp, r, N, K, W.dtype, flags, st);
            else
                launch_matmul(out + r0 * N, in + r0 * K, W.ptr, bp, r, N, K, W.dtype, flags, st);
            i = j;
        }
    }
    void attention(float* out, const float* qkv, int layer, int i) {
        SequenceImpl& q = *items[i].seq->impl;
        const int C = c.n_embd;
        const size_t layer_cache = (size_t)c.n_ctx * C;
        launch_attention(out + (int64_t)row0[i] * C, qkv + (int64_t)row0[i] * 3 * C, q.kc.as<float>() + layer * layer_cache,
                         q.vc.as<float>() + layer * layer_cache, items[i].n, s.pos + i, c.n_head, C / c.n_head, c.n_ctx,
                         attn_scratch, st);
    }
    int last_layer_from() const { return 0; }  // no trimming: the launches group items by kind over all rows
    int gather_outputs(float* dst, const float* x) {
        const size_t C = c.n_embd;
        int o = 0;
        for (auto [r, n] : out_ranges) {
            TGC_CHECK(cudaMemcpyAsync(dst + o * C, x + (size_t)r * C, (size_t)n * C * 4, cudaMemcpyDeviceToDevice, st));
            o += n;
        }
        return o;
    }
    void head(const float* h, int n_out) { matmul(s.logits, h, w.head, nullptr, n_out, 0); }
};

// The rows each item returns, logits rows first (item order) then argmax rows.
std::vector<std::pair<int, int>> output_ranges(const BatchItem* items, int n, const std::vector<int>& row0) {
    std::vector<std::pair<int, int>> out;
    for (int i = 0; i < n; i++) {
        if (items[i].want == tg::WANT_ALL) out.push_back({row0[i] + items[i].skip, items[i].n - items[i].skip});
        if (items[i].want == tg::WANT_LAST) out.push_back({row0[i] + items[i].n - 1, 1});
    }
    for (int i = 0; i < n; i++)
        if (items[i].want == tg::WANT_ARGMAX) out.push_back({row0[i] + items[i].n - 1, 1});
    return out;
}

void grow(DeviceBuffer& b, int64_t& cap, int64_t need, size_t elem) {
    if (need > cap) b = DeviceBuffer((size_t)need * elem), cap = need;
}

}  // namespace

void forward(const Engine& eng, const BatchItem* items, int n_items, float* h_logits, int32_t* h_argmax,
             int32_t* h_n_exact) {
    EngineImpl& E = *eng.impl;
    const Config& c = E.cfg;
    if (n_items < 1) throw std::invalid_argument("forward: no sequences");
    int64_t rows = 0;
    for (int i = 0; i < n_items; i++) {
        const BatchItem& it = items[i];
        if (!it.seq || it.seq->impl->e != eng.impl) throw std::invalid_argument("forward: not a sequence of this engine");
        for (int j = 0; j < i; j++)
            if (items[j].seq == it.seq) throw std::invalid_argument("forward: a sequence appears twice in one batch");
        if (it.n < 1 || it.seq->impl->pos_ + it.n > c.n_ctx)
            throw std::invalid_argument("forward: " + std::to_string(it.seq->impl->pos_) + " cached + " +
                                        std::to_string(it.n) + " new tokens exceed the context of " + std::to_string(c.n_ctx));
        for (int t = 0; t < it.n; t++)
            if (it.h_tokens[t] < 0 || it.h_tokens[t] >= c.n_vocab)
                throw std::invalid_argument("forward: token id " + std::to_string(it.h_tokens[t]) + " out of range");
        if (it.skip != 0 && !(it.want == tg::WANT_ALL && it.skip > 0 && it.skip < it.n))
            throw std::invalid_argument("forward: skip needs want=all and 0 <= skip < len(tokens)");
        rows += it.n;
    }
    const int64_t V = c.n_vocab;
    std::lock_guard<std::mutex> lock(E.mu);
    std::vector<int> row0(n_items);
    for (int i = 0, r = 0; i < n_items; i++) row0[i] = r, r += items[i].n;
    const bool step = n_items == 1 && items[0].n == 1 && (items[0].want == tg::WANT_LAST || items[0].want == tg::WANT_ARGMAX);
    if (step) {  // one token of one sequence: replay its captured graph
        SequenceImpl& s = *items[0].seq->impl;
        if (!s.graph) {
            s.step_act = DeviceBuffer((size_t)act_floats(c, 1) * 4);
            s.step_logits = DeviceBuffer((size_t)V * 4);
            s.step_io = DeviceBuffer(3 * sizeof(int));  // token, position, argmax
            TGC_CHECK(cudaMallocHost((void**)&s.h_io, 3 * sizeof(int)));
            TGC_CHECK(cudaMallocHost((void**)&s.h_logits, (size_t)V * 4));
            BatchItem one = items[0];
            one.want = tg::WANT_LAST;
            const std::vector<int> r0{0};
            CudaOps ops{c, E.w, &one, 1, 1, r0, {}, E.attn_scratch.as<float>(), E.stream, {{0, 1}}};
            carve(ops.s, c, s.step_act.as<float>(), 1);
            ops.s.logits = s.step_logits.as<float>(), ops.s.tokens = s.step_io.as<int32_t>();
            ops.s.pos = s.step_io.as<int>() + 1;
            cudaGraph_t g;
            TGC_CHECK(cudaStreamBeginCapture(E.stream, cudaStreamCaptureModeThreadLocal));
            try {
                tg::gpt2_forward(ops, c, E.w, 1, 1);
            } catch (...) {
                cudaStreamEndCapture(E.stream, &g);
                throw;
            }
            TGC_CHECK(cudaStreamEndCapture(E.stream, &g));
            TGC_CHECK(cudaGraphInstantiate(&s.graph, g, 0));
            cudaGraphDestroy(g);
        }
        s.h_io[0] = items[0].h_tokens[0];
        s.h_io[1] = s.pos_;
        TGC_CHECK(cudaMemcpyAsync(s.step_io.p, s.h_io, 2 * sizeof(int), cudaMemcpyHostToDevice, E.stream));
        TGC_CHECK(cudaGraphLaunch(s.graph, E.stream));
        if (items[0].want == tg::WANT_LAST) {
            TGC_CHECK(cudaMemcpyAsync(s.h_logits, s.step_logits.p, V * 4, cudaMemcpyDeviceToHost, E.stream));
            TGC_CHECK(cudaStreamSynchronize(E.stream));
            std::memcpy(h_logits, s.h_logits, V * 4);
        } else {  // greedy: the argmax on the device, 4 bytes back instead of the logits row
            argmax(s.step_logits.as<float>(), (int)V, s.step_io.as<int>() + 2, E.stream);
            TGC_CHECK(cudaMemcpyAsync(s.h_io + 2, s.step_io.as<int>() + 2, sizeof(int), cudaMemcpyDeviceToHost, E.stream));
            TGC_CHECK(cudaStreamSynchronize(E.stream));
            h_argmax[0] = s.h_io[2];
            h_n_exact[0] = (int32_t)V;
        }
        s.pos_ += 1;
        return;
    }
    CudaOps ops{c, E.w, items, n_items, (int)rows, row0, {}, E.attn_scratch.as<float>(), E.stream,
                output_ranges(items, n_items, row0)};
    int64_t n_out = 0;
    for (auto [r, n] : ops.out_ranges) n_out += n;
    grow(E.act, E.act_rows, act_floats(c, rows), 4);
    grow(E.logits, E.logit_rows_cap, n_out * V, 4);
    grow(E.tokens, E.token_cap, rows, 4);
    grow(E.pos, E.pos_cap, n_items, 4);
    carve(ops.s, c, E.act.as<float>(), rows);
    ops.s.logits = E.logits.as<float>(), ops.s.tokens = E.tokens.as<int32_t>(), ops.s.pos = E.pos.as<int>();
    std::vector<int32_t> tok((size_t)rows);
    std::vector<int> pos(n_items);
    for (int i = 0; i < n_items; i++) {
        std::memcpy(tok.data() + row0[i], items[i].h_tokens, (size_t)items[i].n * 4);
        pos[i] = items[i].seq->impl->pos_;
    }
    TGC_CHECK(cudaMemcpyAsync(ops.s.tokens, tok.data(), (size_t)rows * 4, cudaMemcpyHostToDevice, E.stream));
    TGC_CHECK(cudaMemcpyAsync(ops.s.pos, pos.data(), (size_t)n_items * 4, cudaMemcpyHostToDevice, E.stream));
    tg::gpt2_forward(ops, c, E.w, (int)rows, n_items);
    const int64_t nl = tg::logit_rows(items, n_items), na = n_out - nl;
    if (nl) TGC_CHECK(cudaMemcpyAsync(h_logits, ops.s.logits, (size_t)nl * V * 4, cudaMemcpyDeviceToHost, E.stream));
    std::vector<int> best((size_t)na);
    if (na) {  // greedy rows: argmax on the device, one int back per row (the tokens buffer is free by now)
        for (int64_t a = 0; a < na; a++) argmax(ops.s.logits + (nl + a) * V, (int)V, ops.s.tokens + a, E.stream);
        TGC_CHECK(cudaMemcpyAsync(best.data(), ops.s.tokens, (size_t)na * 4, cudaMemcpyDeviceToHost, E.stream));
    }
    TGC_CHECK(cudaStreamSynchronize(E.stream));
    for (int i = 0, a = 0; i < n_items; i++)
        if (items[i].want == tg::WANT_ARGMAX) {
            h_argmax[i] = best[a++];
            h_n_exact[i] = (int32_t)V;
        }
    for (int i = 0; i < n_items; i++) items[i].seq->impl->pos_ += items[i].n;
}

}  // namespace tgc
