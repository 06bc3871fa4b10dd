// Test builds only (TINYGPT_EMULATE_AVX512 → TG_SIMDE_AVX512): the AVX-512 intrinsics that the kernels use,
// as SIMDe's portable implementations, plus scalar stand-ins for the few that SIMDe 0.7 lacks. Lets
// tools/avx512_emulated.sh run the AVX-512 code path on CPUs without AVX-512. Never part of a release build.
#pragma once
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tg_emu {

inline simde__m512 from16(const float (&f)[16]) { return simde_mm512_loadu_ps(f); }
inline simde__m512i from16(const int32_t (&v)[16]) { return simde_mm512_loadu_si512(v); }

inline simde__m512 cvtepi32_ps(simde__m512i a) {
    int32_t v[16];
    float f[16];
    simde_mm512_storeu_si512(v, a);
    for (int i = 0; i < 16; i++) f[i] = (float)v[i];
    return from16(f);
}
// 16 lanes of T (the whole of the source vector) widened to int32.
template <typename T, typename Vin>
inline simde__m512i widen16(Vin a) {
    static_assert(sizeof(Vin) == 16 * sizeof(T), "source vector must hold exactly 16 lanes");
    T b[16];
    int32_t v[16];
    std::memcpy(b, &a, sizeof b);
    for (int i = 0; i < 16; i++) v[i] = b[i];
    return from16(v);
}
inline simde__m512i cvtepi8_epi32(simde__m128i a) { return widen16<int8_t>(a); }
inline simde__m512i cvtepu16_epi32(simde__m256i a) { return widen16<uint16_t>(a); }
inline simde__m512 cvtph_ps(simde__m256i a) {  // IEEE binary16 -> float, exact (subnormals included)
    uint16_t h[16];
    float f[16];
    simde_mm256_storeu_si256((simde__m256i*)h, a);
    for (int i = 0; i < 16; i++) {
        const int e = (h[i] >> 10) & 0x1F, m = h[i] & 0x3FF;
        const float v = e == 31 ? (m ? NAN : INFINITY) : e ? std::ldexp((float)(m | 0x400), e - 25) : std::ldexp((float)m, -24);
        f[i] = (h[i] & 0x8000) ? -v : v;
    }
    return from16(f);
}
inline simde__m512i cvtps_epi32(simde__m512 a) {  // default rounding: to nearest even
    float f[16];
    int32_t v[16];
    simde_mm512_storeu_ps(f, a);
    for (int i = 0; i < 16; i++) v[i] = (int32_t)std::nearbyint(f[i]);
    return from16(v);
}
inline float reduce_add_ps(simde__m512 a) {  // pairwise halving, as the hardware sequence adds
    float f[16];
    simde_mm512_storeu_ps(f, a);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) f[i] += f[i + w];
    return f[0];
}
inline float reduce_max_ps(simde__m512 a) {
    float f[16];
    simde_mm512_storeu_ps(f, a);
    float m = f[0];
    for (int i = 1; i < 16; i++) m = f[i] > m ? f[i] : m;
    return m;
}

}  // namespace tg_emu

// immintrin.h (pulled in by SIMDe) declares these for real AVX-512 targets only; point the names at the stand-ins.
#define _mm512_cvtepi32_ps tg_emu::cvtepi32_ps
#define _mm512_cvtepi8_epi32 tg_emu::cvtepi8_epi32
#define _mm512_cvtepu16_epi32 tg_emu::cvtepu16_epi32
#define _mm512_cvtph_ps tg_emu::cvtph_ps
#define _mm512_cvtps_epi32 tg_emu::cvtps_epi32
#define _mm512_reduce_add_ps tg_emu::reduce_add_ps
#define _mm512_reduce_max_ps tg_emu::reduce_max_ps

