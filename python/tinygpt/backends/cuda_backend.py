"""CUDA backend (tinygpt._cuda): weights uploaded once, KV caches and activations on the device; a single
sequence's decode step is replayed from a CUDA graph captured once per sequence. Native sequences are pooled: a
finished one (its device KV cache and its captured graph) serves the next new_sequence(), so a generate() call
allocates and captures nothing after the first. Not yet run on a GPU."""
from __future__ import annotations

import threading
import weakref

from ..errors import BackendUnavailableError
from .base import Backend
from .native import NativeSequence, engine_config, engine_weights


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, ck):
        try:
            from .. import _cuda
        except ImportError as e:
            raise BackendUnavailableError(f"tinygpt._cuda is not available: {e}") from None
        if ck.dtype == "int8":
            raise BackendUnavailableError("int8 weights are supported by the cpu backend only; load with "
                                          "dtype='float16' or 'bfloat16' for cuda")
        self._cuda = _cuda
        self.cfg, self.dtype = ck.config, ck.dtype
        self._pool, self._pool_lock = [], threading.Lock()
        try:
            self.engine = _cuda.Engine(engine_config(ck.config), engine_weights(ck), ck.config.tie_word_embeddings)
        except RuntimeError as e:
            raise BackendUnavailableError(
                f"cannot place the model ({ck.nbytes / 2**20:.0f} MiB of weights, {ck.dtype}) on the GPU: {e}") from None

    POOL_MAX = 16  # idle device sequences kept (each holds a KV cache: 2 n_layer n_ctx n_embd floats)

    def new_sequence(self) -> NativeSequence:
        c = self.cfg
        with self._pool_lock:
            native = self._pool.pop() if self._pool else None
        try:
            if native is None:
                native = self._cuda.Sequence(self.engine)
            native.reset()
            seq = NativeSequence(self, native)
            weakref.finalize(seq, self._release, native)
            return seq
        except RuntimeError as e:
            kv = 2 * c.n_layer * c.n_ctx * c.n_embd * 4
            raise BackendUnavailableError(f"cannot allocate a sequence ({kv / 2**20:.0f} MiB KV cache) on the GPU: {e}") from None

    def _release(self, native) -> None:
        with self._pool_lock:
            if len(self._pool) < self.POOL_MAX:
                self._pool.append(native)

    def _forward(self, seqs, tokens, want, out=None, skip=None):  # (writes_out is False: out is None)
        return self._cuda.forward(self.engine, [s._s for s in seqs], tokens, want, skip or [])
