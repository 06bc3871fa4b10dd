"""GELU over a prefill-sized activation (T x 4C): GB/s of read + write."""
import numpy as np
import pytest

from conftest import backend_params, median_s, run_pedantic
from tinygpt.ref.gelu import gelu as np_gelu


@pytest.mark.parametrize("T", [1, 64, 512])
@pytest.mark.parametrize("impl", backend_params())
def bench_gelu(benchmark, impl, T):
    x = np.random.default_rng(0).standard_normal((T, 3072), np.float32)
    out = np.empty_like(x)
    if impl == "numpy":
        fn = lambda: np_gelu(out, x)  # noqa: E731
    else:
        import importlib
        mod = importlib.import_module(f"tinygpt._{impl}")
        fn = lambda: mod.gelu(out, x)  # noqa: E731
    run_pedantic(benchmark, fn, rounds=50)
    benchmark.extra_info.update(kernel="gelu", T=T, gb_s=round(2 * x.nbytes / median_s(benchmark) / 1e9, 2))
