"""Token + position embedding: out[T, C] = wte[tokens] + wpe[pos0:pos0+T]."""
import numpy as np


def embedding(out: np.ndarray, tokens: np.ndarray, wte: np.ndarray, wpe: np.ndarray, pos0: int) -> None:
    T = len(tokens)
    np.add(wte[tokens], wpe[pos0:pos0 + T], out=out)
