"""C++/OpenMP backend (tinygpt._cpu): the plan runs natively, one call per forward; weights are borrowed
zero-copy from the checkpoint's arrays (memory-mapped for converted files)."""
from __future__ import annotations

from ..errors import BackendUnavailableError, InvalidArgumentError
from .native import NativeSession, engine_args


class CpuBackend:
    name = "cpu"

    def __init__(self, ck, plan, weight_names, threads: int | None = None):
        try:
            from .. import _cpu
        except ImportError as e:
            raise BackendUnavailableError(f"tinygpt._cpu is not available: {e}") from None
        self._cpu = _cpu
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
            _cpu.set_num_threads(threads)  # process-wide (OpenMP)
        self.cfg, self.dtype = ck.config, ck.dtype
        self.engine = _cpu.Engine(*engine_args(ck, plan, weight_names))

    def new_session(self) -> NativeSession:
        return NativeSession(self._cpu.Session(self.engine), self.cfg.n_ctx)
