"""Next-token selection on one row of logits, in float64. One fixed order (README "Sampling order"):

    logit_bias -> repetition penalty (last repeat_last_n tokens) -> presence/frequency penalties (generated
    tokens) -> [temperature 0: argmax] -> temperature -> top-k -> top-p -> min-p -> typical-p -> sample

transformers' order for the steps it has (its _get_logits_processor: sequence bias, repetition penalty, then
temperature, top-k, top-p, min-p, typical); the bias comes first as in llama.cpp and vLLM. Every call brings
its own numpy Generator (no global RNG). `options_from_kwargs` turns what users type (tinygpt's, OpenAI's,
transformers' and vLLM's names) into one SamplingOptions, or an InvalidArgumentError naming their argument.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np

from .errors import InvalidArgumentError, WeightsError

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 128  # -1: until <|endoftext|> or the context is full (see fit)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = -1  # -1: whole context (HF), 0: none, N: last N tokens (llama.cpp)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple = ()  # ((token id, bias), ...); bias finite, or -inf to ban the token
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    context_overflow: str = "error"
    allowed_special: str | tuple = ()  # "all" or a subset of ("<|endoftext|>",): passed to Tokenizer.encode

    def __post_init__(self):
        def bad(msg):
            raise InvalidArgumentError(msg)

        def num(name, v):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, got {v!r}")

        def integer(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not integer(self.max_new_tokens) or self.max_new_tokens < -1:
            bad(f"max_new_tokens must be an integer >= 0, or -1 (until <|endoftext|> or the context is full), "
                f"got {self.max_new_tokens!r}")
        num("temperature", self.temperature)
        if self.temperature < 0:
            bad(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not integer(self.top_k) or self.top_k < 0:
            bad(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        num("top_p", self.top_p)
        if not (0 < self.top_p <= 1):
            bad(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        num("min_p", self.min_p)
        if not (0 <= self.min_p <= 1):
            bad(f"min_p must be in [0, 1] (0 = off), got {self.min_p!r}")
        num("typical_p", self.typical_p)
        if not (0 < self.typical_p <= 1):
            bad(f"typical_p must be in (0, 1] (1 = off), got {self.typical_p!r}")
        num("repeat_penalty", self.repeat_penalty)
        if self.repeat_penalty <= 0:
            bad(f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty!r}")
        if not integer(self.repeat_last_n) or self.repeat_last_n < -1:
            bad(f"repeat_last_n must be an integer >= -1 (-1 = whole context, 0 = none), got {self.repeat_last_n!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            num(name, v)
            if not -2 <= v <= 2:  # OpenAI's and vLLM's range; it also keeps the arithmetic finite
                bad(f"{name} must be in [-2, 2] (0 = off), got {v!r}")
        bias = self.logit_bias
        if not isinstance(bias, tuple) or not all(
                isinstance(kv, tuple) and len(kv) == 2 and integer(kv[0]) and kv[0] >= 0
                and isinstance(kv[1], float) and (math.isfinite(kv[1]) or kv[1] == -math.inf) for kv in bias):
            bad("logit_bias must be a mapping {token id: bias} (use options_from_kwargs)")
        if self.seed is not None and (not integer(self.seed) or self.seed < 0):
            bad(f"seed must be a non-negative integer, -1 or None (random), got {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        stop = tuple(self.stop or ())
        if not all(isinstance(s, str) and s for s in stop):
            bad("stop must be a string or a list of non-empty strings")
        object.__setattr__(self, "stop", stop)
        if not isinstance(self.ignore_eos, bool):
            bad(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        if self.context_overflow not in ("error", "slide"):
            bad(f"context_overflow must be 'error' or 'slide', got {self.context_overflow!r}")
        if self.allowed_special != "all" and not (isinstance(self.allowed_special, tuple)
                                                  and set(self.allowed_special) <= {EOT}):
            bad(f"allowed_special must be 'all' or a set containing {EOT!r}, got {self.allowed_special!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def argmax_only(self) -> bool:
        """Greedy with nothing that changes a logit: the token is the argmax of the model's logits."""
        return (self.greedy and not self.logit_bias and self.presence_penalty == 0 and self.frequency_penalty == 0
                and (self.repeat_penalty == 1.0 or self.repeat_last_n == 0))

    def fit(self, n_prompt: int, n_ctx: int) -> "SamplingOptions":
        """Resolve max_new_tokens=-1: the room left in the context after the prompt; with context_overflow=
        'slide', one context's worth (n_ctx tokens), so generation always ends."""
        if self.max_new_tokens != -1:
            return self
        n = n_ctx if self.context_overflow == "slide" else max(n_ctx - n_prompt, 0)
        return replace(self, max_new_tokens=n)


# -- what users type -> SamplingOptions ------------------------------------------------------------------------
_FIELDS = tuple(f.name for f in fields(SamplingOptions))
# other tools' names with the same meaning as tinygpt's
_ALIASES = {"max_tokens": "max_new_tokens", "repetition_penalty": "repeat_penalty"}
# names users bring that tinygpt does not take: what to write instead
_HINTS = {
    "max_length": "transformers' max_length counts the prompt too; tinygpt counts new tokens: use max_new_tokens",
    "num_return_sequences": "use n",
    "best_of": "best_of is not supported",
    "num_beams": "beam search is not supported",
    "stop_sequences": "use stop=[...]",
    "echo": "echo is not supported: generate returns the continuation only",
    "penalty_last_n": "use repeat_last_n",
    "last_n_tokens": "use repeat_last_n",
    "typical": "use typical_p",
    "random_seed": "use seed",
}


def options_from_kwargs(n_vocab: int | None = None, /, **kw) -> SamplingOptions:
    """The generation options users pass to generate/stream, in tinygpt's, OpenAI's, transformers' or vLLM's
    words, as one SamplingOptions (README "Python API" lists the names and their one meaning each).

    - max_tokens (OpenAI) = max_new_tokens; None or -1 = until <|endoftext|> or the context is full
    - repetition_penalty (transformers, vLLM) = repeat_penalty
    - do_sample (transformers): False = greedy (temperature 0), True = sample (temperature 1.0 unless given);
      do_sample=False with a temperature > 0, or True with temperature 0, is a contradiction (error)
    - top_k=-1 (vLLM) = 0 = off; seed=-1 (llama.cpp) = None = random
    - logit_bias {token id (int or digit string, as OpenAI's JSON): bias}, -inf bans the token
    - None for any other option means its default (as clients that pass every field send it)
    Giving one option under two names is an error; unknown names get a hint.
    n_vocab, when given, bounds logit_bias's token ids."""
    used = {}  # canonical name -> the name the user wrote
    out = {}
    do_sample = kw.pop("do_sample", None)
    for name, value in kw.items():
        canon = _ALIASES.get(name, name)
        if canon not in _FIELDS:
            raise InvalidArgumentError(_unknown(name))
        if canon in used:
            raise InvalidArgumentError(f"{used[canon]} and {name} are the same option: give one of them")
        used[canon] = name
        if value is None and canon not in ("seed", "max_new_tokens"):
            continue  # default
        out[canon] = value
    if "max_new_tokens" in used and out.get("max_new_tokens", -1) is None:
        out["max_new_tokens"] = -1
    if _is_int(out.get("top_k")) and out["top_k"] == -1:
        out["top_k"] = 0
    if _is_int(out.get("seed")) and out["seed"] == -1:
        out["seed"] = None
    if do_sample is not None:
        if not isinstance(do_sample, bool):
            raise InvalidArgumentError(f"do_sample must be True or False, got {do_sample!r}")
        t = out.get("temperature")
        if not do_sample:
            if t is not None and t != 0:
                raise InvalidArgumentError(f"do_sample=False asks for greedy decoding but {used['temperature']}="
                                           f"{t!r} for sampling: drop one of them (temperature=0 is greedy)")
            out["temperature"] = 0.0
        elif t is not None and t == 0:
            raise InvalidArgumentError("do_sample=True asks for sampling but temperature=0 for greedy decoding: "
                                       "drop one of them")
    if "logit_bias" in out:
        out["logit_bias"] = _logit_bias(out["logit_bias"], n_vocab, used["logit_bias"])
    if "allowed_special" in out:
        out["allowed_special"] = _allowed_special(out["allowed_special"])
    if "stop" in out and not isinstance(out["stop"], str):
        try:
            out["stop"] = tuple(out["stop"])
        except TypeError:
            raise InvalidArgumentError("stop must be a string or a list of non-empty strings") from None
    try:
        return SamplingOptions(**out)
    except InvalidArgumentError as e:
        msg, first = str(e), str(e).split(" ", 1)[0]
        if first in used and used[first] != first:  # name the argument as the user wrote it
            msg = used[first] + msg[len(first):]
        raise InvalidArgumentError(msg) from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unknown(name: str) -> str:
    if name in _HINTS:
        return f"unknown option {name!r}: {_HINTS[name]}"
    close = difflib.get_close_matches(name, [*_FIELDS, *_ALIASES, "do_sample"], n=1)
    return f"unknown option {name!r}" + (f"; did you mean {close[0]}?" if close else "")


def _logit_bias(value, n_vocab: int | None, name: str) -> tuple:
    if not hasattr(value, "items"):
        raise InvalidArgumentError(f"{name} must be a mapping {{token id: bias}}, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if isinstance(k, str) and k.strip().isdigit():
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 or (n_vocab and k >= n_vocab):
            top = f"0..{n_vocab - 1}" if n_vocab else "non-negative integers"
            raise InvalidArgumentError(f"{name}: token ids must be {top}, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or math.isnan(v) \
                or v == math.inf:
            raise InvalidArgumentError(f"{name}[{k}] must be a finite number or -inf (ban), got {v!r}; "
                                       f"to force a token use a large bias such as 100")
        if int(k) in out:
            raise InvalidArgumentError(f"{name}: token id {int(k)} is given twice")
        out[int(k)] = float(v)
    return tuple(sorted(out.items()))


def _allowed_special(value):
    if value == "all":
        return "all"
    if isinstance(value, str):
        value = (value,)
    try:
        value = tuple(sorted(set(value)))
    except TypeError:
        raise InvalidArgumentError(f"allowed_special must be 'all' or a set containing {EOT!r}, "
                                   f"got {value!r}") from None
    return value


# -- the steps ------------------------------------------------------------------------------------------------
def apply_logit_bias(logits: np.ndarray, bias: tuple) -> None:
    """OpenAI/llama.cpp: add each bias to its token's logit (-inf bans the token)."""
    if bias:
        ids, b = zip(*bias)
        logits[list(ids)] += np.asarray(b)


def apply_repeat_penalty(logits: np.ndarray, context: Sequence[int], penalty: float) -> None:
    """CTRL-style, as HF: every token in context has its logit divided by the penalty if positive, multiplied
    if negative (the caller picks the window: repeat_last_n)."""
    if penalty == 1.0 or len(context) == 0:
        return
    ids = np.unique(np.asarray(context, dtype=np.int64))
    sel = logits[ids]
    logits[ids] = np.where(sel > 0, sel / penalty, sel * penalty)


def apply_presence_frequency(logits: np.ndarray, generated: Sequence[int], presence: float, frequency: float) -> None:
    """OpenAI: logit[j] -= presence * (count[j] > 0) + frequency * count[j], counting the generated tokens."""
    if (presence == 0 and frequency == 0) or len(generated) == 0:
        return
    ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    logits[ids] -= presence + frequency * counts


def top_p_filter(p: np.ndarray, top_p: float) -> np.ndarray:
    """HF TopPLogitsWarper: keep the smallest prefix (most likely first) whose mass reaches top_p, crossing
    token included."""
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, top_p, side="left")) + 1]
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


def min_p_filter(p: np.ndarray, min_p: float) -> np.ndarray:
    """min-p (Nguyen et al. 2024; HF MinPLogitsWarper): drop tokens less likely than min_p times the top one."""
    q = np.where(p < min_p * p.max(), 0.0, p)
    return q / q.sum()


def typical_filter(p: np.ndarray, mass: float) -> np.ndarray:
    """Locally typical sampling (Meister et al. 2022; HF TypicalLogitsWarper): order tokens by |-log p - H|,
    keep the shortest prefix whose mass reaches `mass` plus every token tied with its last one."""
    nz = p > 0
    logp = np.full_like(p, -np.inf)
    logp[nz] = np.log(p[nz])
    ent = -float(np.dot(p[nz], logp[nz]))
    shifted = np.abs(-logp - ent)  # +inf for p == 0: last in the order, never kept
    order = np.argsort(shifted, kind="stable")
    cum = np.cumsum(p[order])
    last = min(int(np.count_nonzero(cum < mass)), p.size - 1)
    drop = shifted > shifted[order[last]]
    drop[order[0]] = False
    q = np.where(drop, 0.0, p)
    return q / q.sum()


def penalized(logits: np.ndarray, opts: SamplingOptions, context: Sequence[int], n_generated: int) -> np.ndarray:
    """Float64 copy of the logits after bias and penalties (the steps before temperature)."""
    x = np.array(logits, dtype=np.float64)
    apply_logit_bias(x, opts.logit_bias)
    n = opts.repeat_last_n
    window = context if n == -1 else context[len(context) - n:] if n > 0 else ()
    with np.errstate(over="ignore"):  # a huge penalty may overflow to +-inf: the limit, handled in distribution
        apply_repeat_penalty(x, window, opts.repeat_penalty)
    apply_presence_frequency(x, context[len(context) - n_generated:] if n_generated else (),
                             opts.presence_penalty, opts.frequency_penalty)
    return x


def distribution(logits: np.ndarray, opts: SamplingOptions, context: Sequence[int] = (),
                 n_generated: int = 0) -> np.ndarray:
    """The float64 probabilities the next token is drawn from, every step applied (greedy: one-hot).

    The last n_generated tokens of context are the generated ones (presence/frequency penalties count those).
    NaN logits raise WeightsError; no token left (every logit -inf) raises InvalidArgumentError. A temperature
    so small that logits/T overflows gives the T -> 0 limit (the most likely tokens, equally)."""
    x = penalized(_finite_or_raise(logits), opts, context, n_generated)
    top = _top_or_raise(x)
    if opts.greedy:
        p = np.zeros_like(x)
        p[int(np.argmax(x))] = 1.0
        return p
    if top == math.inf:  # infinitely likely tokens (an overflowing penalty): they share the mass
        z = np.where(x == math.inf, 0.0, -math.inf)
    else:
        z = x  # x is penalized's own copy
        z -= top
        with np.errstate(over="ignore"):
            z /= opts.temperature  # <= 0; -inf where it overflows
    if 0 < opts.top_k < z.size:
        kth = np.partition(z, -opts.top_k)[-opts.top_k]
        z[z < kth] = -math.inf
    p = np.exp(z)
    p /= p.sum()
    if opts.top_p < 1.0:
        p = top_p_filter(p, opts.top_p)
    if opts.min_p > 0.0:
        p = min_p_filter(p, opts.min_p)
    if opts.typical_p < 1.0:
        p = typical_filter(p, opts.typical_p)
    return p


def select(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator, context: Sequence[int],
           n_generated: int = 0) -> int:
    """The next token. Greedy (temperature 0) is the argmax after bias and penalties; with NaN logits it is
    np.argmax's answer (the first NaN), as forward_argmax's."""
    if opts.greedy:
        x = np.asarray(logits)
        if np.isnan(x).any():
            return int(np.argmax(x))
        x = penalized(x, opts, context, n_generated)
        _top_or_raise(x)
        return int(np.argmax(x))
    p = distribution(logits, opts, context, n_generated)
    return int(rng.choice(p.size, p=p))


def _finite_or_raise(logits) -> np.ndarray:
    x = np.asarray(logits)
    if np.isnan(x).any():
        raise WeightsError("the model produced NaN logits (NaN or inf in the weights?): nothing to sample from")
    return x


def _top_or_raise(x: np.ndarray) -> float:
    top = float(x.max())
    if top == -math.inf:
        raise InvalidArgumentError("every token has logit -inf (does logit_bias ban them all?): nothing to pick")
    return top
