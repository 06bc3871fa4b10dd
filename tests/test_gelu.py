"""GELU (tanh form, HF gelu_new) vs float64, including large |x| where tanh saturates."""
import numpy as np
import pytest

from conftest import TOL, rel_err


@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000, 100_003])
def test_gelu(kern, rng, n):
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    x[: min(n, 4)] = [-30.0, 30.0, 0.0, -1e-3][: min(n, 4)]
    out = np.full(n, np.nan, np.float32)
    kern.gelu(out, x)
    x64 = x.astype(np.float64)
    ref = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert rel_err(out, ref) <= TOL["gelu"]
