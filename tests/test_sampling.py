"""Samplers against float64 references of their definitions and against transformers' logits processors;
seeded generation against a reference loop, token for token; option names users bring (OpenAI, transformers,
vLLM, llama.cpp); NaN logits and extreme temperatures end in a typed error or a defined result, never a
NumPy warning (this module turns every warning into an error)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import tinygpt
from tinygpt.sampling import (SamplingOptions, apply_logit_bias, apply_presence_frequency, distribution,
                              min_p_filter, options_from_kwargs, select, typical_filter)

pytestmark = pytest.mark.filterwarnings("error")


# -- float64 references, written from each definition ----------------------------------------------------------
def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_min_p(p, min_p):
    keep = [pi >= min_p * max(p) for pi in p]
    q = np.array([pi if k else 0.0 for pi, k in zip(p, keep)])
    return q / q.sum()


def ref_typical(p, mass):
    """Meister et al.: sort by |-log p_i - H|; keep tokens until the kept mass reaches `mass` (the token that
    reaches it included, and any token tied with it)."""
    H = -sum(pi * math.log(pi) for pi in p if pi > 0)
    dev = [abs(-math.log(pi) - H) if pi > 0 else math.inf for pi in p]
    order = sorted(range(len(p)), key=lambda i: dev[i])
    kept_mass, cut = 0.0, dev[order[-1]]
    for i in order:
        if kept_mass >= mass:
            break
        kept_mass += p[i]
        cut = dev[i]
    q = np.array([pi if dev[i] <= cut else 0.0 for i, pi in enumerate(p)])
    return q / q.sum()


def ref_typical_np(p, mass):
    """ref_typical, vectorized (the vocabulary-sized references below): a token is kept when the mass before it,
    in |-log p - H| order, is still short of `mass` (or it ties with such a token)."""
    nz = p > 0
    dev = np.full_like(p, np.inf)
    H = -np.sum(p[nz] * np.log(p[nz]))
    dev[nz] = np.abs(-np.log(p[nz]) - H)
    order = np.argsort(dev, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    cut = dev[order][before < mass].max()
    q = np.where(dev <= cut, p, 0.0)
    return q / q.sum()


def ref_distribution(logits, o: dict, context, n_generated):
    """The documented order, step by step, from the definitions."""
    x = np.array(logits, np.float64)
    for tok, b in o.get("logit_bias", {}).items():
        x[tok] += b
    n = o.get("repeat_last_n", -1)
    window = context if n == -1 else (context[-n:] if n > 0 else [])
    pen = o.get("repeat_penalty", 1.0)
    for tok in set(window):
        x[tok] = x[tok] / pen if x[tok] > 0 else x[tok] * pen
    gen = context[len(context) - n_generated:] if n_generated else []
    for tok, c in Counter(gen).items():
        x[tok] -= o.get("presence_penalty", 0.0) + o.get("frequency_penalty", 0.0) * c
    x = x / o.get("temperature", 1.0)
    k = o.get("top_k", 0)
    if k:
        kth = np.sort(x)[::-1][k - 1]
        x = np.where(x < kth, -np.inf, x)
    p = softmax(x)
    tp = o.get("top_p", 1.0)
    if tp < 1:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        q = np.zeros_like(p)
        q[order[before < tp]] = p[order[before < tp]]
        p = q / q.sum()
    if o.get("min_p", 0.0) > 0:
        p = np.where(p >= o["min_p"] * p.max(), p, 0.0)
        p /= p.sum()
    if o.get("typical_p", 1.0) < 1:
        p = ref_typical_np(p, o["typical_p"])
    return p


def random_logits(rng, n, scale):
    return rng.standard_normal(n) * scale


# -- each step against its reference ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_min_p_reference(rng, scale, min_p):
    p = softmax(random_logits(rng, 500, scale))
    assert np.abs(min_p_filter(p, min_p) - ref_min_p(p, min_p)).max() < 1e-12


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
@pytest.mark.parametrize("mass", [0.05, 0.3, 0.9, 0.99])
def test_typical_reference(rng, scale, mass):
    p = softmax(random_logits(rng, 500, scale))
    want = ref_typical(list(p), mass)
    assert np.abs(typical_filter(p, mass) - want).max() < 1e-12
    assert np.abs(ref_typical_np(p, mass) - want).max() < 1e-12  # the vectorized reference agrees


def test_logit_bias_and_penalties_reference():
    x = np.array([2.0, -1.0, 0.5, 3.0, 0.0])
    y = x.copy()
    apply_logit_bias(y, ((0, -1.5), (4, 2.0)))
    assert y.tolist() == [0.5, -1.0, 0.5, 3.0, 2.0]
    y = x.copy()
    apply_presence_frequency(y, [3, 3, 1, 3], 0.5, 0.25)  # OpenAI: -= presence * (c > 0) + frequency * c
    assert y.tolist() == [2.0, -1.0 - 0.5 - 0.25, 0.5, 3.0 - 0.5 - 0.75, 0.0]


@pytest.mark.parametrize("opts", [
    dict(repeat_penalty=1.5, repeat_last_n=3), dict(repeat_penalty=1.5, repeat_last_n=0),
    dict(repeat_penalty=1.5), dict(presence_penalty=1.0, frequency_penalty=0.5),
    dict(logit_bias={7: -100.0, 8: 5.0, 9: -math.inf}, temperature=0.7),
    dict(temperature=0.6, top_k=40, top_p=0.9, min_p=0.05, typical_p=0.8, repeat_penalty=1.3, repeat_last_n=6,
         presence_penalty=0.4, frequency_penalty=-0.3, logit_bias={3: 2.0, 11: -1.0}),
])
def test_pipeline_reference(rng, opts):
    logits = random_logits(rng, 300, 3.0)
    context = [int(t) for t in rng.integers(0, 60, 20)]
    o = options_from_kwargs(300, **opts)
    got = distribution(logits.astype(np.float32), o, context, 7)
    want = ref_distribution(logits.astype(np.float32), opts, context, 7)
    assert np.abs(got - want).max() < 1e-12


# -- against transformers --------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")


def hf_probs(proc, logits, input_ids=None):
    ids = torch.tensor([input_ids or [0]], dtype=torch.long)
    scores = proc(ids, torch.tensor(logits[None], dtype=torch.float64))
    return torch.softmax(scores, dim=-1)[0].numpy()


@pytest.mark.parametrize("scale", [0.3, 2.0, 12.0])
@pytest.mark.parametrize("min_p", [0.0, 0.02, 0.3, 0.9])
def test_min_p_equals_transformers(rng, scale, min_p):
    for _ in range(2):
        x = random_logits(rng, 50257, scale)
        want = hf_probs(lp.MinPLogitsWarper(min_p), x)
        got = min_p_filter(softmax(x), min_p)
        assert np.array_equal(got > 0, want > 0)
        assert np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize("scale", [0.3, 2.0, 12.0])
@pytest.mark.parametrize("mass", [0.1, 0.5, 0.95])
def test_typical_equals_transformers(rng, scale, mass):
    for _ in range(2):
        x = random_logits(rng, 50257, scale)
        want = hf_probs(lp.TypicalLogitsWarper(mass), x)
        got = typical_filter(softmax(x), mass)
        assert np.array_equal(got > 0, want > 0)
        assert np.abs(got - want).max() < 1e-6


def test_order_equals_transformers(rng):
    """The steps transformers has, in its order: bias, repetition penalty, temperature, top-k, top-p, min-p,
    typical."""
    x = random_logits(rng, 50257, 4.0)
    ctx = [int(t) for t in rng.integers(0, 50257, 50)] + [int(np.argmax(x))]
    procs = lp.LogitsProcessorList([
        lp.SequenceBiasLogitsProcessor([[[5], 3.0], [[int(np.argmax(x))], -2.0]]),
        lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(500),
        lp.TopPLogitsWarper(0.95), lp.MinPLogitsWarper(0.01), lp.TypicalLogitsWarper(0.9)])
    want = hf_probs(procs, x, ctx)
    o = options_from_kwargs(50257, logit_bias={5: 3.0, int(np.argmax(x)): -2.0}, repetition_penalty=1.3,
                            temperature=0.7, top_k=500, top_p=0.95, min_p=0.01, typical_p=0.9)
    got = distribution(x, o, ctx)
    assert np.array_equal(got > 0, want > 0)
    assert np.abs(got - want).max() < 1e-6


# -- seeded generation, token for token ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def m(tiny_dir):
    return tinygpt.load(tiny_dir, backend="numpy")


@pytest.mark.parametrize("opts", [
    dict(temperature=1.2, min_p=0.05), dict(temperature=1.5, typical_p=0.7),
    dict(temperature=0.9, presence_penalty=1.5, frequency_penalty=0.8),
    dict(temperature=1.0, repeat_penalty=1.8, repeat_last_n=4),
    dict(temperature=1.3, logit_bias={13: 4.0, 11: -math.inf, 290: 2.5}),
    dict(temperature=0.8, top_k=300, top_p=0.97, min_p=0.01, typical_p=0.95, repetition_penalty=1.2,
         repeat_last_n=16, presence_penalty=0.5, frequency_penalty=0.5, logit_bias={262: 1.0}),
])
def test_seeded_generation_equals_reference_loop(m, opts):
    prompt = m.tokenizer.encode("The quick brown fox jumps over the lazy dog, and then")
    r = m.generate_result(prompt, max_new_tokens=24, seed=1234, ignore_eos=True, **opts)
    rng, ctx, want = np.random.default_rng(1234), list(prompt), []
    o = dict(opts)
    if "repetition_penalty" in o:
        o["repeat_penalty"] = o.pop("repetition_penalty")
    for i in range(24):
        p = ref_distribution(m.logits(ctx)[-1], o, ctx, i)  # a full forward each step, no cache
        tok = int(rng.choice(p.size, p=p))
        ctx.append(tok)
        want.append(tok)
    assert r.tokens == want
    assert len(set(want)) > 5  # it sampled, not a constant


def test_greedy_with_bias_is_argmax_of_biased_logits(m):
    """A logit_bias or a penalty under temperature 0 must not take forward_argmax's shortcut."""
    prompt = m.tokenizer.encode("Hello world")
    first = m.generate_result(prompt, max_new_tokens=1, temperature=0).tokens[0]
    r = m.generate_result(prompt, max_new_tokens=1, temperature=0, logit_bias={first: -math.inf})
    x = m.logits(prompt)[-1].astype(np.float64)
    x[first] = -np.inf
    assert r.tokens == [int(np.argmax(x))] and r.tokens[0] != first
    r = m.generate_result(prompt, max_new_tokens=8, do_sample=False, presence_penalty=2.0, ignore_eos=True)
    ctx = list(prompt)
    for i in range(8):
        x = m.logits(ctx)[-1].astype(np.float64)
        for t, c in Counter(ctx[len(prompt):]).items():
            x[t] -= 2.0
        ctx.append(int(np.argmax(x)))
    assert r.tokens == ctx[len(prompt):]


# -- NaN logits, extreme temperatures and penalties ------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_dir(tmp_path_factory):
    from tiny_model import TINY, hf_tensors, write_hf_dir
    from tinygpt.safetensors_io import write_safetensors
    d = write_hf_dir(tmp_path_factory.mktemp("nan") / "hf", seed=0)
    t = hf_tensors(TINY, 0)
    t["h.0.ln_1.weight"][3] = np.nan
    write_safetensors(Path(d) / "model.safetensors", {k: ("F32", v) for k, v in t.items()}, {"format": "pt"})
    return d


def test_nan_weight(nan_dir, backend):
    m = tinygpt.load(nan_dir, backend=backend)
    with pytest.raises(tinygpt.WeightsError, match="NaN logits"):
        m.generate("Hello", max_new_tokens=3, temperature=0.8, seed=1)
    # greedy is np.argmax's answer (the first NaN), with or without the logit-changing steps
    assert m.generate_result("Hello", max_new_tokens=3, temperature=0).tokens == [0, 0, 0]
    assert m.generate_result("Hello", max_new_tokens=3, temperature=0, repetition_penalty=1.3).tokens == [0, 0, 0]


def test_nan_logits_select():
    x = np.array([1.0, np.nan, 3.0])
    with pytest.raises(tinygpt.WeightsError):
        select(x, SamplingOptions(), np.random.default_rng(0), [])
    assert select(x, SamplingOptions(temperature=0), np.random.default_rng(0), []) == 1


@pytest.mark.parametrize("t", [5e-324, 1e-310, 1e-300])
def test_tiny_temperature_is_the_greedy_limit(t, m):
    x = np.array([1.0, 3.0, 2.0, 3.0 - 1e-9])
    got = {select(x, SamplingOptions(temperature=t), np.random.default_rng(s), []) for s in range(50)}
    assert got == {1}
    x = np.array([1.0, 3.0, 2.0, 3.0])  # a tie at the top: the limit shares the mass
    got = {select(x, SamplingOptions(temperature=t), np.random.default_rng(s), []) for s in range(50)}
    assert got == {1, 3}
    greedy = m.generate_result("Hello", max_new_tokens=10, temperature=0, ignore_eos=True).tokens
    assert m.generate_result("Hello", max_new_tokens=10, temperature=t, ignore_eos=True, seed=3).tokens == greedy


def test_huge_temperature_is_uniform():
    p = distribution(np.array([1.0, -5.0, 40.0]), SamplingOptions(temperature=1e308))
    assert np.allclose(p, 1 / 3)


@pytest.mark.parametrize("pen", [1e-308, 1e308, 5e-324])
def test_extreme_repeat_penalty_is_defined(pen):
    x = np.array([3.0, -2.0, 1.0, 0.5], np.float32)
    o = SamplingOptions(repeat_penalty=pen, temperature=0.5)
    p = distribution(x, o, [0, 1, 2])
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-12
    assert select(x, o, np.random.default_rng(0), [0, 1, 2]) in range(4)
    assert select(x, SamplingOptions(repeat_penalty=pen, temperature=0), None, [0, 1, 2]) in range(4)


def test_everything_banned():
    o = options_from_kwargs(3, logit_bias={0: -math.inf, 1: -math.inf, 2: -math.inf})
    for opts in (o, SamplingOptions(**{**o.__dict__, "temperature": 0.0})):
        with pytest.raises(tinygpt.InvalidArgumentError, match="logit_bias"):
            select(np.zeros(3), opts, np.random.default_rng(0), [])


# -- the names users bring -------------------------------------------------------------------------------------
def test_aliases():
    assert options_from_kwargs(max_tokens=5).max_new_tokens == 5
    assert options_from_kwargs(max_tokens=None).max_new_tokens == -1
    assert options_from_kwargs(repetition_penalty=1.2).repeat_penalty == 1.2
    assert options_from_kwargs(do_sample=False).temperature == 0
    assert options_from_kwargs(do_sample=False, temperature=0).temperature == 0
    assert options_from_kwargs(do_sample=True).temperature == 1.0
    assert options_from_kwargs(do_sample=True, temperature=0.5).temperature == 0.5
    assert options_from_kwargs(top_k=-1).top_k == 0
    assert options_from_kwargs(seed=-1).seed is None
    assert options_from_kwargs(temperature=None, top_p=None) == SamplingOptions()
    assert options_from_kwargs(logit_bias={"50256": -100}).logit_bias == ((50256, -100.0),)
    assert options_from_kwargs(allowed_special="<|endoftext|>").allowed_special == ("<|endoftext|>",)
    assert options_from_kwargs(stop="\n").stop == ("\n",)


@pytest.mark.parametrize("kw,msg", [
    (dict(max_tokens=5, max_new_tokens=5), "max_tokens and max_new_tokens are the same option"),
    (dict(repetition_penalty=1.1, repeat_penalty=1.1), "the same option"),
    (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
    (dict(max_tokens=-5), "max_tokens must be an integer"),
    (dict(do_sample=False, temperature=0.7), "do_sample=False"),
    (dict(do_sample=True, temperature=0), "do_sample=True"),
    (dict(do_sample="no"), "do_sample must be True or False"),
    (dict(max_length=50), "use max_new_tokens"),
    (dict(num_return_sequences=2), "use n"),
    (dict(temprature=0.5), "did you mean temperature"),
    (dict(top_k=-1.0), "top_k"), (dict(top_k=-2), "top_k"), (dict(seed=True), "seed"),
    (dict(min_p=1.5), "min_p"), (dict(typical_p=0), "typical_p"), (dict(presence_penalty=3), "presence_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"), (dict(repeat_last_n=-2), "repeat_last_n"),
    (dict(logit_bias={50257: 1}), "0..50256"), (dict(logit_bias={1: math.inf}), "force a token"),
    (dict(logit_bias={1: float("nan")}), "logit_bias"), (dict(logit_bias=[1, 2]), "mapping"),
    (dict(logit_bias={"1": 1, 1: 2}), "given twice"), (dict(allowed_special={"<|im_start|>"}), "allowed_special"),
    (dict(allowed_special=5), "allowed_special"), (dict(ignore_eos="yes"), "ignore_eos"),
])
def test_bad_options_name_the_users_argument(kw, msg):
    with pytest.raises(tinygpt.InvalidArgumentError, match=msg) as e:
        options_from_kwargs(50257, **kw)
    assert "SamplingOptions" not in str(e.value) and "__init__" not in str(e.value)


def test_api_aliases_and_special_tokens(m):
    n_ctx = m.config.n_ctx
    assert m.generate_result("Hi", max_tokens=4, temperature=0, ignore_eos=True).tokens == \
        m.generate_result("Hi", max_new_tokens=4, temperature=0, ignore_eos=True).tokens
    with pytest.raises(tinygpt.InvalidArgumentError, match="max_tokens and max_new_tokens"):
        m.generate("Hi", max_tokens=4, max_new_tokens=4)
    with pytest.raises(tinygpt.InvalidArgumentError, match="unknown option 'bogus'"):
        m.stream("Hi", bogus=1)
    r = m.generate_result("Hi", max_new_tokens=-1, temperature=0, ignore_eos=True)
    assert len(r.tokens) == n_ctx - 1 and r.finish_reason == "length"
    r = m.generate_result("Hi", max_tokens=None, temperature=0, ignore_eos=True, context_overflow="slide")
    assert len(r.tokens) == n_ctx
    text = "<|endoftext|>Hello"
    eot = m.tokenizer.eot_id
    plain = m.generate_result(text, max_new_tokens=3, temperature=0)
    special = m.generate_result(text, max_new_tokens=3, temperature=0, allowed_special="all")
    assert plain.timings.prompt_tokens == 8 and special.timings.prompt_tokens == 2
    assert special.tokens == m.generate_result([eot, *m.tokenizer.encode("Hello")], max_new_tokens=3,
                                               temperature=0).tokens
    s = m.stream(text, max_new_tokens=3, temperature=0, allowed_special={"<|endoftext|>"})
    list(s)
    assert s.result.tokens == special.tokens
