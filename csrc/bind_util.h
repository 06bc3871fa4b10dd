// Binding helpers shared by tinygpt._cpu and tinygpt._cuda: shape/dtype checks with expected-vs-got messages.
// Weight dtype codes: 0 float32, 1 float16, 2 bfloat16 (carried as uint16), 3 int8 (+ float32 row scales).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

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

inline int dtype_code(const std::string& name) {
    if (name == "float32") return 0;
    if (name == "float16") return 1;
    if (name == "bfloat16") return 2;
    if (name == "int8") return 3;
    throw std::invalid_argument("unknown weight dtype '" + name + "' (float32, float16, bfloat16 or int8)");
}

// A weight matrix/vector: float32, float16, or bfloat16 carried as uint16; must be C-contiguous.
inline const void* weight_ptr(const py::array& a, int code, const std::string& name) {
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(name + ": must be C-contiguous");
    const bool ok = (code == 0 && py::isinstance<py::array_t<float>>(a)) ||
                    (code == 1 && a.dtype().kind() == 'f' && a.itemsize() == 2) ||
                    (code == 2 && a.dtype().kind() == 'u' && a.itemsize() == 2) ||
                    (code == 3 && a.dtype().kind() == 'i' && a.itemsize() == 1);
    if (!ok)
        throw std::invalid_argument(name + ": dtype " + std::string(py::str(a.dtype())) + " does not match weight dtype "
                                    + (code == 0 ? "float32" : code == 1 ? "float16" : code == 2 ? "bfloat16 (as uint16)" : "int8"));
    return a.data();
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
