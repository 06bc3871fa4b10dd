"""Next-token selection, Hugging Face order: repetition penalty -> temperature -> top-k -> top-p -> sample.

Works in float64 on one row of logits; each generation call brings its own numpy Generator (no global RNG).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    context_overflow: str = "error"

    def __post_init__(self):
        def bad(msg):
            raise InvalidArgumentError(msg)

        def num(name, v):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, got {v!r}")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            bad(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        num("temperature", self.temperature)
        if self.temperature < 0:
            bad(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        num("top_p", self.top_p)
        if not (0 < self.top_p <= 1):
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        num("repeat_penalty", self.repeat_penalty)
        if self.repeat_penalty <= 0:
            bad(f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            bad(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        stop = tuple(self.stop or ())
        if not all(isinstance(s, str) and s for s in stop):
            bad("stop must be a list of non-empty strings")
        object.__setattr__(self, "stop", stop)
        if self.context_overflow not in ("error", "slide"):
            bad(f"context_overflow must be 'error' or 'slide', got {self.context_overflow!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repeat_penalty(logits: np.ndarray, context: Sequence[int], penalty: float) -> None:
    """CTRL-style, as HF: every token seen (prompt included) has its logit divided by the penalty if positive,
    multiplied if negative."""
    if penalty == 1.0 or len(context) == 0:
        return
    ids = np.unique(np.asarray(context, dtype=np.int64))
    sel = logits[ids]
    logits[ids] = np.where(sel > 0, sel / penalty, sel * penalty)


def select(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator, context: Sequence[int]) -> int:
    x = np.array(logits, dtype=np.float64)
    apply_repeat_penalty(x, context, opts.repeat_penalty)
    if opts.greedy:
        return int(np.argmax(x))
    x /= opts.temperature
    if 0 < opts.top_k < x.size:
        kth = np.partition(x, -opts.top_k)[-opts.top_k]
        x[x < kth] = -np.inf
    x -= x.max()
    p = np.exp(x)
    p /= p.sum()
    if opts.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        # HF TopPLogitsWarper: keep the smallest prefix whose mass reaches top_p, crossing token included
        keep = order[: int(np.searchsorted(cum, opts.top_p, side="left")) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))
