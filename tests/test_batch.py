"""Many sequences in one forward: a sequence's logits and text do not depend on its batch.

cpu: bit for bit (every kernel computes a row with arithmetic that depends on that row alone). numpy: its BLAS
picks kernels by row count, so logits agree within float32 rounding and the generated texts are identical.
"""
from __future__ import annotations

import numpy as np
import pytest

import tinygpt

PROMPTS = [" ".join(["word"] * k) + f" number {k}" for k in (1, 3, 7, 2, 12, 5, 9, 4, 15, 6, 11, 8, 13, 10, 14, 16)]


@pytest.fixture(scope="module")
def models(tiny_dir):
    cache = {}

    def get(backend, dtype="float32"):
        if backend not in tinygpt.available_backends():
            pytest.skip(f"backend {backend} unavailable")
        if (backend, dtype) not in cache:
            act16 = dtype == "bfloat16a"  # bf16 weights, bf16 activations (tinygpt.load(..., bf16_activations=True))
            cache[backend, dtype] = tinygpt.load(tiny_dir, backend=backend, dtype="bfloat16" if act16 else dtype,
                                                 bf16_activations=act16)
        return cache[backend, dtype]
    return get


def solo_logits(m, ids, chunks):
    """Logits of each chunk's rows, feeding the chunks one forward at a time to a sequence of its own."""
    s = m.backend.new_sequence()
    out, r = [], 0
    for n in chunks:
        out.append(s.forward(np.asarray(ids[r:r + n], np.int32), all_logits=True))
        r += n
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "bfloat16a"])
def test_mixed_batch_logits_bitwise_cpu(models, dtype):
    """Random batches of 1..17 sequences, each step mixing prefill chunks and decode rows, sequences joining mid-way,
    each item asking for all its rows' logits, all but the first few (skip), the last row's, its argmax or nothing
    (the last layer then runs on fewer rows): every sequence's logits equal bit for bit the logits it gets running
    alone with the same chunks, asking for all of them."""
    m = models("cpu", dtype)
    rng = np.random.default_rng(7)
    V = m.config.n_vocab
    seen_wants = set()
    for B in list(range(1, 18)):
        ids = [rng.integers(0, V, int(rng.integers(6, 40))) for _ in range(B)]
        # each sequence: a first chunk (prefill), then chunks of 1..3 tokens; it joins at a random step
        plans = []
        for x in ids:
            first = int(rng.integers(1, len(x) - 3))
            rest, r = [], first
            while r < len(x):
                n = int(min(rng.integers(1, 4), len(x) - r))
                rest.append(n)
                r += n
            plans.append([first] + rest)
        join = [int(rng.integers(0, 3)) for _ in range(B)]
        seqs = [m.backend.new_sequence() for _ in range(B)]
        got = [[] for _ in range(B)]
        done = [0] * B  # chunks fed
        rows = [0] * B
        step = 0
        while any(done[i] < len(plans[i]) for i in range(B)):
            run = [i for i in range(B) if step >= join[i] and done[i] < len(plans[i])]
            step += 1
            if not run:
                continue
            toks = [ids[i][rows[i]:rows[i] + plans[i][done[i]]] for i in run]
            wants = [str(rng.choice(["all", "all", "skip", "last", "none", "argmax"])) for _ in run]
            skip = [int(rng.integers(1, len(t))) if w == "skip" and len(t) > 1 else 0 for w, t in zip(wants, toks)]
            wants = ["all" if w == "skip" else w for w in wants]
            outs = m.backend.forward([seqs[i] for i in run], toks, wants, skip=skip)
            for i, o, w, k in zip(run, outs, wants, skip):
                got[i].append((w, k, o))
                rows[i] += plans[i][done[i]]
                done[i] += 1
        for i in range(B):
            want = solo_logits(m, ids[i], plans[i])
            for (w, k, g), full in zip(got[i], want):
                expect = {"all": lambda: full[k:], "last": lambda: full[-1:], "none": lambda: None,
                          "argmax": lambda: int(np.argmax(full[-1]))}[w]()
                assert (g is None and expect is None) or np.array_equal(g, expect), \
                    f"B={B} sequence {i} ({w}, skip {k}): batched logits differ from solo"
        seen_wants.update("skip" if k else w for g in got for w, k, _ in g)
    assert seen_wants == {"all", "skip", "last", "none", "argmax"}


def test_prefill_then_decode_equals_full_recomputation_bitwise_cpu(models):
    """A token's logits are the same whether its prefix came from one prefill, token-by-token decode or any
    chunking in between (cpu: bit for bit)."""
    m = models("cpu")
    ids = np.random.default_rng(3).integers(0, m.config.n_vocab, 37)
    full = solo_logits(m, ids, [37])[0]
    for chunks in ([1] * 37, [5, 1, 1, 30], [36, 1], [20, 17]):
        got = np.concatenate(solo_logits(m, ids, chunks))
        assert np.array_equal(got, full), chunks


@pytest.mark.parametrize("backend,dtype", [("numpy", "float32"), ("cpu", "float32"), ("cpu", "bfloat16")])
def test_generate_list_equals_single_calls(models, backend, dtype):
    """16 prompts of different lengths through one generate([...]) give, prompt by prompt, the text of 16 single
    calls: greedy, and sampled with a seed."""
    m = models(backend, dtype)
    for opts in (dict(temperature=0), dict(temperature=0.9, top_k=40, seed=11), dict(top_p=0.8, seed=3)):
        batch = m.generate(PROMPTS, max_new_tokens=12, ignore_eos=True, **opts)
        single = [m.generate(p, max_new_tokens=12, ignore_eos=True, **opts) for p in PROMPTS]
        assert batch == single, opts


def test_numpy_batched_logits_within_tolerance(models):
    m = models("numpy")
    ids = [np.arange(3 + k, dtype=np.int32) * (k + 1) for k in range(5)]
    seqs = [m.backend.new_sequence() for _ in ids]
    outs = m.backend.forward(seqs, ids, ["all"] * len(ids))
    for x, o in zip(ids, outs):
        ref = m.logits(x)
        assert np.abs(o - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_n_samples_share_one_prefill(models, backend):
    """n=4 samples of one prompt: one prefill (counted in rows run), and each sample equals a single call made
    with the seed the documented rule gives it (seed + j)."""
    m = models(backend)
    prompt = PROMPTS[8]
    n_prompt = len(m.tokenizer.encode(prompt))
    before = m.backend.rows_run
    res = m.generate_result(prompt, n=4, max_new_tokens=10, seed=100, ignore_eos=True)
    assert m.backend.rows_run - before == n_prompt + 4 * 9  # one prefill, then 9 decode rows per sample
    assert [r.seed for r in res] == [100, 101, 102, 103]
    for j, r in enumerate(res):
        alone = m.generate_result(prompt, max_new_tokens=10, seed=100 + j, ignore_eos=True)
        assert r.tokens == alone.tokens and r.text == alone.text
    assert len({tuple(r.tokens) for r in res}) > 1  # the samples differ


def test_batch_stream_pieces_are_tagged(models):
    m = models("cpu")
    run = m.stream(PROMPTS[:3], max_new_tokens=8, temperature=0, ignore_eos=True)
    texts, finish = ["", "", ""], [None] * 3
    for piece in run:
        assert finish[piece.index] is None  # the piece that carries a finish reason is the sequence's last
        texts[piece.index] += piece.text
        finish[piece.index] = piece.finish_reason
    assert finish == [r.finish_reason for r in run.results] == ["length"] * 3
    assert texts == [r.text for r in run.results] == [m.generate(p, max_new_tokens=8, temperature=0,
                                                                  ignore_eos=True) for p in PROMPTS[:3]]


def test_per_request_options_and_shapes(models):
    m = models("cpu")
    run = m.run_batch([(PROMPTS[0], dict(max_new_tokens=3, temperature=0)),
                       (PROMPTS[1], dict(max_new_tokens=5, seed=2, n=2)),
                       ([1, 2, 3], dict(max_new_tokens=0))])
    list(run)
    assert [len(r.tokens) for r in run.results] == [3, 5, 5, 0]
    out = m.generate([PROMPTS[0], PROMPTS[1]], n=2, max_new_tokens=4, seed=1)
    assert len(out) == 2 and all(len(o) == 2 for o in out)
    assert m.generate(PROMPTS[0], n=3, max_new_tokens=2, seed=1) == [
        m.generate(PROMPTS[0], max_new_tokens=2, seed=1 + j) for j in range(3)]
    assert isinstance(m.generate([], max_new_tokens=2), str)  # [] is an empty list of token ids: one prompt
    with pytest.raises(tinygpt.InvalidArgumentError):
        m.generate(PROMPTS[0], n=0)


def test_fork_copies_the_prefix(models, backend):
    m = models(backend)
    a = m.backend.new_sequence()
    a.forward(np.arange(10, dtype=np.int32))
    b = a.fork()
    assert b.pos == 10
    la = a.forward(np.array([5], np.int32))
    lb = b.forward(np.array([5], np.int32))
    np.testing.assert_array_equal(la, lb)


def test_forward_rejects_bad_batches(models):
    m = models("cpu")
    s = m.backend.new_sequence()
    with pytest.raises(tinygpt.InvalidArgumentError):
        m.backend.forward([s, s], [[1], [2]], ["last", "last"])
    with pytest.raises(tinygpt.InvalidArgumentError):
        m.backend.forward([s], [[1]], ["everything"])
    with pytest.raises(tinygpt.InvalidArgumentError):
        m.backend.forward([s], [[]], ["last"])
    with pytest.raises(tinygpt.ContextOverflowError):
        m.backend.forward([s], [np.zeros(m.config.n_ctx + 1, np.int32)], ["last"])
    for want, skip in (("all", 2), ("all", -1), ("last", 1), ("all", True), ("all", 1.0)):
        with pytest.raises(tinygpt.InvalidArgumentError, match="skip"):
            m.backend.forward([s], [[1, 2]], [want], skip=[skip])
    with pytest.raises(tinygpt.InvalidArgumentError, match="one length"):
        m.backend.forward([s], [[1, 2]], ["all"], skip=[0, 0])
    with pytest.raises(ValueError, match="skip"):  # the binding checks too
        m.backend._cpu.forward(m.backend.engine, [s._s], [np.array([1, 2], np.int32)], [2], None, [2])
    assert s.pos == 0
    other = models("numpy").backend.new_sequence()
    with pytest.raises(tinygpt.InvalidArgumentError):
        m.backend.forward([other], [[1]], ["last"])


def test_more_prompts_than_one_batch(models):
    """A list longer than BatchRun.MAX_BATCH runs in waves (bounded memory): same texts as single calls, and
    requests that generate nothing do not stop the rest."""
    m = models("cpu")
    prompts = [f"item {i}" for i in range(70)]
    assert m.generate(prompts, max_new_tokens=3, temperature=0) == [m.generate(p, max_new_tokens=3, temperature=0)
                                                                   for p in prompts]
    run = m.run_batch([(p, dict(max_new_tokens=0)) for p in prompts] + [("last", dict(max_new_tokens=2))])
    list(run)
    assert [len(r.tokens) for r in run.results] == [0] * 70 + [2]


def test_bf16_activations_model(models):
    """bf16 activations: close to the float32-activation bf16 model (not equal: the rounding is real), cached =
    uncached bit for bit, greedy argmax = argmax of the logits (no screen), and refused where it does not apply."""
    m, exact = models("cpu", "bfloat16a"), models("cpu", "bfloat16")
    ids = np.random.default_rng(3).integers(0, m.config.n_vocab, 40)
    full = m.logits(ids)
    ref = exact.logits(ids)
    err = np.abs(full - ref).max() / np.abs(ref).max()
    assert 0 < err < 5e-2, err
    s = m.backend.new_sequence()
    parts = [s.forward(np.asarray(ids[:17], np.int32), all_logits=True)]
    parts += [s.forward(np.asarray(ids[i:i + 1], np.int32), all_logits=True) for i in range(17, 40)]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    text = m.generate_result(ids[:10].tolist(), max_new_tokens=8, temperature=0)
    toks = [int(t) for t in ids[:10]]
    for _ in range(8):
        toks.append(int(np.argmax(m.logits(np.asarray(toks))[-1])))
    assert text.tokens == toks[10:]
    from tinygpt.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="bfloat16 weights"):
        tinygpt.load(m.checkpoint.path, backend="cpu", bf16_activations=True)  # float32 weights
    with pytest.raises(InvalidArgumentError, match="cpu backend"):
        tinygpt.load(m.checkpoint.path, backend="numpy", dtype="bfloat16", bf16_activations=True)
