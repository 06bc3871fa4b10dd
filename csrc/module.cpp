// pybind11 bindings of the CPU backend (tinygpt._cpu): the batched forward (Engine, Sequence, forward) plus each kernel on its own for
// tests and benches. Shapes and dtypes are checked here with expected-vs-got messages; the GIL is released
// around every kernel; contiguous float32 inputs are used without a copy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "omp_compat.h"

#include <string>

#include "bind_util.h"
#include "executor.h"

namespace py = pybind11;
using namespace tg;

using namespace tgbind;

// int8 weights need float32 row scales [rows]; other dtypes take none.
static const float* scale_ptr(const py::object& s, int code, py::ssize_t rows, FArrIn& keep, const char* name) {
    if (code != I8) {
        if (!s.is_none()) throw std::invalid_argument(std::string(name) + ": scales are only for int8 weights");
        return nullptr;
    }
    if (s.is_none()) throw std::invalid_argument(std::string(name) + ": int8 weights need float32 row scales");
    keep = FArrIn::ensure(s);
    if (!keep) throw std::invalid_argument(std::string(name) + ": scales not convertible to float32");
    expect_shape(keep, {rows}, name);
    return keep.data();
}

// A head screen (matmul_argmax): q int8 [N, K], qs float32 [N], err float32 [N, 3]; not for an int8 head.
struct ScreenArrays {
    const int8_t* q;
    const float *qs, *err;
    FArrIn qs_keep, err_keep;
};
static ScreenArrays screen_arrays(const py::object& q, const py::object& qs, const py::object& err, int64_t N,
                                  int64_t K, int code) {
    if (code == I8) throw std::invalid_argument("head screen: an int8 head has nothing to screen");
    if (q.is_none() || qs.is_none() || err.is_none())
        throw std::invalid_argument("head screen: q, qs and err are all needed");
    if (!py::isinstance<py::array>(q)) throw std::invalid_argument("head screen q: must be a numpy int8 array");
    py::array qa = py::reinterpret_borrow<py::array>(q);
    if (qa.dtype().kind() != 'i' || qa.itemsize() != 1 || !(qa.flags() & py::array::c_style))
        throw std::invalid_argument("head screen q: must be a C-contiguous int8 array, got " +
                                    std::string(py::str(qa.dtype())));
    expect_shape(qa, {(py::ssize_t)N, (py::ssize_t)K}, "head screen q");
    ScreenArrays s;
    s.q = (const int8_t*)qa.data();
    s.qs_keep = FArrIn::ensure(qs);
    s.err_keep = FArrIn::ensure(err);
    if (!s.qs_keep || !s.err_keep) throw std::invalid_argument("head screen: qs and err must be float32 arrays");
    expect_shape(s.qs_keep, {(py::ssize_t)N}, "head screen qs");
    expect_shape(s.err_keep, {(py::ssize_t)N, 3}, "head screen err");
    s.qs = s.qs_keep.data(), s.err = s.err_keep.data();
    return s;
}

static const KernelTable& table_for(const std::string& isa) {
    if (isa.empty()) return kernels();
    const KernelTable* t = kernels_for(isa);
    if (!t) throw std::invalid_argument("ISA level '" + isa + "' is not available on this CPU/build");
    return *t;
}

struct PyEngine {
    std::shared_ptr<Engine> engine;
    std::vector<py::object> keep;  // the arrays whose memory the engine borrows
};

struct PySequence {
    std::shared_ptr<Sequence> s;
    std::shared_ptr<PyEngine> e;
};

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "tinygpt C++/OpenMP CPU backend";
    m.def("build_info", []() {
        py::dict d;
        d["isa"] = kernels().isa;
        std::string have = "base";
        for (const char* isa : {"avx2", "avx512"})
            if (kernels_for(isa)) have += std::string(",") + isa;
        d["isa_available"] = have;
#if defined(TG_EMULATED_AVX512)
        d["avx512_emulated"] = true;  // test build: the avx512 level runs SIMDe's portable intrinsics
#endif
        d["threads"] = num_threads();
#if defined(_OPENMP)
        d["openmp"] = std::to_string(_OPENMP);
#else
        d["openmp"] = "not available: kernels run single-threaded";
#endif
#if defined(__clang__)
        d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        d["compiler"] = std::string("gcc ") + __VERSION__;
#endif
#if defined(TG_SANITIZE)
        d["sanitize"] = true;
#endif
        return d;
    });
    m.def("isa_levels", []() {
        std::vector<std::string> out;
        for (const char* isa : {"base", "avx2", "avx512"})
            if (kernels_for(isa)) out.push_back(isa);
        return out;
    }, "ISA levels this CPU and build can run");
    m.def("set_num_threads", &set_num_threads, py::arg("n"));
    m.def("get_num_threads", &num_threads);

    m.def("matmul", [](FArrOut out, FArrIn inp, py::array w, py::object b, int flags, const std::string& wdtype,
                       const std::string& isa, py::object wscale) {
        const auto [M, N, K] = check_matmul(out, inp, w, flags);
        const int code = dtype_code(wdtype, true);
        const void* wp = weight_ptr(w, code, "matmul w");
        FArrIn bias;
        const float* bp = bias_ptr(b, N, bias);
        const KernelTable& k = table_for(isa);
        float* op = out.mutable_data();
        const float* ip = inp.data();
        FArrIn keep;
        const float* sp = scale_ptr(wscale, code, N, keep, "matmul wscale");
        py::gil_scoped_release nogil;
        k.matmul(op, ip, wp, sp, bp, (int)M, (int)N, (int)K, code, flags);
    }, py::arg("out").noconvert(), py::arg("inp"), py::arg("w"), py::arg("b") = py::none(), py::arg("flags") = 0,
       py::arg("wdtype") = "float32", py::arg("isa") = "", py::arg("wscale") = py::none(),
       "out[M,N] (+)= act(inp[M,K] @ (w[N,K] * wscale[N,None]).T + b[N]); flags: 1 = GELU, 2 = accumulate");

    m.def("layernorm", [](FArrOut out, FArrIn inp, FArrIn w, FArrIn b, float eps, const std::string& isa) {
        const auto [M, C] = check_layernorm(out, inp, w, b);
        const KernelTable& k = table_for(isa);
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        k.layernorm(op, inp.data(), w.data(), b.data(), (int)M, (int)C, eps);
    }, py::arg("out").noconvert(), py::arg("inp"), py::arg("w"), py::arg("b"), py::arg("eps") = 1e-5f, py::arg("isa") = "");

    m.def("attention", [](FArrOut out, FArrIn qkv, FArrOut k_cache, FArrOut v_cache, int pos0, int n_head,
                          const std::string& isa) {
        const auto [T, C, hd, n_ctx] = check_attention(out, qkv, k_cache, v_cache, pos0, n_head);
        const KernelTable& k = table_for(isa);
        float *op = out.mutable_data(), *kp = k_cache.mutable_data(), *vp = v_cache.mutable_data();
        py::gil_scoped_release nogil;
        k.attention(op, qkv.data(), kp, vp, (int)T, pos0, n_head, (int)hd, (int)n_ctx);
    }, py::arg("out").noconvert(), py::arg("qkv"), py::arg("k_cache").noconvert(), py::arg("v_cache").noconvert(), py::arg("pos0"), py::arg("n_head"),
       py::arg("isa") = "");

    m.def("gelu", [](FArrOut out, FArrIn inp, const std::string& isa) {
        if (out.size() != inp.size()) throw std::invalid_argument("gelu: out and inp sizes differ");
        const KernelTable& k = table_for(isa);
        float* op = out.mutable_data();
        py::gil_scoped_release nogil;
        k.gelu(op, inp.data(), (int64_t)inp.size());
    }, py::arg("out").noconvert(), py::arg("inp"), py::arg("isa") = "");

    m.def("embedding", [](FArrOut out, IArrIn tokens,
                          py::array wte, FArrIn wpe, int pos0, const std::string& wdtype, const std::string& isa,
                          py::object wscale) {
        const auto [T, C, V] = check_embedding(out, tokens, wte, wpe, pos0);
        const int32_t* tp = tokens.data();
        const int code = dtype_code(wdtype);
        const void* wp = weight_ptr(wte, code, "embedding wte");
        const KernelTable& k = table_for(isa);
        float* op = out.mutable_data();
        FArrIn keep;
        const float* sp = scale_ptr(wscale, code, V, keep, "embedding wscale");
        py::gil_scoped_release nogil;
        k.embedding(op, tp, wp, sp, wpe.data(), (int)T, (int)C, pos0, code);
    }, py::arg("out").noconvert(), py::arg("tokens"), py::arg("wte"), py::arg("wpe"), py::arg("pos0") = 0,
       py::arg("wdtype") = "float32", py::arg("isa") = "", py::arg("wscale") = py::none());

    m.def("matmul_argmax", [](FArrIn x, py::array w, py::object q, py::object qs, py::object err,
                              const std::string& wdtype, const std::string& isa, py::object wscale) {
        if (w.ndim() != 2) throw std::invalid_argument("matmul_argmax w: expected [N, K], got " + shape_str(w));
        const py::ssize_t N = w.shape(0), K = w.shape(1);
        if (N < 1) throw std::invalid_argument("matmul_argmax: w has no rows");
        // x: one row [K] (returns ints) or rows [M, K] (returns lists)
        const bool rows = x.ndim() == 2;
        if (!(x.ndim() == 1 || rows) || x.shape(x.ndim() - 1) != K || (rows && x.shape(0) < 1))
            throw std::invalid_argument("matmul_argmax x: expected [" + std::to_string(K) + "] or [M, " +
                                        std::to_string(K) + "], got " + shape_str(x));
        const py::ssize_t M = rows ? x.shape(0) : 1;
        const int code = dtype_code(wdtype);
        const void* wp = weight_ptr(w, code, "matmul_argmax w");
        FArrIn keep, qsk, errk;
        const float* sp = scale_ptr(wscale, code, N, keep, "matmul_argmax wscale");
        const int8_t* qp = nullptr;
        const float *qsp = nullptr, *errp = nullptr;
        if (!q.is_none()) {
            ScreenArrays sa = screen_arrays(q, qs, err, N, K, code);
            qp = sa.q, qsp = sa.qs, errp = sa.err;
            qsk = sa.qs_keep, errk = sa.err_keep;
        }
        const KernelTable& k = table_for(isa);
        FloatBuf scratch((float*)std::malloc(sizeof(float) * N * M));
        if (!scratch) throw std::bad_alloc();
        std::vector<int32_t> best(M), n_exact(M);
        {
            py::gil_scoped_release nogil;
            k.matmul_argmax(scratch.get(), x.data(), wp, sp, qp, qsp, errp, (int)M, (int)N, (int)K, code, best.data(),
                            n_exact.data());
        }
        if (!rows) return py::tuple(py::make_tuple(best[0], n_exact[0]));
        return py::tuple(py::make_tuple(py::cast(best), py::cast(n_exact)));
    }, py::arg("x"), py::arg("w"), py::arg("q") = py::none(), py::arg("qs") = py::none(), py::arg("err") = py::none(),
       py::arg("wdtype") = "float32", py::arg("isa") = "", py::arg("wscale") = py::none(),
       "(np.argmax(x[K] @ w[N,K].T), rows evaluated exactly), or lists of both for x[M, K]; q[N,K] int8 * qs[N] "
       "screens w (err[N,3]: head_screen)");

    py::class_<PyEngine, std::shared_ptr<PyEngine>>(m, "Engine", py::module_local())
        .def(py::init([](py::dict cfg, py::dict weights, bool tied_head, bool bf16_activations) {
                 const Config c = read_config<Config>(cfg);
                 auto pe = std::make_shared<PyEngine>();
                 Weights w = read_weights(weights, c, tied_head, pe->keep, true);
                 pe->engine = std::make_shared<Engine>(c, std::move(w), bf16_activations);
                 return pe;
             }),
             py::arg("config"), py::arg("weights"), py::arg("tied_head"), py::arg("bf16_activations") = false,
             "weights: {name: (array, dtype, int8 row scales or None)}, borrowed (not copied)")
        .def("set_head_screen", [](PyEngine& pe, py::object q, py::object qs, py::object err) {
            const WeightRef& W = pe.engine->w.head;
            ScreenArrays sa = screen_arrays(q, qs, err, W.rows, W.cols, W.dtype);
            pe.engine->set_head_screen({sa.q, sa.qs, sa.err});
            pe.keep.push_back(q);
            pe.keep.push_back(sa.qs_keep);
            pe.keep.push_back(sa.err_keep);
        }, py::arg("q"), py::arg("qs"), py::arg("err"),
           "greedy decoding's screening copy of the LM head: q[n_vocab, n_embd] int8, qs [n_vocab], err [n_vocab, 3]");

    py::class_<PySequence>(m, "Sequence", py::module_local())
        .def(py::init([](std::shared_ptr<PyEngine> e) { return PySequence{std::make_shared<Sequence>(e->engine), e}; }),
             py::arg("engine"))
        .def_property_readonly("pos", [](const PySequence& s) { return s.s->pos; })
        .def_property_readonly("screened_steps", [](const PySequence& s) { return s.s->screened_steps; })
        .def("reset", [](PySequence& s) { s.s->pos = 0, s.s->screen_rest = 0; })
        .def("fork", [](const PySequence& s) {
            PySequence c{std::make_shared<Sequence>(s.e->engine), s.e};
            c.s->copy_from(*s.s);
            return c;
        }, "a new sequence holding a copy of this one's cache (its prefix)");

    m.def("forward", [](PyEngine& pe, std::vector<PySequence*> seqs, std::vector<IArrIn> tokens, std::vector<int> want,
                        py::object out, std::vector<int> skip) {
        const size_t n = seqs.size();
        if (tokens.size() != n || want.size() != n)
            throw std::invalid_argument("forward: seqs, tokens and want must have the same length");
        if (!skip.empty() && skip.size() != n) throw std::invalid_argument("forward: skip must be empty or one per item");
        std::vector<BatchItem> items(n);
        for (size_t i = 0; i < n; i++) {
            if (!seqs[i]) throw std::invalid_argument("forward: None is not a sequence");
            if (tokens[i].ndim() != 1) throw std::invalid_argument("forward: tokens must be 1-D");
            if (seqs[i]->e.get() != &pe) throw std::invalid_argument("forward: a sequence of another engine");
            items[i] = {seqs[i]->s.get(), tokens[i].data(), (int)tokens[i].size(), want[i], skip.empty() ? 0 : skip[i]};
            const BatchItem& it = items[i];
            if (it.skip != 0 && !(it.want == WANT_ALL && it.skip > 0 && it.skip < it.n))
                throw std::invalid_argument("forward: skip needs want=all and 0 <= skip < len(tokens)");
        }
        const Engine& e = *pe.engine;
        const py::ssize_t rows = logit_rows(items.data(), (int)n), V = e.cfg.n_vocab;
        FArrOut logits;
        if (out.is_none()) {
            logits = FArrOut({rows, V});
        } else {  // the caller's buffer (an earlier result it no longer uses): fresh pages cost a fault each
            if (!py::isinstance<FArrOut>(out)) throw std::invalid_argument("forward out: must be a C-contiguous float32 array");
            logits = py::reinterpret_borrow<FArrOut>(out);
            if (!logits.writeable() || logits.ndim() != 2 || logits.shape(0) != rows || logits.shape(1) != V)
                throw std::invalid_argument("forward out: expected a writable [" + std::to_string(rows) + ", " +
                                            std::to_string(V) + "] array, got " + shape_str(logits));
        }
        py::array_t<int32_t> best((py::ssize_t)n), n_exact((py::ssize_t)n);
        int32_t *bp = best.mutable_data(), *np_ = n_exact.mutable_data();
        for (size_t i = 0; i < n; i++) bp[i] = -1, np_[i] = 0;
        float* lp = logits.mutable_data();
        {
            py::gil_scoped_release nogil;
            forward(e, items.data(), (int)n, lp, bp, np_);
        }
        return py::make_tuple(logits, best, n_exact);
    }, py::arg("engine"), py::arg("seqs"), py::arg("tokens"), py::arg("want"), py::arg("out") = py::none(),
       py::arg("skip") = std::vector<int>{},
       "one forward over a batch: seqs[i] appends tokens[i]; want[i]: 0 none, 1 last row's logits, 2 all rows' "
       "(but the first skip[i], context only), 3 argmax of the last row. Returns (logits [rows wanted, n_vocab] in item order (written into out if "
       "given), argmax [n], head rows evaluated exactly [n])");
}
