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
    if (code == tg::I8) throw std::invalid_argument("int8 weights are supported by the cpu backend only");
    return code;
}

struct PyEngine {
    std::shared_ptr<tgc::Engine> engine;
    tgc::Config cfg;
};

struct PySequence {
    std::shared_ptr<tgc::Sequence> s;
    std::shared_ptr<PyEngine> e;
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
    }, py::arg("out").noconvert(), py::arg("inp"), py::arg("w"), py::arg("b") = py::none(), py::arg("flags") = 0,
       py::arg("wdtype") = "float32");

    m.def("layernorm", [](FArrOut out, FArrIn inp, FArrIn w, FArrIn b, float eps) {
        const auto [M, C] = check_layernorm(out, inp, w, b);
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        tgc::layernorm_host(op, inp.data(), w.data(), b.data(), (int)M, (int)C, eps);
    }, py::arg("out").noconvert(), py::arg("inp"), py::arg("w"), py::arg("b"), py::arg("eps") = 1e-5f);

    m.def("attention", [](FArrOut out, FArrIn qkv, FArrOut k_cache, FArrOut v_cache, int pos0, int n_head) {
        const auto [T, C, hd, n_ctx] = check_attention(out, qkv, k_cache, v_cache, pos0, n_head);
        (void)C;
        float *op = out.mutable_data(), *kp = k_cache.mutable_data(), *vp = v_cache.mutable_data();
        py::gil_scoped_release nogil;
        tgc::attention_host(op, qkv.data(), kp, vp, (int)T, pos0, n_head, (int)hd, (int)n_ctx);
    }, py::arg("out").noconvert(), py::arg("qkv"), py::arg("k_cache").noconvert(), py::arg("v_cache").noconvert(), py::arg("pos0"), py::arg("n_head"));

    m.def("gelu", [](FArrOut out, FArrIn inp) {
        if (out.size() != inp.size()) throw std::invalid_argument("gelu: out and inp sizes differ");
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        tgc::gelu_host(op, inp.data(), (int64_t)inp.size());
    }, py::arg("out").noconvert(), py::arg("inp"));

    m.def("embedding", [](FArrOut out, IArrIn tokens, py::array wte, FArrIn wpe, int pos0, const std::string& wdtype) {
        const auto [T, C, V] = check_embedding(out, tokens, wte, wpe, pos0);
        const int32_t* tp = tokens.data();
        const int code = cuda_dtype_code(wdtype);
        const void* wp = weight_ptr(wte, code, "embedding wte");
        float* op = out.mutable_data();
        const int n_ctx = (int)wpe.shape(0);
        py::gil_scoped_release nogil;
        tgc::embedding_host(op, tp, wp, wpe.data(), (int)T, (int)C, (int)V, n_ctx, pos0, code);
    }, py::arg("out").noconvert(), py::arg("tokens"), py::arg("wte"), py::arg("wpe"), py::arg("pos0") = 0,
       py::arg("wdtype") = "float32");

    py::class_<PyEngine, std::shared_ptr<PyEngine>>(m, "Engine", py::module_local())
        .def(py::init([](py::dict cfg, py::dict weights, bool tied_head) {
                 const tgc::Config c = read_config<tgc::Config>(cfg);
                 std::vector<py::object> keep;  // only until the upload is done
                 tg::Weights w = read_weights(weights, c, tied_head, keep, false);
                 auto pe = std::make_shared<PyEngine>();
                 pe->cfg = c;
                 py::gil_scoped_release nogil;
                 pe->engine = std::make_shared<tgc::Engine>(c, w);
                 return pe;
             }),
             py::arg("config"), py::arg("weights"), py::arg("tied_head"),
             "weights: {name: (array, dtype, None)}, uploaded once");

    py::class_<PySequence>(m, "Sequence", py::module_local())
        .def(py::init([](std::shared_ptr<PyEngine> e) {
                 return PySequence{std::make_shared<tgc::Sequence>(*e->engine), e};
             }),
             py::arg("engine"))
        .def_property_readonly("pos", [](const PySequence& s) { return s.s->pos(); })
        .def_property_readonly("screened_steps", [](const PySequence&) { return 0; })
        .def("reset", [](PySequence& s) { s.s->reset(); })
        .def("fork", [](const PySequence& s) {
            PySequence c{std::make_shared<tgc::Sequence>(*s.e->engine), s.e};
            c.s->copy_from(*s.s);
            return c;
        });

    m.def("forward", [](PyEngine& pe, std::vector<PySequence*> seqs, std::vector<IArrIn> tokens, std::vector<int> want,
                        std::vector<int> skip) {
        const size_t n = seqs.size();
        if (tokens.size() != n || want.size() != n)
            throw std::invalid_argument("forward: seqs, tokens and want must have the same length");
        if (!skip.empty() && skip.size() != n) throw std::invalid_argument("forward: skip must be empty or one per item");
        std::vector<tgc::BatchItem> items(n);
        for (size_t i = 0; i < n; i++) {
            if (!seqs[i]) throw std::invalid_argument("forward: None is not a sequence");
            if (tokens[i].ndim() != 1) throw std::invalid_argument("forward: tokens must be 1-D");
            if (seqs[i]->e.get() != &pe) throw std::invalid_argument("forward: a sequence of another engine");
            if (want[i] < tg::WANT_NONE || want[i] > tg::WANT_ARGMAX) throw std::invalid_argument("forward: bad want code");
            items[i] = {seqs[i]->s.get(), tokens[i].data(), (int)tokens[i].size(), want[i], skip.empty() ? 0 : skip[i]};
            if (items[i].skip != 0 && !(want[i] == tg::WANT_ALL && items[i].skip > 0 && items[i].skip < items[i].n))
                throw std::invalid_argument("forward: skip needs want=all and 0 <= skip < len(tokens)");
        }
        FArrOut logits({(py::ssize_t)tg::logit_rows(items.data(), (int)n), (py::ssize_t)pe.cfg.n_vocab});
        py::array_t<int32_t> best((py::ssize_t)n), n_exact((py::ssize_t)n);
        int32_t *bp = best.mutable_data(), *np_ = n_exact.mutable_data();
        for (size_t i = 0; i < n; i++) bp[i] = -1, np_[i] = 0;
        float* lp = logits.mutable_data();
        {
            py::gil_scoped_release nogil;
            tgc::forward(*pe.engine, items.data(), (int)n, lp, bp, np_);
        }
        return py::make_tuple(logits, best, n_exact);
    }, py::arg("engine"), py::arg("seqs"), py::arg("tokens"), py::arg("want"), py::arg("skip") = std::vector<int>{},
       "one forward over a batch (see tinygpt._cpu.forward)");
}
