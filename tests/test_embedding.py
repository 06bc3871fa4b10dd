"""embedding kernels: wte rows (f32/f16/bf16) + wpe rows at an offset; exact."""
import numpy as np
import pytest

from conftest import rel_err
from tinygpt.weights import from_float32, to_float32


@pytest.mark.parametrize("wdtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("T,C,pos0", [(1, 5, 0), (7, 33, 3), (16, 64, 100)])
def test_embedding(kern, rng, wdtype, T, C, pos0):
    V, P = 1000, 128
    wte = from_float32(rng.standard_normal((V, C)).astype(np.float32), wdtype)
    wpe = rng.standard_normal((P, C)).astype(np.float32)
    tokens = rng.integers(0, V, T).astype(np.int32)
    out = np.full((T, C), np.nan, np.float32)
    kern.embedding(out, tokens, wte, wpe, pos0=pos0, wdtype=wdtype)
    w = to_float32(wte, {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[wdtype]).astype(np.float64)
    ref = w[tokens] + wpe[pos0:pos0 + T]
    assert rel_err(out, ref) <= 1e-7
