"""GELU, tanh approximation (HF "gelu_new", OpenAI GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
import math

import numpy as np

_S = math.sqrt(2.0 / math.pi)


def gelu(out: np.ndarray, inp: np.ndarray) -> None:
    x = inp
    t = np.tanh(_S * (x + 0.044715 * (x * x * x)))
    np.multiply(0.5 * x, 1.0 + t, out=out)
