// Causal multi-head attention over the KV cache for one ISA level, prefill and single-token decode alike.
// KV cache layout per layer: k_cache/v_cache[H, n_ctx, hd] (a head's keys contiguous). Each (head, query)
// pair is one task: scores for keys 0..pos, softmax, weighted sum of values; memory O(n_ctx) per thread,
// never a T x T matrix.
#include "omp_compat.h"

#include <cstdlib>
#include <new>

#include "simd.h"

namespace TG_ISA_NS {

static inline float dot(const float* a, const float* b, int n) {
    const int nv = n - n % VW;
    V acc = vzero();
    for (int i = 0; i < nv; i += VW) acc = vfma(vload(a + i), vload(b + i), acc);
    float s = vsum(acc);
    for (int i = nv; i < n; i++) s += a[i] * b[i];
    return s;
}

// 4 keys at once: one pass over q, four independent accumulators.
static inline void dot4(float* s, const float* q, const float* k0, int hd, int n) {
    const int nv = n - n % VW;
    const float *k1 = k0 + hd, *k2 = k1 + hd, *k3 = k2 + hd;
    V a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    for (int i = 0; i < nv; i += VW) {
        V qv = vload(q + i);
        a0 = vfma(qv, vload(k0 + i), a0);
        a1 = vfma(qv, vload(k1 + i), a1);
        a2 = vfma(qv, vload(k2 + i), a2);
        a3 = vfma(qv, vload(k3 + i), a3);
    }
    s[0] = vsum(a0), s[1] = vsum(a1), s[2] = vsum(a2), s[3] = vsum(a3);
    for (int i = nv; i < n; i++) {
        s[0] += q[i] * k0[i], s[1] += q[i] * k1[i], s[2] += q[i] * k2[i], s[3] += q[i] * k3[i];
    }
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
    for (int i = Lv; i < L; i++) {
        float ev;
        V e = vexp(vset1(sc[i] - mx));
        std::memcpy(&ev, &e, sizeof(float));
        sc[i] = ev;
        sum += ev;
    }
    return 1.0f / sum;
}

// Any head size: q, K rows and the output accumulator go through memory.
static void attend_any(float* o, const float* q, const float* K, const float* Vc, int L, int hd, float scale,
                       float* sc, float* acc) {
    int j = 0;
    for (; j + 4 <= L; j += 4) dot4(sc + j, q, K + (int64_t)j * hd, hd, hd);
    for (; j < L; j++) sc[j] = dot(q, K + (int64_t)j * hd, hd);
    for (int i = 0; i < L; i++) sc[i] *= scale;
    const float inv = softmax_inplace(sc, L);
    const int hv = hd - hd % VW;
    for (int i = 0; i < hd; i++) acc[i] = 0.0f;
    for (int jj = 0; jj < L; jj++) {
        const float p = sc[jj];
        const float* vr = Vc + (int64_t)jj * hd;
        V pv = vset1(p);
        for (int i = 0; i < hv; i += VW) vstore(acc + i, vfma(pv, vload(vr + i), vload(acc + i)));
        for (int i = hv; i < hd; i++) acc[i] += p * vr[i];
    }
    for (int i = 0; i < hd; i++) o[i] = acc[i] * inv;
}

// Head size NV * VW (64 for GPT-2): q and the output accumulator live in registers. Keys and values are read
// as two streams, from the start and from the middle of the head's cache rows: a decode step is bound by
// reading the KV cache, and two streams per thread read it faster than one (as in the GEMV).
template <int NV>
static void attend_fixed(float* o, const float* q, const float* K, const float* Vc, int L, float scale, float* sc) {
    constexpr int HD = NV * VW;
    V qv[NV];
    for (int i = 0; i < NV; i++) qv[i] = vmul(vload(q + i * VW), vset1(scale));
    const int h = (L / 4) * 2;  // keys [0, h) and [h, 2h) in lockstep, two at a time each; then [2h, L)
    for (int j = 0; j < h; j += 2) {
        const float *k0 = K + (int64_t)j * HD, *k1 = K + (int64_t)(h + j) * HD;
        V a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
        for (int i = 0; i < NV; i++) {
            a0 = vfma(qv[i], vload(k0 + i * VW), a0);
            a1 = vfma(qv[i], vload(k0 + HD + i * VW), a1);
            a2 = vfma(qv[i], vload(k1 + i * VW), a2);
            a3 = vfma(qv[i], vload(k1 + HD + i * VW), a3);
        }
        sc[j] = vsum(a0), sc[j + 1] = vsum(a1), sc[h + j] = vsum(a2), sc[h + j + 1] = vsum(a3);
    }
    for (int j = 2 * h; j < L; j++) {
        V a = vzero();
        for (int i = 0; i < NV; i++) a = vfma(qv[i], vload(K + (int64_t)j * HD + i * VW), a);
        sc[j] = vsum(a);
    }
    const float inv = softmax_inplace(sc, L);
    V acc[NV];
    for (int i = 0; i < NV; i++) acc[i] = vzero();
    for (int jj = 0; jj < h; jj++) {
        const V p0 = vset1(sc[jj]), p1 = vset1(sc[h + jj]);
        const float *v0 = Vc + (int64_t)jj * HD, *v1 = Vc + (int64_t)(h + jj) * HD;
        for (int i = 0; i < NV; i++) acc[i] = vfma(p1, vload(v1 + i * VW), vfma(p0, vload(v0 + i * VW), acc[i]));
    }
    for (int jj = 2 * h; jj < L; jj++) {
        const V p = vset1(sc[jj]);
        const float* vr = Vc + (int64_t)jj * HD;
        for (int i = 0; i < NV; i++) acc[i] = vfma(p, vload(vr + i * VW), acc[i]);
    }
    const V vi = vset1(inv);
    for (int i = 0; i < NV; i++) vstore(o + i * VW, vmul(acc[i], vi));
}

void attention(float* out /*[T,C]*/, const float* qkv /*[T,3C]*/, float* k_cache /*[H,n_ctx,hd]*/,
               float* v_cache /*[H,n_ctx,hd]*/, int T, int pos0, int H, int hd, int n_ctx) {
    const int C = H * hd;
    const int nt = tg::num_threads();
    for (int t = 0; t < T; t++) {
        const float* row = qkv + (int64_t)t * 3 * C;
        for (int h = 0; h < H; h++) {
            float* kd = k_cache + ((int64_t)h * n_ctx + pos0 + t) * hd;
            float* vd = v_cache + ((int64_t)h * n_ctx + pos0 + t) * hd;
            for (int i = 0; i < hd; i++) kd[i] = row[C + h * hd + i], vd[i] = row[2 * C + h * hd + i];
        }
    }
    const int L_max = pos0 + T;
    // per thread: scores[L_max] + acc[hd]
    const size_t per_thread = (size_t)L_max + hd + VW;
    float* scratch = (float*)std::malloc(per_thread * nt * sizeof(float));
    if (!scratch) throw std::bad_alloc();
    const float scale = 1.0f / std::sqrt((float)hd);
    const int tasks = H * T;
    // Chunks of 4 tasks amortize scheduling in prefill; a decode step (T = 1, 12 heads) needs single tasks, or
    // 12 heads in chunks of 4 split 8 : 4 over two threads.
    const int chunk = tasks >= 16 * nt ? 4 : 1;
#pragma omp parallel num_threads(nt)
    {
        float* sc = scratch + per_thread * omp_get_thread_num();
        float* acc = sc + L_max;
#pragma omp for schedule(dynamic, chunk)
        for (int task = 0; task < tasks; task++) {
            const int h = task % H, t = task / H;
            const int L = pos0 + t + 1;  // keys visible to this query
            const float* q = qkv + (int64_t)t * 3 * C + h * hd;
            const float* K = k_cache + (int64_t)h * n_ctx * hd;
            const float* Vc = v_cache + (int64_t)h * n_ctx * hd;
            float* o = out + (int64_t)t * C + h * hd;
            if (hd == 64)
                attend_fixed<64 / VW>(o, q, K, Vc, L, scale, sc);
            else
                attend_any(o, q, K, Vc, L, hd, scale, sc, acc);
        }
    }
    std::free(scratch);
}

}  // namespace TG_ISA_NS
