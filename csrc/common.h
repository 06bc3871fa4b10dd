// Shared declarations for the CPU backend: errors, dtypes, thread count, and the per-ISA kernel table.
// Shapes use the glossary: M rows (tokens), N out features, K in features, C = n_embd, T tokens this
// call, H heads, hd head dim, n_ctx positions. All row-major, rows contiguous.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include "forward.h"

namespace tg {

#define TG_CHECK(cond, msg)                                    \
    do {                                                       \
        if (!(cond)) {                                         \
            std::ostringstream tg_os_;                         \
            tg_os_ << msg;                                     \
            throw std::invalid_argument(tg_os_.str());         \
        }                                                      \
    } while (0)

int num_threads();          // threads a kernel's parallel region uses (set_num_threads / env / cores)
void set_num_threads(int n);

// One table per ISA level, filled by isa_table.cpp compiled once per level.
struct KernelTable {
    const char* isa;
    // out[M,N] (+)= act(inp[M,K] . (W[N,K] * wscale[N])^T + b[N]);  W is F32/F16/BF16/I8, wscale only for I8;
    // each output element is computed the same way whatever M and the thread count (matmul.cpp: row invariance);
    // b may be null; flags: GELU | ACCUM
    void (*matmul)(float* out, const float* inp, const void* w, const float* wscale, const float* b, int M, int N,
                   int K, int wdtype, int flags);
    // best[m] = np.argmax over n of x[m] . W[n,:] (the matmul, no bias, no flags) for M rows without reading every
    // row exactly: q[N,K] int8 * qs[N] screens W (read once for all rows) within the bounds err[N,3] describe; q
    // null: every row. scratch[M,N]; n_exact[m]: rows evaluated exactly for x[m] (head_argmax.cpp).
    void (*matmul_argmax)(float* scratch, const float* x, const void* w, const float* wscale, const int8_t* q,
                          const float* qs, const float* err, int M, int N, int K, int wdtype, int32_t* best,
                          int32_t* n_exact);
    // out[M,C] = (inp - mean) / sqrt(var + eps) * w[C] + b[C]
    void (*layernorm)(float* out, const float* inp, const float* w, const float* b, int M, int C, float eps);
    // out[T,C] = causal softmax attention of qkv[T,3C] at positions pos0..pos0+T-1; writes k,v into
    // k_cache/v_cache[H, n_ctx, hd] first.
    void (*attention)(float* out, const float* qkv, float* k_cache, float* v_cache, int T, int pos0, int H, int hd,
                      int n_ctx);
    // out[n] = gelu_tanh(inp[n])  (in place allowed)
    void (*gelu)(float* out, const float* inp, int64_t n);
    // out[T,C] = wte[tokens[t], :] (* wscale[tokens[t]]) + wpe[pos0 + t, :];  wte is F32/F16/BF16/I8
    void (*embedding)(float* out, const int32_t* tokens, const void* wte, const float* wscale, const float* wpe, int T,
                      int C, int pos0, int wdtype);
};

const KernelTable& kernels();                       // the active table (dispatch.cpp)
const KernelTable* kernels_for(const std::string&); // "base" | "avx2" | "avx512"; null if not supported here
std::string best_isa();

}  // namespace tg

#define TG_DECLARE_TABLE(ns) namespace ns { const tg::KernelTable& table(); }
TG_DECLARE_TABLE(tg_base)
#if defined(TG_X86)
TG_DECLARE_TABLE(tg_avx2)
TG_DECLARE_TABLE(tg_avx512)
#endif
