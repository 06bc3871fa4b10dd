"""CUDA backend (tinygpt._cuda): weights uploaded once, KV cache and activations on the device, decode
steps replayed from a captured CUDA graph; one small copy each way per step."""
from __future__ import annotations

from ..errors import BackendUnavailableError
from .native import NativeSession, engine_args


class CudaBackend:
    name = "cuda"

    def __init__(self, ck, plan, weight_names):
        try:
            from .. import _cuda
        except ImportError as e:
            raise BackendUnavailableError(f"tinygpt._cuda is not available: {e}") from None
        if ck.dtype == "int8":
            raise BackendUnavailableError("int8 weights are supported by the cpu backend only; load with "
                                          "dtype='float16' or 'bfloat16' for cuda")
        self._cuda = _cuda
        self.cfg, self.dtype = ck.config, ck.dtype
        cfg, plan, arrays, dtypes, _ = engine_args(ck, plan, weight_names)
        try:
            self.engine = _cuda.Engine(cfg, plan, arrays, dtypes)
        except RuntimeError as e:
            raise BackendUnavailableError(
                f"cannot place the model ({ck.nbytes / 2**20:.0f} MiB of weights, {ck.dtype}) on the GPU: {e}") from None

    def new_session(self) -> NativeSession:
        c = self.cfg
        try:
            return NativeSession(self._cuda.Session(self.engine), c.n_ctx)
        except RuntimeError as e:
            kv = 2 * c.n_layer * c.n_ctx * c.n_embd * 4
            raise BackendUnavailableError(f"cannot allocate a session ({kv / 2**20:.0f} MiB KV cache) on the GPU: {e}") from None
