"""What the two compiled backends (cpu, cuda) share: the engine's named weights and the Sequence wrapper."""
from __future__ import annotations

from ..gpt2 import is_matrix, weight_shapes
from .base import Sequence


def engine_config(cfg) -> dict:
    return dict(n_vocab=cfg.n_vocab, n_ctx=cfg.n_ctx, n_embd=cfg.n_embd, n_head=cfg.n_head, n_layer=cfg.n_layer,
                d_ff=cfg.d_ff, eps=float(cfg.eps))


def engine_weights(ck) -> dict:
    """{name: (array, dtype name, int8 row scales or None)} for _cpu.Engine / _cuda.Engine; nothing is copied
    (the checkpoint's arrays are C-contiguous: loaded that way or memory-mapped)."""
    out = {}
    for name in weight_shapes(ck.config):
        m = is_matrix(name)
        out[name] = (ck.tensors[name], ck.dtype if m else "float32", ck.scale_of(name) if m else None)
    return out


class NativeSequence(Sequence):
    def __init__(self, backend, native):
        self.backend, self._s = backend, native

    @property
    def pos(self) -> int:
        return self._s.pos

    def reset(self) -> None:
        self._s.reset()

    @property
    def screened_steps(self) -> int:
        """Greedy steps whose head went through the screen (cpu)."""
        return self._s.screened_steps

    def fork(self) -> "NativeSequence":
        return NativeSequence(self.backend, self._s.fork())
