"""The contract every backend keeps. A Backend holds read-only weights and hands out Sequences; a Sequence owns one
KV cache and a position. `Backend.forward` runs ONE forward over a batch of sequences, each appending any number
of new tokens (prefill and decode rows mixed) and asking for what it needs back:

    "none"    nothing (a prefill chunk)          "all"     float32 [n, n_vocab], every new row's logits
    "last"    float32 [1, n_vocab], the last row  "argmax"  int, np.argmax of the last row's logits

With "all", skip[i] > 0 leaves out the first skip[i] new rows (context only, as in a scoring window): their
logits are not computed, and the rows returned are bit for bit those a full "all" would return.

A sequence's results do not depend on the other sequences of the batch: bit for bit on the cpu backend (and the
cuda backend, unverified), within a stated tolerance on numpy (README: what is bitwise).
"""
from __future__ import annotations

from typing import Sequence as Seq

import numpy as np

from ..errors import ContextOverflowError, InvalidArgumentError

WANT = {"none": 0, "last": 1, "all": 2, "argmax": 3}


class Sequence:
    """One KV cache and its position; made by Backend.new_sequence(). Single-sequence shorthands included."""

    backend: "Backend"
    head_rows_exact: int = 0  # LM head rows the last argmax step evaluated exactly (the cpu head screen)

    @property
    def pos(self) -> int:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def fork(self) -> "Sequence":
        """A new sequence with a copy of this one's cache: n samples of one prompt share one prefill."""
        raise NotImplementedError

    def forward(self, tokens, all_logits: bool = False, out: np.ndarray | None = None, skip: int = 0) -> np.ndarray:
        """The last row's logits [1, V], or with all_logits every new row's but the first `skip` [n - skip, V]."""
        return self.backend.forward([self], [tokens], ["all" if all_logits else "last"], out, [skip])[0]

    def forward_argmax(self, tokens) -> int:
        return self.backend.forward([self], [tokens], ["argmax"])[0]


class Backend:
    name: str
    dtype: str
    cfg: object
    rows_run = 0  # tokens run through the model so far (tests count prefills with it)
    writes_out = False  # forward(..., out=) writes the logits into the caller's array (else out is not used)

    def new_sequence(self) -> Sequence:
        raise NotImplementedError

    def prepare_argmax(self) -> None:
        """Build what argmax steps need (the cpu head screen) now, outside any timed step."""

    def _forward(self, seqs, tokens, want, out=None, skip=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits [rows wanted, n_vocab] in item order (in out if given and writes_out), argmax [n], head rows
        evaluated exactly [n])."""
        raise NotImplementedError

    def forward(self, seqs: Seq[Sequence], tokens: Seq, want: Seq[str], out: np.ndarray | None = None,
                skip: Seq[int] | None = None) -> list:
        """out: a float32 [rows wanted, n_vocab] array to write the logits into, where the backend writes_out.
        skip: per item, rows of an "all" item whose logits are not wanted (0 <= skip < its tokens)."""
        skip = [0] * len(seqs) if skip is None else list(skip)
        if not (len(seqs) == len(tokens) == len(want) == len(skip)) or not seqs:
            raise InvalidArgumentError("forward: seqs, tokens, want and skip must be non-empty and of one length")
        if len({id(s) for s in seqs}) != len(seqs):
            raise InvalidArgumentError("forward: a sequence appears twice in one batch")
        n_ctx, V = self.cfg.n_ctx, self.cfg.n_vocab
        toks, codes = [], []
        for s, t, w, k in zip(seqs, tokens, want, skip):
            if getattr(s, "backend", None) is not self:
                raise InvalidArgumentError("forward: a sequence of another backend")
            t = np.asarray(t)
            if t.ndim != 1 or t.size == 0 or not np.issubdtype(t.dtype, np.integer):
                raise InvalidArgumentError("forward: tokens must be a non-empty 1-D array of integers")
            if t.min() < 0 or t.max() >= V:
                raise InvalidArgumentError(f"forward: token ids must lie in 0..{V - 1}")
            if s.pos + t.size > n_ctx:
                raise ContextOverflowError(f"{s.pos} cached + {t.size} new tokens exceed the context of {n_ctx}")
            if w not in WANT:
                raise InvalidArgumentError(f"forward: want must be one of {', '.join(WANT)}, got {w!r}")
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (
                    k == 0 or (w == "all" and 0 < k < t.size)):
                raise InvalidArgumentError(f"forward: skip must be 0, or with want='all' in 0..{t.size - 1}, got {k!r}")
            toks.append(np.ascontiguousarray(t, np.int32))
            codes.append(WANT[w])
        skip = [int(k) for k in skip]
        logits, best, n_exact = self._forward(seqs, toks, codes, out if self.writes_out else None, skip)
        self.rows_run += sum(t.size for t in toks)
        out, r = [], 0
        for s, t, c, b, ne, k in zip(seqs, toks, codes, best, n_exact, skip):
            if c == 3:
                s.head_rows_exact = int(ne)
                out.append(int(b))
            elif c == 0:
                out.append(None)
            else:
                n = t.size - k if c == 2 else 1
                out.append(logits[r:r + n])
                r += n
        return out
