"""Linear layer: out[M, N] (+)= act(inp[M, K] @ w[N, K].T + b[N])  (weights are [out, in])."""
import numpy as np

from .gelu import gelu


def matmul(out: np.ndarray, inp: np.ndarray, w: np.ndarray, b=None, *, gelu_act: bool = False,
           accumulate: bool = False) -> None:
    if accumulate or gelu_act or b is not None:
        y = inp @ w.T
        if b is not None:
            y += b
        if gelu_act:
            gelu(y, y)
        if accumulate:
            out += y
        else:
            out[...] = y
    else:
        np.matmul(inp, w.T, out=out)
