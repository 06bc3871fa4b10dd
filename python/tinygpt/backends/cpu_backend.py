"""C++/OpenMP backend (tinygpt._cpu): the plan runs natively, one call per forward; weights are borrowed
zero-copy from the checkpoint's arrays (memory-mapped for converted files).

Greedy decoding (forward_argmax) screens the LM head with an int8 copy of it (weights.head_screen: a quarter of a
float32 head's bytes, built on the first greedy step) and evaluates exactly only the rows that could still be the
argmax, so each step reads about 3/4 less of the head and picks the same token (a session whose screen stops
pruning skips it for a while: csrc/executor.cpp). By default only float32 heads are
screened: for a 16-bit head the copy would be half the head's size, +15% of the model's memory for ~15% less
traffic per step. TINYGPT_GREEDY_SCREEN (or screen_head=): auto (default) | 1 (16-bit heads too) | 0 (off)."""
from __future__ import annotations

import os
import threading

from ..errors import BackendUnavailableError, InvalidArgumentError
from ..weights import head_screen
from .native import NativeSession, engine_args


class CpuBackend:
    name = "cpu"

    def __init__(self, ck, plan, weight_names, threads: int | None = None, screen_head: str | None = None):
        try:
            from .. import _cpu
        except ImportError as e:
            raise BackendUnavailableError(f"tinygpt._cpu is not available: {e}") from None
        self._cpu = _cpu
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
        try:  # the native module checks thread counts and TINYGPT_ISA (ValueError): typed errors here
            if threads is not None:
                _cpu.set_num_threads(threads)  # process-wide (OpenMP)
            self.engine = _cpu.Engine(*engine_args(ck, plan, weight_names))
        except ValueError as e:
            raise InvalidArgumentError(str(e)) from None
        self.cfg, self.dtype = ck.config, ck.dtype
        mode = screen_head if screen_head is not None else os.environ.get("TINYGPT_GREEDY_SCREEN", "auto")
        if mode not in ("auto", "0", "1"):
            raise InvalidArgumentError(f"TINYGPT_GREEDY_SCREEN / screen_head must be auto, 0 or 1, got {mode!r}")
        # an int8 head is already the screen's size: nothing to gain
        self.screen_head = ck.dtype != "int8" and (mode == "1" or (mode == "auto" and ck.dtype == "float32"))
        self._head = ck.tensors["wte.weight" if ck.config.tie_word_embeddings else "lm_head.weight"]
        self._screened = False
        self._lock = threading.Lock()

    def _ensure_screen(self) -> None:
        if self._screened or not self.screen_head:
            return
        with self._lock:
            if not self._screened:
                self.engine.set_head_screen(*head_screen(self._head, self.dtype))
                self._screened = True

    def new_session(self) -> NativeSession:
        return NativeSession(self._cpu.Session(self.engine), self.cfg.n_ctx, self._ensure_screen)
