// pybind11 bindings of the CUDA backend (tinygpt._cuda), compiled by the host compiler against api.h only
// (no CUDA headers). Importing works without a driver: device_count() then reports 0 and why.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../csrc/bind_util.h"
#include "api.h"

namespace py = pybind11;
using namespace tgbind;

struct PyEngine {
    std::shared_ptr<tgc::Engine> engine;
    tgc::Config cfg;
};

struct PySession {
    std::shared_ptr<tgc::Session> s;
    std::shared_ptr<tgc::Engine> e;
    tgc::Config cfg;
};

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "tinygpt CUDA backend";
    m.def("device_count", []() {
        std::string why;
        int n = tgc::device_count(&why);
        return py::make_tuple(n, why);
    }, "(number of usable devices, reason when 0)");
    m.def("device_name", &tgc::device_name, py::arg("device") = 0);
    m.def("build_info", []() {
        py::dict d;
        d["cuda_runtime"] = tgc::runtime_version();
        d["architectures"] = TG_CUDA_ARCHS;
        return d;
    });

    m.def("matmul", [](FArrOut out, FArrIn inp, py::array w, py::object b, int flags, const std::string& wdtype) {
        if (inp.ndim() != 2 || w.ndim() != 2) throw std::invalid_argument("matmul: inp and w must be 2-D");
        const py::ssize_t M = inp.shape(0), K = inp.shape(1), N = w.shape(0);
        expect_shape(w, {N, K}, "matmul w");
        expect_shape(out, {M, N}, "matmul out");
        const int code = dtype_code(wdtype);
        if (code == 3) throw std::invalid_argument("int8 weights are supported by the cpu backend only");
        const void* wp = weight_ptr(w, code, "matmul w");
        FArrIn bias;
        if (!b.is_none()) {
            bias = FArrIn::ensure(b);
            if (!bias) throw std::invalid_argument("matmul b: not convertible to float32");
            expect_shape(bias, {N}, "matmul b");
        }
        if ((flags & 1) && (flags & 2)) throw std::invalid_argument("matmul: GELU with ACCUM is not supported");
        const float* bp = b.is_none() ? nullptr : bias.data();
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        tgc::matmul_host(op, inp.data(), wp, bp, (int)M, (int)N, (int)K, code, flags);
    }, py::arg("out"), py::arg("inp"), py::arg("w"), py::arg("b") = py::none(), py::arg("flags") = 0,
       py::arg("wdtype") = "float32");

    m.def("layernorm", [](FArrOut out, FArrIn inp, FArrIn w, FArrIn b, float eps) {
        if (inp.ndim() != 2) throw std::invalid_argument("layernorm: inp must be 2-D");
        const py::ssize_t M = inp.shape(0), C = inp.shape(1);
        expect_shape(out, {M, C}, "layernorm out");
        expect_shape(w, {C}, "layernorm w");
        expect_shape(b, {C}, "layernorm b");
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        tgc::layernorm_host(op, inp.data(), w.data(), b.data(), (int)M, (int)C, eps);
    }, py::arg("out"), py::arg("inp"), py::arg("w"), py::arg("b"), py::arg("eps") = 1e-5f);

    m.def("attention", [](FArrOut out, FArrIn qkv, FArrOut k_cache, FArrOut v_cache, int pos0, int n_head) {
        if (qkv.ndim() != 2 || qkv.shape(1) % 3) throw std::invalid_argument("attention: qkv must be [T, 3C]");
        const py::ssize_t T = qkv.shape(0), C = qkv.shape(1) / 3;
        if (n_head <= 0 || C % n_head) throw std::invalid_argument("attention: C must be divisible by n_head");
        const py::ssize_t hd = C / n_head;
        if (k_cache.ndim() != 3) throw std::invalid_argument("attention: k_cache must be [H, n_ctx, hd]");
        const py::ssize_t n_ctx = k_cache.shape(1);
        expect_shape(k_cache, {n_head, n_ctx, hd}, "attention k_cache");
        expect_shape(v_cache, {n_head, n_ctx, hd}, "attention v_cache");
        expect_shape(out, {T, C}, "attention out");
        if (pos0 < 0 || pos0 + T > n_ctx) throw std::invalid_argument("attention: pos0 + T exceeds n_ctx");
        float *op = out.mutable_data(), *kp = k_cache.mutable_data(), *vp = v_cache.mutable_data();
        py::gil_scoped_release nogil;
        tgc::attention_host(op, qkv.data(), kp, vp, (int)T, pos0, n_head, (int)hd, (int)n_ctx);
    }, py::arg("out"), py::arg("qkv"), py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"), py::arg("n_head"));

    m.def("gelu", [](FArrOut out, FArrIn inp) {
        if (out.size() != inp.size()) throw std::invalid_argument("gelu: out and inp sizes differ");
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        tgc::gelu_host(op, inp.data(), (int64_t)inp.size());
    }, py::arg("out"), py::arg("inp"));

    m.def("embedding", [](FArrOut out, IArrIn tokens, py::array wte, FArrIn wpe, int pos0, const std::string& wdtype) {
        if (wte.ndim() != 2 || wpe.ndim() != 2) throw std::invalid_argument("embedding: wte and wpe must be 2-D");
        const py::ssize_t T = tokens.size(), C = wte.shape(1), V = wte.shape(0);
        expect_shape(out, {T, C}, "embedding out");
        if (wpe.shape(1) != C || pos0 < 0 || pos0 + T > wpe.shape(0))
            throw std::invalid_argument("embedding: wpe must be [n_ctx, C] with pos0 + T <= n_ctx");
        const int32_t* tp = tokens.data();
        for (py::ssize_t t = 0; t < T; t++)
            if (tp[t] < 0 || tp[t] >= V) throw std::invalid_argument("embedding: token id out of range");
        const int code = dtype_code(wdtype);
        if (code == 3) throw std::invalid_argument("int8 weights are supported by the cpu backend only");
        const void* wp = weight_ptr(wte, code, "embedding wte");
        float* op = out.mutable_data();
        const int n_ctx = (int)wpe.shape(0);
        py::gil_scoped_release nogil;
        tgc::embedding_host(op, tp, wp, wpe.data(), (int)T, (int)C, (int)V, n_ctx, pos0, code);
    }, py::arg("out"), py::arg("tokens"), py::arg("wte"), py::arg("wpe"), py::arg("pos0") = 0,
       py::arg("wdtype") = "float32");

    py::class_<PyEngine>(m, "Engine", py::module_local())
        .def(py::init([](py::dict cfg, py::array_t<int64_t, py::array::c_style | py::array::forcecast> plan,
                         std::vector<py::array> weights, std::vector<std::string> dtypes) {
                 if (weights.size() != dtypes.size()) throw std::invalid_argument("Engine: weights/dtypes length differ");
                 for (const std::string& d : dtypes)
                     if (dtype_code(d) == 3)
                         throw std::invalid_argument("int8 weights are supported by the cpu backend only");
                 if (plan.ndim() != 2 || plan.shape(1) != 8) throw std::invalid_argument("Engine: plan must be [n_ops, 8]");
                 const tgc::Config c = read_config<tgc::Config>(cfg);
                 std::vector<tgc::PlanRow> rows(plan.shape(0));
                 for (py::ssize_t r = 0; r < plan.shape(0); r++)
                     for (int j = 0; j < 8; j++) rows[r][j] = plan.at(r, j);
                 std::vector<tgc::HostWeight> hw;
                 for (size_t i = 0; i < weights.size(); i++) {
                     py::array& a = weights[i];
                     const int code = dtype_code(dtypes[i]);
                     if (a.ndim() < 1 || a.ndim() > 2) throw std::invalid_argument("Engine: weights must be 1-D or 2-D");
                     hw.push_back({weight_ptr(a, code, "weight " + std::to_string(i)), code, (int64_t)a.shape(0),
                                   a.ndim() == 2 ? (int64_t)a.shape(1) : 1});
                 }
                 auto pe = std::make_unique<PyEngine>();
                 pe->cfg = c;
                 py::gil_scoped_release nogil;
                 pe->engine = std::make_shared<tgc::Engine>(c, rows, hw);
                 return pe;
             }),
             py::arg("config"), py::arg("plan"), py::arg("weights"), py::arg("dtypes"));

    py::class_<PySession>(m, "Session", py::module_local())
        .def(py::init([](PyEngine& e) {
                 return PySession{std::make_shared<tgc::Session>(*e.engine), e.engine, e.cfg};
             }),
             py::arg("engine"), py::keep_alive<1, 2>())
        .def_property_readonly("pos", [](const PySession& s) { return s.s->pos(); })
        .def("reset", [](PySession& s) { s.s->reset(); })
        .def("forward", [](PySession& s, IArrIn tokens, bool all_logits) {
            if (tokens.ndim() != 1) throw std::invalid_argument("forward: tokens must be 1-D");
            const int T = (int)tokens.size();
            FArrOut logits({(py::ssize_t)(all_logits ? T : 1), (py::ssize_t)s.cfg.n_vocab});
            float* lp = logits.mutable_data();
            const int32_t* tp = tokens.data();
            {
                py::gil_scoped_release nogil;
                s.s->forward(tp, T, lp, all_logits);
            }
            return logits;
        }, py::arg("tokens"), py::arg("all_logits") = false);
}
