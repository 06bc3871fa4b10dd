// Standalone check of the active CPU kernel table against naive float64 loops, without Python: used by
// tools/cross_check.sh to build the portable path for a non-x86 target (aarch64) and run it under qemu-user.
// The pytest suite stays the main kernel test; this covers the builds that pytest cannot reach here.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../csrc/common.h"

namespace {

int g_failures = 0, g_checks = 0;
std::mt19937 g_rng(1234);

std::vector<float> randn(size_t n, float scale = 1.f) {
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = d(g_rng);
    return v;
}

void expect_close(const char* what, const std::vector<float>& got, const std::vector<double>& want, double rtol,
                  double atol) {
    g_checks++;
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < want.size(); i++) {
        const double err = std::fabs(got[i] - want[i]) - (atol + rtol * std::fabs(want[i]));
        if (!(err <= worst)) worst = err, at = i;  // NaN counts as a failure
    }
    if (worst > 0 || std::isnan(worst)) {
        g_failures++;
        std::printf("FAIL %s: index %zu got %.8g want %.8g\n", what, at, got[at], want[at]);
    }
}

// Weight encodings as the converter writes them.
uint16_t to_bf16(float f) {  // round to nearest even
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
uint16_t to_f16(float f) {  // normal range only (the test values are), round to nearest even
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000;
    int exp = (int)((u >> 23) & 0xFF) - 127 + 15;
    uint32_t mant = u & 0x7FFFFF;
    if (exp <= 0) return (uint16_t)sign;  // flush tiny values to zero; from_f16 decodes exactly what is stored
    uint32_t m = mant >> 13, rest = mant & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (m & 1))) m++;
    if (m == 0x400) m = 0, exp++;
    return (uint16_t)(sign | (uint32_t)exp << 10 | m);
}
float from_f16(uint16_t h) {
    const int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    const float v = exp == 0 ? std::ldexp((float)mant, -24) : std::ldexp((float)(mant | 0x400), exp - 25);
    return (h & 0x8000) ? -v : v;
}

double gelu_ref(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

void check_matmul(const tg::KernelTable& k) {
    for (int dt : {tg::F32, tg::F16, tg::BF16, tg::I8})
        for (int M : {1, 3, 7})
            for (int N : {1, 5, 33, 130})
                for (int K : {1, 17, 67, 256})
                    for (int flags : {0, (int)tg::GELU, (int)tg::ACCUM}) {
                        std::vector<float> inp = randn((size_t)M * K), wf = randn((size_t)N * K, 0.2f), b = randn(N),
                                           ws(N), out = randn((size_t)M * N);
                        std::vector<uint16_t> w16(wf.size());
                        std::vector<int8_t> w8(wf.size());
                        std::vector<double> wd(wf.size());  // the weight values the kernel sees
                        const void* w = wf.data();
                        for (size_t i = 0; i < wf.size(); i++) {
                            if (dt == tg::F16) w16[i] = to_f16(wf[i]), wd[i] = from_f16(w16[i]);
                            if (dt == tg::BF16) w16[i] = to_bf16(wf[i]), wd[i] = from_bf16(w16[i]);
                            if (dt == tg::F32) wd[i] = wf[i];
                        }
                        if (dt == tg::F16 || dt == tg::BF16) w = w16.data();
                        if (dt == tg::I8) {
                            for (int n = 0; n < N; n++) {
                                ws[n] = 0.01f * (1 + n % 7);
                                for (int kk = 0; kk < K; kk++) {
                                    const size_t i = (size_t)n * K + kk;
                                    w8[i] = (int8_t)((int)(g_rng() % 255) - 127);
                                    wd[i] = (double)w8[i] * ws[n];
                                }
                            }
                            w = w8.data();
                        }
                        std::vector<double> want((size_t)M * N);
                        for (int m = 0; m < M; m++)
                            for (int n = 0; n < N; n++) {
                                double s = b[n];
                                for (int kk = 0; kk < K; kk++) s += (double)inp[(size_t)m * K + kk] * wd[(size_t)n * K + kk];
                                if (flags & tg::GELU) s = gelu_ref(s);
                                if (flags & tg::ACCUM) s += out[(size_t)m * N + n];
                                want[(size_t)m * N + n] = s;
                            }
                        k.matmul(out.data(), inp.data(), w, dt == tg::I8 ? ws.data() : nullptr, b.data(), M, N, K, dt,
                                 flags);
                        const std::string what = "matmul dtype " + std::to_string(dt) + " M" + std::to_string(M) + " N" +
                                                 std::to_string(N) + " K" + std::to_string(K) + " flags " +
                                                 std::to_string(flags);
                        expect_close(what.c_str(), out, want, 1e-5, 1e-5 * std::sqrt((double)K));
                    }
}

void check_layernorm_gelu(const tg::KernelTable& k) {
    for (int M : {1, 4})
        for (int C : {1, 7, 64, 771}) {
            std::vector<float> inp = randn((size_t)M * C, 2.f), w = randn(C), b = randn(C), out(inp.size());
            std::vector<double> want(inp.size());
            for (int m = 0; m < M; m++) {
                double mean = 0, var = 0;
                for (int c = 0; c < C; c++) mean += inp[(size_t)m * C + c];
                mean /= C;
                for (int c = 0; c < C; c++) var += std::pow(inp[(size_t)m * C + c] - mean, 2);
                var /= C;
                for (int c = 0; c < C; c++)
                    want[(size_t)m * C + c] = (inp[(size_t)m * C + c] - mean) / std::sqrt(var + 1e-5) * w[c] + b[c];
            }
            k.layernorm(out.data(), inp.data(), w.data(), b.data(), M, C, 1e-5f);
            expect_close(("layernorm C" + std::to_string(C)).c_str(), out, want, 1e-5, 1e-5);
        }
    for (int64_t n : {1, 7, 64, 1001}) {
        std::vector<float> inp = randn((size_t)n, 3.f), out(inp.size());
        std::vector<double> want(inp.size());
        for (int64_t i = 0; i < n; i++) want[i] = gelu_ref(inp[i]);
        k.gelu(out.data(), inp.data(), n);
        expect_close(("gelu n" + std::to_string(n)).c_str(), out, want, 1e-5, 1e-6);
    }
}

void check_attention(const tg::KernelTable& k) {
    for (int hd : {8, 64})
        for (int pos0 : {0, 3})
            for (int T : {1, 5}) {
                const int H = 3, C = H * hd, n_ctx = 16;
                std::vector<float> qkv = randn((size_t)T * 3 * C), out((size_t)T * C);
                std::vector<float> kc = randn((size_t)H * n_ctx * hd), vc = randn((size_t)H * n_ctx * hd);
                auto K = [&](int h, int p, int d) -> double {  // cached rows before pos0, new ones from qkv after
                    return p < pos0 ? kc[((size_t)h * n_ctx + p) * hd + d] : qkv[(size_t)(p - pos0) * 3 * C + C + h * hd + d];
                };
                auto Vv = [&](int h, int p, int d) -> double {
                    return p < pos0 ? vc[((size_t)h * n_ctx + p) * hd + d]
                                    : qkv[(size_t)(p - pos0) * 3 * C + 2 * C + h * hd + d];
                };
                std::vector<double> want(out.size());
                for (int t = 0; t < T; t++)
                    for (int h = 0; h < H; h++) {
                        const int last = pos0 + t;
                        std::vector<double> s(last + 1);
                        double mx = -1e300, den = 0;
                        for (int p = 0; p <= last; p++) {
                            double d = 0;
                            for (int i = 0; i < hd; i++) d += qkv[(size_t)t * 3 * C + h * hd + i] * K(h, p, i);
                            s[p] = d / std::sqrt((double)hd);
                            mx = std::fmax(mx, s[p]);
                        }
                        for (int p = 0; p <= last; p++) den += (s[p] = std::exp(s[p] - mx));
                        for (int i = 0; i < hd; i++) {
                            double o = 0;
                            for (int p = 0; p <= last; p++) o += s[p] / den * Vv(h, p, i);
                            want[(size_t)t * C + h * hd + i] = o;
                        }
                    }
                k.attention(out.data(), qkv.data(), kc.data(), vc.data(), T, pos0, H, hd, n_ctx);
                expect_close(("attention hd" + std::to_string(hd) + " pos0 " + std::to_string(pos0) + " T" +
                              std::to_string(T)).c_str(),
                             out, want, 1e-5, 1e-5);
            }
}

// The cpu backend's guarantee: a query's output has the same bits in a prefill of any chunking as in decode steps.
void check_attention_chunking(const tg::KernelTable& k) {
    for (int hd : {7, 20, 64}) {
        const int H = 2, C = H * hd, T = 23, n_ctx = 24;
        const std::vector<float> qkv = randn((size_t)T * 3 * C, 2.f);
        std::vector<float> ref;
        for (int chunk : {T, 1, 5}) {
            std::vector<float> kc((size_t)H * n_ctx * hd), vc(kc.size()), out((size_t)T * C);
            for (int t = 0; t < T; t += chunk) {
                const int n = std::min(chunk, T - t);
                k.attention(out.data() + (size_t)t * C, qkv.data() + (size_t)t * 3 * C, kc.data(), vc.data(), n, t, H,
                            hd, n_ctx);
            }
            g_checks++;
            if (ref.empty()) {
                ref = out;
            } else if (std::memcmp(ref.data(), out.data(), ref.size() * sizeof(float)) != 0) {
                g_failures++;
                std::printf("FAIL attention hd%d: chunks of %d differ from one prefill\n", hd, chunk);
            }
        }
    }
}

void check_embedding(const tg::KernelTable& k) {
    const int V = 11, C = 19, n_ctx = 8, T = 3, pos0 = 2;
    const int32_t tokens[T] = {0, 10, 4};
    std::vector<float> wte = randn((size_t)V * C), wpe = randn((size_t)n_ctx * C), out((size_t)T * C);
    std::vector<double> want(out.size());
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) want[(size_t)t * C + c] = (double)wte[(size_t)tokens[t] * C + c] + wpe[(size_t)(pos0 + t) * C + c];
    k.embedding(out.data(), tokens, wte.data(), nullptr, wpe.data(), T, C, pos0, tg::F32);
    expect_close("embedding f32", out, want, 1e-6, 1e-6);
}

}  // namespace

int main() {
    const tg::KernelTable& k = tg::kernels();
    std::printf("kernel table: %s, threads: %d\n", k.isa, tg::num_threads());
    check_matmul(k);
    check_layernorm_gelu(k);
    check_attention(k);
    check_attention_chunking(k);
    check_embedding(k);
    std::printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
