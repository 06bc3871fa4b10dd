// Picks the kernel table for this CPU at first use (TINYGPT_ISA=base|avx2|avx512 forces a level) and holds
// the thread count. Compiled with baseline flags only.
#include "omp_compat.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "common.h"

namespace tg {

static std::atomic<int> g_threads{0};

int num_threads() {
    int n = g_threads.load(std::memory_order_relaxed);
    if (n > 0) return n;
    const char* env = std::getenv("TINYGPT_NUM_THREADS");
    n = env ? std::atoi(env) : 0;
    if (n <= 0) n = omp_get_max_threads();
    g_threads.store(n);
    return n;
}

void set_num_threads(int n) {
    TG_CHECK(n >= 1 && n <= 4096, "set_num_threads: expected 1..4096, got " << n);
    g_threads.store(n);
}

static bool cpu_has(const std::string& isa) {
    if (isa == "base") return true;
#if defined(TG_X86)
    __builtin_cpu_init();
    if (isa == "avx2")
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#if defined(TG_EMULATED_AVX512)
    if (isa == "avx512") return cpu_has("avx2");  // SIMDe stand-ins, built with AVX2 flags
#endif
    if (isa == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && cpu_has("avx2");
#endif
    return false;
}

const KernelTable* kernels_for(const std::string& isa) {
    if (!cpu_has(isa)) return nullptr;
    if (isa == "base") return &tg_base::table();
#if defined(TG_X86)
    if (isa == "avx2") return &tg_avx2::table();
    if (isa == "avx512") return &tg_avx512::table();
#endif
    return nullptr;
}

std::string best_isa() {
    for (const char* isa : {"avx512", "avx2"})
        if (kernels_for(isa)) return isa;
    return "base";
}

static const KernelTable* choose() {
    const char* env = std::getenv("TINYGPT_ISA");
    if (env && *env) {
        const KernelTable* t = kernels_for(env);
        TG_CHECK(t, "TINYGPT_ISA=" << env << " is not available on this CPU/build (have: base"
                                   << (kernels_for("avx2") ? ", avx2" : "") << (kernels_for("avx512") ? ", avx512" : "")
                                   << ")");
        return t;
    }
    return kernels_for(best_isa());
}

const KernelTable& kernels() {
    static const KernelTable* t = choose();
    return *t;
}

}  // namespace tg
