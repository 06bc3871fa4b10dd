// CUDA plan executor and host-side entry points. Weights are uploaded once per Engine; a Session owns its
// KV cache, activations and stream; single-token decode steps are captured once as a CUDA graph (kernels read
// the position from device memory) and replayed, with one small host->device copy (token, position) and one
// device->host copy (last-position logits) per step.
#include <cstring>

#include "common.cuh"

namespace tgc {

using namespace tgplan;

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

// ---- engine and sessions --------------------------------------------------------------------------------
struct EngineImpl {
    Config cfg;
    std::vector<PlanRow> plan;
    std::vector<DeviceBuffer> w;
    std::vector<HostWeight> meta;  // dtype and shape (ptr unused after upload)
    int width[N_BUF];
};

Engine::Engine(const Config& c, const std::vector<PlanRow>& plan, const std::vector<HostWeight>& weights)
    : impl(std::make_shared<EngineImpl>()) {
    int dev_n = device_count(nullptr);
    if (dev_n <= 0) throw std::runtime_error("no CUDA device available");
    impl->cfg = c;
    impl->plan = plan;
    impl->meta = weights;
    const int C = c.n_embd, widths[N_BUF] = {C, C, 3 * C, C, c.d_ff, c.n_vocab};
    std::memcpy(impl->width, widths, sizeof widths);
    for (const HostWeight& hw : weights) {
        const size_t bytes = (size_t)hw.rows * hw.cols * dtype_size(hw.dtype);
        impl->w.push_back(upload((const char*)hw.ptr, bytes));
    }
}
Engine::~Engine() = default;

struct SessionImpl {
    std::shared_ptr<EngineImpl> e;
    DeviceBuffer kc, vc, bufs[BUF_LOGITS], logits, tokens, pos, scratch;
    size_t logits_rows = 0;
    int* h_io = nullptr;        // pinned: token, pos
    float* h_logits = nullptr;  // pinned: one row of logits
    cudaStream_t stream = nullptr;
    cudaGraphExec_t graph = nullptr;
    int pos_ = 0;

    ~SessionImpl() {
        if (graph) cudaGraphExecDestroy(graph);
        if (stream) cudaStreamDestroy(stream);
        if (h_io) cudaFreeHost(h_io);
        if (h_logits) cudaFreeHost(h_logits);
    }

    void run_plan(int T, bool all_logits) {
        const EngineImpl& E = *e;
        const Config& c = E.cfg;
        const int hd = c.n_embd / c.n_head;
        const size_t layer_cache = (size_t)c.n_ctx * c.n_embd;
        auto buf = [&](int64_t id) -> float* { return id == BUF_LOGITS ? logits.as<float>() : bufs[id].as<float>(); };
        for (const PlanRow& op : E.plan) {
            const int o = (int)op[1], in = (int)op[2], fl = (int)op[5];
            const bool last = (fl & PF_LAST) && !all_logits;
            const int r0 = last ? T - 1 : 0, M = T - r0;
            auto row = [&](int id, int r) { return buf(id) + (int64_t)(id == BUF_LOGITS ? 0 : r) * E.width[id]; };
            switch (op[0]) {
                case OP_EMBED:
                    launch_embedding(buf(o), tokens.as<int32_t>(), E.w[op[3]].p, E.w[op[4]].as<float>(), T, c.n_embd,
                                     pos.as<int>(), E.meta[op[3]].dtype, stream);
                    break;
                case OP_LAYERNORM:
                    launch_layernorm(row(o, r0), row(in, r0), E.w[op[3]].as<float>(), E.w[op[4]].as<float>(), M,
                                     E.width[in], c.eps, stream);
                    break;
                case OP_LINEAR: {
                    const HostWeight& W = E.meta[op[3]];
                    launch_matmul(row(o, r0), row(in, r0), E.w[op[3]].p, op[4] >= 0 ? E.w[op[4]].as<float>() : nullptr,
                                  M, (int)W.rows, (int)W.cols, W.dtype,
                                  ((fl & PF_GELU) ? GELU : 0) | ((fl & PF_ACCUM) ? ACCUM : 0), stream);
                    break;
                }
                case OP_ATTENTION:
                    launch_attention(buf(o), buf(in), kc.as<float>() + op[6] * layer_cache,
                                     vc.as<float>() + op[6] * layer_cache, T, pos.as<int>(), c.n_head, hd, c.n_ctx,
                                     scratch.as<float>(), stream);
                    break;
                default:
                    throw std::invalid_argument("unknown plan op " + std::to_string(op[0]));
            }
        }
    }
};

Session::Session(const Engine& eng) : impl_(std::make_unique<SessionImpl>()) {
    SessionImpl& s = *impl_;
    s.e = eng.impl;
    const Config& c = s.e->cfg;
    const size_t cache = (size_t)c.n_layer * c.n_ctx * c.n_embd * 4;
    s.kc = DeviceBuffer(cache);
    s.vc = DeviceBuffer(cache);
    for (int b = 0; b < BUF_LOGITS; b++) s.bufs[b] = DeviceBuffer((size_t)c.n_ctx * s.e->width[b] * 4);
    s.logits = DeviceBuffer((size_t)c.n_vocab * 4);
    s.logits_rows = 1;
    s.tokens = DeviceBuffer((size_t)c.n_ctx * 4);
    s.pos = DeviceBuffer(sizeof(int));
    s.scratch = DeviceBuffer(attention_scratch_floats(c.n_head, c.n_embd / c.n_head, c.n_ctx) * 4);
    TGC_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    TGC_CHECK(cudaMallocHost((void**)&s.h_io, 2 * sizeof(int)));
    TGC_CHECK(cudaMallocHost((void**)&s.h_logits, (size_t)c.n_vocab * 4));
}
Session::~Session() = default;

int Session::pos() const { return impl_->pos_; }
void Session::reset() { impl_->pos_ = 0; }

void Session::forward(const int32_t* h_tokens, int T, float* h_logits, bool all_logits) {
    SessionImpl& s = *impl_;
    const Config& c = s.e->cfg;
    if (T < 1 || s.pos_ + T > c.n_ctx)
        throw std::invalid_argument("forward: " + std::to_string(s.pos_) + " cached + " + std::to_string(T) +
                                    " new tokens exceed the context of " + std::to_string(c.n_ctx));
    for (int t = 0; t < T; t++)
        if (h_tokens[t] < 0 || h_tokens[t] >= c.n_vocab)
            throw std::invalid_argument("forward: token id " + std::to_string(h_tokens[t]) + " out of range");
    const size_t rows = all_logits ? T : 1, V = c.n_vocab;
    if (T == 1 && !all_logits) {
        s.h_io[0] = h_tokens[0];
        s.h_io[1] = s.pos_;
        TGC_CHECK(cudaMemcpyAsync(s.tokens.p, &s.h_io[0], sizeof(int), cudaMemcpyHostToDevice, s.stream));
        TGC_CHECK(cudaMemcpyAsync(s.pos.p, &s.h_io[1], sizeof(int), cudaMemcpyHostToDevice, s.stream));
        if (!s.graph) {
            cudaGraph_t g;
            TGC_CHECK(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal));
            try {
                s.run_plan(1, false);
            } catch (...) {
                cudaStreamEndCapture(s.stream, &g);
                throw;
            }
            TGC_CHECK(cudaStreamEndCapture(s.stream, &g));
            TGC_CHECK(cudaGraphInstantiate(&s.graph, g, 0));
            cudaGraphDestroy(g);
        }
        TGC_CHECK(cudaGraphLaunch(s.graph, s.stream));
        TGC_CHECK(cudaMemcpyAsync(s.h_logits, s.logits.p, V * 4, cudaMemcpyDeviceToHost, s.stream));
        TGC_CHECK(cudaStreamSynchronize(s.stream));
        std::memcpy(h_logits, s.h_logits, V * 4);
    } else {
        if (rows > s.logits_rows) {
            s.logits = DeviceBuffer(rows * V * 4);
            s.logits_rows = rows;
            if (s.graph) {  // the graph captured the old logits pointer
                cudaGraphExecDestroy(s.graph);
                s.graph = nullptr;
            }
        }
        s.h_io[1] = s.pos_;
        TGC_CHECK(cudaMemcpyAsync(s.tokens.p, h_tokens, (size_t)T * 4, cudaMemcpyHostToDevice, s.stream));
        TGC_CHECK(cudaMemcpyAsync(s.pos.p, &s.h_io[1], sizeof(int), cudaMemcpyHostToDevice, s.stream));
        s.run_plan(T, all_logits);
        TGC_CHECK(cudaMemcpyAsync(h_logits, s.logits.p, rows * V * 4, cudaMemcpyDeviceToHost, s.stream));
        TGC_CHECK(cudaStreamSynchronize(s.stream));
    }
    s.pos_ += T;
}

}  // namespace tgc
