"""layernorm kernels vs the float64 reference (biased variance, eps), odd widths and offsets."""
import numpy as np
import pytest

from conftest import TOL, rel_err


@pytest.mark.parametrize("M,C", [(1, 1), (1, 7), (3, 33), (8, 768), (17, 100), (64, 1600)])
def test_layernorm(kern, rng, M, C):
    x = (rng.standard_normal((M, C)) * 3 + 5).astype(np.float32)  # offset mean: a one-pass variance would cancel
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    out = np.full((M, C), np.nan, np.float32)
    kern.layernorm(out, x, w, b, 1e-5)
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    ref = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b
    assert rel_err(out, ref) <= TOL["layernorm"]
