// pybind11 bindings of the CUDA backend (tinygpt._cuda), compiled by the host compiler against api.h only
// (no CUDA headers). Importing works without a driver: device_count() then reports 0 and why.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../csrc/bind_util.h"
#include "api.h"

namespace py = pybind11;
using namespace tgbind;

void bind_device(py::module_& m);  // module_device.cpp: DeviceArray, _cuda.dev, argmax

// bind_util's dtype codes, less int8 (weight-only int8 is a cpu-backend feature).
static int cuda_dtype_code(const std::string& name) {
    const int code = dtype_code(name);
    if (code == tgplan::I8) throw std::invalid_argument("int8 weights are supported by the cpu backend only");
    return code;
}

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

    bind_device(m);

    m.def("matmul", [](FArrOut out, FArrIn inp, py::array w, py::object b, int flags, const std::string& wdtype) {
        const auto [M, N, K] = check_matmul(out, inp, w, flags);
        const int code = cuda_dtype_code(wdtype);
        const void* wp = weight_ptr(w, code, "matmul w");
        FArrIn bias;
        const float* bp = bias_ptr(b, N, bias);
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        tgc::matmul_host(op, inp.data(), wp, bp, (int)M, (int)N, (int)K, code, flags);
    }, py::arg("out"), py::arg("inp"), py::arg("w"), py::arg("b") = py::none(), py::arg("flags") = 0,
       py::arg("wdtype") = "float32");

    m.def("layernorm", [](FArrOut out, FArrIn inp, FArrIn w, FArrIn b, float eps) {
        const auto [M, C] = check_layernorm(out, inp, w, b);
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        tgc::layernorm_host(op, inp.data(), w.data(), b.data(), (int)M, (int)C, eps);
    }, py::arg("out"), py::arg("inp"), py::arg("w"), py::arg("b"), py::arg("eps") = 1e-5f);

    m.def("attention", [](FArrOut out, FArrIn qkv, FArrOut k_cache, FArrOut v_cache, int pos0, int n_head) {
        const auto [T, C, hd, n_ctx] = check_attention(out, qkv, k_cache, v_cache, pos0, n_head);
        (void)C;
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
        const auto [T, C, V] = check_embedding(out, tokens, wte, wpe, pos0);
        const int32_t* tp = tokens.data();
        const int code = cuda_dtype_code(wdtype);
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
                 if (plan.ndim() != 2 || plan.shape(1) != 8) throw std::invalid_argument("Engine: plan must be [n_ops, 8]");
                 const tgc::Config c = read_config<tgc::Config>(cfg);
                 std::vector<tgc::PlanRow> rows(plan.shape(0));
                 for (py::ssize_t r = 0; r < plan.shape(0); r++)
                     for (int j = 0; j < 8; j++) rows[r][j] = plan.at(r, j);
                 std::vector<tgc::HostWeight> hw;
                 for (size_t i = 0; i < weights.size(); i++) {
                     py::array& a = weights[i];
                     const int code = cuda_dtype_code(dtypes[i]);
                     if (a.ndim() < 1 || a.ndim() > 2) throw std::invalid_argument("Engine: weights must be 1-D or 2-D");
                     hw.push_back({weight_ptr(a, code, "weight " + std::to_string(i)), code, nullptr,
                                   (int64_t)a.shape(0), a.ndim() == 2 ? (int64_t)a.shape(1) : 1});
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
            return run_forward(*s.s, s.cfg.n_vocab, tokens, all_logits);
        }, py::arg("tokens"), py::arg("all_logits") = false);
}
