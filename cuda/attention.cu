// Causal softmax attention on the GPU over the device KV cache [H, n_ctx, hd] per layer.
// Prefill (T > 1): one warp per (head, query), online softmax over its keys; no T x T matrix.
// Decode (T == 1): one block per (chunk of CHUNK keys, head), parallel over keys (flash-decoding): the block loads
// all its K and V rows at once (K across warps, V across threads, so they are in flight together), scores the
// chunk, and writes a partial (max, sum, acc[hd]); the last block of a head to finish (an atomic count) folds
// the partials into the output, so there is no second kernel. The position is read from device memory so the
// decode step can be captured once as a CUDA graph; blocks past the current length exit at once.
#include "common.cuh"

namespace tgc {

namespace {
constexpr int MAXE = 4;    // head_dim up to 128 (GPT-2 uses 64)
constexpr int CHUNK = 32;        // keys per block in decode: one score per lane of one warp
constexpr int DEC_THREADS = 128;  // 4 warps
constexpr int KPW = CHUNK / (DEC_THREADS / 32);  // keys per warp in the score phase

// Also zeroes the decode kernel's per-head finish counters (counters != null): stream order puts this before the
// decode kernel, so the counters need no initialisation by the caller and survive graph replays.
__global__ void kv_write_kernel(float* kc, float* vc, const float* qkv, int T, const int* d_pos, int H, int hd, int n_ctx,
                                unsigned* counters) {
    const int C = H * hd;
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (counters && i < H) counters[i] = 0u;
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

// part and counters are written and read by different blocks: plain pointers (no __restrict__), reads via __ldcg.
__global__ void __launch_bounds__(DEC_THREADS) attn_decode_kernel(float* out, float* part, unsigned* counters,
                                                                   const float* qkv, const float* kc, const float* vc,
                                                                   const int* d_pos, int H, int hd, int n_ctx,
                                                                   float scale) {
    __shared__ float p_s[CHUNK];
    __shared__ float red[DEC_THREADS];
    __shared__ float m_s, l_s;
    __shared__ bool last;
    const int h = blockIdx.y, chunk = blockIdx.x, nsplit = gridDim.x;
    const int L = *d_pos + 1, nchunks = (L + CHUNK - 1) / CHUNK;
    if (chunk >= nchunks) return;  // the whole block: past the current length
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, j0 = chunk * CHUNK, nk = min(CHUNK, L - j0);
    const float* K = kc + ((int64_t)h * n_ctx + j0) * hd;
    const float* V = vc + ((int64_t)h * n_ctx + j0) * hd;

    // V first: thread (g, d) holds v[j][d] for its keys j = g, g + G, ..., so these loads overlap the K loads
    const int G = DEC_THREADS / hd, g = tid / hd, d = tid % hd;
    float vr[CHUNK];
#pragma unroll
    for (int r = 0; r < CHUNK; r++) {
        const int j = g + G * r;
        vr[r] = (g < G && j < nk) ? V[(int64_t)j * hd + d] : 0.f;
    }
    // scores: warp w takes keys w*KPW .. w*KPW+KPW-1, its lanes split the head dims (all loads issued first)
    float q[MAXE], kr[KPW][MAXE];
    load_q(q, qkv, h, hd, lane, scale);
#pragma unroll
    for (int i = 0; i < KPW; i++) {
        const int j = warp * KPW + i;
#pragma unroll
        for (int e = 0; e < MAXE; e++) {
            const int dd = lane + 32 * e;
            kr[i][e] = (j < nk && dd < hd) ? K[(int64_t)j * hd + dd] : 0.f;
        }
    }
    float sc[KPW];
#pragma unroll
    for (int i = 0; i < KPW; i++) {
        float v = 0.f;
#pragma unroll
        for (int e = 0; e < MAXE; e++) v += q[e] * kr[i][e];
        sc[i] = warp_sum(v);
    }
    if (lane == 0)
#pragma unroll
        for (int i = 0; i < KPW; i++) p_s[warp * KPW + i] = sc[i];
    __syncthreads();
    if (warp == 0) {  // softmax over the chunk: one key per lane
        const float sj = lane < nk ? p_s[lane] : -INFINITY, m = warp_max(sj);
        const float p = lane < nk ? expf(sj - m) : 0.f, l = warp_sum(p);
        p_s[lane] = p;
        if (lane == 0) m_s = m, l_s = l;
    }
    __syncthreads();
    float acc = 0.f;
#pragma unroll
    for (int r = 0; r < CHUNK; r++) {
        const int j = g + G * r;
        if (j < nk) acc += p_s[j] * vr[r];
    }
    red[tid] = acc;
    __syncthreads();
    if (tid < hd) {
        acc = 0.f;
        for (int gg = 0; gg < G; gg++) acc += red[gg * hd + tid];
    }
    if (nchunks == 1) {  // one chunk: it is the whole softmax
        if (tid < hd) out[h * hd + tid] = acc / l_s;
        return;
    }
    float* p = part + ((int64_t)h * nsplit + chunk) * (2 + hd);
    if (tid < hd) p[2 + tid] = acc;
    if (tid == 0) p[0] = m_s, p[1] = l_s;
    __threadfence();  // the partial is visible device-wide before this block is counted
    __syncthreads();
    if (tid == 0) last = atomicAdd(&counters[h], 1u) == (unsigned)nchunks - 1;
    __syncthreads();
    if (!last || tid >= hd) return;
    // the last block of head h: combine the nchunks partials (every one non-empty); __ldcg reads L2, not a stale L1
    const float* ph = part + (int64_t)h * nsplit * (2 + hd);
    float M = -INFINITY;
    for (int c = 0; c < nchunks; c++) M = fmaxf(M, __ldcg(ph + (int64_t)c * (2 + hd)));
    float l = 0.f;
    acc = 0.f;
    for (int c = 0; c < nchunks; c++) {
        const float* pc = ph + (int64_t)c * (2 + hd);
        const float w = expf(__ldcg(pc) - M);
        l += __ldcg(pc + 1) * w;
        acc += __ldcg(pc + 2 + tid) * w;
    }
    out[h * hd + tid] = acc / l;
}
static_assert(CHUNK == 32, "the chunk softmax takes one key per lane");
}  // namespace

// decode partials [H, nsplit, 2 + hd], then H finish counters (unsigned, zeroed by kv_write_kernel)
size_t attention_scratch_floats(int H, int hd, int n_ctx) {
    return (size_t)H * ((n_ctx + CHUNK - 1) / CHUNK) * (2 + hd) + H;
}

void launch_attention(float* out /*[T,C]*/, const float* qkv /*[T,3C]*/, float* kc /*[H,n_ctx,hd]*/,
                      float* vc /*[H,n_ctx,hd]*/, int T, const int* d_pos, int H, int hd, int n_ctx, float* scratch,
                      cudaStream_t s) {
    if (hd > 32 * MAXE) throw std::invalid_argument("attention: head_dim > 128 is not supported on CUDA");
    if (T < 1) return;
    const int C = H * hd, nsplit = (n_ctx + CHUNK - 1) / CHUNK;
    const float scale = 1.0f / sqrtf((float)hd);
    unsigned* counters = reinterpret_cast<unsigned*>(scratch + (size_t)H * nsplit * (2 + hd));
    kv_write_kernel<<<(unsigned)(((int64_t)T * C + 255) / 256), 256, 0, s>>>(kc, vc, qkv, T, d_pos, H, hd, n_ctx,
                                                                            T == 1 ? counters : nullptr);
    TGC_LAUNCHED("attention kv write");
    if (T == 1) {
        attn_decode_kernel<<<dim3(nsplit, H), DEC_THREADS, 0, s>>>(out, scratch, counters, qkv, kc, vc, d_pos, H, hd,
                                                                   n_ctx, scale);
        TGC_LAUNCHED("attention decode");
    } else {
        attn_rows_kernel<<<(H * T + 3) / 4, 128, 0, s>>>(out, qkv, kc, vc, T, d_pos, H, hd, n_ctx, scale);
        TGC_LAUNCHED("attention prefill");
    }
}

}  // namespace tgc
