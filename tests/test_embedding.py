"""embedding kernels: wte rows (f32/f16/bf16) + wpe rows at an offset; exact."""
import numpy as np
import pytest

from conftest import make_weights, rel_err, widen


@pytest.mark.parametrize("wdtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("T,C,pos0", [(1, 5, 0), (7, 33, 3), (16, 64, 100)])
def test_embedding(kern, rng, wdtype, T, C, pos0):
    if wdtype == "int8" and kern.name.startswith("cuda"):
        pytest.skip("int8 weights are cpu-only")
    V, P = 1000, 128
    wte, scale = make_weights(rng, (V, C), wdtype)
    wpe = rng.standard_normal((P, C)).astype(np.float32)
    tokens = rng.integers(0, V, T).astype(np.int32)
    out = np.full((T, C), np.nan, np.float32)
    kw = dict(wscale=scale) if scale is not None else {}
    kern.embedding(out, tokens, wte, wpe, pos0=pos0, wdtype=wdtype, **kw)
    ref = widen(wte, wdtype, scale).astype(np.float64)[tokens] + wpe[pos0:pos0 + T]
    assert rel_err(out, ref) <= 2e-7
