"""GELU over a prefill-sized activation (T x 4C): GB/s of read + write."""
import numpy as np
import pytest

from conftest import CUDA_TIMING, backend_params, cuda_call, median_s, run_pedantic
from tinygpt import backends
from tinygpt.ref.gelu import gelu as np_gelu


@pytest.mark.parametrize("T", [1, 64, 512])
@pytest.mark.parametrize("impl", backend_params())
def bench_gelu(benchmark, impl, T):
    x = np.random.default_rng(0).standard_normal((T, 3072), np.float32)
    out = np.empty_like(x)
    if impl == "numpy":
        fn = lambda: np_gelu(out, x)  # noqa: E731
    elif impl == "cuda":
        from tinygpt import _cuda
        fn = cuda_call(lambda o, xx, i: _cuda.dev.gelu(o, xx), out, x)[0]
        benchmark.extra_info["timing"] = CUDA_TIMING
    else:
        import importlib
        mod = importlib.import_module(f"tinygpt._{impl}")
        fn = lambda: mod.gelu(out, x)  # noqa: E731
    run_pedantic(benchmark, fn, rounds=50)
    benchmark.extra_info.update(kernel="gelu", T=T, gb_s=round(2 * x.nbytes / median_s(benchmark) / 1e9, 2))


@pytest.mark.skipif(not backends.status()["cuda"][0], reason=backends.status()["cuda"][1])
def bench_cuda_launch_floor(benchmark):
    """The fixed cost inside every cuda kernel bench's time: one launch of a one-element kernel and one device
    sync from Python. A kernel's own time is roughly its bench's median minus this."""
    from tinygpt import _cuda
    x = np.zeros(1, np.float32)
    run_pedantic(benchmark, cuda_call(lambda o, xx, i: _cuda.dev.gelu(o, xx), x.copy(), x)[0], rounds=200)
    benchmark.extra_info.update(kernel="launch floor", timing=CUDA_TIMING)
