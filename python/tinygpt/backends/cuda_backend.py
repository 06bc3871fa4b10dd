"""CUDA backend (tinygpt._cuda): weights uploaded once, KV cache and activations on the device, decode
steps replayed from a captured CUDA graph; one small copy each way per step."""
from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError, ContextOverflowError
from ..weights import is_matrix


class CudaBackend:
    name = "cuda"

    def __init__(self, ck, plan, weight_names):
        try:
            from .. import _cuda
        except ImportError as e:
            raise BackendUnavailableError(f"tinygpt._cuda is not available: {e}") from None
        self._cuda = _cuda
        if ck.dtype == "int8":
            raise BackendUnavailableError("int8 weights are supported by the cpu backend only; load with "
                                          "dtype='float16' or 'bfloat16' for cuda")
        self.cfg, self.dtype = ck.config, ck.dtype
        arrays, dtypes = [], []
        for n in weight_names:
            a = ck.tensors[n]
            dtypes.append(ck.dtype if is_matrix(n) else "float32")
            arrays.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        c = self.cfg
        cfg = dict(n_vocab=c.n_vocab, n_ctx=c.n_ctx, n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer,
                   d_ff=c.d_ff, eps=float(c.eps))
        try:
            self.engine = _cuda.Engine(cfg, plan, arrays, dtypes)
        except RuntimeError as e:
            raise BackendUnavailableError(
                f"cannot place the model ({ck.nbytes / 2**20:.0f} MiB of weights, {ck.dtype}) on the GPU: {e}") from None

    def new_session(self) -> "CudaSession":
        return CudaSession(self)


class CudaSession:
    def __init__(self, be: CudaBackend):
        self.be = be
        c = be.cfg
        try:
            self._s = be._cuda.Session(be.engine)
        except RuntimeError as e:
            kv = 2 * c.n_layer * c.n_ctx * c.n_embd * 4
            raise BackendUnavailableError(f"cannot allocate a session ({kv / 2**20:.0f} MiB KV cache) on the GPU: {e}") from None

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
