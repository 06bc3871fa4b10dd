// Vector helpers for one ISA level, picked by the compiler flags of the translation unit that includes it
// (AVX-512 / AVX2+FMA+F16C / SSE2 / portable scalar). Everything lives in the TU's TG_ISA_NS namespace so no
// wide instruction can leak into another level's code through a shared inline symbol.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(TG_SIMDE_AVX512)
#include "avx512_emulation.h"  // test builds only: the AVX-512 path on portable intrinsics
#define TG_AVX512 1
#define TG_AVX2 1
#define TG_F16C 1
#else
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
#define TG_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define TG_AVX2 1
#endif
#if defined(__F16C__)
#define TG_F16C 1
#endif
#endif
// Full unrolling of a loop over a register tile (a compile-time count): GCC keeps an array of vector accumulators
// in registers only when its loops are unrolled before scalar replacement; otherwise it builds the array on the
// stack and copies it in and out of registers around the k loop (24 vector stores and loads per tile, each end).
// Not at the portable level: there scalar replacement splits the 4-float structs into lanes and the loop goes
// scalar (a K = 3072 GEMM 52 -> 18 GFLOP/s).
#if !defined(TG_AVX2)
#define TG_UNROLL
#elif defined(__clang__)
#define TG_UNROLL _Pragma("unroll")
#else
#define TG_UNROLL _Pragma("GCC unroll 64")
#endif
#include "common.h"

namespace TG_ISA_NS {

static inline int imin(int a, int b) { return a < b ? a : b; }

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

#if defined(TG_AVX2)
// 8 stored weights as 8 floats: the AVX2 build's vector loads, and the AVX2 part (GEMM panel packing) of the
// AVX-512 build.
static inline __m256 cvt8_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
static inline __m256 cvt8_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline __m256 cvt8_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
#endif

#if defined(TG_AVX512)
constexpr int VW = 16;
typedef __m512 V;
static inline V vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
static inline V vset1(float x) { return _mm512_set1_ps(x); }
static inline V vzero() { return _mm512_setzero_ps(); }
static inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
static inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
static inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
static inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vsum(V v) { return _mm512_reduce_add_ps(v); }
static inline float vhmax(V v) { return _mm512_reduce_max_ps(v); }
static inline V vload_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
static inline V vload_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline V vload_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
static inline V vround(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline V vpow2i(V n) {  // 2^n for integral n in [-126, 127]
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
#elif defined(TG_AVX2)
constexpr int VW = 8;
typedef __m256 V;
static inline V vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
static inline V vset1(float x) { return _mm256_set1_ps(x); }
static inline V vzero() { return _mm256_setzero_ps(); }
static inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
static inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
static inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
static inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }
static inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float vhmax(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline V vload_f16(const uint16_t* p) { return cvt8_f16(p); }
static inline V vload_bf16(const uint16_t* p) { return cvt8_bf16(p); }
static inline V vload_i8(const int8_t* p) { return cvt8_i8(p); }
static inline V vround(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline V vpow2i(V n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
#else
// Portable baseline: 4-wide array type the compiler maps to SSE2 on x86-64 (no FMA, no F16C).
constexpr int VW = 4;
struct V { float x[4]; };
static inline V vload(const float* p) { V v; std::memcpy(v.x, p, 16); return v; }
static inline void vstore(float* p, V v) { std::memcpy(p, v.x, 16); }
static inline V vset1(float a) { V v; for (int i = 0; i < 4; i++) v.x[i] = a; return v; }
static inline V vzero() { return vset1(0.f); }
#define TG_V_BINOP(name, expr) \
    static inline V name(V a, V b) { V r; for (int i = 0; i < 4; i++) { float x = a.x[i], y = b.x[i]; r.x[i] = (expr); } return r; }
TG_V_BINOP(vadd, x + y)
TG_V_BINOP(vsub, x - y)
TG_V_BINOP(vmul, x * y)
TG_V_BINOP(vdiv, x / y)
TG_V_BINOP(vmax, x > y ? x : y)
TG_V_BINOP(vmin, x < y ? x : y)
#undef TG_V_BINOP
static inline V vfma(V a, V b, V c) { V r; for (int i = 0; i < 4; i++) r.x[i] = a.x[i] * b.x[i] + c.x[i]; return r; }
static inline float vsum(V v) { return (v.x[0] + v.x[2]) + (v.x[1] + v.x[3]); }
static inline float vhmax(V v) { float m = v.x[0]; for (int i = 1; i < 4; i++) m = v.x[i] > m ? v.x[i] : m; return m; }
static inline V vload_f16(const uint16_t* p) { V v; for (int i = 0; i < 4; i++) v.x[i] = half_to_float(p[i]); return v; }
static inline V vload_bf16(const uint16_t* p) { V v; for (int i = 0; i < 4; i++) v.x[i] = bf16_to_float(p[i]); return v; }
static inline V vload_i8(const int8_t* p) { V v; for (int i = 0; i < 4; i++) v.x[i] = (float)p[i]; return v; }
static inline V vround(V a) { V r; for (int i = 0; i < 4; i++) r.x[i] = std::nearbyint(a.x[i]); return r; }
static inline V vpow2i(V n) {
    V r;
    for (int i = 0; i < 4; i++) { uint32_t b = (uint32_t)((int)n.x[i] + 127) << 23; std::memcpy(&r.x[i], &b, 4); }
    return r;
}
#endif

template <typename WT> static inline V vload_w(const WT* p);
template <> inline V vload_w<float>(const float* p) { return vload(p); }
struct f16_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };
template <> inline V vload_w<f16_t>(const f16_t* p) { return vload_f16((const uint16_t*)p); }
template <> inline V vload_w<bf16_t>(const bf16_t* p) { return vload_bf16((const uint16_t*)p); }
template <> inline V vload_w<int8_t>(const int8_t* p) { return vload_i8(p); }
static inline float sload_w(const int8_t* p) { return (float)*p; }
static inline float sload_w(const float* p) { return *p; }
#if defined(TG_F16C)
static inline float sload_w(const f16_t* p) { return _cvtsh_ss(p->bits); }
#else
static inline float sload_w(const f16_t* p) { return half_to_float(p->bits); }
#endif
static inline float sload_w(const bf16_t* p) { return bf16_to_float(p->bits); }

// e^x: Cody-Waite range reduction + degree-6 polynomial; relative error ~2 ulp on [-87, 88].
static inline V vexp(V x) {
    x = vmax(vmin(x, vset1(88.0f)), vset1(-87.0f));
    V n = vround(vmul(x, vset1(1.44269504088896341f)));
    V r = vfma(n, vset1(-0.693359375f), x);
    r = vfma(n, vset1(2.12194440e-4f), r);
    V p = vset1(1.0f / 720.0f);
    p = vfma(p, r, vset1(1.0f / 120.0f));
    p = vfma(p, r, vset1(1.0f / 24.0f));
    p = vfma(p, r, vset1(1.0f / 6.0f));
    p = vfma(p, r, vset1(0.5f));
    p = vfma(p, r, vset1(1.0f));
    p = vfma(p, r, vset1(1.0f));
    return vmul(p, vpow2i(n));
}

// GELU, tanh form: 0.5 x (1 + tanh(u)), tanh(u) = 1 - 2 / (1 + e^{2u}); u clamped where tanh is +-1 in float.
static inline V vgelu(V x) {
    V u = vmul(vset1(0.7978845608028654f), vfma(vmul(vset1(0.044715f), vmul(x, x)), x, x));
    u = vmax(vmin(u, vset1(10.0f)), vset1(-10.0f));
    V e = vexp(vadd(u, u));
    V t = vsub(vset1(1.0f), vdiv(vset1(2.0f), vadd(vset1(1.0f), e)));
    return vmul(vmul(vset1(0.5f), x), vadd(vset1(1.0f), t));
}
static inline float sgelu(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + std::tanh(u));
}

}  // namespace TG_ISA_NS
