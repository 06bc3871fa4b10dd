// What other kernel files of the same ISA level may call in matmul.cpp (the greedy head evaluates rows with it).
#pragma once
#include <cstdint>

namespace TG_ISA_NS {

// out[rows[i]] = x[K] . W[rows[i], :] (* wscale[rows[i]] for int8 W), i < n: exactly the value matmul writes for
// that row with M == 1 (or any M), no bias, no flags.
void matmul_rows(float* out, const float* x, const void* w, const float* wscale, const int32_t* rows, int n, int K,
                 int wdtype);

}  // namespace TG_ISA_NS
