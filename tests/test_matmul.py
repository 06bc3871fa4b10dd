"""matmul kernels vs the float64 reference: odd sizes, M=1 (GEMV) and M>1 (GEMM), bias/GELU/accumulate
epilogues, and f16/bf16 weights (reference built from the same rounded weights)."""
import math
import warnings

import numpy as np
import pytest

from conftest import TOL, make_weights, rel_err, widen
from tinygpt.weights import from_float32

SHAPES = [(1, 1, 1), (1, 7, 5), (1, 37, 29), (1, 50, 768), (2, 3, 5), (5, 33, 17), (6, 64, 64), (7, 65, 129),
          (13, 100, 300), (64, 96, 257), (1, 2304, 768)]


def reference(inp, w64, b, flags, out0):
    y = inp.astype(np.float64) @ w64.T
    if b is not None:
        y += b
    if flags & 1:
        y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))
    return out0.astype(np.float64) + y if flags & 2 else y


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
def test_matmul_f32(kern, rng, M, N, K, flags):
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32) / math.sqrt(K)
    b = rng.standard_normal(N).astype(np.float32)
    out = rng.standard_normal((M, N)).astype(np.float32)  # poison / residual
    ref = reference(inp, w.astype(np.float64), b, flags, out)
    kern.matmul(out, inp, w, b, flags=flags)
    assert rel_err(out, ref) <= TOL["matmul"]


@pytest.mark.parametrize("wdtype", ["float16", "bfloat16", "int8"])
@pytest.mark.parametrize("M,N,K", [(1, 37, 29), (1, 64, 768), (9, 70, 100), (64, 96, 256), (7, 33, 300)])
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
def test_matmul_reduced_precision(kern, rng, M, N, K, wdtype, flags):
    if wdtype == "int8" and kern.name == "cuda":
        pytest.skip("int8 weights are cpu-only")
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w, scale = make_weights(rng, (N, K), wdtype, 1 / math.sqrt(K))
    w64 = widen(w, wdtype, scale).astype(np.float64)
    b = rng.standard_normal(N).astype(np.float32)
    out = rng.standard_normal((M, N)).astype(np.float32)
    inp_ref = inp
    if kern.name == "cuda" and M > 1:  # tensor-core GEMM: activations are rounded to the weights' 16-bit type
        inp_ref = widen(from_float32(inp, wdtype), wdtype)
    ref = reference(inp_ref, w64, b, flags, out)
    kw = dict(wscale=scale) if scale is not None else {}
    kern.matmul(out, inp, w, b, flags=flags, wdtype=wdtype, **kw)
    assert rel_err(out, ref) <= TOL["matmul"]


def test_matmul_no_bias_large_k(kern, rng):
    inp = rng.standard_normal((3, 3072)).astype(np.float32)
    w = rng.standard_normal((40, 3072)).astype(np.float32) / 55
    out = np.full((3, 40), np.nan, np.float32)
    kern.matmul(out, inp, w, None)
    assert rel_err(out, reference(inp, w.astype(np.float64), None, 0, out)) <= TOL["matmul"]


def test_matmul_rejects_bad_shapes():
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    from tinygpt import _cpu
    with pytest.raises(ValueError, match="expected shape"):
        _cpu.matmul(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError):  # float64 output cannot be written in place
        _cpu.matmul(np.zeros((2, 4)), np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        _cpu.matmul(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float16))



# -- matmul_argmax: greedy decoding's screened LM head (cpu backend) ------------------------------------------
def _argmax_kern(kern):
    if not isinstance(kern.name, str) or not kern.name.startswith("cpu"):
        pytest.skip("matmul_argmax is a cpu-backend kernel (numpy and cuda greedy steps take forward()'s row)")
    return kern


def _gemv(kern, x, w, wdtype="float32", wscale=None):
    out = np.empty((1, w.shape[0]), np.float32)
    kw = dict(wscale=wscale) if wscale is not None else {}
    kern.matmul(out, x[None], w, None, wdtype=wdtype, **kw)
    return out[0]


@pytest.mark.parametrize("wdtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 5), (37, 29), (50, 768), (1000, 300), (2304, 768), (5003, 64)])
def test_matmul_argmax_is_gemv_argmax(kern, rng, N, K, wdtype):
    """The screened argmax is np.argmax of the kernel's own GEMV, and the screen leaves most rows unevaluated."""
    from tinygpt.weights import head_screen
    kern = _argmax_kern(kern)
    for trial in range(3):
        w, _ = make_weights(rng, (N, K), wdtype, 1 / math.sqrt(K))
        x = (rng.standard_normal(K) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        want = int(np.argmax(_gemv(kern, x, w, wdtype)))
        q, qs, err = head_screen(w, wdtype)
        got, n_exact = kern.matmul_argmax(x, w, q, qs, err, wdtype=wdtype)
        assert got == want and 1 <= n_exact <= N
        if N >= 1000:
            assert n_exact < N // 10  # random rows: the screen must actually prune
        assert kern.matmul_argmax(x, w, wdtype=wdtype) == (want, N)  # no screen: every row


@pytest.mark.parametrize("K", [203, 768])
def test_matmul_argmax_near_ties_bitwise(kern, rng, K):
    """300 rows equal up to their last bits, among 1700 clearly lower ones: the 300 survive the screen and are
    evaluated one by one, and the pick among values that differ in the last ulp is still the full GEMV's, so
    the single-row evaluation is the GEMV's arithmetic bit for bit."""
    from tinygpt.weights import head_screen
    kern = _argmax_kern(kern)
    N, n_tied = 2000, 300
    base = rng.standard_normal(K).astype(np.float32)
    w = (-base + rng.standard_normal((N, K)).astype(np.float32)).astype(np.float32)
    w[:n_tied] = base + rng.standard_normal((n_tied, K)).astype(np.float32) * np.float32(1e-6) * np.abs(base)
    w = w[rng.permutation(N)]
    screen = head_screen(w, "float32")
    for _ in range(8):
        x = (base + 0.1 * rng.standard_normal(K)).astype(np.float32)
        logits = _gemv(kern, x, w)
        got, n_exact = kern.matmul_argmax(x, w, *screen)
        assert n_tied <= n_exact <= N // 4  # the single-row path, not the full fallback
        assert got == int(np.argmax(logits))


def test_matmul_argmax_loose_screen_reads_every_row(kern, rng):
    """x = 0: every row survives; past a quarter of the rows one full GEMV is used (same answer: row 0)."""
    from tinygpt.weights import head_screen
    kern = _argmax_kern(kern)
    w = rng.standard_normal((100, 33)).astype(np.float32)
    assert kern.matmul_argmax(np.zeros(33, np.float32), w, *head_screen(w, "float32")) == (0, 100)


def test_matmul_argmax_bound_holds(kern, rng):
    """|float32 GEMV - screened int8 GEMV| <= min(||x||_2 err0, ||x||_1 err1) + ||x||_2 err2, row by row, over
    scales of x and w, for dense x (the L2 form is the tighter) and spiky x (the L1 form is)."""
    from tinygpt.weights import head_screen
    kern = _argmax_kern(kern)
    tighter = set()
    for K in (1, 17, 768):
        for wscale in (1e-3, 1.0, 1e3):
            w = (rng.standard_normal((300, K)) * wscale).astype(np.float32)
            w[0] = 0  # an all-zero row (scale 1)
            q, qs, err = head_screen(w, "float32")
            for spiky in (False, True):
                x = rng.standard_normal(K).astype(np.float32) * np.float32(wscale)
                if spiky:
                    x *= np.float32(1e-3)
                    x[rng.integers(0, K, 2)] = np.float32(50 * wscale)
                exact = _gemv(kern, x, w).astype(np.float64)
                approx = _gemv(kern, x, q, "int8", qs).astype(np.float64)
                x64 = x.astype(np.float64)
                l2, l1 = np.linalg.norm(x64) * err[:, 0], np.abs(x64).sum() * err[:, 1]
                assert np.all(np.abs(exact - approx) <= np.minimum(l2, l1) + np.linalg.norm(x64) * err[:, 2])
                if K == 768:
                    tighter.add("l1" if np.median(l1) < np.median(l2) else "l2")
    assert tighter == {"l1", "l2"}


def test_matmul_argmax_non_finite(kern, rng):
    """NaN anywhere: np.argmax's answer (the first NaN), found by evaluating every row."""
    from tinygpt.weights import head_screen
    kern = _argmax_kern(kern)
    w = rng.standard_normal((40, 16)).astype(np.float32)
    x = rng.standard_normal(16).astype(np.float32)
    w[17, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # library code: no RuntimeWarning for a NaN weight
        screen = head_screen(w, "float32")
    assert np.isnan(screen[2][17]).all()
    assert kern.matmul_argmax(x, w, *screen) == (17, 40)
    w[17, 3] = 1.0
    x[5] = np.nan
    assert kern.matmul_argmax(x, w, *head_screen(w, "float32")) == (0, 40)


def test_matmul_argmax_int8_head(kern, rng):
    from tinygpt.weights import quantize_int8
    kern = _argmax_kern(kern)
    q, s = quantize_int8(rng.standard_normal((61, 45)).astype(np.float32))
    x = rng.standard_normal(45).astype(np.float32)
    assert kern.matmul_argmax(x, q, wdtype="int8", wscale=s) == (int(np.argmax(_gemv(kern, x, q, "int8", s))), 61)


def test_matmul_argmax_rejects_bad_screens():
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    from tinygpt import _cpu
    from tinygpt.weights import head_screen
    w = np.ones((6, 4), np.float32)
    q, qs, err = head_screen(w, "float32")
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"head screen q: expected shape \[6, 4\], got \[5, 4\]"):
        _cpu.matmul_argmax(x, w, q[:5], qs, err)
    with pytest.raises(ValueError, match="int8 array"):
        _cpu.matmul_argmax(x, w, q.astype(np.int16), qs, err)
    with pytest.raises(ValueError, match=r"head screen err: expected shape \[6, 3\], got \[2, 3\]"):
        _cpu.matmul_argmax(x, w, q, qs, err[:2])
    with pytest.raises(ValueError, match="all needed"):
        _cpu.matmul_argmax(x, w, q, qs)
    with pytest.raises(ValueError, match="expected 4 values, got 3"):
        _cpu.matmul_argmax(x[:3], w, q, qs, err)
    with pytest.raises(ValueError, match="nothing to screen"):
        _cpu.matmul_argmax(x, q, q, qs, err, wdtype="int8", wscale=qs)


# -- row invariance: a row's values do not depend on the other rows of the call, nor on the thread count --------
def _cpu_kern(kern):
    if not isinstance(kern.name, str) or not kern.name.startswith("cpu"):
        pytest.skip("bitwise row invariance is a cpu-backend property (numpy's BLAS and cuda are not held to it)")
    return kern


@pytest.mark.parametrize("wdtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("N,K", [(301, 203), (37, 5), (70, 768)])
def test_matmul_rows_bitwise_invariant(kern, rng, N, K, wdtype, flags, bias):
    """The rows of one M-row call equal bit for bit the same rows computed one at a time, in random sub-batches
    (small and large M take different drivers), and with 1 or 2 threads."""
    kern = _cpu_kern(kern)
    from tinygpt import _cpu
    M = 40
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w, scale = make_weights(rng, (N, K), wdtype, 1 / math.sqrt(K))
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    resid = rng.standard_normal((M, N)).astype(np.float32)
    kw = dict(wscale=scale) if scale is not None else {}

    def run(rows, threads=2):
        out = resid[rows].copy()
        before = _cpu.get_num_threads()
        _cpu.set_num_threads(threads)
        try:
            kern.matmul(out, np.ascontiguousarray(inp[rows]), w, b, flags=flags, wdtype=wdtype, **kw)
        finally:
            _cpu.set_num_threads(before)
        return out

    full = run(np.arange(M))
    assert rel_err(full, reference(inp, widen(w, wdtype, scale).astype(np.float64), b, flags, resid)) <= 3e-5
    np.testing.assert_array_equal(run(np.arange(M), threads=1), full)
    for m in rng.choice(M, 12, replace=False):
        np.testing.assert_array_equal(run(np.array([m]))[0], full[m], err_msg=f"row {m} alone")
    for _ in range(2):
        perm, at = rng.permutation(M), 0
        while at < M:
            n = int(rng.integers(1, 21))
            rows = perm[at:at + n]
            np.testing.assert_array_equal(run(rows, threads=int(rng.integers(1, 3))), full[rows],
                                          err_msg=f"sub-batch of {len(rows)}")
            at += n
