"""`tinygpt serve`: an OpenAI-compatible completions server (Starlette + uvicorn, the `serve` extra) over AsyncEngine.

A thin layer: it validates requests (anything it does not support is a 400 naming it, never ignored), turns them
into engine calls, and shapes the answers as OpenAI's Completions API does (choices, logprobs, echo, usage, SSE).
Batching, queueing and cancellation belong to the engine; a request whose client goes away cancels its engine
calls, which frees their sequences.
"""
from __future__ import annotations

import asyncio
import codecs
import dataclasses
import hmac
import json
import math
import secrets
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from .errors import ContextOverflowError, EngineClosedError, QueueFullError, TinyGPTError
from .sampling import SamplingOptions

MAX_BODY = 2 * 1024 * 1024  # bytes; a 1024-token prompt is ~5 kB of text or ~7 kB of ids
MAX_STOP = 16               # OpenAI allows 4; lm-evaluation-harness's generate_until tasks may send more
MAX_LOGPROBS = 5            # OpenAI's limit
MAX_N = 64
MAX_CHOICES = 256           # prompts x n in one request
DEFAULT_MAX_TOKENS = 16     # OpenAI's default
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# OpenAI options that are passed to the engine under the same name when this tinygpt's sampler has them;
# otherwise, like `suffix`, they are accepted only at the value that means "off" (OpenAI's default), so a client
# that sends the default still works and one that asks for the feature gets a 400, never a silently different answer.
_SAMPLER = {f.name for f in dataclasses.fields(SamplingOptions)}
_PASSED = {"frequency_penalty", "presence_penalty", "logit_bias"}
_OFF_ONLY = {k: v for k, v in {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logit_bias": ({},),
                               "suffix": ("",)}.items() if k not in _SAMPLER}
_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
           "logprobs", "echo", "user", "best_of", "top_k", "ignore_eos", "suffix", *_PASSED}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _engine_error(e: BaseException) -> APIError:
    """Engine and argument errors as the HTTP answer a client can act on."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFullError):
        return APIError(429, f"server busy: {e}", type="rate_limit_error", code="queue_full",
                        headers={"Retry-After": "1"})
    if isinstance(e, EngineClosedError):
        return APIError(503, "server is shutting down", type="server_error", code="shutting_down")
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), param="max_tokens", code="context_length_exceeded")
    if isinstance(e, TinyGPTError):
        return APIError(400, str(e))
    return APIError(500, "internal error", type="server_error")


# -- request validation ------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _get_int(body, name, default, lo, hi=None):
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise APIError(400, f"'{name}' must be an integer {rng}, got {v!r}", param=name)
    return v


def _get_num(body, name, default, lo, hi):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be a number in [{lo}, {hi}], got {v!r}", param=name)
    return float(v)


def _get_bool(body, name):
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise APIError(400, f"'{name}' must be a boolean, got {v!r}", param=name)
    return v


def _check_ids(ids, n_vocab, where="prompt"):
    if not ids:
        raise APIError(400, f"'{where}' contains an empty list of token ids", param=where)
    if not all(_is_int(i) and 0 <= i < n_vocab for i in ids):
        raise APIError(400, f"'{where}' token ids must be integers in 0..{n_vocab - 1}", param=where,
                       code="invalid_token_id")
    return list(ids)


def _prompts(p, n_vocab) -> list:
    """The request's prompts, each a str or a list of token ids."""
    if p is None:
        return [""]
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p:
        if all(isinstance(x, str) for x in p):
            return list(p)
        if all(_is_int(x) for x in p):
            return [_check_ids(p, n_vocab)]
        if all(isinstance(x, list) for x in p):
            return [_check_ids(x, n_vocab) for x in p]
    raise APIError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of "
                        "token ids (not empty, not mixed)", param="prompt")


@dataclass
class Completion:
    prompts: list
    n: int
    max_tokens: int
    echo: bool
    logprobs: int | None
    stream: bool
    include_usage: bool
    options: dict = field(default_factory=dict)  # engine options


def parse_completion(body: dict, model_id: str, n_vocab: int) -> Completion:
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise APIError(400, f"unsupported parameter(s): {', '.join(unknown)}", param=unknown[0],
                       code="unsupported_parameter")
    for name, off in _OFF_ONLY.items():
        if body.get(name) is not None and not any(body[name] == v and type(body[name]) is type(v) for v in off):
            raise APIError(400, f"'{name}' is not supported by tinygpt (only its default, {off[0]!r})", param=name,
                           code="unsupported_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", param="model")
    if model is not None and model != model_id:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{model_id}'", param="model",
                       code="model_not_found")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise APIError(400, "'user' must be a string", param="user")
    n = _get_int(body, "n", 1, 1, MAX_N)
    best_of = _get_int(body, "best_of", n, 1)
    if best_of != n:
        raise APIError(400, "'best_of' other than n is not supported by tinygpt", param="best_of",
                       code="unsupported_parameter")
    prompts = _prompts(body.get("prompt"), n_vocab)
    if len(prompts) * n > MAX_CHOICES:
        raise APIError(400, f"{len(prompts)} prompts x n={n} exceed {MAX_CHOICES} choices per request", param="n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP
                                 and all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them",
                       param="stop")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise APIError(400, f"'seed' must be a non-negative integer, got {seed!r}", param="seed")
    stream = _get_bool(body, "stream")
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not stream:
            raise APIError(400, "'stream_options' is only allowed with stream: true", param="stream_options")
        if not isinstance(so, dict) or set(so) - {"include_usage"}:
            raise APIError(400, "'stream_options' supports only include_usage", param="stream_options")
        include_usage = _get_bool(so, "include_usage")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _get_int(body, "logprobs", None, 0, MAX_LOGPROBS)
    opts = dict(max_new_tokens=_get_int(body, "max_tokens", DEFAULT_MAX_TOKENS, 0),
                temperature=_get_num(body, "temperature", 1.0, 0.0, 2.0),
                top_p=_get_num(body, "top_p", 1.0, 0.0, 1.0),
                top_k=_get_int(body, "top_k", 0, 0), seed=seed, stop=tuple(stop or ()),
                ignore_eos=_get_bool(body, "ignore_eos"))
    for name in ("presence_penalty", "frequency_penalty"):
        if name in _SAMPLER:
            opts[name] = _get_num(body, name, 0.0, -2.0, 2.0)
    if "logit_bias" in _SAMPLER and body.get("logit_bias"):
        lb = body["logit_bias"]
        if not isinstance(lb, dict) or not all(
                k.isdigit() and int(k) < n_vocab and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and -100 <= v <= 100 for k, v in lb.items()):
            raise APIError(400, f"'logit_bias' must map token ids (0..{n_vocab - 1}, as strings) to numbers in "
                                "[-100, 100]", param="logit_bias")
        opts["logit_bias"] = {int(k): float(v) for k, v in lb.items()}
    if opts["top_p"] == 0.0:
        raise APIError(400, "'top_p' must be > 0", param="top_p")
    echo = _get_bool(body, "echo")
    if opts["max_new_tokens"] == 0 and not echo:
        raise APIError(400, "'max_tokens' must be >= 1 unless echo is true (echo with max_tokens 0 scores the "
                            "prompt)", param="max_tokens")
    return Completion(prompts=prompts, n=n, max_tokens=opts["max_new_tokens"], echo=echo, logprobs=logprobs,
                      stream=stream, include_usage=include_usage, options=opts)


# -- logprobs in OpenAI's shape ----------------------------------------------------------------------------------
class _LogprobWriter:
    """Accumulates one choice's logprobs object; text_offset counts characters of the choice's text."""

    def __init__(self, tokenizer, k: int, offset: int = 0):
        self.tok, self.k, self.offset = tokenizer, k, offset
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def token_str(self, i: int) -> str:
        b = self.tok.decode_bytes((i,))
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: OpenAI's spelling
            return "bytes:" + "".join(f"\\x{c:02x}" for c in b)

    def add(self, tokens, lps) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for j, t in enumerate(tokens):
            lp = lps[j] if lps is not None else None
            out["tokens"].append(self.token_str(t))
            out["text_offset"].append(self.offset)
            if lp is None or lp.logprob is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
            else:
                out["token_logprobs"].append(float(lp.logprob))
                out["top_logprobs"].append({self.token_str(a): float(v) for a, v in list(lp.top)[: self.k]})
            self.offset += len(self.dec.decode(self.tok.decode_bytes((t,))))
        return out


def _merge_lp(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    for key in a:
        a[key] += b[key]
    return a


def _echo_scores(scores, ids):
    """engine.score's answer aligned with ids (first entry None) whichever way it counts the first token."""
    scores = list(scores)
    if len(scores) == len(ids) - 1:
        scores = [None] + scores
    if len(scores) != len(ids):
        raise RuntimeError(f"engine.score returned {len(scores)} entries for {len(ids)} ids")
    return [None] + scores[1:]


# -- metrics --------------------------------------------------------------------------------------------------------
class Metrics:
    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.rate_samples: deque = deque(maxlen=11)  # (time, engine tokens_generated), one a second

    def observe_ttft(self, s: float):
        self.ttft_sum += s
        for i, b in enumerate(TTFT_BUCKETS):
            if s <= b:
                self.ttft_counts[i] += 1
                return
        self.ttft_counts[-1] += 1

    def tokens_per_s(self) -> float:
        if len(self.rate_samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.rate_samples[0], self.rate_samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self, stats: dict) -> str:
        out = []

        def metric(name, kind, help_, samples):
            out.append(f"# HELP tinygpt_{name} {help_}")
            out.append(f"# TYPE tinygpt_{name} {kind}")
            for labels, v in samples:
                out.append(f"tinygpt_{name}{labels} {v}")

        metric("requests_total", "counter", "HTTP requests by path and status",
               [(f'{{path="{p}",status="{s}"}}', c) for (p, s), c in sorted(self.requests.items())])
        metric("tokens_generated_total", "counter", "tokens generated by the engine",
               [("", stats.get("tokens_generated", 0))])
        metric("prompt_tokens_total", "counter", "prompt tokens of completions requests", [("", self.prompt_tokens)])
        metric("completion_tokens_total", "counter", "completion tokens returned", [("", self.completion_tokens)])
        metric("queue_depth", "gauge", "requests waiting for the engine", [("", stats.get("queue_depth", 0))])
        metric("running_sequences", "gauge", "sequences in the running batch", [("", stats.get("running", 0))])
        metric("batch_size", "gauge", "rows in the engine's last forward", [("", stats.get("batch_size", 0))])
        metric("tokens_per_second", "gauge", "generated tokens per second over the last 10 s",
               [("", round(self.tokens_per_s(), 3))])
        cum, buckets = 0, []
        for b, c in zip(TTFT_BUCKETS, self.ttft_counts):
            cum += c
            buckets.append((f'_bucket{{le="{b}"}}', cum))
        cum += self.ttft_counts[-1]
        buckets += [('_bucket{le="+Inf"}', cum), ("_sum", round(self.ttft_sum, 6)), ("_count", cum)]
        metric("time_to_first_token_seconds", "histogram", "streamed completions: request to first token", buckets)
        known = {"tokens_generated", "queue_depth", "running", "batch_size"}
        for k, v in sorted(stats.items()):
            if k not in known and isinstance(v, (int, float)) and not isinstance(v, bool):
                metric(f"engine_{k}", "gauge", f"engine stats()['{k}']", [("", v)])
        return "\n".join(out) + "\n"


class _MetricsMiddleware:
    """Counts every response by path and status (streams included), and turns requests away while draining."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.state.draining and path not in ("/health", "/metrics"):
            e = _engine_error(EngineClosedError())
            self._count(path, 503)
            return await e.response()(scope, receive, send)
        status = [500]

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)
        try:
            await self.app(scope, receive, send_)
        finally:
            self._count(path, status[0])

    def _count(self, path, status):
        known = ("/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize")
        path = path if path in known or path.startswith("/v1/models/") else "other"
        key = (path, status)
        self.state.metrics.requests[key] = self.state.metrics.requests.get(key, 0) + 1


# -- SSE with disconnect handling ------------------------------------------------------------------------------------
async def _wait_disconnect(receive):
    while True:
        if (await receive())["type"] == "http.disconnect":
            return


class _EventStream:
    """Server-sent events from an async iterator of bytes. Stops the iterator (and through it, the engine calls)
    as soon as the client disconnects, even while no event is due."""

    def __init__(self, events):
        self.events = events

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                                (b"x-accel-buffering", b"no")]})

        async def pump():
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        pump_t = asyncio.ensure_future(pump())
        watch_t = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({pump_t, watch_t}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump_t, watch_t):
                t.cancel()
            for t in (pump_t, watch_t):
                try:
                    await t
                except (asyncio.CancelledError, OSError):
                    pass  # the client went away: nothing left to tell it
            await self.events.aclose()


async def _unless_disconnected(coro, receive):
    """Await coro, cancelling it if the client disconnects first (then None)."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
    try:
        return await work
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled():
            return None
        raise


async def _gather_or_cancel(coros):
    """asyncio.gather that cancels the others when one fails (so a 429 leaves nothing running)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


# -- the app ----------------------------------------------------------------------------------------------------------
class _State:
    def __init__(self, model, engine, model_id, api_key, max_body):
        self.model, self.engine, self.model_id, self.api_key, self.max_body = model, engine, model_id, api_key, max_body
        self.draining = False
        self.metrics = Metrics()
        self.created = int(time.time())


def create_app(model, *, model_id: str = "gpt2", api_key: str | None = None, engine=None, max_batch: int = 16,
               max_queue: int = 64, max_body: int = MAX_BODY, grace_s: float = 30.0) -> Starlette:
    """The ASGI app serving `model` (a tinygpt.Model). `engine`: an AsyncEngine over it (default: a new one,
    closed when the app shuts down). `app.state.tinygpt.draining = True` turns new requests away with 503."""
    if engine is None:
        from .engine import AsyncEngine
        engine = AsyncEngine(model, max_batch=max_batch, max_queue=max_queue)
    st = _State(model, engine, model_id, api_key, max_body)
    tok, n_ctx, n_vocab = model.tokenizer, model.config.n_ctx, model.config.n_vocab

    def auth(request: Request):
        if st.api_key is None:
            return
        h = request.headers.get("authorization", "")
        if not (h.startswith("Bearer ") and hmac.compare_digest(h[7:].encode(), st.api_key.encode())):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    async def json_body(request: Request) -> dict:
        auth(request)
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > st.max_body):
            raise APIError(413, f"request body larger than {st.max_body} bytes", code="request_too_large")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > st.max_body:
                raise APIError(413, f"request body larger than {st.max_body} bytes", code="request_too_large")
        try:
            body = json.loads(buf)
        except (ValueError, RecursionError):
            raise APIError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object")
        return body

    def endpoint(fn):
        async def wrapped(request):
            try:
                return await fn(request)
            except APIError as e:
                return e.response()
            except Exception as e:  # noqa: BLE001 - every failure gets an OpenAI-shaped body
                return _engine_error(e).response()
        return wrapped

    # -- /v1/completions --
    async def encode(prompts) -> list[tuple[list[int], str, list[int]]]:
        """(ids for the engine, prompt text, echo ids) per prompt."""
        def run():
            out = []
            for p in prompts:
                ids = tok.encode(p) if isinstance(p, str) else p
                text = p if isinstance(p, str) else tok.decode(p)
                out.append((ids or [tok.eot_id], text, ids))
            return out
        return await asyncio.to_thread(run)

    def check_context(req, enc):
        for ids, _, _ in enc:
            if len(ids) + req.max_tokens > n_ctx:
                raise APIError(400, f"this model's context is {n_ctx} tokens; the prompt has {len(ids)} and "
                                    f"max_tokens is {req.max_tokens}", param="max_tokens",
                               code="context_length_exceeded")

    def engine_opts(req):
        o = dict(req.options, n=req.n)
        if req.logprobs is not None:
            o["logprobs"] = req.logprobs
        return o

    async def prompt_logprobs(req, echo_ids):
        if not (req.echo and req.logprobs is not None and echo_ids):
            return None
        return _echo_scores(await st.engine.score(echo_ids, top_n=req.logprobs), echo_ids)

    def head(cid, created):
        return {"id": cid, "object": "text_completion", "created": created, "model": st.model_id}

    def usage(prompt_tokens, completion_tokens):
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def _none():
        return None

    async def complete(req, enc):
        async def one(ids, echo_ids):
            gen = st.engine.generate(ids, **engine_opts(req)) if req.max_tokens > 0 else _none()
            res, plp = await asyncio.gather(gen, prompt_logprobs(req, echo_ids))
            return res, plp
        return await _gather_or_cancel([one(ids, e) for ids, _, e in enc])

    # A token is at most this many bytes, so a longer string cannot fit the context: refuse it before spending
    # CPU on its BPE.
    max_token_bytes = max(len(tok.decode_bytes([i])) for i in range(tok.n_vocab))

    async def completions(request: Request):
        body = await json_body(request)
        req = parse_completion(body, st.model_id, n_vocab)
        if req.n > st.engine.max_batch:  # the n samples of a prompt run in one batch
            raise APIError(400, f"'n' must be <= {st.engine.max_batch} (the server's --max-batch), got {req.n}",
                           param="n")
        for p in req.prompts:
            if isinstance(p, str) and len(p.encode("utf-8", "surrogatepass")) > n_ctx * max_token_bytes:
                raise APIError(400, f"the prompt is longer than this model's context of {n_ctx} tokens can be",
                               param="prompt", code="context_length_exceeded")
        enc = await encode(req.prompts)
        check_context(req, enc)
        cid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        n_prompt = sum(len(ids) for ids, _, _ in enc)
        st.metrics.prompt_tokens += n_prompt
        if req.stream:
            return await stream_completions(request, req, enc, cid, created, n_prompt)
        out = await _unless_disconnected(complete(req, enc), request.receive)
        if out is None:
            return PlainTextResponse("", status_code=499)  # nobody is listening
        choices, n_gen = [], 0
        for p, ((res, plp), (ids, text, echo_ids)) in enumerate(zip(out, enc)):
            for j in range(req.n):
                r = res[j] if res else None
                gen_text = r.text if r else ""
                toks = list(r.tokens) if r else []
                n_gen += len(toks)
                lp = None
                if req.logprobs is not None:
                    w = _LogprobWriter(tok, req.logprobs)
                    if req.echo:
                        lp = w.add(echo_ids, plp)
                    glp = r.logprobs if r else None
                    if r and r.finish_reason == "stop":  # tokens past a stop string are not in the text
                        keep, w2 = 0, _LogprobWriter(tok, 0)
                        for t in toks:
                            if w2.offset >= len(gen_text):
                                break
                            w2.add([t], None)
                            keep += 1
                        toks, glp = toks[:keep], (glp[:keep] if glp is not None else None)
                    lp = _merge_lp(lp, w.add(toks, glp))
                choices.append({"index": p * req.n + j, "text": (text if req.echo else "") + gen_text,
                                "logprobs": lp, "finish_reason": r.finish_reason if r else "length"})
        st.metrics.completion_tokens += n_gen
        return JSONResponse({**head(cid, created), "choices": choices, "usage": usage(n_prompt, n_gen)})

    async def stream_completions(request, req, enc, cid, created, n_prompt):
        t0 = time.perf_counter()
        q: asyncio.Queue = asyncio.Queue()
        opts = engine_opts(req)

        async def run(p, ids, echo_ids):
            agen = st.engine.stream(ids, **opts) if req.max_tokens > 0 else None
            try:
                plp = await prompt_logprobs(req, echo_ids)
                # the echo goes out with the first piece, so an engine refusal comes before anything is sent
                piece = await agen.__anext__() if agen is not None else None
                q.put_nowait(("echo", p, plp))
                if piece is not None:
                    q.put_nowait(("piece", p, piece))
                    async for piece in agen:
                        q.put_nowait(("piece", p, piece))
                q.put_nowait(("end", p, None))
            except StopAsyncIteration:
                q.put_nowait(("echo", p, plp))
                q.put_nowait(("end", p, None))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reported to the client
                q.put_nowait(("error", p, e))
            finally:
                if agen is not None:
                    await agen.aclose()

        tasks = [asyncio.ensure_future(run(p, ids, e)) for p, (ids, _, e) in enumerate(enc)]

        async def cancel_all():
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        # Wait for the first event before answering, so an engine refusal (queue full, shutting down) is a plain
        # HTTP error rather than an error inside a 200 stream.
        first = await _unless_disconnected(q.get(), request.receive)
        if first is None:
            await cancel_all()
            return PlainTextResponse("", status_code=499)
        if first[0] == "error":
            await cancel_all()
            raise _engine_error(first[2])

        writers = [[_LogprobWriter(tok, req.logprobs) for _ in range(req.n)] for _ in enc]
        ntok = [[0] * req.n for _ in enc]
        finish = [[None] * req.n for _ in enc]

        def chunk(choices, **extra):
            d = {**head(cid, created), "choices": choices, **extra}
            if req.include_usage:
                d.setdefault("usage", None)
            return f"data: {json.dumps(d)}\n\n".encode()

        async def events():
            live, first_tok, item = len(enc), True, first
            try:
                while True:
                    kind, p, x = item
                    if kind == "echo":
                        if req.echo:
                            text, echo_ids = enc[p][1], enc[p][2]
                            cs = []
                            for j in range(req.n):
                                lp = writers[p][j].add(echo_ids, x) if req.logprobs is not None else None
                                cs.append({"index": p * req.n + j, "text": text, "logprobs": lp,
                                           "finish_reason": None})
                            yield chunk(cs)
                    elif kind == "piece":
                        if first_tok and x.tokens:
                            st.metrics.observe_ttft(time.perf_counter() - t0)
                            first_tok = False
                        ntok[p][x.index] += len(x.tokens)
                        finish[p][x.index] = x.finish_reason or finish[p][x.index]
                        lp = writers[p][x.index].add(x.tokens, x.logprobs) if req.logprobs is not None else None
                        if x.text or lp:
                            yield chunk([{"index": p * req.n + x.index, "text": x.text, "logprobs": lp,
                                          "finish_reason": None}])
                    elif kind == "end":
                        # each sequence's last piece says why it ended
                        yield chunk([{"index": p * req.n + j, "text": "", "logprobs": None,
                                      "finish_reason": finish[p][j] or "length"} for j in range(req.n)])
                        live -= 1
                        if live == 0:
                            break
                    elif kind == "error":
                        yield f"data: {json.dumps(_engine_error(x).body())}\n\n".encode()
                        break
                    item = await q.get()
                n_gen = sum(map(sum, ntok))
                st.metrics.completion_tokens += n_gen
                if req.include_usage:
                    yield chunk([], usage=usage(n_prompt, n_gen))
                yield b"data: [DONE]\n\n"
            finally:
                await cancel_all()

        return _EventStream(events())

    # -- other endpoints --
    def model_card():
        return {"id": st.model_id, "object": "model", "created": st.created, "owned_by": "tinygpt",
                "max_model_len": n_ctx}

    async def models(request):
        auth(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model_one(request):
        auth(request)
        if request.path_params["name"] != st.model_id:
            raise APIError(404, f"the model '{request.path_params['name']}' does not exist", code="model_not_found")
        return JSONResponse(model_card())

    async def health(request):
        if st.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request):
        auth(request)
        return PlainTextResponse(st.metrics.render(st.engine.stats()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    def strict(body, allowed):
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise APIError(400, f"unsupported parameter(s): {', '.join(unknown)}", param=unknown[0],
                           code="unsupported_parameter")
        m = body.get("model")
        if m is not None and m != st.model_id:
            raise APIError(404, f"the model '{m}' does not exist", param="model", code="model_not_found")

    async def tokenize(request):
        body = await json_body(request)
        strict(body, {"model", "prompt"})
        if not isinstance(body.get("prompt"), str):
            raise APIError(400, "'prompt' must be a string", param="prompt")
        ids = await asyncio.to_thread(tok.encode, body["prompt"])
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": n_ctx})

    async def detokenize(request):
        body = await json_body(request)
        strict(body, {"model", "tokens"})
        t = body.get("tokens")
        if not isinstance(t, list):
            raise APIError(400, "'tokens' must be a list of token ids", param="tokens")
        ids = _check_ids(t, n_vocab, "tokens") if t else []
        return JSONResponse({"prompt": tok.decode(ids)})

    async def sample_rate():
        while True:
            st.metrics.rate_samples.append((time.monotonic(), st.engine.stats().get("tokens_generated", 0)))
            await asyncio.sleep(1.0)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        sampler = asyncio.ensure_future(sample_rate())
        try:
            yield
        finally:
            st.draining = True
            sampler.cancel()
            await st.engine.aclose(grace_s)

    async def http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code).response()

    async def any_error(request, exc):
        return _engine_error(exc).response()

    routes = [Route("/v1/completions", endpoint(completions), methods=["POST"]),
              Route("/v1/models", endpoint(models), methods=["GET"]),
              Route("/v1/models/{name:path}", endpoint(model_one), methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", endpoint(metrics), methods=["GET"]),
              Route("/tokenize", endpoint(tokenize), methods=["POST"]),
              Route("/detokenize", endpoint(detokenize), methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: any_error})
    app.state.tinygpt = st
    app.add_middleware(_MetricsMiddleware, state=st)
    return app


class Server:
    """uvicorn running the app; a stop signal first marks the app draining (new requests get 503, /health says
    so), then uvicorn stops listening and waits up to grace_s for in-flight requests before the engine closes."""

    def __init__(self, app, host="127.0.0.1", port=8000, grace_s=30.0, log_level="warning"):
        import uvicorn

        class _Uvicorn(uvicorn.Server):
            def handle_exit(self, sig, frame):
                app.state.tinygpt.draining = True
                super().handle_exit(sig, frame)

        cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=max(1, math.ceil(grace_s)),
                             lifespan="on")
        self._srv = _Uvicorn(cfg)
        try:  # bind here so a busy port is a typed error, not uvicorn's log line and exit
            fam, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self.sock = socket.socket(fam, kind, proto)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(addr)
        except OSError as e:
            raise TinyGPTError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.port = self.sock.getsockname()[1]

    @property
    def started(self) -> bool:
        return self._srv.started

    def run(self):
        with self.sock:
            self._srv.run(sockets=[self.sock])

    def stop(self):
        """What a stop signal does, for a server run in a thread (tests, embedding)."""
        self._srv.handle_exit(signal.SIGTERM, None)
