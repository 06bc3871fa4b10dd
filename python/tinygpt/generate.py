"""The autoregressive loop over a batch: every step is ONE forward for all running sequences (prefill chunks and
decode rows mixed), then each sequence picks its token and streams UTF-8-safe text. `Scheduler` runs the steps;
`BatchRun` (Model.generate/stream) feeds it all requests up front, `engine.AsyncEngine` lets requests join and leave
between steps (continuous batching).

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
from .scoring import token_logprob


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
    logprobs: list | None = None  # TokenLogprob per generated token, when asked for (logprobs=k)


class Piece(NamedTuple):
    """A streamed piece of a batch: `index` is the position of its sequence in the results list; `tokens` the
    tokens generated since the previous piece (their text may still be partly held back), with their logprobs
    when asked for."""
    index: int
    text: str
    tokens: tuple = ()
    logprobs: tuple | None = None
    finish_reason: str | None = None  # set on a sequence's last piece: "stop" | "length"


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

    def __init__(self, model, prompt_ids: list[int], opts: SamplingOptions, seed: int, logprobs: int | None = None):
        self.opts, self.model, self.logprobs = opts, model, logprobs
        self.result = GenerationResult(seed=seed, finish_reason="length", logprobs=[] if logprobs is not None else None)
        self.rng = np.random.default_rng(seed)
        n_ctx = model.config.n_ctx
        self.context = list(prompt_ids)
        if opts.context_overflow == "slide" and len(self.context) > n_ctx:
            self.context = self.context[-n_ctx:]
        self.result.timings.prompt_tokens = len(self.context)
        self.dec = model.tokenizer.stream_decoder()
        self.pending = ""
        self._tokens, self._lps = [], []  # generated since the last piece
        self.seq = None  # set when it runs (forked from its group's leader after the shared prefill)
        self.feed = np.asarray(self.context, np.int32)
        self.prefilling = True
        # greedy without a penalty (and without logprobs) needs only the argmax: the cpu backend then skips most of
        # the LM head
        self.want = "argmax" if opts.argmax_only and logprobs is None else "last"
        self.done = opts.max_new_tokens == 0

    def accept(self, out) -> list[tuple]:
        """Take this step's forward output (logits or argmax); returns the pieces (text, tokens, logprobs,
        finish reason) now safe to show; the last one of the sequence carries its finish reason."""
        opts, res, tm = self.opts, self.result, self.result.timings
        tok = out if self.want == "argmax" else select(out[-1], opts, self.rng, self.context, len(res.tokens))
        if tok == self.model.tokenizer.eot_id and not opts.ignore_eos:
            res.finish_reason = "stop"
            return self._finish()
        if self.logprobs is not None:
            lp = token_logprob(out[-1], tok, self.logprobs)
            res.logprobs.append(lp)
            self._lps.append(lp)
        self.context.append(tok)
        res.tokens.append(tok)
        self._tokens.append(tok)
        tm.generated_tokens += 1
        self.pending += self.dec.feed(tok)
        if tm.generated_tokens >= opts.max_new_tokens or _first_stop(self.pending, opts.stop) >= 0:
            return self._finish()
        pieces = []
        keep = _held_back(self.pending, opts.stop)
        if len(self.pending) > keep:
            piece, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
            pieces.append(self._piece(piece))
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

    def _piece(self, text: str, finish: str | None = None) -> tuple:
        self.result.text += text
        out = (text, tuple(self._tokens), tuple(self._lps) if self.logprobs is not None else None, finish)
        self._tokens, self._lps = [], []
        return out

    def _finish(self) -> list[tuple]:
        self.done = True
        self.pending += self.dec.flush()
        hit = _first_stop(self.pending, self.opts.stop)
        if hit >= 0:
            self.pending, self.result.finish_reason = self.pending[:hit], "stop"
        piece, self.pending = self.pending, ""
        return [self._piece(piece, self.result.finish_reason)]  # always: it carries the finish reason


class _Scoring:
    """A prompt scored without generating: logprob of every token given the ones before it (the first: None)."""

    def __init__(self, ids: list[int], top_n: int = 0):
        self.ids, self.top_n = list(ids), top_n
        self.feed = np.asarray(ids, np.int32)
        self.prefilling, self.want, self.done, self.seq = True, "all", False, None
        self.scores: list = [None]
        self._next = 1  # the token the next row of logits predicts

    def accept_rows(self, logits: np.ndarray) -> None:
        for row in logits:
            if self._next < len(self.ids):
                self.scores.append(token_logprob(row, self.ids[self._next], self.top_n))
            self._next += 1
        self.done = self._next >= len(self.ids)


class Scheduler:
    """Runs steps over groups of sequences. Each step: one Backend.forward for every running sequence, prompts
    cut into chunks of at most `prefill_chunk` tokens so a long prompt never stalls the others for its whole
    prefill. The samples of a request share its prefill: the first sample's sequence is forked after it."""

    def __init__(self, model, prefill_chunk: int | None = None):
        self.model, self.chunk = model, prefill_chunk
        self.groups: list[list] = []

    def add(self, states: list) -> None:
        if states and not states[0].done:
            states[0].seq = self.model.backend.new_sequence()
        self.groups.append(states)
        if any(getattr(s, "want", "") == "argmax" for s in states):
            self.model.backend.prepare_argmax()  # one-time setup (the cpu head screen), outside the timed steps

    def drop(self, states: list) -> None:
        """Forget a group (finished or cancelled): its sequences and caches are freed."""
        self.groups = [g for g in self.groups if g is not states]

    def running(self) -> list:
        return [s for g in self.groups for s in g if not s.done and s.seq is not None]

    def step(self) -> list[tuple]:
        """One forward for every running sequence; returns [(state, (text, tokens, logprobs, finish reason))]."""
        run = self.running()
        if not run:
            return []
        feeds, wants, partial = [], [], []
        for s in run:
            f, w = s.feed, s.want
            if self.chunk and s.prefilling and len(f) > self.chunk:  # a chunk of a long prompt
                f, s.feed = f[:self.chunk], f[self.chunk:]
                w = "all" if isinstance(s, _Scoring) else "none"
                partial.append(s)
            feeds.append(f)
            wants.append(w)
        t0 = time.perf_counter()
        outs = self.model.backend.forward([s.seq for s in run], feeds, wants)
        t_fwd = time.perf_counter() - t0
        todo = []
        for s, out in zip(run, outs):
            if isinstance(s, _Scoring):
                s.accept_rows(out)
            elif s not in partial:
                todo.append((s, out))
        for g in self.groups:  # the other samples of a request start from its prefilled cache
            lead = g[0]
            if len(g) > 1 and g[1].seq is None and any(lead is s for s, _ in todo) and lead.prefilling:
                out = next(o for s, o in todo if s is lead)
                for f in g[1:]:
                    f.seq = lead.seq.fork()
                    todo.append((f, out))
        events, decoded = [], []
        for s, out in todo:
            tm = s.result.timings
            if s.prefilling and tm.prefill_s == 0.0:
                tm.prefill_s = t_fwd
            if not s.prefilling:
                decoded.append(tm)
            events += [(s, p) for p in s.accept(out)]
        dt = time.perf_counter() - t0  # the step: the forward and every sequence's token choice
        for tm in decoded:
            tm.decode_steps += 1
            tm.decode_s += dt
        return events


class BatchRun:
    """Iterator of Pieces for a list of requests [(prompt ids, options, seed, n samples, logprobs)]; `.results`
    lists one GenerationResult per sample, request by request, complete once the iterator is exhausted.
    At most MAX_BATCH sequences run at once and prompts go in chunks of PREFILL_CHUNK tokens, so a long list keeps
    one step's activations bounded; requests start in order as others finish (texts do not depend on that)."""

    MAX_BATCH = 32
    PREFILL_CHUNK = 512

    def __init__(self, model, requests):
        self._sched = Scheduler(model, self.PREFILL_CHUNK)
        self._waiting: list[list] = []
        states = []
        for ids, opts, seed, n, logprobs in requests:
            base = seed if seed is not None else secrets.randbits(63)
            group = [_Decoding(model, ids, opts, sample_seed(base, j), logprobs) for j in range(n)]
            states += group
            self._waiting.append(group)
        self.results = [s.result for s in states]
        self._index = {id(s): i for i, s in enumerate(states)}
        self._it = self._run()

    def __iter__(self) -> Iterator[Piece]:
        return self

    def __next__(self) -> Piece:
        return next(self._it)

    def _admit(self) -> None:
        for g in [g for g in self._sched.groups if all(s.done for s in g)]:
            self._sched.drop(g)  # finished: its caches go
        n = sum(len(g) for g in self._sched.groups)
        while self._waiting and (n == 0 or n + len(self._waiting[0]) <= self.MAX_BATCH):
            g = self._waiting.pop(0)
            self._sched.add(g)
            n += len(g)

    def _run(self):
        while True:
            self._admit()
            if not self._sched.running():
                if not self._waiting:
                    return
                continue  # everything admitted was already done (max_new_tokens=0): admit the next ones
            for s, (text, toks, lps, fin) in self._sched.step():
                yield Piece(self._index[id(s)], text, toks, lps, fin)


class Stream:
    """Iterator over one sequence's text pieces; `.result` is complete once the iterator is exhausted."""

    def __init__(self, model, prompt_ids: list[int], opts: SamplingOptions, logprobs: int | None = None):
        self._run = BatchRun(model, [(prompt_ids, opts, opts.seed, 1, logprobs)])
        self.result = self._run.results[0]

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            piece = next(self._run)
            if piece.text:
                return piece.text
