// Causal softmax attention on the GPU over the device KV cache [H, n_ctx, hd] per layer.
// Prefill (T > 1): one warp per (head, query), online softmax over its keys; no T x T matrix.
// Decode (T == 1): the keys are split in chunks of SPLIT across warps (flash-decoding), each writes a partial
// (max, sum, acc[hd]); a second kernel combines them. The position is read from device memory so the decode
// step can be captured once as a CUDA graph; chunks past the current length write an empty partial.
#include "common.cuh"

namespace tgc {

namespace {
constexpr int MAXE = 4;    // head_dim up to 128 (GPT-2 uses 64)
constexpr int SPLIT = 32;  // keys per warp in decode

__global__ void kv_write_kernel(float* kc, float* vc, const float* qkv, int T, const int* d_pos, int H, int hd, int n_ctx) {
    const int C = H * hd;
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)T * C) return;
    const int t = (int)(i / C), c = (int)(i % C), h = c / hd, d = c % hd;
    const int64_t dst = ((int64_t)h * n_ctx + *d_pos + t) * hd + d;
    kc[dst] = qkv[(int64_t)t * 3 * C + C + c];
    vc[dst] = qkv[(int64_t)t * 3 * C + 2 * C + c];
}

struct Online {
    float m = -INFINITY, l = 0.f, acc[MAXE] = {0.f, 0.f, 0.f, 0.f};
    __device__ void run(const float* q, const float* K, const float* V, int j0, int j1, int hd, int lane) {
        for (int j = j0; j < j1; j++) {
            const float* k = K + (int64_t)j * hd;
            float s = 0.f;
#pragma unroll
            for (int e = 0; e < MAXE; e++) {
                const int d = lane + 32 * e;
                if (d < hd) s += q[e] * k[d];
            }
            s = warp_sum(s);
            const float m_new = fmaxf(m, s), corr = expf(m - m_new), p = expf(s - m_new);
            l = l * corr + p;
            const float* v = V + (int64_t)j * hd;
#pragma unroll
            for (int e = 0; e < MAXE; e++) {
                const int d = lane + 32 * e;
                acc[e] = acc[e] * corr + (d < hd ? p * v[d] : 0.f);
            }
            m = m_new;
        }
    }
};

__device__ __forceinline__ void load_q(float* q, const float* qkv_row, int h, int hd, int lane, float scale) {
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        const int d = lane + 32 * e;
        q[e] = d < hd ? qkv_row[h * hd + d] * scale : 0.f;
    }
}

__global__ void attn_rows_kernel(float* out, const float* qkv, const float* kc, const float* vc, int T, const int* d_pos,
                                 int H, int hd, int n_ctx, float scale) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= H * T) return;
    const int h = warp % H, t = warp / H, C = H * hd;
    float q[MAXE];
    load_q(q, qkv + (int64_t)t * 3 * C, h, hd, lane, scale);
    Online o;
    o.run(q, kc + (int64_t)h * n_ctx * hd, vc + (int64_t)h * n_ctx * hd, 0, *d_pos + t + 1, hd, lane);
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        const int d = lane + 32 * e;
        if (d < hd) out[(int64_t)t * C + h * hd + d] = o.acc[e] / o.l;
    }
}

__global__ void attn_decode_partial_kernel(float* part, const float* qkv, const float* kc, const float* vc,
                                           const int* d_pos, int H, int hd, int n_ctx, int nsplit, float scale) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= H * nsplit) return;
    const int h = warp / nsplit, sp = warp % nsplit;
    const int L = *d_pos + 1, j0 = sp * SPLIT, j1 = min(L, j0 + SPLIT);
    float q[MAXE];
    load_q(q, qkv, h, hd, lane, scale);
    Online o;
    o.run(q, kc + (int64_t)h * n_ctx * hd, vc + (int64_t)h * n_ctx * hd, j0, j1, hd, lane);
    float* p = part + (int64_t)warp * (2 + hd);
    if (lane == 0) p[0] = o.m, p[1] = o.l;
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        const int d = lane + 32 * e;
        if (d < hd) p[2 + d] = o.acc[e];
    }
}

__global__ void attn_decode_combine_kernel(float* out, const float* part, int H, int hd, int nsplit) {
    const int h = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (h >= H) return;
    const float* p = part + (int64_t)h * nsplit * (2 + hd);
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, p[s * (2 + hd)]);
    float l = 0.f, acc[MAXE] = {0.f, 0.f, 0.f, 0.f};
    for (int s = 0; s < nsplit; s++) {
        const float* ps = p + s * (2 + hd);
        if (ps[1] == 0.f) continue;  // empty chunk (past the current length)
        const float w = expf(ps[0] - M);
        l += ps[1] * w;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            const int d = lane + 32 * e;
            if (d < hd) acc[e] += ps[2 + d] * w;
        }
    }
#pragma unroll
    for (int e = 0; e < MAXE; e++) {
        const int d = lane + 32 * e;
        if (d < hd) out[h * hd + d] = acc[e] / l;
    }
}
}  // namespace

size_t attention_scratch_floats(int H, int hd, int n_ctx) {
    return (size_t)H * ((n_ctx + SPLIT - 1) / SPLIT) * (2 + hd);
}

void launch_attention(float* out /*[T,C]*/, const float* qkv /*[T,3C]*/, float* kc /*[H,n_ctx,hd]*/,
                      float* vc /*[H,n_ctx,hd]*/, int T, const int* d_pos, int H, int hd, int n_ctx, float* scratch,
                      cudaStream_t s) {
    if (hd > 32 * MAXE) throw std::invalid_argument("attention: head_dim > 128 is not supported on CUDA");
    const int C = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    kv_write_kernel<<<(unsigned)(((int64_t)T * C + 255) / 256), 256, 0, s>>>(kc, vc, qkv, T, d_pos, H, hd, n_ctx);
    TGC_LAUNCHED("attention kv write");
    if (T == 1) {
        const int nsplit = (n_ctx + SPLIT - 1) / SPLIT;
        attn_decode_partial_kernel<<<(H * nsplit + 3) / 4, 128, 0, s>>>(scratch, qkv, kc, vc, d_pos, H, hd, n_ctx,
                                                                         nsplit, scale);
        TGC_LAUNCHED("attention decode");
        attn_decode_combine_kernel<<<(H + 3) / 4, 128, 0, s>>>(out, scratch, H, hd, nsplit);
        TGC_LAUNCHED("attention combine");
    } else {
        attn_rows_kernel<<<(H * T + 3) / 4, 128, 0, s>>>(out, qkv, kc, vc, T, d_pos, H, hd, n_ctx, scale);
        TGC_LAUNCHED("attention prefill");
    }
}

}  // namespace tgc
