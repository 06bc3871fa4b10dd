// Elementwise GELU (tanh form) for one ISA level. The model fuses GELU into the matmul epilogue; this
// standalone kernel exists for tests and benches of the activation itself.
#include "simd.h"

namespace TG_ISA_NS {

void gelu(float* out /*[n]*/, const float* inp /*[n]*/, int64_t n) {
    const int64_t nv = n - n % VW;
#pragma omp parallel for schedule(static) num_threads(tg::num_threads()) if (n >= 65536)
    for (int64_t i = 0; i < nv; i += VW) vstore(out + i, vgelu(vload(inp + i)));
    for (int64_t i = nv; i < n; i++) out[i] = sgelu(inp[i]);
}

}  // namespace TG_ISA_NS
