"""Greedy decoding's screened LM head (cpu backend): the one place that explains it.

Greedy decoding without a penalty needs only np.argmax of the last row's logits. An int8 copy of the head (built
once, on the first greedy step: a quarter of a float32 head's bytes) gives every vocabulary row an approximate
logit with a proven error bound (see `build`); only rows whose interval reaches the best lower bound are computed
exactly, with the matmul's own per-row arithmetic (csrc/head_argmax.cpp), so the token is bit for bit np.argmax of
the full logits (the first maximum; NaN or inf anywhere makes it read every row). A step whose screen keeps over a
quarter of the rows reads the whole head, and that sequence skips the screen for the next 15 steps.
A batch's greedy rows are screened together: one int8 matmul over the copy serves all of them (read once), then
each row's survivors are computed exactly; rows the screen cannot decide (and sequences in their 15-step pause)
share one GEMM over the whole head.

Policy, TINYGPT_GREEDY_SCREEN (or screen_head=): auto (default: float32 heads only; for a 16-bit head the copy is
+15% of the model's memory for ~15% less traffic per step) | 1 (16-bit heads too) | 0 (off). int8 heads are never
screened (the copy would be the head's size).

Why the bound holds. For a head row w (float32 values of the stored weights), its int8 copy q with scale s and
the quantization error e = w - s q, and any float32 activation x:
    x . w = s (x . q) + x . e,   |x . e| <= min(||x||_2 ||e||_2, ||x||_1 max|e|)     (Cauchy-Schwarz, Hoelder)
Both dot products are computed in float32 (matmul's arithmetic: any order of FMAs and additions); each is within
gamma_n sum|x_k||v_k| <= gamma_n ||x||_2 ||v||_2 of its exact value (n <= 2K + 8 roundings), so
    |matmul(x, w) - matmul_int8(x, q) * s| <= min(||x||_2 err0, ||x||_1 err1) + ||x||_2 err2
with err0 = ||e||_2, err1 = max|e|, err2 = g (||w||_2 + s ||q||_2), g = (2K + 8) 2^-24 >= gamma_(2K+8). The
kernel finds the best lower bound lo = max_n (a_n - bound_n) over the int8 values a_n and evaluates exactly the
rows with a_n + bound_n >= lo (plus a relative slack for its float64 arithmetic). The argument assumes no float32
overflow in the exact row: the kernel checks ||x||_1 * 127 s_n < FLT_MAX for every row (which bounds every partial
sum), and reads every row when that fails, as it does for any non-finite value or a screen that prunes less than
3/4 of the rows. The answer is then np.argmax of the full matmul row, bit for bit.
"""
from __future__ import annotations

import os

import numpy as np

from ..dtypes import get, quantize_int8
from ..errors import InvalidArgumentError


def wanted(dtype: str, mode: str | None = None) -> bool:
    mode = mode if mode is not None else os.environ.get("TINYGPT_GREEDY_SCREEN", "auto")
    if mode not in ("auto", "0", "1"):
        raise InvalidArgumentError(f"TINYGPT_GREEDY_SCREEN / screen_head must be auto, 0 or 1, got {mode!r}")
    return dtype != "int8" and (mode == "1" or (mode == "auto" and dtype == "float32"))


def build(w: np.ndarray, dtype: str, chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy decoding's screening copy of an LM head w [N, K] stored as `dtype` (float32, float16, or bfloat16
    bits): (q int8 [N, K], qs float32 [N], err float32 [N, 3]) such that for any float32 x, the head's float32 GEMV
    value of row n and the int8 GEMV value x . q[n] * qs[n] differ by at most
    min(||x||_2 err[n, 0], ||x||_1 err[n, 1]) + ||x||_2 err[n, 2].

    With e = w[n] - qs[n] q[n] (the quantization error): err[n, 0] = ||e||_2 (Cauchy-Schwarz), err[n, 1] = max|e|
    (Hoelder; tighter when x has a few large entries), err[n, 2] = g (||w[n]||_2 + qs[n] ||q[n]||_2) for the
    float32 rounding of both dot products in any summation order, with or without FMA (g = (2K + 8) 2^-24 >=
    gamma_(2K+8)). Computed in float64, scaled by 1 + 1e-6 and rounded up to float32. Built in row chunks, so the
    float64 temporaries stay a few MB (the peak-RSS budget has little room)."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"no head screen for {dtype} weights")
    N, K = w.shape
    q = np.empty((N, K), np.int8)
    qs = np.empty(N, np.float32)
    err = np.empty((N, 3), np.float32)
    g = (2 * K + 8) * 2.0 ** -24
    for r0 in range(0, N, chunk):
        wf = get(dtype).widen(np.asarray(w[r0:r0 + chunk]))
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite weights: err is NaN/inf, the kernel reads
            qq, ss = quantize_int8(wf)                       # every row (no warning from library code)
        w64, q64, s64 = wf.astype(np.float64), qq.astype(np.float64), ss.astype(np.float64)
        d = w64 - q64 * s64[:, None]  # q * s is exact in float64 (8 by 24 bits)
        with np.errstate(invalid="ignore", over="ignore"):
            norm = lambda a: np.sqrt(np.einsum("ij,ij->i", a, a))  # noqa: E731
            e = np.stack([norm(d), np.abs(d).max(axis=1), g * (norm(w64) + s64 * norm(q64))], axis=1) * (1 + 1e-6)
            e32 = e.astype(np.float32)
        q[r0:r0 + chunk], qs[r0:r0 + chunk] = qq, ss
        err[r0:r0 + chunk] = np.where(e32 < e, np.nextafter(e32, np.float32(np.inf)), e32)
    return q, qs, err
