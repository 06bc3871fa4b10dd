// Causal multi-head attention over the KV cache for one ISA level, prefill and single-token decode alike.
// KV cache layout per layer: k_cache/v_cache[H, n_ctx, hd] (a head's keys contiguous). Memory per thread is
// O(QB * n_ctx), never a T x T matrix.
//
// A query's output is bit-for-bit the same whether it is computed alone (a decode step) or inside a prefill
// block of any size or chunking: its arithmetic depends only on its q and keys/values 0..pos, in this order:
//  - q is scaled by 1/sqrt(hd) first;
//  - score of key j: vector lane l chains fma(q[i*VW+l], k_j[i*VW+l]) over i = 0..hd/VW-1 from +0; the VW lanes
//    are summed by reduce_many's fixed tree; the hd % VW tail products are then added in order;
//  - softmax_inplace over scores 0..L-1;
//  - output element d: one chain fma(p_j, v_j[d]) over j = 0..L-1 from +0, times 1 / sum of the exponentials.
// The two paths only group that work differently: decode scores VW keys of one query per reduce_many; prefill
// (AVX2 and AVX-512; the portable level runs every query as decode does) takes a head's queries in blocks of QB,
// scores QT x KT tiles (QT queries x KT keys, QT * KT = VW) per reduce_many and accumulates P.V for PQ queries
// at once, so every key and value row loaded serves several queries. Threads take (head, block) tasks.
#include "omp_compat.h"

#include <cstdlib>
#include <new>

#include "simd.h"

namespace TG_ISA_NS {

#define TG_INLINE static inline __attribute__((always_inline))

// Lane s of the result = the sum of the VW lanes of a[s], by the same tree for every s (lanes l and l + VW/2
// first, then l and l + VW/4, ...): VW horizontal sums for the price of about one.
#if defined(TG_AVX512)
#if defined(TG_SIMDE_AVX512)  // SIMDe 0.7 has this one only under its own name (no native alias)
#define TG_SHUFFLE_F32X4 simde_mm512_shuffle_f32x4
#else
#define TG_SHUFFLE_F32X4 _mm512_shuffle_f32x4
#endif
constexpr int QT = 4, PQ = 4, PI = 4, QB = 16;
TG_INLINE V reduce_many(const V* a) {
    // The network leaves input slot 4e+r in lane 4r+e, so slot x is fed a[4 (x % 4) + x / 4].
    auto in = [a](int x) { return a[4 * (x % 4) + x / 4]; };
    V c[8], e[4], g[2];
    for (int m = 0; m < 8; m++) {
        const V A = in(2 * m), B = in(2 * m + 1);
        c[m] = vadd(TG_SHUFFLE_F32X4(A, B, _MM_SHUFFLE(1, 0, 1, 0)), TG_SHUFFLE_F32X4(A, B, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int n = 0; n < 4; n++) {
        const V C = c[2 * n], D = c[2 * n + 1];
        e[n] = vadd(TG_SHUFFLE_F32X4(C, D, _MM_SHUFFLE(2, 0, 2, 0)), TG_SHUFFLE_F32X4(C, D, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    for (int u = 0; u < 2; u++) {
        const V E = e[2 * u], F = e[2 * u + 1];
        g[u] = vadd(_mm512_shuffle_ps(E, F, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(E, F, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    return vadd(_mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
// Row qi < n of a QT x KT score tile (lanes qi * KT ..) to s + qi * ld, straight from the register: a round trip
// through memory would cost a store-forwarding stall per row.
TG_INLINE void store_tile(float* s, int64_t ld, int n, V r) {
    _mm_storeu_ps(s, _mm512_extractf32x4_ps(r, 0));
    if (n > 1) _mm_storeu_ps(s + ld, _mm512_extractf32x4_ps(r, 1));
    if (n > 2) _mm_storeu_ps(s + 2 * ld, _mm512_extractf32x4_ps(r, 2));
    if (n > 3) _mm_storeu_ps(s + 3 * ld, _mm512_extractf32x4_ps(r, 3));
}
#elif defined(TG_AVX2)
constexpr int QT = 4, PQ = 4, PI = 2, QB = 8;  // 16 registers: 8 accumulators per tile
TG_INLINE V reduce_many(const V* a) {
    // The network leaves input slot 2k+h in lane 4h+k, so slot x is fed a[4 (x % 2) + x / 2].
    auto in = [a](int x) { return a[4 * (x % 2) + x / 2]; };
    V c[4], e[2];
    for (int m = 0; m < 4; m++) {
        const V A = in(2 * m), B = in(2 * m + 1);
        c[m] = vadd(_mm256_permute2f128_ps(A, B, 0x20), _mm256_permute2f128_ps(A, B, 0x31));
    }
    for (int n = 0; n < 2; n++) {
        const V C = c[2 * n], D = c[2 * n + 1];
        e[n] = vadd(_mm256_shuffle_ps(C, D, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(C, D, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    return vadd(_mm256_shuffle_ps(e[0], e[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(e[0], e[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
TG_INLINE void store_tile(float* s, int64_t ld, int n, V r) {
    const __m128 lo = _mm256_castps256_ps128(r), hi = _mm256_extractf128_ps(r, 1);
    _mm_storel_pi((__m64*)s, lo);
    if (n > 1) _mm_storeh_pi((__m64*)(s + ld), lo);
    if (n > 2) _mm_storel_pi((__m64*)(s + 2 * ld), hi);
    if (n > 3) _mm_storeh_pi((__m64*)(s + 3 * ld), hi);
}
#else
constexpr int QT = 2, PQ = 2, PI = 2, QB = 8;
TG_INLINE V reduce_many(const V* a) {  // written as two 4-wide adds, which compilers map to shuffles + addps
    V c0, c1, r;
    for (int l = 0; l < 4; l++) {
        c0.x[l] = a[l / 2].x[l % 2] + a[l / 2].x[l % 2 + 2];
        c1.x[l] = a[2 + l / 2].x[l % 2] + a[2 + l / 2].x[l % 2 + 2];
    }
    for (int l = 0; l < 2; l++) r.x[l] = c0.x[2 * l] + c0.x[2 * l + 1], r.x[2 + l] = c1.x[2 * l] + c1.x[2 * l + 1];
    return r;
}
TG_INLINE void store_tile(float* s, int64_t ld, int n, V r) {
    for (int qi = 0; qi < n; qi++) s[qi * ld] = r.x[2 * qi], s[qi * ld + 1] = r.x[2 * qi + 1];
}
#endif
constexpr int KT = VW / QT;
constexpr int PF_ROWS = 8;  // how far ahead a decode step prefetches value rows (measured: 8 to 32 alike)

// a * b + c for the hd % VW tail elements. Spelled out because GCC contracts a * b + c into an FMA or not
// depending on how a loop was vectorized, and the tails must round the same way in every caller.
static inline float sfma(float a, float b, float c) {
#if defined(TG_AVX2)
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
#elif defined(__FP_FAST_FMAF)
    return std::fmaf(a, b, c);  // e.g. aarch64, where GCC would contract too
#else
    return a * b + c;  // no FMA instruction at this level, so nothing to contract
#endif
}
static_assert(QB % QT == 0 && QB % PQ == 0, "a query block is whole tiles");

// Lane qi * KN + kj of the result = score of query row qi (q + qi * hd) against key row kj (k + kj * hd), for QN
// queries and KN = VW / QN keys. NV: hd / VW when known at compile time, else 0.
template <int QN, int NV>
TG_INLINE V scores_tile(const float* q, const float* k, int hd) {
    constexpr int KN = VW / QN;
    const int nv = NV ? NV : hd / VW;
    const int64_t ld = NV ? NV * VW : hd;
    V acc[VW];
    for (int x = 0; x < VW; x++) acc[x] = vzero();
#pragma GCC unroll 16  // whole: with the loop rolled, the portable level keeps its 4-float structs in memory
    for (int i = 0; i < nv; i++) {
        V kv[KN];
        for (int kj = 0; kj < KN; kj++) kv[kj] = vload(k + kj * ld + i * VW);
        for (int qi = 0; qi < QN; qi++) {
            const V qv = vload(q + qi * ld + i * VW);
            for (int kj = 0; kj < KN; kj++) acc[qi * KN + kj] = vfma(qv, kv[kj], acc[qi * KN + kj]);
        }
    }
    V r = reduce_many(acc);
    if (nv * VW < hd) {
        alignas(64) float s[VW];
        vstore(s, r);
        for (int d = nv * VW; d < hd; d++)
            for (int qi = 0; qi < QN; qi++)
                for (int kj = 0; kj < KN; kj++) s[qi * KN + kj] = sfma(q[qi * ld + d], k[kj * ld + d], s[qi * KN + kj]);
        r = vload(s);
    }
    return r;
}

// Rows [j0, end) of K, then zero rows up to n: a tile's keys past the last one, scored and never used.
static const float* pad_rows(float* buf, const float* K, int j0, int end, int n, int hd) {
    std::memcpy(buf, K + (int64_t)j0 * hd, sizeof(float) * (size_t)(end - j0) * hd);
    std::memset(buf + (size_t)(end - j0) * hd, 0, sizeof(float) * (size_t)(n - (end - j0)) * hd);
    return buf;
}

// Softmax of the scaled scores sc[0..L), in place, left unnormalized; returns 1 / sum of the exponentials.
static float softmax_inplace(float* sc, int L) {
    const int Lv = L - L % VW;
    V vmx = vset1(-3.0e38f);
    for (int i = 0; i < Lv; i += VW) vmx = vmax(vmx, vload(sc + i));
    float mx = vhmax(vmx);
    for (int i = Lv; i < L; i++) mx = sc[i] > mx ? sc[i] : mx;
    V vsum_ = vzero(), vmv = vset1(mx);
    for (int i = 0; i < Lv; i += VW) {
        V e = vexp(vsub(vload(sc + i), vmv));
        vstore(sc + i, e);
        vsum_ = vadd(vsum_, e);
    }
    float sum = vsum(vsum_);
    if (Lv < L) {  // the tail's exponentials in one vector (lane-wise, so the same bits), summed in order
        alignas(64) float t[VW] = {};
        std::memcpy(t, sc + Lv, sizeof(float) * (L - Lv));
        vstore(t, vexp(vsub(vload(t), vmv)));
        for (int i = Lv; i < L; i++) sc[i] = t[i - Lv], sum += t[i - Lv];
    }
    return 1.0f / sum;
}

// o[qi] = (sum over j < L[qi] of p[qi][j] v_j) * inv[qi] for QN queries. Keys below the smallest L are loaded once
// for all QN; each query then finishes its own keys, continuing the same chains.
template <int QN, int NV>
static void pv_tile(float* const* o, const float* const* p, const int* L, const float* inv, const float* Vc, int hd) {
    // vectors of a row per pass (QN * NI accumulators); one query (decode) takes a whole row at once, as every
    // extra pass would read all of V again
    constexpr int NI = QN == 1 ? 16 : PI * PQ / QN;
    const int nv = NV ? NV : hd / VW;
    int Lmin = L[0];
    for (int qi = 1; qi < QN; qi++) Lmin = imin(Lmin, L[qi]);
    for (int i0 = 0; i0 < nv; i0 += NI) {
        const int ni = imin(NI, nv - i0);
        V acc[QN][NI];
        for (int qi = 0; qi < QN; qi++)
            for (int ii = 0; ii < NI; ii++) acc[qi][ii] = vzero();
        for (int j = 0; j < Lmin; j++) {
            const float* vr = Vc + (int64_t)j * hd + i0 * VW;
            if (QN == 1 && j + PF_ROWS < Lmin)  // decode: one query per value row, so its lines are asked for ahead
                for (int b = 0; b < hd; b += 64 / (int)sizeof(float)) __builtin_prefetch(vr + PF_ROWS * hd + b);
            V pv[QN];
            for (int qi = 0; qi < QN; qi++) pv[qi] = vset1(p[qi][j]);
#pragma GCC unroll 16
            for (int ii = 0; ii < NI; ii++) {
                if (ii >= ni) break;
                const V v = vload(vr + ii * VW);
                for (int qi = 0; qi < QN; qi++) acc[qi][ii] = vfma(pv[qi], v, acc[qi][ii]);
            }
        }
        for (int qi = 0; qi < QN; qi++) {
            for (int j = Lmin; j < L[qi]; j++) {
                const float* vr = Vc + (int64_t)j * hd + i0 * VW;
                const V pv = vset1(p[qi][j]);
                for (int ii = 0; ii < NI; ii++) {
                    if (ii >= ni) break;
                    acc[qi][ii] = vfma(pv, vload(vr + ii * VW), acc[qi][ii]);
                }
            }
            const V vi = vset1(inv[qi]);
            for (int ii = 0; ii < ni; ii++) vstore(o[qi] + (i0 + ii) * VW, vmul(acc[qi][ii], vi));
        }
    }
    for (int d = nv * VW; d < hd; d++)
        for (int qi = 0; qi < QN; qi++) {
            float a = 0.0f;
            for (int j = 0; j < L[qi]; j++) a = sfma(p[qi][j], Vc[(int64_t)j * hd + d], a);
            o[qi][d] = a * inv[qi];
        }
}

// One query (q already scaled) against keys 0..L-1. sc: L + VW floats; kbuf: VW * hd.
template <int NV>
static void attend_one(float* o, const float* q, const float* K, const float* Vc, int L, int hd, float* sc,
                       float* kbuf) {
    // Whole tiles from the first and the second half in turn: two streams read the cache faster than one.
    const int nfull = L / VW, half = nfull / 2 * VW;
    for (int j0 = 0; j0 < half; j0 += VW) {
        vstore(sc + j0, scores_tile<1, NV>(q, K + (int64_t)j0 * hd, hd));
        vstore(sc + half + j0, scores_tile<1, NV>(q, K + (int64_t)(half + j0) * hd, hd));
    }
    int j0 = 2 * half;
    for (; j0 + VW <= L; j0 += VW) vstore(sc + j0, scores_tile<1, NV>(q, K + (int64_t)j0 * hd, hd));
    if (j0 < L) vstore(sc + j0, scores_tile<1, NV>(q, pad_rows(kbuf, K, j0, L, VW, hd), hd));
    const float inv = softmax_inplace(sc, L);
    const float* p = sc;
    pv_tile<1, NV>(&o, &p, &L, &inv, Vc, hd);
}

// nq <= QB consecutive queries (q rows already scaled, stride hd, zero rows after nq up to a whole tile) at key
// counts L0, L0 + 1, ...; sc: QB rows of ld; kbuf: KT * hd.
template <int NV>
static void attend_block(float* o, int o_stride, const float* q, const float* K, const float* Vc, int nq, int L0,
                         int hd, float* sc, int ld, float* kbuf) {
    const int Lmax = L0 + nq - 1;
    for (int j0 = 0; j0 < Lmax; j0 += KT) {  // key tile outer: its KT rows stay in L1 for every query tile
        const float* k = j0 + KT <= Lmax ? K + (int64_t)j0 * hd : pad_rows(kbuf, K, j0, Lmax, KT, hd);
        for (int r0 = 0; r0 < nq; r0 += QT) {
            if (j0 >= L0 + imin(r0 + QT, nq) - 1) continue;  // every key this tile needs is done
            store_tile(sc + (int64_t)r0 * ld + j0, ld, imin(QT, nq - r0), scores_tile<QT, NV>(q + (int64_t)r0 * hd, k, hd));
        }
    }
    float inv[QB];
    int L[QB];
    for (int r = 0; r < nq; r++) L[r] = L0 + r, inv[r] = softmax_inplace(sc + (int64_t)r * ld, L[r]);
    for (int r0 = 0; r0 < nq; r0 += PQ) {
        float* op[PQ];
        const float* pp[PQ];
        int Lp[PQ];
        float ip[PQ];
        for (int qi = 0; qi < PQ; qi++) {
            const int r = imin(r0 + qi, nq - 1);  // past nq: the last query again, written twice with the same bits
            op[qi] = o + (int64_t)r * o_stride, pp[qi] = sc + (int64_t)r * ld, Lp[qi] = L[r], ip[qi] = inv[r];
        }
        pv_tile<PQ, NV>(op, pp, Lp, ip, Vc, hd);
    }
}

template <int NV>
static void attention_t(float* out, const float* qkv, const float* k_cache, const float* v_cache, int T, int pos0,
                        int H, int hd, int n_ctx) {
    const int C = H * hd;
    const int nt = tg::num_threads();
    const int L_max = pos0 + T;
    const float scale = 1.0f / std::sqrt((float)hd);
    // Fewer queries than a score tile: one task per (head, query), as in a decode step. So at the portable level
    // (VW 4), where compilers turn the tiles' arrays of 4-float structs into scalar code (measured 30% slower).
    const bool single = T < QT || VW == 4;
    const int nb = single ? T : (T + QB - 1) / QB;  // query blocks per head
    const int rows = single ? 1 : QB;
    const int ld = L_max + VW;
    // scaled q rows, score rows, a padded key tile
    const size_t per_thread = (size_t)rows * hd + (size_t)rows * ld + (size_t)VW * hd + VW;
    float* scratch = (float*)std::malloc(per_thread * nt * sizeof(float));
    if (!scratch) throw std::bad_alloc();
    const int tasks = H * nb;
#pragma omp parallel num_threads(nt)
    {
        float* qs = scratch + per_thread * omp_get_thread_num();
        float* sc = qs + (size_t)rows * hd;
        float* kbuf = sc + (size_t)rows * ld;
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < tasks; task++) {
            // a head's blocks one after another, its keys and values staying in cache; the longest first
            const int h = task / nb, b = nb - 1 - task % nb;
            const float* K = k_cache + (int64_t)h * n_ctx * hd;
            const float* Vc = v_cache + (int64_t)h * n_ctx * hd;
            const int t0 = b * rows, nq = imin(rows, T - t0);
            for (int r = 0; r < nq; r++) {
                const float* q = qkv + (int64_t)(t0 + r) * 3 * C + h * hd;
                for (int d = 0; d < hd; d++) qs[r * hd + d] = q[d] * scale;
            }
            const int nq_tiles = (nq + QT - 1) / QT * QT;
            if (!single) std::memset(qs + (size_t)nq * hd, 0, sizeof(float) * (size_t)(nq_tiles - nq) * hd);
            float* o = out + (int64_t)t0 * C + h * hd;
            if (single)
                attend_one<NV>(o, qs, K, Vc, pos0 + t0 + 1, hd, sc, kbuf);
            else
                attend_block<NV>(o, C, qs, K, Vc, nq, pos0 + t0 + 1, hd, sc, ld, kbuf);
        }
    }
    std::free(scratch);
}

void attention(float* out /*[T,C]*/, const float* qkv /*[T,3C]*/, float* k_cache /*[H,n_ctx,hd]*/,
               float* v_cache /*[H,n_ctx,hd]*/, int T, int pos0, int H, int hd, int n_ctx) {
    const int C = H * hd;
    for (int t = 0; t < T; t++) {
        const float* row = qkv + (int64_t)t * 3 * C;
        for (int h = 0; h < H; h++) {
            float* kd = k_cache + ((int64_t)h * n_ctx + pos0 + t) * hd;
            float* vd = v_cache + ((int64_t)h * n_ctx + pos0 + t) * hd;
            std::memcpy(kd, row + C + h * hd, sizeof(float) * hd);
            std::memcpy(vd, row + 2 * C + h * hd, sizeof(float) * hd);
        }
    }
    if (hd == 64)
        attention_t<64 / VW>(out, qkv, k_cache, v_cache, T, pos0, H, hd, n_ctx);
    else if (hd == 128)
        attention_t<128 / VW>(out, qkv, k_cache, v_cache, T, pos0, H, hd, n_ctx);
    else
        attention_t<0>(out, qkv, k_cache, v_cache, T, pos0, H, hd, n_ctx);
}

}  // namespace TG_ISA_NS
