// The plan encoding shared by the C++ and CUDA executors; python/tinygpt/plan.py writes it.
// A plan row is (op, out buffer, in buffer, weight id, bias id, flags, layer, unused).
#pragma once
#include <array>
#include <cstdint>

namespace tgplan {

enum Op : int { OP_EMBED = 1, OP_LAYERNORM = 2, OP_LINEAR = 3, OP_ATTENTION = 4 };
enum Buf : int { BUF_X = 0, BUF_H, BUF_QKV, BUF_ATT, BUF_FC, BUF_LOGITS, N_BUF };
enum PlanFlags : int { PF_GELU = 1, PF_ACCUM = 2, PF_LAST = 4 };
// Weight dtype codes, the same in both backends and their bindings. I8: symmetric, one float scale per row
// (cpu backend only).
enum DType : int { F32 = 0, F16 = 1, BF16 = 2, I8 = 3 };

using PlanRow = std::array<int64_t, 8>;

struct Config {
    int n_vocab, n_ctx, n_embd, n_head, n_layer, d_ff;
    float eps;
};

// A weight as the host hands it over: data, dtype code (DType), int8 row scales, shape.
struct WeightRef {
    const void* ptr;
    int dtype;
    const float* scale;  // int8 only: [rows]
    int64_t rows, cols;  // cols = 1 for a vector
};

}  // namespace tgplan
