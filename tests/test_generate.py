"""Generation options: greedy, seeds, top-k / top-p (HF convention), repetition penalty, stop strings,
EOS, lengths, context overflow, empty prompt, streaming; and sampling validation."""
import numpy as np
import pytest

import tinygpt
from tinygpt.sampling import SamplingOptions, apply_repeat_penalty, select


@pytest.fixture(scope="module")
def m(tiny_dir):
    return tinygpt.load(tiny_dir, backend="numpy")


def test_seed_reproducible(m):
    a = m.generate("Hello", max_new_tokens=20, temperature=0.9, top_k=50, seed=7)
    b = m.generate("Hello", max_new_tokens=20, temperature=0.9, top_k=50, seed=7)
    c = m.generate("Hello", max_new_tokens=20, temperature=0.9, top_k=50, seed=8)
    assert a == b and a != c


def test_no_global_random_state(m):
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    m.generate("Hello", max_new_tokens=5, temperature=1.0, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)


def test_stream_equals_generate(m):
    s = m.stream("Hello world", max_new_tokens=30, temperature=0, ignore_eos=True)
    pieces = list(s)
    assert "".join(pieces) == m.generate("Hello world", max_new_tokens=30, temperature=0, ignore_eos=True)
    assert s.result.finish_reason == "length" and len(s.result.tokens) == 30
    t = s.result.timings
    assert t.prompt_tokens == 2 and t.decode_steps == 29 and t.prefill_tok_s > 0 and t.decode_tok_s > 0


def test_max_new_tokens_zero(m):
    assert m.generate("Hello", max_new_tokens=0) == ""


def test_stop_string(m):
    full = m.generate("Hello world", max_new_tokens=30, temperature=0, ignore_eos=True)
    stop = full[5:9]
    assert stop and stop in full
    r = m.generate_result("Hello world", max_new_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    assert r.text == full[: full.index(stop)] and r.finish_reason == "stop"
    streamed = "".join(m.stream("Hello world", max_new_tokens=30, temperature=0, ignore_eos=True, stop=[stop]))
    assert streamed == r.text


def test_eos_stops_unless_ignored(m, monkeypatch):
    eot = m.tokenizer.eot_id
    import tinygpt.generate as g
    calls = {"n": 0}
    real = g.select

    def fake(logits, opts, rng, ctx, *rest):
        calls["n"] += 1
        return eot if calls["n"] == 3 else real(logits, opts, rng, ctx, *rest)
    monkeypatch.setattr(g, "select", fake)
    # sampled (greedy without a penalty never calls select: it takes forward_argmax's pick)
    r = m.generate_result("Hi", max_new_tokens=10, temperature=0.7, seed=1)
    assert r.finish_reason == "stop" and len(r.tokens) == 2 and eot not in r.tokens
    calls["n"] = 0
    r = m.generate_result("Hi", max_new_tokens=10, temperature=0.7, seed=1, ignore_eos=True)
    assert len(r.tokens) == 10


def test_empty_prompt_starts_from_eot(m):
    r = m.generate_result("", max_new_tokens=5, temperature=0, ignore_eos=True)
    expected = int(np.argmax(m.logits([m.tokenizer.eot_id])[-1]))
    assert r.tokens[0] == expected and r.timings.prompt_tokens == 1


def test_context_overflow(m):
    with pytest.raises(tinygpt.ContextOverflowError, match="context_overflow='slide'"):
        m.generate("word " * 100, max_new_tokens=50)
    r = m.generate_result("word " * 100, max_new_tokens=80, temperature=0, ignore_eos=True, context_overflow="slide")
    assert len(r.tokens) == 80
    r = m.generate_result("word " * 200, max_new_tokens=5, temperature=0, ignore_eos=True, context_overflow="slide")
    assert len(r.tokens) == 5 and r.timings.prompt_tokens == 128


@pytest.mark.parametrize("opts", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_k=-2),
                                  dict(top_k=1.5), dict(top_p=0), dict(top_p=1.5), dict(repeat_penalty=0),
                                  dict(max_new_tokens=-2), dict(seed=-3), dict(seed="x"), dict(stop=[""]),
                                  dict(context_overflow="wrap"), dict(bogus=1)])
def test_invalid_options(m, opts):
    with pytest.raises(tinygpt.InvalidArgumentError):
        m.generate("Hi", **opts)


def test_top_p_includes_crossing_token():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    opts = SamplingOptions(temperature=1.0, top_p=0.6)
    seen = {select(logits, opts, np.random.default_rng(s), []) for s in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.6, so the token crossing 0.6 (0.3) is kept; HF convention
    opts = SamplingOptions(temperature=1.0, top_p=0.5)
    assert {select(logits, opts, np.random.default_rng(s), []) for s in range(100)} == {0}


def test_top_k():
    logits = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    opts = SamplingOptions(temperature=2.0, top_k=2)
    assert {select(logits, opts, np.random.default_rng(s), []) for s in range(200)} == {1, 3}


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).standard_normal(1000)
    assert select(logits, SamplingOptions(temperature=0), np.random.default_rng(0), []) == int(np.argmax(logits))


def test_repeat_penalty_hf_rule():
    x = np.array([2.0, -2.0, 1.0])
    apply_repeat_penalty(x, [0, 1, 1], 2.0)
    assert x.tolist() == [1.0, -4.0, 1.0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_greedy_argmax_steps_equal_logits_steps(backend, tiny_dir, dtype, monkeypatch):
    """forward_argmax (greedy without a penalty; the cpu backend screens the head) picks np.argmax of the logits
    forward() returns, step after step, and generate's greedy tokens follow it."""
    if backend != "cpu" and dtype != "float32":
        pytest.skip("numpy computes in float32; cuda has no int8")
    if backend == "cpu":
        monkeypatch.setenv("TINYGPT_GREEDY_SCREEN", "1")  # 16-bit heads too (the default screens float32 only)
    m = tinygpt.load(tiny_dir, backend=backend, dtype=dtype)
    a, b = m.backend.new_sequence(), m.backend.new_sequence()
    ids = np.asarray(m.tokenizer.encode("The screen must not change a single token"), np.int32)
    ta, tb = a.forward_argmax(ids), int(np.argmax(b.forward(ids)[-1]))
    toks, rows = [], []
    for _ in range(40):
        assert ta == tb
        toks.append(ta)
        ta = a.forward_argmax(np.array([ta], np.int32))
        tb = int(np.argmax(b.forward(np.array([tb], np.int32))[-1]))
        rows.append(getattr(a, "head_rows_exact", None))
    assert m.generate_result(ids.tolist(), max_new_tokens=40, temperature=0, ignore_eos=True).tokens == toks
    if backend == "cpu" and dtype != "int8":
        assert max(rows) < m.config.n_vocab // 10  # the screen is in use, not a silent full read
    elif backend == "cpu":
        assert set(rows) == {m.config.n_vocab}  # int8 heads are read whole


def test_greedy_screen_can_be_turned_off(tiny_dir, monkeypatch):
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    monkeypatch.setenv("TINYGPT_GREEDY_SCREEN", "0")
    m = tinygpt.load(tiny_dir, backend="cpu")
    s = m.backend.new_sequence()
    s.forward_argmax(np.arange(5, dtype=np.int32))
    assert s.head_rows_exact == m.config.n_vocab and not m.backend.screen_head
    monkeypatch.setenv("TINYGPT_GREEDY_SCREEN", "auto")
    assert tinygpt.load(tiny_dir, backend="cpu").backend.screen_head
    assert not tinygpt.load(tiny_dir, backend="cpu", dtype="bfloat16").backend.screen_head
    monkeypatch.setenv("TINYGPT_GREEDY_SCREEN", "yes")
    with pytest.raises(tinygpt.InvalidArgumentError, match="auto, 0 or 1"):
        tinygpt.load(tiny_dir, backend="cpu")


def test_greedy_with_a_screen_that_does_not_prune(tiny_dir):
    """A screen whose bounds keep every row: the kernel reads the whole head, the sequence then skips the screen
    for 15 steps and tries it again; every step's token is still np.argmax of the logits."""
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    from tinygpt.backends import head_screen
    m = tinygpt.load(tiny_dir, backend="cpu")
    q, qs, err = head_screen.build(m.checkpoint.tensors["wte.weight"], "float32")
    m.backend.engine.set_head_screen(q, qs, err * np.float32(1e6))
    m.backend._screened = True
    a, b = m.backend.new_sequence(), m.backend.new_sequence()
    ta, tb = a.forward_argmax(np.arange(3, dtype=np.int32)), int(np.argmax(b.forward(np.arange(3, dtype=np.int32))))
    for _ in range(40):
        assert ta == tb and a.head_rows_exact == m.config.n_vocab
        ta = a.forward_argmax(np.array([ta], np.int32))
        tb = int(np.argmax(b.forward(np.array([tb], np.int32))[-1]))
    assert a.screened_steps == 3  # steps 1, 17 and 33 of 41 tried the screen: the back-off skipped the others
