// Device-side argmax of the logits for greedy steps: 4 bytes back to the host instead of n_vocab floats.
// np.argmax semantics in one max over 64-bit keys: high word = the value's bits mapped to an unsigned order
// (-0.0 counted as +0.0; every NaN above +inf, since np.argmax returns the first NaN), low word = ~index, so the
// largest key is the first index of the largest value. The max is order-free, so the reduction tree does not
// matter. One block: the logits were just written by the head GEMV and sit in L2 (201 KB for GPT-2).
#include "common.cuh"

namespace tgc {

namespace {
constexpr int ARGMAX_THREADS = 1024;

__device__ __forceinline__ unsigned long long argmax_key(float v, int i) {
    unsigned u = __float_as_uint(v);
    if (v == 0.f) u = 0u;                                  // -0.0 == +0.0: the first one wins
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);        // float order -> unsigned order
    if (v != v) u = 0xffffffffu;                           // NaN: above +inf (0xff800000 after the map)
    return ((unsigned long long)u << 32) | (unsigned)~(unsigned)i;
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long k) {
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long other = __shfl_xor_sync(0xffffffffu, k, o);
        k = other > k ? other : k;
    }
    return k;
}

__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_kernel(const float* __restrict__ x, int n,
                                                                 int* __restrict__ out) {
    __shared__ unsigned long long part[ARGMAX_THREADS / 32];
    unsigned long long best = 0;  // below every real key (their high word is >= 0x007fffff)
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += ARGMAX_THREADS) {
        const unsigned long long k = argmax_key(x[i], i);
        best = k > best ? k : best;
    }
    best = warp_max_u64(best);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x < 32) {
        best = warp_max_u64(part[threadIdx.x]);  // ARGMAX_THREADS / 32 == 32 partials, one per lane
        if (threadIdx.x == 0) *out = (int)~(unsigned)(best & 0xffffffffu);
    }
}
static_assert(ARGMAX_THREADS == 32 * 32, "the final reduction takes one partial per lane of one warp");
}  // namespace

void argmax(const float* logits /*[n]*/, int n, int* out_index /*[1]*/, cudaStream_t s) {
    if (n < 1) throw std::invalid_argument("argmax: empty logits");
    argmax_kernel<<<1, ARGMAX_THREADS, 0, s>>>(logits, n, out_index);
    TGC_LAUNCHED("argmax");
}

}  // namespace tgc
