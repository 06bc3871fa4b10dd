"""C++/OpenMP backend (tinygpt._cpu): the plan runs natively, one call per forward; weights are borrowed
zero-copy from the checkpoint's arrays (memory-mapped for converted files)."""
from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError, ContextOverflowError, InvalidArgumentError
from ..weights import is_matrix


class CpuBackend:
    name = "cpu"

    def __init__(self, ck, plan, weight_names, threads: int | None = None):
        try:
            from .. import _cpu
        except ImportError as e:
            raise BackendUnavailableError(f"tinygpt._cpu is not available: {e}") from None
        self._cpu = _cpu
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
            _cpu.set_num_threads(threads)
        self.cfg = ck.config
        self.dtype = ck.dtype
        arrays, dtypes, scales = [], [], []
        for n in weight_names:
            a = ck.tensors[n]
            dtypes.append(ck.dtype if is_matrix(n) else "float32")
            arrays.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
            scales.append(ck.scale_of(n) if is_matrix(n) else None)
        c = self.cfg
        cfg = dict(n_vocab=c.n_vocab, n_ctx=c.n_ctx, n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer,
                   d_ff=c.d_ff, eps=float(c.eps))
        self.engine = _cpu.Engine(cfg, plan, arrays, dtypes, scales)

    def new_session(self) -> "CpuSession":
        return CpuSession(self)


class CpuSession:
    def __init__(self, be: CpuBackend):
        self.be = be
        self._s = be._cpu.Session(be.engine)

    @property
    def pos(self) -> int:
        return self._s.pos

    def reset(self) -> None:
        self._s.reset()

    def forward(self, tokens: np.ndarray, all_logits: bool = False) -> np.ndarray:
        n_ctx = self.be.cfg.n_ctx
        if len(tokens) == 0 or self.pos + len(tokens) > n_ctx:
            raise ContextOverflowError(f"{self.pos} cached + {len(tokens)} new tokens exceed the context of {n_ctx}")
        return self._s.forward(np.asarray(tokens, np.int32), all_logits)
