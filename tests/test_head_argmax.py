"""matmul_argmax (csrc/head_argmax.cpp): greedy decoding's LM head, screened by an int8 copy of the head
(tinygpt.backends.head_screen), must return np.argmax of matmul's own M == 1 row, bit for bit, in every case."""
import math
import warnings

import numpy as np
import pytest

from conftest import make_weights


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
    from tinygpt.backends.head_screen import build as head_screen
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


@pytest.mark.parametrize("wdtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("M", [2, 3, 8, 17])
def test_matmul_argmax_rows(kern, rng, M, wdtype):
    """M rows at once (one screening pass for all): each row's answer and exact-row count equal its single-row
    call; rows the screen cannot decide (x = 0: too loose; a NaN) take the full pass beside screened ones."""
    from tinygpt.backends.head_screen import build as head_screen
    kern = _argmax_kern(kern)
    N, K = 3001, 96
    w, _ = make_weights(rng, (N, K), wdtype, 1 / math.sqrt(K))
    q, qs, err = head_screen(w, wdtype)
    x = (rng.standard_normal((M, K)) * 10 ** rng.uniform(-2, 2, (M, 1))).astype(np.float32)
    x[1] = 0  # too loose to pay: every row
    if M > 2:
        x[2, 5] = np.nan
    got, n_exact = kern.matmul_argmax(x, w, q, qs, err, wdtype=wdtype)
    for m in range(M):
        one = kern.matmul_argmax(x[m], w, q, qs, err, wdtype=wdtype)
        assert (got[m], n_exact[m]) == one, m
        assert one[0] == int(np.argmax(_gemv(kern, x[m], w, wdtype)))
    assert n_exact[1] == N and n_exact[0] < N // 10
    assert kern.matmul_argmax(x, w, wdtype=wdtype) == ([int(np.argmax(_gemv(kern, r, w, wdtype))) for r in x], [N] * M)


@pytest.mark.parametrize("K", [203, 768])
def test_matmul_argmax_near_ties_bitwise(kern, rng, K):
    """300 rows equal up to their last bits, among 1700 clearly lower ones: the 300 survive the screen and are
    evaluated one by one, and the pick among values that differ in the last ulp is still the full GEMV's, so
    the single-row evaluation is the GEMV's arithmetic bit for bit."""
    from tinygpt.backends.head_screen import build as head_screen
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
    from tinygpt.backends.head_screen import build as head_screen
    kern = _argmax_kern(kern)
    w = rng.standard_normal((100, 33)).astype(np.float32)
    assert kern.matmul_argmax(np.zeros(33, np.float32), w, *head_screen(w, "float32")) == (0, 100)


def test_matmul_argmax_bound_holds(kern, rng):
    """|float32 GEMV - screened int8 GEMV| <= min(||x||_2 err0, ||x||_1 err1) + ||x||_2 err2, row by row, over
    scales of x and w, for dense x (the L2 form is the tighter) and spiky x (the L1 form is)."""
    from tinygpt.backends.head_screen import build as head_screen
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
    from tinygpt.backends.head_screen import build as head_screen
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
    from tinygpt.dtypes import quantize_int8
    kern = _argmax_kern(kern)
    q, s = quantize_int8(rng.standard_normal((61, 45)).astype(np.float32))
    x = rng.standard_normal(45).astype(np.float32)
    assert kern.matmul_argmax(x, q, wdtype="int8", wscale=s) == (int(np.argmax(_gemv(kern, x, q, "int8", s))), 61)


def test_matmul_argmax_rejects_bad_screens():
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    from tinygpt import _cpu
    from tinygpt.backends.head_screen import build as head_screen
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
    with pytest.raises(ValueError, match=r"expected \[4\] or \[M, 4\], got \[3\]"):
        _cpu.matmul_argmax(x[:3], w, q, qs, err)
    with pytest.raises(ValueError, match=r"got \[0, 4\]"):
        _cpu.matmul_argmax(np.ones((0, 4), np.float32), w, q, qs, err)
    with pytest.raises(ValueError, match="nothing to screen"):
        _cpu.matmul_argmax(x, q, q, qs, err, wdtype="int8", wscale=qs)


def test_matmul_argmax_overflowing_logits(kern, rng):
    """Head weights near the float32 limit (a corrupt file): row 2's logit overflows to +inf (its two huge weights
    meet the same accumulator lane in turn, so the float32 sum is inf though the true sum is 0; NaN on the base
    level, whose FMA rounds the product first) while its
    int8 value is 0 with a bound far below row 7's logit. The screen alone would pick row 7; np.argmax of the
    full logits is row 2: the kernel must see that the row can overflow and read every row."""
    from tinygpt.backends.head_screen import build as head_screen
    kern = _argmax_kern(kern)
    N, K = 40, 64
    w = (rng.standard_normal((N, K)) * 1e-3).astype(np.float32)
    w[2, 0], w[2, 32] = 3e38, -3e38
    w[7, 1] = 5e32
    x = np.zeros(K, np.float32)
    x[0], x[32], x[1] = 2, 2, 2
    logits = _gemv(kern, x, w)
    assert (np.isposinf(logits[2]) or np.isnan(logits[2])) and np.isfinite(np.delete(logits, 2)).all()
    assert int(np.argmax(logits)) == 2
    with np.errstate(over="ignore"):
        screen = head_screen(w, "float32")
    assert np.isfinite(screen[2]).all()  # nothing non-finite for the screen to trip over
    assert kern.matmul_argmax(x, w, *screen) == (2, N)
