"""NumPy backend: python/tinygpt/gpt2.py's forward with the float32 NumPy kernels (tinygpt.ref).

Reduced-precision checkpoints are widened to float32 once at load (NumPy has no bf16 matmul). Batched rows go
through one BLAS call per matmul, and a BLAS picks different kernels for different row counts, so a sequence's
logits in a batch equal its solo logits only within float32 rounding (README: what is bitwise).
"""
from __future__ import annotations

import numpy as np

from ..gpt2 import forward, weight_shapes
from .base import Backend, Sequence


class NumpySequence(Sequence):
    def __init__(self, backend: "NumpyBackend"):
        c = backend.cfg
        self.backend, self._pos = backend, 0
        shape = (c.n_layer, c.n_head, c.n_ctx, c.head_dim)
        self.k = np.zeros(shape, np.float32)  # zeros: pages stay unmapped until written
        self.v = np.zeros(shape, np.float32)

    @property
    def pos(self) -> int:
        return self._pos

    def reset(self) -> None:
        self._pos = 0

    def fork(self) -> "NumpySequence":
        f = NumpySequence(self.backend)
        f.k[:, :, :self._pos] = self.k[:, :, :self._pos]
        f.v[:, :, :self._pos] = self.v[:, :, :self._pos]
        f._pos = self._pos
        return f


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, ck):
        self.cfg = ck.config
        self.weights = {n: ck.widened(n) for n in weight_shapes(ck.config)}
        self.dtype = "float32"

    def new_sequence(self) -> NumpySequence:
        return NumpySequence(self)

    def _forward(self, seqs, tokens, want, out=None, skip=None):  # (writes_out is False: out is None)
        V = self.cfg.n_vocab
        rows, argmax_rows, r = [], [], 0
        for t, w, k in zip(tokens, want, skip or [0] * len(tokens)):
            if w == 2:
                rows += range(r + k, r + t.size)
            elif w in (1, 3):
                (rows if w == 1 else argmax_rows).append(r + t.size - 1)
            r += t.size
        out = forward(self.weights, self.cfg, tokens, [(s.k, s.v) for s in seqs], [s.pos for s in seqs],
                      rows + argmax_rows)
        best = np.full(len(seqs), -1, np.int64)
        k = len(rows)
        for i, w in enumerate(want):
            if w == 3:
                best[i] = int(np.argmax(out[k]))
                k += 1
        for s, t in zip(seqs, tokens):
            s._pos += t.size
        return out[:len(rows)], best, np.full(len(seqs), V)
