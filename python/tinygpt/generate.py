"""The autoregressive loop: prefill once, then one token per step, streaming UTF-8-safe text.

Stop strings are matched on the decoded text; text that could be the start of a stop string is held
back until it is known not to be one, so a stream never shows a stop string.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import ContextOverflowError
from .sampling import SamplingOptions, select


@dataclass
class Timings:
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    generated_tokens: int = 0
    decode_steps: int = 0  # cached single-token forwards (each followed by a token choice)
    decode_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s else 0.0


@dataclass
class GenerationResult:
    text: str = ""
    tokens: list = field(default_factory=list)
    finish_reason: str = ""  # "stop" (EOS or stop string) | "length"
    seed: int | None = None
    timings: Timings = field(default_factory=Timings)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Stream:
    """Iterator over text pieces; `.result` is complete once the iterator is exhausted."""

    def __init__(self, model, session, prompt_ids: list[int], opts: SamplingOptions):
        self.result = GenerationResult()
        self._it = self._run(model, session, prompt_ids, opts)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def _run(self, model, session, prompt_ids, opts):
        res, tm = self.result, self.result.timings
        n_ctx, eot = model.config.n_ctx, model.tokenizer.eot_id
        seed = opts.seed if opts.seed is not None else secrets.randbits(63)
        res.seed = seed
        rng = np.random.default_rng(seed)
        context = list(prompt_ids)
        if opts.context_overflow == "slide" and len(context) > n_ctx:
            context = context[-n_ctx:]
        tm.prompt_tokens = len(context)
        dec = model.tokenizer.stream_decoder()
        pending = ""
        res.finish_reason = "length"
        if opts.max_new_tokens == 0:
            return
        # greedy without a penalty needs only the argmax: forward_argmax (the cpu backend skips most of the head)
        argmax_only = opts.argmax_only

        def step(ids):
            if argmax_only:
                return session.forward_argmax(np.asarray(ids, np.int32))
            return session.forward(np.asarray(ids, np.int32))[-1]

        if argmax_only and hasattr(session, "prepare_argmax"):
            session.prepare_argmax()  # one-time setup (the cpu head screen) stays out of the prefill time
        t0 = time.perf_counter()
        out = step(context)
        tm.prefill_s = time.perf_counter() - t0
        t_step = None  # set while a decode step is being timed (forward + token choice)
        while True:
            tok = out if argmax_only else select(out, opts, rng, context, len(res.tokens))
            if t_step is not None:
                tm.decode_s += time.perf_counter() - t_step
                tm.decode_steps += 1
            if tok == eot and not opts.ignore_eos:
                res.finish_reason = "stop"
                break
            context.append(tok)
            res.tokens.append(tok)
            tm.generated_tokens += 1
            pending += dec.feed(tok)
            if tm.generated_tokens >= opts.max_new_tokens:
                break
            hit = _first_stop(pending, opts.stop)
            if hit >= 0:
                break
            keep = _held_back(pending, opts.stop)
            if len(pending) > keep:
                piece, pending = pending[: len(pending) - keep], pending[len(pending) - keep:]
                res.text += piece
                yield piece
            if session.pos >= n_ctx:
                if opts.context_overflow != "slide":
                    raise ContextOverflowError(f"context of {n_ctx} tokens is full")
                keep_n = n_ctx - n_ctx // 4  # drop the oldest quarter and re-prefill the rest
                session.reset()
                t_step = None
                out = step(context[-keep_n:])
                continue
            t_step = time.perf_counter()
            out = step([tok])
        pending += dec.flush()
        hit = _first_stop(pending, opts.stop)
        if hit >= 0:
            pending, res.finish_reason = pending[:hit], "stop"
        if pending:
            res.text += pending
            yield pending


def _first_stop(text: str, stops: tuple[str, ...]) -> int:
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
