"""The embedding API: `tinygpt.load(model) -> Model`; generate / stream / logits on it, for one prompt or a batch.

A Model holds read-only weights on one backend; every call makes its own sequences (their own KV caches), so
several threads may use one Model at once. A list of prompts (or n > 1 samples) runs as one batch: one forward per
step for all sequences, each sequence's text the same as when it runs alone (README: what is bitwise).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import backends
from .errors import ContextOverflowError, InvalidArgumentError
from .generate import BatchRun, GenerationResult, Stream
from .sampling import SamplingOptions
from .tokenizer import Tokenizer
from .weights import Checkpoint, load_checkpoint


class Model:
    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer, backend: str | None = None,
                 threads: int | None = None):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.tokenizer = tokenizer
        if tokenizer.n_vocab > self.config.n_vocab:
            raise InvalidArgumentError(f"tokenizer has {tokenizer.n_vocab} tokens but the model only "
                                       f"{self.config.n_vocab}: vocabulary files do not match the weights")
        self.backend_name = backends.resolve(backend)  # None: $TINYGPT_BACKEND or auto
        self.backend = backends.create(self.backend_name, checkpoint, threads)

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    def __repr__(self) -> str:
        c = self.config
        return (f"Model(n_layer={c.n_layer}, n_embd={c.n_embd}, n_head={c.n_head}, n_ctx={c.n_ctx}, "
                f"backend={self.backend_name!r}, dtype={self.dtype!r})")

    # -- scoring -------------------------------------------------------------------------------
    def _check_ids(self, ids) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise InvalidArgumentError("ids must be a non-empty 1-D sequence of integers")
        if arr.min() < 0 or arr.max() >= self.config.n_vocab:
            raise InvalidArgumentError(f"token ids must lie in 0..{self.config.n_vocab - 1}")
        if arr.size > self.config.n_ctx:
            raise ContextOverflowError(f"{arr.size} tokens exceed the context length {self.config.n_ctx}")
        return arr.astype(np.int32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position, float32 [len(ids), n_vocab]; one full forward, no cache reuse."""
        return self.backend.new_sequence().forward(self._check_ids(ids), all_logits=True)

    # -- generation ----------------------------------------------------------------------------
    def _options(self, options: dict) -> tuple[SamplingOptions, int, int | None]:
        """(sampling options, n samples, logprobs: None or the number of alternatives per token)."""
        options = dict(options)
        n = options.pop("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgumentError(f"n must be an integer >= 1, got {n!r}")
        lp = options.pop("logprobs", None)
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= self.config.n_vocab):
            raise InvalidArgumentError(f"logprobs must be None or an integer in 0..{self.config.n_vocab}, got {lp!r}")
        try:
            return SamplingOptions(**options), n, lp
        except TypeError as e:
            raise InvalidArgumentError(str(e)) from None

    def _prompt_ids(self, prompt, opts: SamplingOptions) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = self._check_ids(prompt).tolist() if len(prompt) else []
        if not ids:
            if self.tokenizer.eot_id is None:
                raise InvalidArgumentError("empty prompt and the vocabulary has no <|endoftext|> to start from")
            ids = [self.tokenizer.eot_id]
        n_ctx = self.config.n_ctx
        if opts.context_overflow == "error" and len(ids) + opts.max_new_tokens > n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(ids)} tokens + max_new_tokens={opts.max_new_tokens} exceeds the context length "
                f"{n_ctx}; shorten the prompt, lower max_new_tokens, or use context_overflow='slide'")
        return ids

    @staticmethod
    def _is_batch(prompt) -> bool:
        """A list of prompts (strings or id lists), as opposed to one string or one list of token ids."""
        if isinstance(prompt, (str, np.ndarray)):
            return False
        if not isinstance(prompt, (list, tuple)):
            raise InvalidArgumentError(f"prompt must be a string, token ids or a list of those, got "
                                       f"{type(prompt).__name__}")
        return len(prompt) > 0 and not isinstance(prompt[0], (int, np.integer))

    def run_batch(self, requests: Sequence[tuple]) -> BatchRun:
        """Many prompts in one batch, each with its own options: requests = [(prompt, {option: value})]. Iterate
        the returned BatchRun for Pieces (index, text) as they come; its `.results` hold one GenerationResult per
        sequence (a request with n = k has k consecutive results)."""
        reqs = []
        for prompt, options in requests:
            opts, n, lp = self._options(options)
            reqs.append((self._prompt_ids(prompt, opts), opts, opts.seed, n, lp))
        return BatchRun(self, reqs)

    def stream(self, prompt, **options):
        """One prompt (n = 1): an iterator of text pieces (never a split UTF-8 character) whose `.result` holds
        tokens and timings after. A list of prompts or n > 1: a BatchRun of Pieces (index, text)."""
        opts, n, lp = self._options(options)
        if not self._is_batch(prompt) and n == 1:
            return Stream(self, self._prompt_ids(prompt, opts), opts, lp)
        prompts = prompt if self._is_batch(prompt) else [prompt]
        return self.run_batch([(p, options) for p in prompts])

    def generate_result(self, prompt, **options):
        """GenerationResult for one prompt; a list for n > 1 samples; for a list of prompts, one entry per prompt
        (a GenerationResult, or a list of n)."""
        _, n, _ = self._options(options)
        run = self.stream(prompt, **options)
        for _ in run:
            pass
        if isinstance(run, Stream):
            return run.result
        res = run.results
        grouped = [res[i:i + n] for i in range(0, len(res), n)] if n > 1 else res
        return grouped if self._is_batch(prompt) else grouped[0]

    def generate(self, prompt, **options):
        """Generated text only (prompt excluded): a str, a list of n str, or one entry per prompt of a list.
        Options: max_new_tokens, temperature (0 = greedy), top_k, top_p, repeat_penalty, seed, stop, ignore_eos,
        context_overflow ('error' | 'slide'), n (samples per prompt, sharing one prefill), logprobs (k: each
        generated token's logprob and its k most likely alternatives in `generate_result(...).logprobs`)."""
        res = self.generate_result(prompt, **options)
        text = lambda r: [x.text for x in r] if isinstance(r, list) else r.text  # noqa: E731
        return [text(r) for r in res] if self._is_batch(prompt) else text(res)


def load(model: str | Path, backend: str | None = None, *, dtype: str | None = None, threads: int | None = None,
         offline: bool | None = None, cache_dir: str | Path | None = None, revision: str = "main",
         progress=None) -> Model:
    """Load GPT-2 from a local path (HF directory, tinygpt file/dir) or a hub name (gpt2, org/name).

    backend: auto | numpy | cpu | cuda (None: $TINYGPT_BACKEND, else auto). dtype converts the matrices at load
    (float32 | float16 | bfloat16 | int8, or an alias such as bf16; default: as stored)."""
    from .hub import resolve_model
    path = resolve_model(str(model), offline=offline, cache_dir=cache_dir, revision=revision, progress=progress)
    ck = load_checkpoint(path, dtype)
    vocab_dir = ck.vocab_dir or (path if Path(path).is_dir() else Path(path).parent)
    return Model(ck, Tokenizer.from_dir(vocab_dir), backend=backend, threads=threads)
