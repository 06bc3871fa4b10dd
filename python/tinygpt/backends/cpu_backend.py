"""C++/OpenMP backend (tinygpt._cpu): one native call per forward over a whole batch; weights are borrowed
zero-copy from the checkpoint's arrays (memory-mapped for converted files).

Greedy steps of a single sequence screen the LM head (head_screen.py explains the mechanism and its policy).
"""
from __future__ import annotations

import threading

from ..errors import BackendUnavailableError, InvalidArgumentError
from ..gpt2 import head_name
from ..threads import apply as apply_threads
from . import head_screen
from .base import Backend
from .native import NativeSequence, engine_config, engine_weights


class CpuBackend(Backend):
    name = "cpu"
    writes_out = True

    def __init__(self, ck, threads: int | None = None, screen_head: str | None = None, bf16_activations: bool = False):
        try:
            from .. import _cpu
        except ImportError as e:
            raise BackendUnavailableError(f"tinygpt._cpu is not available: {e}") from None
        self._cpu = _cpu
        if not isinstance(bf16_activations, bool):
            raise InvalidArgumentError(f"bf16_activations must be True or False, got {bf16_activations!r}")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
        try:  # the native module checks thread counts and TINYGPT_ISA (ValueError): typed errors here
            apply_threads(_cpu, threads)  # process-wide (OpenMP); default: physical cores (threads.py)
            _cpu.build_info()  # picks the kernel table now: a bad TINYGPT_ISA fails at load, not mid-generation
            self.engine = _cpu.Engine(engine_config(ck.config), engine_weights(ck), ck.config.tie_word_embeddings,
                                      bf16_activations)
        except ValueError as e:
            raise InvalidArgumentError(str(e)) from None
        self.cfg, self.dtype = ck.config, ck.dtype
        # the screen's error bound is for float32 activations: with bf16 ones greedy steps read the whole head
        self.screen_head = head_screen.wanted(ck.dtype, screen_head) and not bf16_activations
        self._head = ck.tensors[head_name(ck.config)]
        self._screened = False
        self._lock = threading.Lock()

    def prepare_argmax(self) -> None:
        if self._screened or not self.screen_head:
            return
        with self._lock:
            if not self._screened:
                self.engine.set_head_screen(*head_screen.build(self._head, self.dtype))
                self._screened = True

    def new_sequence(self) -> NativeSequence:
        return NativeSequence(self, self._cpu.Sequence(self.engine))

    def _forward(self, seqs, tokens, want, out=None, skip=None):
        if 3 in want:
            self.prepare_argmax()
        return self._cpu.forward(self.engine, [s._s for s in seqs], tokens, want, out, skip or [])
