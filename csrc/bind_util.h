// Binding helpers shared by tinygpt._cpu and tinygpt._cuda: shape/dtype checks with expected-vs-got messages.
// Weight dtypes: forward.h DType codes (bfloat16 carried as uint16; int8 with float32 row scales).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "forward.h"

namespace tgbind {
namespace py = pybind11;

using FArrIn = py::array_t<float, py::array::c_style | py::array::forcecast>;
using FArrOut = py::array_t<float, py::array::c_style>;  // no forcecast: must be float32 C-contiguous to be written
using IArrIn = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

inline std::string shape_str(const py::array& a) {
    std::string s = "[";
    for (py::ssize_t i = 0; i < a.ndim(); i++) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + "]";
}

inline void expect_shape(const py::array& a, std::initializer_list<py::ssize_t> shape, const char* name) {
    bool ok = (py::ssize_t)shape.size() == a.ndim();
    py::ssize_t i = 0;
    for (auto s : shape) ok = ok && a.shape(i++) == s;
    if (!ok) {
        std::string want = "[";
        i = 0;
        for (auto s : shape) want += (i++ ? ", " : "") + std::to_string(s);
        throw std::invalid_argument(std::string(name) + ": expected shape " + want + "], got " + shape_str(a));
    }
}

inline int dtype_code(const std::string& name, bool matmul = false) {
    if (name == "float32") return tg::F32;
    if (name == "float16") return tg::F16;
    if (name == "bfloat16") return tg::BF16;
    if (name == "int8") return tg::I8;
    if (name == "bfloat16a" && matmul) return tg::BF16A;  // bf16 weights, activations rounded to bf16
    throw std::invalid_argument("unknown weight dtype '" + name + "' (float32, float16, bfloat16 or int8)");
}

// A weight matrix/vector: float32, float16, or bfloat16 carried as uint16; must be C-contiguous.
inline const void* weight_ptr(const py::array& a, int code, const std::string& name) {
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(name + ": must be C-contiguous");
    const bool ok = (code == tg::F32 && py::isinstance<py::array_t<float>>(a)) ||
                    (code == tg::F16 && a.dtype().kind() == 'f' && a.itemsize() == 2) ||
                    ((code == tg::BF16 || code == tg::BF16A) && a.dtype().kind() == 'u' && a.itemsize() == 2) ||
                    (code == tg::I8 && a.dtype().kind() == 'i' && a.itemsize() == 1);
    if (!ok)
        throw std::invalid_argument(name + ": dtype " + std::string(py::str(a.dtype())) + " does not match weight dtype "
                                    + (code == tg::F32    ? "float32"
                                       : code == tg::F16  ? "float16"
                                       : code == tg::BF16 || code == tg::BF16A ? "bfloat16 (as uint16)"
                                                              : "int8"));
    return a.data();
}

// Argument checks of the single-kernel bindings, shared by both modules; each returns the dimensions.
struct MatmulDims { py::ssize_t M, N, K; };
inline MatmulDims check_matmul(const py::array& out, const py::array& inp, const py::array& w, int flags) {
    if (inp.ndim() != 2 || w.ndim() != 2) throw std::invalid_argument("matmul: inp and w must be 2-D");
    const py::ssize_t M = inp.shape(0), K = inp.shape(1), N = w.shape(0);
    expect_shape(w, {N, K}, "matmul w");
    expect_shape(out, {M, N}, "matmul out");
    if ((flags & 1) && (flags & 2)) throw std::invalid_argument("matmul: GELU with ACCUM is not supported");
    return {M, N, K};
}

// Optional float32 bias [N]: null when b is None; `keep` owns a converted copy.
inline const float* bias_ptr(const py::object& b, py::ssize_t N, FArrIn& keep) {
    if (b.is_none()) return nullptr;
    keep = FArrIn::ensure(b);
    if (!keep) throw std::invalid_argument("matmul b: not convertible to float32");
    expect_shape(keep, {N}, "matmul b");
    return keep.data();
}

struct RowsDims { py::ssize_t M, C; };
inline RowsDims check_layernorm(const py::array& out, const py::array& inp, const py::array& w, const py::array& b) {
    if (inp.ndim() != 2) throw std::invalid_argument("layernorm: inp must be 2-D");
    const py::ssize_t M = inp.shape(0), C = inp.shape(1);
    expect_shape(out, {M, C}, "layernorm out");
    expect_shape(w, {C}, "layernorm w");
    expect_shape(b, {C}, "layernorm b");
    return {M, C};
}

struct AttnDims { py::ssize_t T, C, hd, n_ctx; };
inline AttnDims check_attention(const py::array& out, const py::array& qkv, const py::array& kc, const py::array& vc,
                                int pos0, int n_head) {
    if (qkv.ndim() != 2 || qkv.shape(1) % 3) throw std::invalid_argument("attention: qkv must be [T, 3C]");
    const py::ssize_t T = qkv.shape(0), C = qkv.shape(1) / 3;
    if (n_head <= 0 || C % n_head) throw std::invalid_argument("attention: C must be divisible by n_head");
    const py::ssize_t hd = C / n_head;
    if (kc.ndim() != 3) throw std::invalid_argument("attention: k_cache must be [H, n_ctx, hd]");
    const py::ssize_t n_ctx = kc.shape(1);
    expect_shape(kc, {n_head, n_ctx, hd}, "attention k_cache");
    expect_shape(vc, {n_head, n_ctx, hd}, "attention v_cache");
    expect_shape(out, {T, C}, "attention out");
    if (pos0 < 0 || pos0 + T > n_ctx) throw std::invalid_argument("attention: pos0 + T exceeds n_ctx");
    return {T, C, hd, n_ctx};
}

struct EmbedDims { py::ssize_t T, C, V; };
inline EmbedDims check_embedding(const py::array& out, const IArrIn& tokens, const py::array& wte,
                                 const py::array& wpe, int pos0) {
    if (wte.ndim() != 2 || wpe.ndim() != 2) throw std::invalid_argument("embedding: wte and wpe must be 2-D");
    const py::ssize_t T = tokens.size(), C = wte.shape(1), V = wte.shape(0);
    expect_shape(out, {T, C}, "embedding out");
    if (wpe.shape(1) != C || pos0 < 0 || pos0 + T > wpe.shape(0))
        throw std::invalid_argument("embedding: wpe must be [n_ctx, C] with pos0 + T <= n_ctx");
    const int32_t* tp = tokens.data();
    for (py::ssize_t t = 0; t < T; t++)
        if (tp[t] < 0 || tp[t] >= V) throw std::invalid_argument("embedding: token id out of range");
    return {T, C, V};
}

// An optional float32 array used as is (no conversion, so nothing is copied behind the caller's back): null for
// None; else must be float32, C-contiguous and of `n` elements.
inline const float* exact_f32(const py::object& o, py::ssize_t n, const std::string& name) {
    if (o.is_none()) return nullptr;
    if (!py::isinstance<py::array_t<float>>(o)) throw std::invalid_argument(name + ": must be a float32 numpy array");
    py::array a = py::reinterpret_borrow<py::array>(o);
    if (!(a.flags() & py::array::c_style) || a.size() != n)
        throw std::invalid_argument(name + ": must be C-contiguous with " + std::to_string(n) + " values, got " +
                                    shape_str(a));
    return (const float*)a.data();
}

// Weights from {name: (array, dtype name, int8 row scales or None)} in the schema of forward.h (built by
// python/tinygpt/backends/native.py). The arrays are borrowed, not copied: `keep` holds them for the engine.
inline tg::Weights read_weights(const py::dict& named, const tg::Config& c, bool tied_head, std::vector<py::object>& keep,
                                bool allow_int8) {
    tg::Weights w;
    tg::for_each_weight(w, c, tied_head, [&](const std::string& name, tg::WeightRef& r) {
        if (!named.contains(name)) throw std::invalid_argument("Engine: missing weight " + name);
        py::tuple t = named[py::str(name)].cast<py::tuple>();
        if (t.size() != 3) throw std::invalid_argument("Engine: " + name + ": expected (array, dtype, scales)");
        py::array a = t[0].cast<py::array>();
        const int code = dtype_code(t[1].cast<std::string>());
        if (code == tg::I8 && !allow_int8) throw std::invalid_argument("Engine: int8 weights are not supported here");
        if (a.ndim() < 1 || a.ndim() > 2) throw std::invalid_argument("Engine: " + name + " must be 1-D or 2-D");
        r.ptr = weight_ptr(a, code, name);
        r.dtype = code;
        r.rows = a.shape(0);
        r.cols = a.ndim() == 2 ? a.shape(1) : 1;
        if (code == tg::I8) {
            if (t[2].is_none()) throw std::invalid_argument("Engine: " + name + ": int8 weights need row scales");
            r.scale = exact_f32(t[2], a.shape(0), name + " scales");
        } else if (!t[2].is_none()) {
            throw std::invalid_argument("Engine: " + name + ": scales are only for int8 weights");
        }
        keep.push_back(a);
        keep.push_back(t[2]);
    });
    if (tied_head) w.head = w.wte;
    return w;
}

// Validates the Engine constructor's config dict fields both backends read.
template <typename Config>
Config read_config(py::dict cfg) {
    Config c;
    c.n_vocab = cfg["n_vocab"].cast<int>();
    c.n_ctx = cfg["n_ctx"].cast<int>();
    c.n_embd = cfg["n_embd"].cast<int>();
    c.n_head = cfg["n_head"].cast<int>();
    c.n_layer = cfg["n_layer"].cast<int>();
    c.d_ff = cfg["d_ff"].cast<int>();
    c.eps = cfg["eps"].cast<float>();
    return c;
}

}  // namespace tgbind
