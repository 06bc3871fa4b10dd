"""What the two compiled backends (cpu, cuda) share: the Engine's constructor arguments and the Session
wrapper around a native session (one KV cache, forward appends at its position)."""
from __future__ import annotations

import numpy as np

from ..errors import ContextOverflowError
from ..weights import is_matrix


def engine_args(ck, plan, weight_names) -> tuple:
    """(config dict, plan, arrays, dtypes, row scales) for _cpu.Engine / _cuda.Engine; arrays are not copied."""
    arrays, dtypes, scales = [], [], []
    for n in weight_names:
        a = ck.tensors[n]
        dtypes.append(ck.dtype if is_matrix(n) else "float32")
        arrays.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        scales.append(ck.scale_of(n) if is_matrix(n) else None)
    c = ck.config
    cfg = dict(n_vocab=c.n_vocab, n_ctx=c.n_ctx, n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer, d_ff=c.d_ff,
               eps=float(c.eps))
    return cfg, plan, arrays, dtypes, scales


class NativeSession:
    def __init__(self, native, n_ctx: int, before_argmax=None):
        self._s, self._n_ctx, self._before_argmax = native, n_ctx, before_argmax
        self.head_rows_exact = 0  # LM head rows the last forward_argmax evaluated exactly (cpu; else all)

    @property
    def pos(self) -> int:
        return self._s.pos

    def reset(self) -> None:
        self._s.reset()

    def forward(self, tokens: np.ndarray, all_logits: bool = False) -> np.ndarray:
        if len(tokens) == 0 or self.pos + len(tokens) > self._n_ctx:
            raise ContextOverflowError(f"{self.pos} cached + {len(tokens)} new tokens exceed the context of {self._n_ctx}")
        return self._s.forward(np.asarray(tokens, np.int32), all_logits)

    def prepare_argmax(self) -> None:
        """Build what forward_argmax needs (the cpu backend's head screen) now, outside any timed step."""
        if self._before_argmax is not None and hasattr(self._s, "forward_argmax"):
            self._before_argmax()

    def forward_argmax(self, tokens: np.ndarray) -> int:
        """Append tokens; np.argmax of the last position's logits (what greedy decoding picks). The cpu module
        finds it without computing every logit (a screened head, same answer); the others take forward()'s row."""
        if not hasattr(self._s, "forward_argmax"):
            logits = self.forward(tokens)[-1]
            self.head_rows_exact = logits.size
            return int(np.argmax(logits))
        if len(tokens) == 0 or self.pos + len(tokens) > self._n_ctx:
            raise ContextOverflowError(f"{self.pos} cached + {len(tokens)} new tokens exceed the context of {self._n_ctx}")
        if self._before_argmax is not None:
            self._before_argmax()
        tok, self.head_rows_exact = self._s.forward_argmax(np.asarray(tokens, np.int32))
        return tok
