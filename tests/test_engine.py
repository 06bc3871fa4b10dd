"""The async engine: requests join a running batch, each text equals Model.generate alone; scoring in the batch;
cancellation frees the sequence; a full queue and a closed engine are typed errors."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import tinygpt
from tinygpt.engine import AsyncEngine
from tinygpt.generate import token_logprob


@pytest.fixture(scope="module")
def model(tiny_dir):
    return tinygpt.load(tiny_dir, backend="cpu" if "cpu" in tinygpt.available_backends() else "numpy")


def run(coro):
    return asyncio.run(coro)


def test_concurrent_streams_equal_single_calls(model):
    prompts = [f"prompt {i} " * (i + 1) for i in range(10)]

    async def main():
        eng = AsyncEngine(model, max_batch=4, prefill_chunk=8)  # chunked prefill, requests waiting for a slot

        async def one(i, p):
            text, toks = "", []
            async for piece in eng.stream(p, max_new_tokens=16, seed=i, logprobs=3):
                text += piece.text
                toks += piece.tokens
                assert len(piece.logprobs) == len(piece.tokens)
            return text, toks
        out = await asyncio.gather(*[one(i, p) for i, p in enumerate(prompts)])
        many = await eng.generate(prompts[0], n=3, max_new_tokens=6, seed=5)
        await eng.aclose(5)
        return out, many, eng.stats()
    out, many, stats = run(main())
    for i, p in enumerate(prompts):
        r = model.generate_result(p, max_new_tokens=16, seed=i)
        assert out[i] == (r.text, r.tokens)
    assert [r.text for r in many] == model.generate(prompts[0], n=3, max_new_tokens=6, seed=5)
    assert stats["running"] == 0 and stats["requests_active"] == 0 and stats["requests_finished"] == 11


def test_logprobs_are_the_raw_distribution(model):
    r = model.generate_result("Hello there", max_new_tokens=5, temperature=0.7, seed=3, logprobs=4)
    ids = model.tokenizer.encode("Hello there") + r.tokens
    lg = model.logits(ids).astype(np.float64)
    for k, lp in enumerate(r.logprobs):
        row = lg[len(ids) - len(r.tokens) - 1 + k]
        ref = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        assert lp.token == r.tokens[k] and abs(lp.logprob - ref[lp.token]) < 1e-5
        assert [t for t, _ in lp.top] == list(np.argsort(-ref, kind="stable")[:4])


def test_score_in_the_batch(model):
    ids = model.tokenizer.encode("Scoring runs through the same scheduler as generation does.")

    async def main():
        eng = AsyncEngine(model, prefill_chunk=5)
        s = await eng.score(ids, top_n=2)
        await eng.aclose()
        return s
    s = run(main())
    lg = model.logits(ids)
    assert s[0] is None and len(s) == len(ids)
    for i in range(1, len(ids)):
        ref = token_logprob(lg[i - 1], ids[i], 2)
        assert s[i].token == ids[i] and abs(s[i].logprob - ref.logprob) < 1e-5
        assert [t for t, _ in s[i].top] == [t for t, _ in ref.top]


def test_cancel_frees_the_sequence_and_errors_are_typed(model):
    async def main():
        eng = AsyncEngine(model, max_batch=1, max_queue=1)

        async def long():
            async for _ in eng.stream("x", max_new_tokens=100, ignore_eos=True):
                await asyncio.sleep(0.01)
        async def until(key, value):
            for _ in range(1000):
                if eng.stats()[key] == value:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{key} never became {value}: {eng.stats()}")
        t = asyncio.create_task(long())
        await until("running", 1)
        waiting = asyncio.create_task(eng.generate("y", max_new_tokens=2))  # waits: max_batch=1
        await until("queue_depth", 1)
        with pytest.raises(tinygpt.QueueFullError):
            await eng.generate("z", max_new_tokens=2)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await waiting
        await until("requests_active", 0)
        st = eng.stats()
        await eng.aclose(1)
        with pytest.raises(tinygpt.EngineClosedError):
            await eng.generate("y", max_new_tokens=2)
        return st
    st = run(main())
    assert st["running"] == 0 and st["requests_cancelled"] == 1
