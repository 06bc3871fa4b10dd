"""The greedy head (csrc/head_argmax.cpp): argmax of the LM head's logits through the int8 screen, DRAM-cold, beside
the full-head GEMV of bench_matmul.py (bench_decode_gemv[lm_head])."""
import numpy as np
import pytest

from conftest import backend_params, median_s, run_pedantic
from tinygpt import dtypes

C = 768
N_VOCAB = 50257


def make(rng, N, K, wdtype):
    return dtypes.get(wdtype).to_stored(rng.standard_normal((N, K), np.float32))


@pytest.mark.parametrize("wdtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", backend_params(include_numpy=False))
def bench_matmul_argmax(benchmark, impl, wdtype):
    """Greedy decoding's LM head: argmax of x . W^T over the 50257 rows, screened by an int8 copy (matmul_argmax).
    gb_s counts the bytes actually read (the int8 screen plus the rows evaluated exactly); head_equiv_gb_s is the
    head's own size over the time, to set beside bench_decode_gemv[lm_head]. DRAM-cold: 2 copies rotate."""
    if impl != "cpu":
        pytest.skip("matmul_argmax is a cpu-backend kernel")
    from tinygpt import _cpu
    from tinygpt.backends.head_screen import build as head_screen
    N, K = N_VOCAB, C
    rng = np.random.default_rng(0)
    heads = [make(rng, N, K, wdtype)[0] for _ in range(2)]
    screens = [head_screen(w, wdtype) for w in heads]
    x = rng.standard_normal(K).astype(np.float32)
    it, rows = iter(range(10**9)), []

    def fn():
        i = next(it) % 2
        rows.append(_cpu.matmul_argmax(x, heads[i], *screens[i], wdtype=wdtype)[1])
    run_pedantic(benchmark, fn, rounds=20)
    n_exact = int(np.median(rows))
    nbytes = screens[0][0].nbytes + 8 * N + n_exact * heads[0][0].nbytes
    benchmark.extra_info.update(kernel="head_argmax", mode="decode argmax", N=N, K=K, wdtype=wdtype, rows_exact=n_exact,
                                gb_s=round(nbytes / median_s(benchmark) / 1e9, 2),
                                head_equiv_gb_s=round(heads[0].nbytes / median_s(benchmark) / 1e9, 2))
