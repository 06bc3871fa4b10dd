"""NumPy backend: walks the plan in Python with the float32 reference kernels (tinygpt.ref).

Reduced-precision checkpoints are widened to float32 once at load (NumPy has no bf16 matmul).
"""
from __future__ import annotations

import numpy as np

from ..errors import ContextOverflowError
from ..plan import (BUF_LOGITS, F_ACCUM, F_GELU, F_LAST, OP_ATTENTION, OP_EMBED, OP_LAYERNORM, OP_LINEAR,
                    buffer_widths)
from ..ref.attention import attention
from ..ref.embedding import embedding
from ..ref.layernorm import layernorm
from ..ref.matmul import matmul


class NumpyBackend:
    name = "numpy"

    def __init__(self, ck, plan, weight_names):
        self.cfg = ck.config
        self.plan = [tuple(int(v) for v in row) for row in plan]
        self.weights = [ck.float32(n) for n in weight_names]
        self.dtype = "float32"

    def new_session(self) -> "NumpySession":
        return NumpySession(self)


class NumpySession:
    def __init__(self, be: NumpyBackend):
        cfg = be.cfg
        self.be, self.pos = be, 0
        shape = (cfg.n_layer, cfg.n_head, cfg.n_ctx, cfg.head_dim)
        self.k_cache = np.zeros(shape, np.float32)  # zeros: pages stay unmapped until written
        self.v_cache = np.zeros(shape, np.float32)
        self.bufs = [np.zeros((cfg.n_ctx, w), np.float32) for w in buffer_widths(cfg)[:BUF_LOGITS]]

    def reset(self) -> None:
        self.pos = 0

    def forward(self, tokens: np.ndarray, all_logits: bool = False) -> np.ndarray:
        be, cfg = self.be, self.be.cfg
        T, p0 = len(tokens), self.pos
        if T == 0 or p0 + T > cfg.n_ctx:
            raise ContextOverflowError(f"{p0} cached + {T} new tokens exceed the context of {cfg.n_ctx}")
        logits = np.empty((T if all_logits else 1, cfg.n_vocab), np.float32)
        bufs = self.bufs + [logits]
        W = be.weights
        for op, o, i, w, b, fl, layer, _ in be.plan:
            if op == OP_LINEAR:
                rows = slice(T - 1, T) if (fl & F_LAST and not all_logits) else slice(0, T)
                out = logits if o == BUF_LOGITS else bufs[o][rows]
                matmul(out, bufs[i][rows], W[w], W[b] if b >= 0 else None,
                       gelu_act=bool(fl & F_GELU), accumulate=bool(fl & F_ACCUM))
            elif op == OP_LAYERNORM:
                rows = slice(T - 1, T) if (fl & F_LAST and not all_logits) else slice(0, T)
                layernorm(bufs[o][rows], bufs[i][rows], W[w], W[b], cfg.eps)
            elif op == OP_ATTENTION:
                attention(bufs[o][:T], bufs[i][:T], self.k_cache[layer], self.v_cache[layer], p0, cfg.n_head)
            elif op == OP_EMBED:
                embedding(bufs[o][:T], tokens, W[w], W[b], p0)
            else:
                raise AssertionError(f"unknown op {op}")
        self.pos = p0 + T
        return logits

    def forward_argmax(self, tokens: np.ndarray) -> int:
        """Append tokens; np.argmax of the last position's logits (greedy decoding's pick)."""
        return int(np.argmax(self.forward(tokens)[-1]))
