"""layernorm at GPT-2 124M width (C=768): GB/s of read + write."""
import numpy as np
import pytest

from conftest import CUDA_TIMING, backend_params, cuda_call, median_s, run_pedantic
from tinygpt.ref.layernorm import layernorm as np_layernorm


@pytest.mark.parametrize("M", [1, 64, 512])
@pytest.mark.parametrize("impl", backend_params())
def bench_layernorm(benchmark, impl, M):
    rng = np.random.default_rng(0)
    C = 768
    x = rng.standard_normal((M, C), np.float32)
    w, b = rng.standard_normal(C, np.float32), rng.standard_normal(C, np.float32)
    out = np.empty_like(x)
    if impl == "numpy":
        fn = lambda: np_layernorm(out, x, w, b, 1e-5)  # noqa: E731
    elif impl == "cuda":
        from tinygpt import _cuda
        fn = cuda_call(lambda o, xx, ww, bb, i: _cuda.dev.layernorm(o, xx, ww, bb, 1e-5), out, x, w, b)[0]
        benchmark.extra_info["timing"] = CUDA_TIMING
    else:
        import importlib
        mod = importlib.import_module(f"tinygpt._{impl}")
        fn = lambda: mod.layernorm(out, x, w, b, 1e-5)  # noqa: E731
    run_pedantic(benchmark, fn, rounds=50)
    benchmark.extra_info.update(kernel="layernorm", M=M, gb_s=round(2 * x.nbytes / median_s(benchmark) / 1e9, 2))
