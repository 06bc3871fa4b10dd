// tinygpt._cuda bindings on device memory: DeviceArray (a device copy of a NumPy array, uploaded once), the
// single kernels on DeviceArrays in the submodule `dev` (asynchronous; dev.synchronize() waits and raises a
// kernel fault), and argmax on a host array. For tests and kernel benches that must time kernels, not copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "../csrc/bind_util.h"
#include "device_api.h"

namespace py = pybind11;
using namespace tgbind;

namespace {

struct DeviceArray {
    void* p = nullptr;
    size_t nbytes = 0;
    std::vector<py::ssize_t> shape;
    py::dtype dtype;

    explicit DeviceArray(const py::array& a) : shape(a.shape(), a.shape() + a.ndim()), dtype(a.dtype()) {
        if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("DeviceArray: array must be C-contiguous");
        nbytes = (size_t)a.nbytes();
        p = tgc::dev::alloc(nbytes);
        try {
            tgc::dev::upload(p, a.data(), nbytes);
        } catch (...) {
            tgc::dev::release(p);
            throw;
        }
    }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    ~DeviceArray() { tgc::dev::release(p); }

    std::string shape_str() const {
        std::string s = "[";
        for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
        return s + "]";
    }
    void check_host(const py::array& a, const char* what) const {
        if (!a.dtype().is(dtype) || (size_t)a.nbytes() != nbytes || !(a.flags() & py::array::c_style))
            throw std::invalid_argument(std::string("DeviceArray.") + what + ": needs a C-contiguous " +
                                        std::string(py::str(dtype)) + " array of shape " + shape_str());
    }
    py::array numpy() const {
        py::array a(dtype, shape);
        void* hp = a.mutable_data();
        py::gil_scoped_release nogil;
        tgc::dev::download(hp, p, nbytes);
        return a;
    }
};

// Checks of the device bindings: a named array of the expected shape and element type.
void expect(const DeviceArray& a, std::initializer_list<py::ssize_t> shape, const char* name) {
    bool ok = a.shape.size() == shape.size();
    size_t i = 0;
    for (auto s : shape) ok = ok && a.shape[i++] == s;
    if (!ok) {
        std::string want = "[";
        i = 0;
        for (auto s : shape) want += (i++ ? ", " : "") + std::to_string(s);
        throw std::invalid_argument(std::string(name) + ": expected shape " + want + "], got " + a.shape_str());
    }
}
void expect_f32(const DeviceArray& a, const char* name) {
    if (!a.dtype.is(py::dtype::of<float>())) throw std::invalid_argument(std::string(name) + ": must be float32");
}
// weight dtype names as in the host bindings: float32, float16, bfloat16 (carried as uint16)
int weight_code(const DeviceArray& w, const std::string& wdtype, const char* name) {
    const int code = dtype_code(wdtype);
    const char kind = w.dtype.kind();
    const bool ok = (code == tg::F32 && w.dtype.is(py::dtype::of<float>())) ||
                    (code == tg::F16 && kind == 'f' && w.dtype.itemsize() == 2) ||
                    (code == tg::BF16 && kind == 'u' && w.dtype.itemsize() == 2);
    if (code == tg::I8) throw std::invalid_argument("int8 weights are supported by the cpu backend only");
    if (!ok)
        throw std::invalid_argument(std::string(name) + ": dtype " + std::string(py::str(w.dtype)) +
                                    " does not match weight dtype " + wdtype);
    return code;
}

}  // namespace

void bind_device(py::module_& m) {
    py::class_<DeviceArray>(m, "DeviceArray", py::module_local(),
                            "A device copy of a C-contiguous NumPy array (uploaded at construction).")
        .def(py::init<const py::array&>(), py::arg("array"))
        .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape)); })
        .def_property_readonly("dtype", [](const DeviceArray& a) { return a.dtype; })
        .def_property_readonly("nbytes", [](const DeviceArray& a) { return a.nbytes; })
        .def("numpy", &DeviceArray::numpy, "download into a new array (waits for the launched kernels)")
        .def("upload", [](DeviceArray& a, const py::array& h) {
            a.check_host(h, "upload");
            tgc::dev::upload(a.p, h.data(), a.nbytes);
        }, py::arg("array"))
        .def("download", [](const DeviceArray& a, py::array& h) {
            a.check_host(h, "download");
            if (!h.writeable()) throw std::invalid_argument("DeviceArray.download: array is read-only");
            void* hp = h.mutable_data();
            py::gil_scoped_release nogil;
            tgc::dev::download(hp, a.p, a.nbytes);
        }, py::arg("out"));

    m.def("argmax", [](FArrIn logits) {
        if (logits.ndim() != 1 || logits.size() < 1) throw std::invalid_argument("argmax: logits must be 1-D, non-empty");
        if (logits.size() > INT32_MAX) throw std::invalid_argument("argmax: more than 2^31 - 1 logits");
        const float* lp = logits.data();
        const int n = (int)logits.size();
        py::gil_scoped_release nogil;
        return tgc::dev::argmax_host(lp, n);
    }, py::arg("logits"), "np.argmax(logits) computed by the device kernel used for greedy steps");

    py::module_ d = m.def_submodule("dev", "single kernels on DeviceArrays: asynchronous, see synchronize()");
    d.def("synchronize", []() {
        py::gil_scoped_release nogil;
        tgc::dev::synchronize();
    }, "wait for every launched kernel; raises RuntimeError on a kernel fault");

    d.def("matmul", [](DeviceArray& out, const DeviceArray& inp, const DeviceArray& w, const DeviceArray* b, int flags,
                       const std::string& wdtype) {
        if (inp.shape.size() != 2 || w.shape.size() != 2) throw std::invalid_argument("matmul: inp and w must be 2-D");
        const py::ssize_t M = inp.shape[0], K = inp.shape[1], N = w.shape[0];
        expect(w, {N, K}, "matmul w");
        expect(out, {M, N}, "matmul out");
        expect_f32(inp, "matmul inp");
        expect_f32(out, "matmul out");
        if (b) expect(*b, {N}, "matmul b"), expect_f32(*b, "matmul b");
        if ((flags & 1) && (flags & 2)) throw std::invalid_argument("matmul: GELU with ACCUM is not supported");
        const int code = weight_code(w, wdtype, "matmul w");
        tgc::dev::matmul((float*)out.p, (const float*)inp.p, w.p, b ? (const float*)b->p : nullptr, (int)M, (int)N,
                         (int)K, code, flags);
    }, py::arg("out"), py::arg("inp"), py::arg("w"), py::arg("b") = nullptr, py::arg("flags") = 0,
       py::arg("wdtype") = "float32");

    d.def("layernorm", [](DeviceArray& out, const DeviceArray& inp, const DeviceArray& w, const DeviceArray& b,
                          float eps) {
        if (inp.shape.size() != 2) throw std::invalid_argument("layernorm: inp must be 2-D");
        const py::ssize_t M = inp.shape[0], C = inp.shape[1];
        expect(out, {M, C}, "layernorm out");
        expect(w, {C}, "layernorm w");
        expect(b, {C}, "layernorm b");
        for (const DeviceArray* a : std::initializer_list<const DeviceArray*>{&out, &inp, &w, &b})
            expect_f32(*a, "layernorm arrays");
        tgc::dev::layernorm((float*)out.p, (const float*)inp.p, (const float*)w.p, (const float*)b.p, (int)M, (int)C,
                            eps);
    }, py::arg("out"), py::arg("inp"), py::arg("w"), py::arg("b"), py::arg("eps") = 1e-5f);

    d.def("layernorm_matmul", [](DeviceArray& out, const DeviceArray& inp, const DeviceArray& ln_w,
                                 const DeviceArray& ln_b, DeviceArray& ln_out, const DeviceArray& w,
                                 const DeviceArray* b, int flags, const std::string& wdtype, float eps) {
        if (inp.shape.size() != 2 || w.shape.size() != 2)
            throw std::invalid_argument("layernorm_matmul: inp and w must be 2-D");
        const py::ssize_t M = inp.shape[0], K = inp.shape[1], N = w.shape[0];
        expect(w, {N, K}, "layernorm_matmul w");
        expect(out, {M, N}, "layernorm_matmul out");
        expect(ln_w, {K}, "layernorm_matmul ln_w");
        expect(ln_b, {K}, "layernorm_matmul ln_b");
        expect(ln_out, {M, K}, "layernorm_matmul ln_out");
        for (const DeviceArray* a : std::initializer_list<const DeviceArray*>{&out, &inp, &ln_w, &ln_b, &ln_out})
            expect_f32(*a, "layernorm_matmul arrays");
        if (b) expect(*b, {N}, "layernorm_matmul b"), expect_f32(*b, "layernorm_matmul b");
        if ((flags & 1) && (flags & 2)) throw std::invalid_argument("matmul: GELU with ACCUM is not supported");
        const int code = weight_code(w, wdtype, "layernorm_matmul w");
        tgc::dev::layernorm_matmul((float*)out.p, (const float*)inp.p, (const float*)ln_w.p, (const float*)ln_b.p, eps,
                                   (float*)ln_out.p, w.p, b ? (const float*)b->p : nullptr, (int)M, (int)N, (int)K,
                                   code, flags);
    }, py::arg("out"), py::arg("inp"), py::arg("ln_w"), py::arg("ln_b"), py::arg("ln_out"), py::arg("w"),
       py::arg("b") = nullptr, py::arg("flags") = 0, py::arg("wdtype") = "float32", py::arg("eps") = 1e-5f,
       "out = matmul(layernorm(inp)); one kernel when M == 1 (ln_out then unused), else layernorm into ln_out");

    d.def("attention_scratch_floats", &tgc::dev::attention_scratch_floats, py::arg("n_head"), py::arg("head_dim"),
          py::arg("n_ctx"));
    d.def("attention", [](DeviceArray& out, const DeviceArray& qkv, DeviceArray& kc, DeviceArray& vc, int pos0,
                          int n_head, DeviceArray& scratch) {
        if (qkv.shape.size() != 2 || qkv.shape[1] % 3) throw std::invalid_argument("attention: qkv must be [T, 3C]");
        const py::ssize_t T = qkv.shape[0], C = qkv.shape[1] / 3;
        if (n_head <= 0 || C % n_head) throw std::invalid_argument("attention: C must be divisible by n_head");
        const py::ssize_t hd = C / n_head;
        if (kc.shape.size() != 3) throw std::invalid_argument("attention: k_cache must be [H, n_ctx, hd]");
        const py::ssize_t n_ctx = kc.shape[1];
        expect(kc, {n_head, n_ctx, hd}, "attention k_cache");
        expect(vc, {n_head, n_ctx, hd}, "attention v_cache");
        expect(out, {T, C}, "attention out");
        for (const DeviceArray* a : std::initializer_list<const DeviceArray*>{&out, &qkv, &kc, &vc, &scratch})
            expect_f32(*a, "attention arrays");
        if (pos0 < 0 || pos0 + T > n_ctx) throw std::invalid_argument("attention: pos0 + T exceeds n_ctx");
        const size_t need = tgc::dev::attention_scratch_floats(n_head, (int)hd, (int)n_ctx);
        if (scratch.nbytes < need * 4)
            throw std::invalid_argument("attention: scratch needs " + std::to_string(need) + " float32");
        tgc::dev::attention((float*)out.p, (const float*)qkv.p, (float*)kc.p, (float*)vc.p, (int)T,
                            tgc::dev::position(pos0), n_head, (int)hd, (int)n_ctx, (float*)scratch.p);
    }, py::arg("out"), py::arg("qkv"), py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"), py::arg("n_head"),
       py::arg("scratch"));

    d.def("gelu", [](DeviceArray& out, const DeviceArray& inp) {
        expect_f32(out, "gelu out");
        expect_f32(inp, "gelu inp");
        if (out.nbytes != inp.nbytes) throw std::invalid_argument("gelu: out and inp sizes differ");
        tgc::dev::gelu((float*)out.p, (const float*)inp.p, (int64_t)(inp.nbytes / 4));
    }, py::arg("out"), py::arg("inp"));

    d.def("argmax", [](const DeviceArray& logits, DeviceArray& out) {
        expect_f32(logits, "argmax logits");
        const size_t n = logits.nbytes / 4;
        if (logits.shape.size() != 1 || n < 1 || n > INT32_MAX)
            throw std::invalid_argument("argmax: logits must be 1-D, non-empty");
        if (!out.dtype.is(py::dtype::of<int32_t>()) || out.nbytes != 4)
            throw std::invalid_argument("argmax: out must be one int32");
        tgc::dev::argmax((const float*)logits.p, (int)n, (int*)out.p);
    }, py::arg("logits"), py::arg("out"));
}
