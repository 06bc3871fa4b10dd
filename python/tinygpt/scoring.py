"""Scoring text: per-token logprobs, exact ranks, top-n and text offsets (`score`), strided perplexity with
additive sums and a KL comparison against a base model (`perplexity`), and one decode row's logprob
(`token_logprob`, for logprobs while generating).

Built only on `Model.logits(ids, start)` (one forward, no cache; the rows before `start` are a window's context
and get no logits). Logprobs are float64: logit - float64 log-sum-exp of its row, a few rows at a time, so beyond
the caller's results at most one window of float32 logits (per model) is alive.

Windowing (shared by score and perplexity). `seq` is the token list, with `<|endoftext|>` in front when
prefix_eot (then every input token is a target; without it the first token is context only). A target at
position t is predicted by the logits row of position t-1. The first window is seq[0:e] with e = min(context,
len(seq)-1) and scores targets 1..e; every later window ends `stride` targets further on (the last one at the end
of the text), starts `context` tokens before its end, and scores only the targets after the previous window's
end. So every target is scored exactly once, and a target outside the first window sees at least
context - stride + 1 tokens of left context (stride = context still leaves one).
"""
from __future__ import annotations

import codecs
import math
import time
from dataclasses import dataclass, field, fields
from typing import Callable, NamedTuple

import numpy as np

from .errors import ContextOverflowError, InvalidArgumentError

ROW_CHUNK = 64  # rows widened to float64 at once: 64 x 50257 x 8 B = 26 MB per temporary


# -- windows ------------------------------------------------------------------------------------------
def plan_windows(n_seq: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n_seq tokens (prefix included), as (begin, end, start): the forward runs on
    seq[begin:end] and scores targets start+1 .. end (rows start-begin .. end-begin-1)."""
    last = n_seq - 1
    if last < 1:
        return []
    end = min(context, last)
    out = [(0, end, 0)]
    while end < last:
        new_end = min(end + stride, last)
        out.append((max(0, new_end - context), new_end, end))
        end = new_end
    return out


def _int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an integer, got {v!r}")
    return int(v)


def check_window(model, context, stride) -> tuple[int, int]:
    """(context, stride) with defaults filled in: context = n_ctx, stride = context // 2 (at least 1)."""
    n_ctx = model.config.n_ctx
    context = n_ctx if context is None else _int("context", context)
    if context < 1:
        raise InvalidArgumentError(f"context must be >= 1, got {context}")
    if context > n_ctx:
        raise ContextOverflowError(f"context {context} exceeds the model's context length {n_ctx}")
    stride = max(1, context // 2) if stride is None else _int("stride", stride)
    if not 1 <= stride <= context:
        raise InvalidArgumentError(f"stride must be in 1..context ({context}), got {stride}")
    return context, stride


def _sequence(model, text_or_ids, prefix_eot: bool) -> tuple[list[int], str | None]:
    """(token ids of the input, the input text or None), validated; the prefix is not included."""
    if isinstance(text_or_ids, str):
        text = text_or_ids
        ids = model.tokenizer.encode(text)
    else:
        text = None
        arr = np.asarray(text_or_ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InvalidArgumentError("expected a str or a 1-D sequence of integer token ids")
        if arr.size and (arr.min() < 0 or arr.max() >= model.config.n_vocab):
            raise InvalidArgumentError(f"token ids must lie in 0..{model.config.n_vocab - 1}")
        ids = arr.astype(np.int64).tolist()
    if not ids:
        raise InvalidArgumentError("nothing to score: the input is empty")
    if prefix_eot and model.tokenizer.eot_id is None:
        raise InvalidArgumentError("the vocabulary has no <|endoftext|> to condition the first token on; "
                                   "pass prefix_eot=False")
    return ids, text


def _windows(model, seq: list[int], context: int, stride: int, progress, plan=None):
    """Yields (start, float32 rows [n, V], targets [n]) per window; progress(done, total) after each."""
    plan = plan_windows(len(seq), context, stride) if plan is None else plan
    total, done = sum(e - s for _, e, s in plan), 0
    for begin, end, start in plan:
        rows = model.logits(seq[begin:end], start=start - begin)  # context-only rows get no logits
        yield start, rows, np.asarray(seq[start + 1:end + 1], np.int64)
        del rows
        done += end - start
        if progress is not None:
            progress(done, total)


def _lse64(rows: np.ndarray) -> np.ndarray:
    """float64 log-sum-exp of each row, with one float64 temporary of the chunk's size. A token's logprob is then
    float64(logit) - lse; it orders tokens exactly as their float32 logits do (distinct float32 values stay
    distinct), so ranks and top-n are taken on the float32 row."""
    x = rows.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    x -= m
    np.exp(x, out=x)
    return m[:, 0] + np.log(x.sum(axis=1))


def _top(lp: np.ndarray, n: int) -> np.ndarray:
    """Ids of the n largest entries of a row, largest first, ties by lower id (the order np.lexsort gives)."""
    if n == 0:
        return np.empty(0, np.int64)
    if n < lp.size:
        thr = lp[np.argpartition(lp, lp.size - n)[lp.size - n:]].min()
        cand = np.flatnonzero(lp >= thr)  # every tie at the threshold, so the tie-break is exact
    else:
        cand = np.arange(lp.size)
    return cand[np.lexsort((cand, -lp[cand]))][:n]


# -- one row (logprobs while generating) ---------------------------------------------------------------
class TokenLogprob(NamedTuple):
    id: int
    logprob: float             # float64 log-softmax of the raw logits
    rank: int                  # 1 + number of tokens with a strictly larger logit
    top_ids: np.ndarray        # int64 [top_n], most likely first, ties by lower id
    top_logprobs: np.ndarray   # float64 [top_n]

    @property
    def token(self) -> int:
        return self.id

    @property
    def top(self) -> list:
        """[(id, logprob)] of the top_n alternatives, most likely first."""
        return [(int(i), float(lp)) for i, lp in zip(self.top_ids, self.top_logprobs)]


def token_logprob(logits_row, token: int, top_n: int = 0) -> TokenLogprob:
    """The chosen token's logprob, exact rank and the top_n alternatives from one float32 logits row."""
    row = np.asarray(logits_row)
    if row.ndim != 1 or row.size == 0:
        raise InvalidArgumentError("logits_row must be a non-empty 1-D array")
    token, top_n = _int("token", token), _int("top_n", top_n)
    if not 0 <= token < row.size:
        raise InvalidArgumentError(f"token must lie in 0..{row.size - 1}, got {token}")
    if not 0 <= top_n <= row.size:
        raise InvalidArgumentError(f"top_n must be in 0..{row.size}, got {top_n}")
    lse = _lse64(row[None, :])[0]
    top = _top(row, top_n)
    return TokenLogprob(token, float(np.float64(row[token]) - lse), int(1 + np.count_nonzero(row > row[token])),
                        top, row[top].astype(np.float64) - lse)


# -- score -------------------------------------------------------------------------------------------
class TokenScore(NamedTuple):
    id: int
    piece: str
    offset: int
    logprob: float | None
    rank: int | None
    top: list  # [(id, piece, logprob)], most likely first


@dataclass
class TokenScores:
    """Per-token results of Model.score; index it for one TokenScore. Arrays are aligned with `ids`. `text` is
    the scored text: the input str (lone surrogates become U+FFFD, as the tokenizer encodes them) or the decoded ids.

    A token that is not scored (the first one when prefix_eot=False) has logprob NaN, rank 0, top ids -1.
    `pieces` concatenate to `text`; text[offset:offset + len(piece)] == piece. A token that ends inside a multi-byte
    character does not hold that character: it goes to the token that completes it (what streaming prints), so a
    token lying wholly inside one character has piece "" and the offset of that character. `token_bytes` has the
    raw bytes of every token."""
    text: str
    ids: np.ndarray            # int64 [T]
    pieces: list
    token_bytes: list
    text_offset: np.ndarray    # int64 [T], in characters of `text`
    logprobs: np.ndarray       # float64 [T]
    ranks: np.ndarray          # int64 [T], 1 = most likely
    top_ids: np.ndarray        # int64 [T, top_n]
    top_logprobs: np.ndarray   # float64 [T, top_n]
    prefix_eot: bool
    context: int
    stride: int
    _id_piece: Callable = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> TokenScore:
        ok = self.ranks[i] > 0
        top = [(int(t), self._id_piece(int(t)), float(v)) for t, v in zip(self.top_ids[i], self.top_logprobs[i])
               ] if ok else []
        return TokenScore(int(self.ids[i]), self.pieces[i], int(self.text_offset[i]),
                          float(self.logprobs[i]) if ok else None, int(self.ranks[i]) if ok else None, top)

    @property
    def scored(self) -> np.ndarray:
        return self.ranks > 0

    @property
    def sum_logprob(self) -> float:
        """Log-likelihood of the scored tokens (lm-eval's loglikelihood), a correctly rounded float64 sum."""
        return math.fsum(self.logprobs[self.scored].tolist())

    def to_openai(self) -> dict:
        """OpenAI completions `logprobs` object (echo): tokens, token_logprobs, top_logprobs, text_offset."""
        out = {"tokens": list(self.pieces), "token_logprobs": [], "top_logprobs": [],
               "text_offset": self.text_offset.tolist()}
        for i in range(len(self)):
            s = self[i]
            out["token_logprobs"].append(s.logprob)
            out["top_logprobs"].append({p: v for _, p, v in s.top} if s.logprob is not None else None)
        return out


def _pieces(tokenizer, ids: list[int]) -> tuple[list[str], list[bytes], list[int]]:
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, raw, offsets, pos = [], [], [], 0
    for i in ids:
        b = tokenizer.decode_bytes((i,)) if i < tokenizer.n_vocab else b""
        p = dec.decode(b)
        raw.append(b)
        pieces.append(p)
        offsets.append(pos)
        pos += len(p)
    tail = dec.decode(b"", final=True)  # bytes of an unfinished character at the very end (ids input only)
    if tail:
        pieces[-1] += tail
    return pieces, raw, offsets


def score(model, text_or_ids, top_n: int = 0, *, prefix_eot: bool = True, context: int | None = None,
          stride: int | None = None, progress: Callable | None = None) -> TokenScores:
    """Every token's logprob, exact rank among all n_vocab tokens, top_n alternatives and character offset.

    Text longer than `context` (default n_ctx) is scored in windows (see the module doc)."""
    top_n = _int("top_n", top_n)
    V = model.config.n_vocab
    if not 0 <= top_n <= V:
        raise InvalidArgumentError(f"top_n must be in 0..{V} (n_vocab), got {top_n}")
    context, stride = check_window(model, context, stride)
    ids, text = _sequence(model, text_or_ids, prefix_eot)
    tok = model.tokenizer
    seq = ([tok.eot_id] if prefix_eot else []) + ids
    shift = 0 if prefix_eot else 1  # seq position p holds ids[p - 1 + shift]
    T = len(ids)
    logprobs = np.full(T, np.nan)
    ranks = np.zeros(T, np.int64)
    top_ids = np.full((T, top_n), -1, np.int64)
    top_lps = np.full((T, top_n), np.nan)
    for start, rows, targets in _windows(model, seq, context, stride, progress):
        for c in range(0, len(targets), ROW_CHUNK):
            x = rows[c:c + ROW_CHUNK]
            lse = _lse64(x)
            y = targets[c:c + ROW_CHUNK]
            xy = x[np.arange(len(y)), y]
            j = start + c + shift
            logprobs[j:j + len(y)] = xy - lse
            ranks[j:j + len(y)] = 1 + np.count_nonzero(x > xy[:, None], axis=1)
            for k in range(len(y) if top_n else 0):
                t = _top(x[k], top_n)
                top_ids[j + k], top_lps[j + k] = t, x[k, t] - lse[k]
        del rows, x  # the loop variable would keep this window alive through the next window's forward
    pieces, raw, offsets = _pieces(tok, ids)
    # equals a str input, except that its lone surrogates were encoded as U+FFFD (one character each, so the
    # offsets index the input as well)
    text = "".join(pieces)
    return TokenScores(text, np.asarray(ids, np.int64), pieces, raw, np.asarray(offsets, np.int64), logprobs, ranks,
                       top_ids, top_lps, prefix_eot, context, stride,
                       lambda i: tok.decode_bytes((i,)).decode("utf-8", "replace") if i < tok.n_vocab else "")


# -- perplexity --------------------------------------------------------------------------------------
@dataclass
class PerplexityResult:
    """Additive sums over scored tokens: `a + b` merges files or shards exactly (every field is a sum), and the
    derived figures (perplexity, bits per byte, standard error) are computed from the sums. Each file's nll_sum
    is the correctly rounded (math.fsum) sum of its per-token float64 NLLs. The kl_* / base_* fields are set
    only when a base model was given."""
    n_tokens: int = 0
    n_bytes: int = 0          # UTF-8 bytes of the scored tokens
    nll_sum: float = 0.0      # natural log
    nll_sq_sum: float = 0.0   # for the standard error
    elapsed_s: float = 0.0
    forward_tokens: int = 0   # tokens run through the model (windows overlap when stride < context)
    base_nll_sum: float | None = None
    kl_sum: float | None = None       # sum over tokens of KL(base || this model), nats
    top1_agree: int | None = None     # tokens whose argmax equals the base model's

    def __add__(self, other: "PerplexityResult") -> "PerplexityResult":
        if not isinstance(other, PerplexityResult):
            return NotImplemented
        vals = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (a is None) != (b is None):
                raise InvalidArgumentError("cannot add a result with a KL base to one without")
            vals[f.name] = None if a is None else a + b
        return PerplexityResult(**vals)

    def __radd__(self, other):  # sum(results)
        return self if other == 0 else self.__add__(other)

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_tokens if self.n_tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / math.log(2) / self.n_bytes if self.n_bytes else math.nan

    @property
    def nll_stderr(self) -> float:
        """Standard error of the mean per-token NLL (tokens taken as independent, as llama-perplexity does)."""
        n = self.n_tokens
        if n < 2:
            return math.nan
        var = max(0.0, (self.nll_sq_sum - self.nll_sum * self.nll_sum / n) / (n - 1))
        return math.sqrt(var / n)

    @property
    def perplexity_stderr(self) -> float:
        """Delta method: d exp(m) = exp(m) dm."""
        return self.perplexity * self.nll_stderr

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def base_perplexity(self) -> float | None:
        return None if self.base_nll_sum is None else math.exp(self.base_nll_sum / self.n_tokens)

    @property
    def delta_perplexity(self) -> float | None:
        return None if self.base_nll_sum is None else self.perplexity - self.base_perplexity

    @property
    def kl_mean(self) -> float | None:
        return None if self.kl_sum is None else self.kl_sum / self.n_tokens

    @property
    def top1_agreement(self) -> float | None:
        return None if self.top1_agree is None else self.top1_agree / self.n_tokens

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("mean_nll", "perplexity", "perplexity_stderr", "nll_stderr", "bits_per_byte", "tokens_per_s"):
            d[k] = getattr(self, k)
        if self.kl_sum is not None:
            for k in ("kl_mean", "base_perplexity", "delta_perplexity", "top1_agreement"):
                d[k] = getattr(self, k)
        return d


def perplexity(model, text_or_ids, *, stride: int | None = None, context: int | None = None,
               prefix_eot: bool = True, kl_base=None, shard: tuple[int, int] | None = None,
               progress: Callable | None = None) -> PerplexityResult:
    """Strided perplexity of one text (see the module doc for the windows). kl_base: another Model with the same
    vocabulary, run on the same windows, for KL(base || model), delta perplexity and top-1 agreement.
    shard=(i, n): only the i-th of n contiguous runs of windows (0-based), the same windows as the whole run, so
    the n shard results add up to the whole-text result (each token's value is identical; the sums differ from
    the unsharded ones only by the rounding of n float64 additions)."""
    context, stride = check_window(model, context, stride)
    if kl_base is not None:
        if kl_base.config.n_vocab != model.config.n_vocab:
            raise InvalidArgumentError(f"kl_base has {kl_base.config.n_vocab} tokens, this model "
                                       f"{model.config.n_vocab}: the distributions cannot be compared")
        if context > kl_base.config.n_ctx:
            raise ContextOverflowError(f"context {context} exceeds kl_base's context length {kl_base.config.n_ctx}")
    ids, _ = _sequence(model, text_or_ids, prefix_eot)
    seq = ([model.tokenizer.eot_id] if prefix_eot else []) + ids
    n = len(seq) - 1
    if n < 1:
        raise InvalidArgumentError("nothing to score: one token and prefix_eot=False leaves no target")
    plan = plan_windows(len(seq), context, stride)
    if shard is not None:
        if (not isinstance(shard, (tuple, list)) or len(shard) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
                or not 0 <= shard[0] < shard[1]):
            raise InvalidArgumentError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        i, k = int(shard[0]), int(shard[1])
        plan = plan[len(plan) * i // k:len(plan) * (i + 1) // k]
    off = plan[0][2] if plan else 0  # nll[p - 1 - off] is the target at seq position p
    n = sum(e - s for _, e, s in plan)
    nll = np.empty(n)
    kl = np.empty(n) if kl_base is not None else None
    base_nll = np.empty(n) if kl_base is not None else None
    agree = 0
    t0 = time.perf_counter()
    base_windows = _windows(kl_base, seq, context, stride, None, plan) if kl_base is not None else None
    for start, rows, targets in _windows(model, seq, context, stride, progress, plan):
        start -= off
        brows = next(base_windows)[1] if base_windows is not None else None
        for c in range(0, len(targets), ROW_CHUNK):
            x = rows[c:c + ROW_CHUNK]
            lse = _lse64(x)
            y = targets[c:c + ROW_CHUNK]
            r = np.arange(len(y))
            nll[start + c:start + c + len(y)] = lse - x[r, y]
            if brows is not None:
                bx = brows[c:c + ROW_CHUNK]
                blse = _lse64(bx)
                base_nll[start + c:start + c + len(y)] = blse - bx[r, y]
                blp = bx - blse[:, None]
                d = blp - (x - lse[:, None])
                np.exp(blp, out=blp)
                kl[start + c:start + c + len(y)] = (blp * d).sum(axis=1)
                agree += int(np.count_nonzero(x.argmax(1) == bx.argmax(1)))
                del blp, d
        del rows, brows, x  # else they live through the next window's forward
    elapsed = time.perf_counter() - t0
    forward = sum(e - b for b, e, _ in plan)
    scored = [t for _, e, s in plan for t in seq[s + 1:e + 1]]
    return PerplexityResult(
        n_tokens=n, n_bytes=len(model.tokenizer.decode_bytes(i for i in scored if i < model.tokenizer.n_vocab)),
        nll_sum=math.fsum(nll.tolist()), nll_sq_sum=math.fsum((nll * nll).tolist()), elapsed_s=elapsed,
        forward_tokens=forward,
        base_nll_sum=None if base_nll is None else math.fsum(base_nll.tolist()),
        kl_sum=None if kl is None else math.fsum(kl.tolist()), top1_agree=None if kl is None else agree)
