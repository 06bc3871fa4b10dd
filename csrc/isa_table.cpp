// The kernel table of one ISA level (this file is compiled once per level, like every kernel file).
#include "simd.h"

namespace TG_ISA_NS {

void matmul(float*, const float*, const void*, const float*, const float*, int, int, int, int, int);
void matmul_argmax(float*, const float*, const void*, const float*, const int8_t*, const float*, const float*, int,
                   int, int, int, int32_t*, int32_t*);
void layernorm(float*, const float*, const float*, const float*, int, int, float);
void attention(float*, const float*, float*, float*, int, int, int, int, int);
void gelu(float*, const float*, int64_t);
void embedding(float*, const int32_t*, const void*, const float*, const float*, int, int, int, int);

#define TG_STR2(x) #x
#define TG_STR(x) TG_STR2(x)

const tg::KernelTable& table() {
    static const tg::KernelTable t = {TG_ISA_NAME, matmul, matmul_argmax, layernorm, attention, gelu, embedding};
    return t;
}

}  // namespace TG_ISA_NS
