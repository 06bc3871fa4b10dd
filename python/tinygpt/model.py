"""The embedding API: `tinygpt.load(model) -> Model`; generate / stream / logits on it, for one prompt or a batch.

A Model holds read-only weights on one backend; every call makes its own sequences (their own KV caches), so
several threads may use one Model at once (logits() keeps one sequence and buffer for reuse, under a lock that a
concurrent call does not wait for: it makes its own). A list of prompts (or n > 1 samples) runs as one batch: one forward per
step for all sequences, each sequence's text the same as when it runs alone (README: what is bitwise).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from . import backends
from .errors import ContextOverflowError, InvalidArgumentError
from .generate import BatchRun, Stream
from .sampling import SamplingOptions, options_from_kwargs
from .tokenizer import Tokenizer
from .weights import Checkpoint, load_checkpoint


class Model:
    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer, backend: str | None = None,
                 threads: int | None = None, bf16_activations: bool = False):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.tokenizer = tokenizer
        if tokenizer.n_vocab > self.config.n_vocab:
            raise InvalidArgumentError(f"tokenizer has {tokenizer.n_vocab} tokens but the model only "
                                       f"{self.config.n_vocab}: vocabulary files do not match the weights")
        self.backend_name = backends.resolve(backend)  # None: $TINYGPT_BACKEND or auto
        self.backend = backends.create(self.backend_name, checkpoint, threads, bf16_activations)
        # logits() reuses one sequence, and its last result's array once the caller has let go of it: fresh pages
        # fault and are zeroed at first touch (the KV cache and the [T, n_vocab] logits: ~8% of a 1024-token
        # forward together). A concurrent call makes its own.
        self._logits_seq = None
        self._logits_buf = None
        self._logits_lock = threading.Lock()

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

    def logits(self, ids: Sequence[int], start: int = 0) -> np.ndarray:
        """Logits for every position from `start` on, float32 [len(ids) - start, n_vocab]; one full forward, no
        cache reuse. Positions before `start` are context only: their logits are not computed (with the LM head
        that is ~30% of a forward), and the rows returned are bit for bit rows start.. of logits(ids) (cpu)."""
        ids = self._check_ids(ids)
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < ids.size:
            raise InvalidArgumentError(f"start must be an integer in 0..{ids.size - 1}, got {start!r}")
        start = int(start)
        if not self._logits_lock.acquire(blocking=False):
            return self.backend.new_sequence().forward(ids, all_logits=True, skip=start)
        try:
            if self._logits_seq is None:
                self._logits_seq = self.backend.new_sequence()
            self._logits_seq.reset()
            buf, self._logits_buf = self._logits_buf, None
            # reused only when nothing else refers to it (here: buf and getrefcount's argument)
            if buf is not None and (buf.shape[0] != ids.size - start or sys.getrefcount(buf) > 2):
                buf = None
            res = self._logits_seq.forward(ids, all_logits=True, out=buf, skip=start)
            if self.backend.writes_out:
                self._logits_buf = res if res.base is None else res.base
            return res
        finally:
            self._logits_lock.release()

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
        return options_from_kwargs(self.config.n_vocab, **options), n, lp

    def _prompt_ids(self, prompt, opts: SamplingOptions) -> tuple[list[int], SamplingOptions]:
        """The prompt's token ids, and opts with max_new_tokens=-1 resolved against the room the context leaves."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, opts.allowed_special)
        else:
            ids = self._check_ids(prompt).tolist() if len(prompt) else []
        if not ids:
            if self.tokenizer.eot_id is None:
                raise InvalidArgumentError("empty prompt and the vocabulary has no <|endoftext|> to start from")
            ids = [self.tokenizer.eot_id]
        n_ctx = self.config.n_ctx
        opts = opts.fit(len(ids), n_ctx)  # max_new_tokens=-1: the room the context leaves
        if opts.context_overflow == "error" and len(ids) + opts.max_new_tokens > n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(ids)} tokens + max_new_tokens={opts.max_new_tokens} exceeds the context length "
                f"{n_ctx}; shorten the prompt, lower max_new_tokens, or use context_overflow='slide'")
        return ids, opts

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
            ids, opts = self._prompt_ids(prompt, opts)
            reqs.append((ids, opts, opts.seed, n, lp))
        return BatchRun(self, reqs)

    def stream(self, prompt, **options):
        """One prompt (n = 1): an iterator of text pieces (never a split UTF-8 character) whose `.result` holds
        tokens and timings after. A list of prompts or n > 1: a BatchRun of Pieces (index, text)."""
        opts, n, lp = self._options(options)
        if not self._is_batch(prompt) and n == 1:
            return Stream(self, *self._prompt_ids(prompt, opts), lp)
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
        Options (sampling.options_from_kwargs; README "Python API"): max_new_tokens, temperature (0 = greedy),
        top_k, top_p, min_p, typical_p, repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty,
        logit_bias, seed, stop, ignore_eos, context_overflow ('error' | 'slide'), allowed_special; aliases
        max_tokens, repetition_penalty, do_sample; n (samples per prompt, sharing one prefill), logprobs (k: each
        generated token's logprob and its k most likely alternatives in `generate_result(...).logprobs`)."""
        res = self.generate_result(prompt, **options)
        text = lambda r: [x.text for x in r] if isinstance(r, list) else r.text  # noqa: E731
        return [text(r) for r in res] if self._is_batch(prompt) else text(res)

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


def load(model: str | Path, backend: str | None = None, *, dtype: str | None = None, threads: int | None = None,
         offline: bool | None = None, cache_dir: str | Path | None = None, revision: str = "main",
         progress=None, bf16_activations: bool = False) -> Model:
    """Load GPT-2 from a local path (HF directory, tinygpt file/dir) or a hub name (gpt2, org/name).

    backend: auto | numpy | cpu | cuda (None: $TINYGPT_BACKEND, else auto). dtype converts the matrices at load
    (float32 | float16 | bfloat16 | int8, or an alias such as bf16; default: as stored).
    bf16_activations (cpu backend, bfloat16 weights): matmuls round their input activations to bf16 and use the
    CPU's bf16 dot-product instruction where it has one (AVX512_BF16): faster prefill and scoring, values no longer
    those of float32 activations (README, "What is exact")."""
    from .hub import resolve_model
    path = resolve_model(str(model), offline=offline, cache_dir=cache_dir, revision=revision, progress=progress)
    ck = load_checkpoint(path, dtype)
    vocab_dir = ck.vocab_dir or (path if Path(path).is_dir() else Path(path).parent)
    return Model(ck, Tokenizer.from_dir(vocab_dir), backend=backend, threads=threads,
                 bf16_activations=bf16_activations)
