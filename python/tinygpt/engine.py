"""Async engine for apps and the server: one model, many callers, continuous batching.

A scheduler thread runs `generate.Scheduler` step after step: requests waiting in the queue join the running batch
between steps (up to max_batch sequences), finished or cancelled ones leave at once, long prompts are fed in chunks
so running streams keep moving. Every sequence's text is the same as `Model.generate` alone with the same prompt,
options and seed (the batch never changes a sequence's logits on the cpu backend).

    engine = AsyncEngine(model)
    async for piece in engine.stream("Once upon a time", max_new_tokens=50, seed=1): print(piece.text, end="")
    results = await engine.generate("Hello", n=2, max_new_tokens=20)      # list of GenerationResult
    scores = await engine.score(ids, top_n=5)                             # TokenLogprob per token (first: None)

Cancel by cancelling the consuming task (or closing the stream): its sequences are freed before the next step.
"""
from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque

from .errors import EngineClosedError, InvalidArgumentError, QueueFullError
from .generate import Piece, Scheduler, _Decoding, _Scoring, sample_seed


class _Request:
    def __init__(self, states, loop):
        self.states, self.loop = states, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = self.finished = False
        self.index = {id(s): i for i, s in enumerate(states)}
        self.t_submit = time.perf_counter()
        self.t_first: float | None = None

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone: nobody is listening any more
            self.cancelled = True


class AsyncEngine:
    def __init__(self, model, *, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 256):
        for name, v in (("max_batch", max_batch), ("max_queue", max_queue), ("prefill_chunk", prefill_chunk)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {v!r}")
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self._sched = Scheduler(model, prefill_chunk)
        self._cv = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []
        self._closed = self._stop = False
        self._stats = dict(requests_total=0, requests_finished=0, requests_cancelled=0, tokens_generated=0,
                           prompt_tokens=0, steps=0, batch_size=0, step_seconds_total=0.0)
        self._thread = threading.Thread(target=self._loop, name="tinygpt-engine", daemon=True)
        self._thread.start()

    # -- public API --------------------------------------------------------------------------------
    async def stream(self, prompt, **options):
        """Async iterator of Pieces (index = sample, text, tokens, logprobs, finish_reason on a sample's last piece)
        for one prompt (n samples)."""
        req = await self._submit_generate(prompt, options)
        try:
            while True:
                kind, payload = await req.queue.get()
                if kind == "piece":
                    yield payload
                elif kind == "done":
                    return
                else:
                    raise payload
        finally:
            if not req.finished:
                self._cancel(req)

    async def generate(self, prompt, **options) -> list:
        """One GenerationResult per sample (n), once all are finished."""
        req = await self._submit_generate(prompt, options)
        try:
            while True:
                kind, payload = await req.queue.get()
                if kind == "done":
                    return [s.result for s in req.states]
                if kind == "error":
                    raise payload
        finally:
            if not req.finished:
                self._cancel(req)

    async def score(self, ids, top_n: int = 0) -> list:
        """TokenLogprob of ids[i] given ids[:i] for every i >= 1 (index 0: None, as OpenAI's echo), with `top_n`
        alternatives each, computed in the running batch."""
        if isinstance(top_n, bool) or not isinstance(top_n, int) or not 0 <= top_n <= self.model.config.n_vocab:
            raise InvalidArgumentError(f"top_n must be an integer in 0..{self.model.config.n_vocab}, got {top_n!r}")
        arr = self.model._check_ids(ids)
        state = _Scoring(arr.tolist(), top_n)
        if len(arr) == 1:
            return [None]
        req = self._submit([state])
        try:
            while True:
                kind, payload = await req.queue.get()
                if kind == "done":
                    return state.scores
                if kind == "error":
                    raise payload
        finally:
            if not req.finished:
                self._cancel(req)

    def stats(self) -> dict:
        with self._cv:
            d = dict(self._stats)
            d["queue_depth"] = len(self._waiting)
            d["running"] = sum(1 for s in self._sched.running())
            # KV caches the scheduler still holds, finished sequences of groups not yet dropped included: 0 when idle
            d["kv_caches"] = sum(1 for g in self._sched.groups for s in g if s.seq is not None)
            d["requests_active"] = len(self._active)
            d["closed"] = self._closed
        return d

    async def aclose(self, grace_s: float = 30.0) -> None:
        """Stop taking requests (EngineClosedError), let in-flight ones finish for up to grace_s, then cancel the
        rest and stop the scheduler thread."""
        with self._cv:
            self._closed = True
        t_end = time.monotonic() + grace_s
        while time.monotonic() < t_end:
            with self._cv:
                if not self._active and not self._waiting:
                    break
            await asyncio.sleep(0.02)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        await asyncio.to_thread(self._thread.join)

    # -- internals ---------------------------------------------------------------------------------
    async def _submit_generate(self, prompt, options) -> _Request:
        m = self.model
        opts, n, lp = m._options(options)
        if n > self.max_batch:
            raise InvalidArgumentError(f"n={n} exceeds the engine's max_batch={self.max_batch}")
        ids, opts = await asyncio.to_thread(m._prompt_ids, prompt, opts)  # a long prompt's BPE off the event loop
        base = opts.seed if opts.seed is not None else secrets.randbits(63)
        states = [_Decoding(m, ids, opts, sample_seed(base, j), lp) for j in range(n)]
        return self._submit(states)

    def _submit(self, states) -> _Request:
        req = _Request(states, asyncio.get_running_loop())
        with self._cv:
            if self._closed:
                raise EngineClosedError("the engine is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            self._waiting.append(req)
            self._stats["requests_total"] += 1
            self._cv.notify()
        return req

    def _cancel(self, req: _Request) -> None:
        with self._cv:
            req.cancelled = True
            self._cv.notify()

    def _retire(self, req: _Request, kind: str, payload=None) -> None:
        """Caller holds the lock: remove req from the engine and tell its caller."""
        if req in self._active:
            self._active.remove(req)
            self._sched.drop(req.states)
        elif req in self._waiting:
            self._waiting.remove(req)
        if not req.finished:
            req.finished = True
            self._stats["requests_cancelled" if req.cancelled else "requests_finished"] += 1
            if kind != "cancelled":
                req.put((kind, payload))

    def _loop(self) -> None:
        while self._iterate():
            pass

    def _iterate(self) -> bool:
        """Wait for work, admit waiting requests, run one step; False once stopped. A method of its own so that its
        locals (the last step's states and requests) go when it returns: an idle engine must hold no KV cache."""
        with self._cv:
            while not self._stop and not self._waiting and not self._active:
                self._cv.wait()
            for req in [r for r in list(self._active) + list(self._waiting) if r.cancelled]:
                self._retire(req, "cancelled")
            if self._stop:
                for req in list(self._active) + list(self._waiting):
                    req.cancelled = True
                    self._retire(req, "error", EngineClosedError("the engine stopped"))
                return False
            running = sum(len(r.states) for r in self._active)
            while self._waiting and (not self._active or running + len(self._waiting[0].states) <= self.max_batch):
                req = self._waiting.popleft()
                try:
                    self._sched.add(req.states)
                except Exception as e:  # e.g. no memory for a KV cache: this request fails, the rest go on
                    req.finished = True
                    req.put(("error", e))
                    continue
                self._active.append(req)
                self._stats["prompt_tokens"] += len(req.states[0].feed)
                running += len(req.states)
            owner = {id(s): r for r in self._active for s in r.states}
        if not owner:
            return True
        t0 = time.perf_counter()
        try:
            n_run = len(self._sched.running())
            events = self._sched.step()
        except Exception as e:  # a failed step fails the requests in it, never the engine
            with self._cv:
                for req in list(self._active):
                    self._retire(req, "error", e)
            return True
        now = time.perf_counter()
        with self._cv:
            self._stats["steps"] += 1
            self._stats["batch_size"] = n_run
            self._stats["step_seconds_total"] += now - t0
            for s, (text, toks, lps, fin) in events:
                req = owner[id(s)]
                self._stats["tokens_generated"] += len(toks)
                if req.t_first is None and toks:
                    req.t_first = now
                req.put(("piece", Piece(req.index[id(s)], text, toks, lps, fin)))
            for req in list(self._active):
                if all(s.done for s in req.states):
                    self._retire(req, "done")
        return True
