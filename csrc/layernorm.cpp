// LayerNorm for one ISA level: out[M,C] = (x - mean) / sqrt(var + eps) * w + b, biased variance, two passes
// over the row (mean first) so the variance does not cancel.
#include "simd.h"

namespace TG_ISA_NS {

static void layernorm_row(float* o, const float* x, const float* w, const float* b, int C, float eps) {
    const int cv = C - C % VW;
    V acc = vzero();
    for (int c = 0; c < cv; c += VW) acc = vadd(acc, vload(x + c));
    float s = vsum(acc);
    for (int c = cv; c < C; c++) s += x[c];
    const float mean = s / C;
    V vm = vset1(mean);
    acc = vzero();
    for (int c = 0; c < cv; c += VW) {
        V d = vsub(vload(x + c), vm);
        acc = vfma(d, d, acc);
    }
    float ss = vsum(acc);
    for (int c = cv; c < C; c++) ss += (x[c] - mean) * (x[c] - mean);
    const float rstd = 1.0f / std::sqrt(ss / C + eps);
    V vr = vset1(rstd);
    for (int c = 0; c < cv; c += VW)
        vstore(o + c, vfma(vmul(vsub(vload(x + c), vm), vr), vload(w + c), vload(b + c)));
    for (int c = cv; c < C; c++) o[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

void layernorm(float* out /*[M,C]*/, const float* inp /*[M,C]*/, const float* w /*[C]*/, const float* b /*[C]*/,
               int M, int C, float eps) {
#pragma omp parallel for schedule(static) num_threads(tg::num_threads()) if (M >= 8)
    for (int m = 0; m < M; m++) layernorm_row(out + (int64_t)m * C, inp + (int64_t)m * C, w, b, C, eps);
}

}  // namespace TG_ISA_NS
