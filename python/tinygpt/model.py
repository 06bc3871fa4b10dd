"""The embedding API: `tinygpt.load(model) -> Model`; generate / stream / logits on it.

A Model holds read-only weights on one backend; every call opens its own Session (its own KV cache), so
several threads may use one Model at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import backends
from .errors import ContextOverflowError, InvalidArgumentError
from .generate import GenerationResult, Stream
from .plan import build_plan
from .sampling import SamplingOptions
from .tokenizer import Tokenizer
from .weights import Checkpoint, load_checkpoint


class Model:
    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer, backend: str = "auto",
                 threads: int | None = None):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.tokenizer = tokenizer
        if tokenizer.n_vocab > self.config.n_vocab:
            raise InvalidArgumentError(f"tokenizer has {tokenizer.n_vocab} tokens but the model only "
                                       f"{self.config.n_vocab}: vocabulary files do not match the weights")
        self.backend_name = backends.resolve(backend)
        self.plan, self.weight_names = build_plan(self.config)
        self.backend = backends.create(self.backend_name, checkpoint, self.plan, self.weight_names, threads)

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
        return self.backend.new_session().forward(self._check_ids(ids), all_logits=True)

    # -- generation ----------------------------------------------------------------------------
    def _prepare(self, prompt: str | Sequence[int], options: dict) -> tuple[list[int], SamplingOptions]:
        try:
            opts = SamplingOptions(**options)
        except TypeError as e:
            raise InvalidArgumentError(str(e)) from None
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
        return ids, opts

    def stream(self, prompt: str | Sequence[int], **options) -> Stream:
        """Iterator of text pieces (never a split UTF-8 character); `.result` holds tokens and timings after."""
        ids, opts = self._prepare(prompt, options)
        return Stream(self, self.backend.new_session(), ids, opts)

    def generate_result(self, prompt: str | Sequence[int], **options) -> GenerationResult:
        s = self.stream(prompt, **options)
        for _ in s:
            pass
        return s.result

    def generate(self, prompt: str | Sequence[int], **options) -> str:
        """Generated text only (prompt excluded). Options: max_new_tokens, temperature (0 = greedy), top_k,
        top_p, repeat_penalty, seed, stop, ignore_eos, context_overflow ('error' | 'slide')."""
        return self.generate_result(prompt, **options).text

    # -- scoring text (logic in scoring.py) ------------------------------------------------------
    def score(self, text_or_ids, top_n: int = 0, *, prefix_eot: bool = True, context: int | None = None,
              stride: int | None = None, progress=None):
        """Per token: id, text piece, character offset, float64 logprob, exact rank, top_n alternatives.
        The first token is conditioned on <|endoftext|> unless prefix_eot=False (then it is not scored). Text
        longer than context (default n_ctx) is scored in windows advancing by stride (default context // 2)."""
        from .scoring import score
        return score(self, text_or_ids, top_n, prefix_eot=prefix_eot, context=context, stride=stride,
                     progress=progress)

    def perplexity(self, text_or_ids, *, stride: int | None = None, context: int | None = None,
                   prefix_eot: bool = True, kl_base: "Model | None" = None, shard=None, progress=None):
        """Strided perplexity: every token scored once with as much left context as the window allows. Returns
        a PerplexityResult (additive: r1 + r2); kl_base adds KL divergence, delta perplexity, top-1 agreement;
        shard=(i, n) scores the i-th of n runs of the same windows (the n results add up to the whole)."""
        from .scoring import perplexity
        return perplexity(self, text_or_ids, stride=stride, context=context, prefix_eot=prefix_eot,
                          kl_base=kl_base, shard=shard, progress=progress)


def load(model: str | Path, backend: str = "auto", *, dtype: str | None = None, threads: int | None = None,
         offline: bool | None = None, cache_dir: str | Path | None = None, revision: str = "main",
         progress=None) -> Model:
    """Load GPT-2 from a local path (HF directory, tinygpt file/dir) or a hub name (gpt2, org/name).

    dtype converts the matrices at load (float32 | float16 | bfloat16; default: as stored)."""
    from .hub import resolve_model
    path = resolve_model(str(model), offline=offline, cache_dir=cache_dir, revision=revision, progress=progress)
    ck = load_checkpoint(path, dtype)
    vocab_dir = ck.vocab_dir or (path if Path(path).is_dir() else Path(path).parent)
    return Model(ck, Tokenizer.from_dir(vocab_dir), backend=backend, threads=threads)
