"""The autoregressive loop over a batch: every step is ONE forward for all running sequences (prefill and decode
rows mixed), then each sequence picks its token and streams UTF-8-safe text.

A sequence's tokens never depend on its batch: its logits are the same bit for bit (cpu) as when it runs alone,
and each sequence samples with its own generator. n samples of one prompt share one prefill (the prompt's cache
is forked). Stop strings are matched on the decoded text; text that could be the start of a stop string is held
back until it is known not to be one, so a stream never shows a stop string.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import numpy as np

from .errors import ContextOverflowError
from .sampling import SamplingOptions, select


@dataclass
class Timings:
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    generated_tokens: int = 0
    decode_steps: int = 0  # cached forwards of one new token (each followed by a token choice)
    decode_s: float = 0.0  # wall time of those steps (in a batch: of the whole batch's steps)

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


class Piece(NamedTuple):
    """A streamed piece of a batch: `index` is the position of its sequence in the results list."""
    index: int
    text: str


def sample_seed(base: int, sample: int) -> int:
    """The seed of sample j of a request with seed `base`: base + j. So sample 0 is the request run alone with the
    same seed, and sample j equals a single call made with seed base + j."""
    return base + sample


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _first_stop(text: str, stops: tuple[str, ...]) -> int:
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


class _Decoding:
    """One sequence's state between forwards: its context, generator, text decoder and what it feeds next."""

    def __init__(self, model, prompt_ids: list[int], opts: SamplingOptions, seed: int):
        self.opts, self.model = opts, model
        self.result = GenerationResult(seed=seed, finish_reason="length")
        self.rng = np.random.default_rng(seed)
        n_ctx = model.config.n_ctx
        self.context = list(prompt_ids)
        if opts.context_overflow == "slide" and len(self.context) > n_ctx:
            self.context = self.context[-n_ctx:]
        self.result.timings.prompt_tokens = len(self.context)
        self.dec = model.tokenizer.stream_decoder()
        self.pending = ""
        self.seq = None  # set when it runs (forked from its group's leader after the shared prefill)
        self.feed = np.asarray(self.context, np.int32)
        self.prefilling = True
        # greedy without a penalty needs only the argmax (the cpu backend then skips most of the LM head)
        self.want = "argmax" if opts.greedy and opts.repeat_penalty == 1.0 else "last"
        self.done = opts.max_new_tokens == 0

    def accept(self, out) -> list[str]:
        """Take this step's forward output (logits row or argmax); returns the text pieces now safe to show."""
        opts, res, tm = self.opts, self.result, self.result.timings
        tok = out if self.want == "argmax" else select(out[-1], opts, self.rng, self.context)
        pieces: list[str] = []
        if tok == self.model.tokenizer.eot_id and not opts.ignore_eos:
            res.finish_reason = "stop"
            return pieces + self._finish()
        self.context.append(tok)
        res.tokens.append(tok)
        tm.generated_tokens += 1
        self.pending += self.dec.feed(tok)
        if tm.generated_tokens >= opts.max_new_tokens or _first_stop(self.pending, opts.stop) >= 0:
            return pieces + self._finish()
        keep = _held_back(self.pending, opts.stop)
        if len(self.pending) > keep:
            piece, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
            res.text += piece
            pieces.append(piece)
        n_ctx = self.model.config.n_ctx
        if self.seq.pos >= n_ctx:
            if opts.context_overflow != "slide":
                raise ContextOverflowError(f"context of {n_ctx} tokens is full")
            keep_n = n_ctx - n_ctx // 4  # drop the oldest quarter and re-read the rest as a fresh prompt
            self.seq.reset()
            self.feed, self.prefilling = np.asarray(self.context[-keep_n:], np.int32), True
        else:
            self.feed, self.prefilling = np.asarray([tok], np.int32), False
        return pieces

    def _finish(self) -> list[str]:
        self.done = True
        self.pending += self.dec.flush()
        hit = _first_stop(self.pending, self.opts.stop)
        if hit >= 0:
            self.pending, self.result.finish_reason = self.pending[:hit], "stop"
        piece, self.pending = self.pending, ""
        self.result.text += piece
        return [piece] if piece else []


class BatchRun:
    """Iterator of Pieces for a list of requests [(prompt ids, options, seed, n samples)]; `.results` lists one
    GenerationResult per sample, request by request, complete once the iterator is exhausted."""

    def __init__(self, model, requests):
        self.model = model
        self._states: list[_Decoding] = []
        self._groups: list[list[_Decoding]] = []  # samples of one request: the first prefills, the rest fork it
        for ids, opts, seed, n in requests:
            base = seed if seed is not None else secrets.randbits(63)
            group = [_Decoding(model, ids, opts, sample_seed(base, j)) for j in range(n)]
            self._states += group
            self._groups.append(group)
        self.results = [s.result for s in self._states]
        self._it = self._run()

    def __iter__(self) -> Iterator[Piece]:
        return self

    def __next__(self) -> Piece:
        return next(self._it)

    def _run(self):
        be = self.model.backend
        index = {id(s): i for i, s in enumerate(self._states)}
        for group in self._groups:
            if not group[0].done:
                group[0].seq = be.new_sequence()
        if any(s.want == "argmax" for s in self._states):
            be.prepare_argmax()  # one-time setup (the cpu head screen) stays out of the timed steps
        while True:
            run = [s for s in self._states if not s.done and s.seq is not None]
            if not run:
                return
            t0 = time.perf_counter()
            outs = be.forward([s.seq for s in run], [s.feed for s in run], [s.want for s in run])
            t_fwd = time.perf_counter() - t0
            todo = list(zip(run, outs))
            for group in self._groups:  # the other samples of a request start from its prefilled cache
                lead = group[0]
                if lead in run and lead.prefilling and len(group) > 1 and group[1].seq is None:
                    for f in group[1:]:
                        f.seq = lead.seq.fork()
                        todo.append((f, outs[run.index(lead)]))
            pieces, decoded = [], []
            for s, out in todo:
                if s.prefilling and s.result.timings.prefill_s == 0.0:
                    s.result.timings.prefill_s = t_fwd
                if not s.prefilling:
                    decoded.append(s.result.timings)
                pieces += [Piece(index[id(s)], p) for p in s.accept(out)]
            dt = time.perf_counter() - t0  # the step: the forward and every sequence's token choice
            for tm in decoded:
                tm.decode_steps += 1
                tm.decode_s += dt
            yield from pieces


class Stream:
    """Iterator over one sequence's text pieces; `.result` is complete once the iterator is exhausted."""

    def __init__(self, model, prompt_ids: list[int], opts: SamplingOptions):
        self._run = BatchRun(model, [(prompt_ids, opts, opts.seed, 1)])
        self.result = self._run.results[0]

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._run).text
