"""attention at GPT-2 124M shapes (12 heads x 64): prefill T=64/512/1024 (GFLOP/s, and the fraction of this
host's fp32 GEMM peak measured once in the same run: bench_batch.gemm_peak, NumPy sgemm in a subprocess) and
single-token decode over a cache of Tk = 128..1024 (GB/s of KV read)."""
import functools

import numpy as np
import pytest

from bench_batch import gemm_peak
from conftest import CUDA_TIMING, backend_params, cuda_call, median_s, run_pedantic
from tinygpt.ref.attention import attention as np_attention

H, HD, NCTX = 12, 64, 1024
C = H * HD


def call(impl, out, qkv, kc, vc, pos0):
    if impl == "numpy":
        np_attention(out, qkv, kc, vc, pos0, H)
    elif impl == "cpu":
        from tinygpt import _cpu
        _cpu.attention(out, qkv, kc, vc, pos0, H)
    else:
        raise ValueError("cuda attention benches use timed_call (device-resident arrays)")


def timed_call(benchmark, impl, out, qkv, kc, vc, pos0):
    if impl != "cuda":
        return lambda: call(impl, out, qkv, kc, vc, pos0)
    from tinygpt import _cuda
    scratch = np.empty(_cuda.dev.attention_scratch_floats(H, HD, NCTX), np.float32)
    benchmark.extra_info["timing"] = CUDA_TIMING
    return cuda_call(lambda o, q, k, v, s, i: _cuda.dev.attention(o, q, k, v, pos0, H, s), out, qkv, kc, vc,
                     scratch)[0]


@functools.lru_cache(maxsize=None)
def _peak() -> dict:
    return gemm_peak()


@pytest.mark.parametrize("T", [64, 512, 1024])
@pytest.mark.parametrize("impl", backend_params())
def bench_attention_prefill(benchmark, impl, T):
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((T, 3 * C), np.float32)
    kc, vc = np.zeros((H, NCTX, HD), np.float32), np.zeros((H, NCTX, HD), np.float32)
    out = np.empty((T, C), np.float32)
    run_pedantic(benchmark, timed_call(benchmark, impl, out, qkv, kc, vc, 0))
    flops = 2 * 2 * H * HD * T * (T + 1) / 2  # q.k and p.v over the causal half
    gflop_s = flops / median_s(benchmark) / 1e9
    benchmark.extra_info.update(kernel="attention", mode="prefill", T=T, gflop_s=round(gflop_s, 1))
    if impl != "cuda":  # the host's peak says nothing about a GPU kernel
        peak = _peak()
        benchmark.extra_info.update(gemm_peak_gflop_s=round(peak["gflop_s"], 1) if "gflop_s" in peak else None,
                                    fraction_of_gemm_peak=round(gflop_s / peak["gflop_s"], 3) if "gflop_s" in peak
                                    else peak.get("error"))


@pytest.mark.parametrize("Tk", [128, 512, 1024])
@pytest.mark.parametrize("impl", backend_params())
def bench_attention_decode(benchmark, impl, Tk):
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((1, 3 * C), np.float32)
    kc = rng.standard_normal((H, NCTX, HD), np.float32)
    vc = rng.standard_normal((H, NCTX, HD), np.float32)
    out = np.empty((1, C), np.float32)
    run_pedantic(benchmark, timed_call(benchmark, impl, out, qkv, kc, vc, Tk - 1), rounds=50)
    benchmark.extra_info.update(kernel="attention", mode="decode", Tk=Tk,
                                gb_s=round(2 * H * Tk * HD * 4 / median_s(benchmark) / 1e9, 1))
