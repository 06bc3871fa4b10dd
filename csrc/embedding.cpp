// Token + position embedding for one ISA level: out[T,C] = wte[tokens[t]] + wpe[pos0 + t] (wte may be f16/bf16).
#include "simd.h"

namespace TG_ISA_NS {

template <typename WT>
static void embed_t(float* out, const int32_t* tokens, const WT* wte, const float* ws, const float* wpe, int T, int C,
                    int pos0) {
    const int cv = C - C % VW;
    for (int t = 0; t < T; t++) {
        const WT* e = wte + (int64_t)tokens[t] * C;
        const float* p = wpe + (int64_t)(pos0 + t) * C;
        float* o = out + (int64_t)t * C;
        const float s = ws ? ws[tokens[t]] : 1.0f;  // e * 1 is exact: one path with or without scales
        const V vs = vset1(s);
        for (int c = 0; c < cv; c += VW) vstore(o + c, vfma(vload_w(e + c), vs, vload(p + c)));
        for (int c = cv; c < C; c++) o[c] = sload_w(e + c) * s + p[c];
    }
}

void embedding(float* out /*[T,C]*/, const int32_t* tokens /*[T]*/, const void* wte /*[V,C]*/,
               const float* ws /*[V] (int8 only)*/, const float* wpe /*[n_ctx,C]*/, int T, int C, int pos0, int wdtype) {
    if (wdtype == tg::F32)
        embed_t(out, tokens, (const float*)wte, nullptr, wpe, T, C, pos0);
    else if (wdtype == tg::F16)
        embed_t(out, tokens, (const f16_t*)wte, nullptr, wpe, T, C, pos0);
    else if (wdtype == tg::BF16)
        embed_t(out, tokens, (const bf16_t*)wte, nullptr, wpe, T, C, pos0);
    else
        embed_t(out, tokens, (const int8_t*)wte, ws, wpe, T, C, pos0);
}

}  // namespace TG_ISA_NS
