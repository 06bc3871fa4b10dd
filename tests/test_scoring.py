"""Scoring (python/tinygpt/scoring.py): the window rule pinned on a hand-checked toy; logprobs against
transformers' log_softmax (parity-marked); ranks and top-n against a float64 NumPy oracle; text offsets that
reconstruct the input; perplexity against an independent per-token float64 implementation of the windowing; KL
against a base; bad input (typed errors, CLI exit 1); at most one window of logits alive."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import tinygpt
from tinygpt.scoring import plan_windows, token_logprob
from tiny_model import log_softmax64

EOT = 50256
TEXT = ("In 1905 Einstein published four papers. Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂🚀👩‍👩‍👧, "
        "Ελληνικά, русский, עברית. ") * 3


def load(tiny_dir, backend="cpu", dtype=None, _cache={}):
    key = (str(tiny_dir), backend, dtype)
    if key not in _cache:
        if backend not in tinygpt.available_backends():
            pytest.skip(f"backend {backend} not available")
        _cache[key] = tinygpt.load(tiny_dir, backend=backend, dtype=dtype)
    return _cache[key]


@pytest.fixture
def model(tiny_dir, backend):
    return load(tiny_dir, backend)


# -- oracles ----------------------------------------------------------------------------------------
def window_of(t, n_seq, C, S):
    """Independent statement of the rule, per target position t (1-based in seq): the window whose end is the
    first of C, C+S, C+2S, ... (capped at n_seq-1) that reaches t; it starts C tokens before its end."""
    k = 0 if t <= C else math.ceil((t - C) / S)
    e = min(C + k * S, n_seq - 1)
    return max(0, e - C), e


def oracle_nll(logits_fn, seq, C, S):
    cache, out = {}, []
    for t in range(1, len(seq)):
        b, e = window_of(t, len(seq), C, S)
        if (b, e) not in cache:
            cache.clear()
            cache[(b, e)] = logits_fn(seq[b:e])
        out.append(-log_softmax64(cache[(b, e)][t - 1 - b])[seq[t]])
    return np.array(out)


# -- the window rule -----------------------------------------------------------------------------------
def test_toy_windows_hand_checked():
    # 20 tokens, context 10, stride 5, no prefix: targets are positions 1..19 (19 scored)
    assert plan_windows(20, 10, 5) == [(0, 10, 0), (5, 15, 10), (9, 19, 15)]
    # same with <|endoftext|> in front (21 positions, 20 targets)
    assert plan_windows(21, 10, 5) == [(0, 10, 0), (5, 15, 10), (10, 20, 15)]
    # stride = context: no target overlap, the first target of a window keeps one token of context
    assert plan_windows(21, 10, 10) == [(0, 10, 0), (10, 20, 10)]
    assert plan_windows(22, 10, 10) == [(0, 10, 0), (10, 20, 10), (11, 21, 20)]
    assert plan_windows(5, 10, 5) == [(0, 4, 0)]
    assert plan_windows(1, 10, 5) == []


@pytest.mark.parametrize("prefix_eot", [False, True])
def test_toy_each_target_scored_once_with_its_context(tiny_dir, prefix_eot):
    m = load(tiny_dir)
    ids = list(range(1000, 1020))
    calls = []
    real = m.logits

    def recording(x, start=0):
        calls.append(list(x))
        starts.append(start)
        return real(x, start)
    starts = []
    m.logits = recording
    try:
        s = m.score(ids, context=10, stride=5, prefix_eot=prefix_eot)
    finally:
        del m.logits
    seq = ([EOT] if prefix_eot else []) + ids
    # hand-checked: (window begin, end in seq positions, the targets it scores as indices into ids)
    if prefix_eot:
        want = [(0, 10, range(0, 10)), (5, 15, range(10, 15)), (10, 20, range(15, 20))]
        assert [c[0] for c in calls] == [EOT, 1004, 1009]
    else:
        want = [(0, 10, range(1, 11)), (5, 15, range(11, 16)), (9, 19, range(16, 20))]
        assert [c[0] for c in calls] == [1000, 1005, 1009]
    assert calls == [seq[b:e] for b, e, _ in want]
    # only the rows that predict a window's targets get logits: the first row is that of its first target
    assert starts == [r[0] + prefix_eot - 1 - b for b, _, r in want]
    assert starts == ([0, 5, 5] if prefix_eot else [0, 5, 6])
    scored = [i for _, _, r in want for i in r]
    assert scored == sorted(set(scored))  # each once
    assert len(scored) == (20 if prefix_eot else 19)
    assert np.isnan(s.logprobs[0]) != prefix_eot and (s.ranks > 0).sum() == len(scored)
    for b, e, targets in want:  # the value is that window's row: context of ids[i] is seq[b:p], p its position
        lp = log_softmax64(real(seq[b:e]))
        for i in targets:
            p = i + 1 if prefix_eot else i
            assert abs(s.logprobs[i] - lp[p - 1 - b, ids[i]]) <= 1e-12


# -- score: exactness ---------------------------------------------------------------------------------
def test_score_ranks_topn_equal_float64_oracle(model):
    V = model.config.n_vocab
    text = TEXT[:120]
    s = model.score(text, top_n=7)
    ids = model.tokenizer.encode(text)
    assert s.ids.tolist() == ids and len(ids) < model.config.n_ctx
    lp = log_softmax64(model.logits([EOT] + ids[:-1]))
    for i, y in enumerate(ids):
        row = lp[i]
        assert abs(s.logprobs[i] - row[y]) <= 1e-12
        assert s.ranks[i] == 1 + np.count_nonzero(row > row[y])
        order = np.lexsort((np.arange(V), -row))[:7]
        assert s.top_ids[i].tolist() == order.tolist()
        np.testing.assert_allclose(s.top_logprobs[i], row[order], rtol=0, atol=1e-12)
        assert s[i].top[0][0] == order[0] and s[i].rank == s.ranks[i]
    assert np.all(s.ranks >= 1) and np.all(s.ranks <= V)
    assert s.sum_logprob == pytest.approx(float(np.sum(s.logprobs)), rel=1e-12)


def test_score_without_prefix_leaves_first_unscored(tiny_dir):
    m = load(tiny_dir)
    s = m.score("Hello world, again", prefix_eot=False, top_n=2)
    assert np.isnan(s.logprobs[0]) and s.ranks[0] == 0 and s[0].logprob is None and s[0].top == []
    assert s.top_ids[0].tolist() == [-1, -1]
    lp = log_softmax64(m.logits(s.ids.tolist()))
    np.testing.assert_allclose(s.logprobs[1:], lp[np.arange(len(s) - 1), s.ids[1:]], rtol=0, atol=1e-12)
    assert s.to_openai()["token_logprobs"][0] is None


def test_long_text_scored_in_windows_equals_oracle(tiny_dir):
    m = load(tiny_dir)
    ids = m.tokenizer.encode(TEXT * 2)
    assert len(ids) > 2 * m.config.n_ctx
    s = m.score(ids, context=64, stride=24)
    want = -oracle_nll(m.logits, [EOT] + ids, 64, 24)
    np.testing.assert_allclose(s.logprobs, want, rtol=0, atol=1e-12)


def test_topn_ties_and_full_vocab():
    rng = np.random.default_rng(0)
    row = rng.integers(-3, 3, 1000).astype(np.float32)  # many exact ties
    lp = log_softmax64(row)
    for n in (0, 1, 5, 37, 1000):
        r = token_logprob(row, 17, n)
        want = np.lexsort((np.arange(1000), -lp))[:n]
        assert r.top_ids.tolist() == want.tolist()
        np.testing.assert_allclose(r.top_logprobs, lp[want], rtol=0, atol=1e-12)
        assert r.rank == 1 + np.count_nonzero(lp > lp[17]) and abs(r.logprob - lp[17]) <= 1e-12
    big = rng.standard_normal(50257).astype(np.float32) * 5
    r = token_logprob(big, 3, 10)
    lp = log_softmax64(big)
    assert r.top_ids.tolist() == np.argsort(-lp, kind="stable")[:10].tolist()
    assert abs(r.logprob - lp[3]) <= 1e-12 and r.rank == 1 + np.count_nonzero(lp > lp[3])


def test_token_logprob_bad_input():
    row = np.zeros(10, np.float32)
    for kw in (dict(token=10), dict(token=-1), dict(token=1, top_n=11), dict(token=1, top_n=-1),
               dict(token=True), dict(token=1, top_n=2.0)):
        with pytest.raises(tinygpt.InvalidArgumentError):
            token_logprob(row, **kw)
    with pytest.raises(tinygpt.InvalidArgumentError):
        token_logprob(np.zeros((2, 3)), 0)


# -- offsets ------------------------------------------------------------------------------------------
def char_offsets_oracle(text, token_bytes):
    """Offset of a token = number of characters whose last byte lies before the token's first byte."""
    ends, pos = [], 0
    for ch in text:
        pos += len(ch.encode("utf-8"))
        ends.append(pos)
    out, b = [], 0
    for tb in token_bytes:
        out.append(sum(1 for e in ends if e <= b))
        b += len(tb)
    return out


@pytest.mark.parametrize("text", [TEXT, "🙂", "a\u0301e\u0301", "日本語", "   spaces\n\n\ttabs", "x" * 5,
                                  "<|endoftext|> literal", "\ud800 lone surrogate"])
def test_offsets_reconstruct_input(tiny_dir, text):
    m = load(tiny_dir)
    s = m.score(text)
    clean = text.replace("\ud800", "\ufffd")
    assert "".join(s.pieces) == s.text == clean
    assert b"".join(s.token_bytes) == clean.encode("utf-8")
    for off, piece in zip(s.text_offset, s.pieces):
        assert text[off:off + len(piece)] == piece or "\ud800" in text
        assert clean[off:off + len(piece)] == piece
    if "\ud800" not in text:
        assert s.text_offset.tolist() == char_offsets_oracle(text, s.token_bytes)


def test_offsets_split_character(tiny_dir):
    m = load(tiny_dir)
    s = m.score("日本")
    # 日 = e6 97 a5 is split across tokens: the token that ends mid-character has piece "" and the offset of the
    # character it starts; the token that completes it holds the character
    assert len(s) > 2
    assert any(p == "" for p in s.pieces)
    for i, p in enumerate(s.pieces):
        if p == "":
            assert s.text_offset[i] == s.text_offset[i + 1]
    assert "".join(s.pieces) == "日本"


def test_ids_input_with_invalid_utf8(tiny_dir):
    m = load(tiny_dir)
    ids = m.tokenizer.encode("日本")[:1]  # a lone partial character
    s = m.score(ids)
    assert s.pieces == ["\ufffd"] and s.text == "\ufffd" and s.text_offset.tolist() == [0]


# -- perplexity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("context,stride", [(64, 64), (64, 16), (128, 40), (7, 3), (1, 1)])
@pytest.mark.parametrize("prefix_eot", [True, False])
def test_perplexity_equals_independent_float64(tiny_dir, context, stride, prefix_eot):
    m = load(tiny_dir)
    ids = m.tokenizer.encode(TEXT)[:300 if context > 16 else 40]
    r = m.perplexity(ids, context=context, stride=stride, prefix_eot=prefix_eot)
    seq = ([EOT] if prefix_eot else []) + ids
    nll = oracle_nll(m.logits, seq, context, stride)
    assert r.n_tokens == len(nll) == len(ids) - (0 if prefix_eot else 1)
    assert abs(r.nll_sum - nll.sum()) <= 1e-6 * abs(nll.sum())
    assert r.perplexity == pytest.approx(math.exp(nll.mean()), rel=1e-6)
    assert r.nll_stderr == pytest.approx(nll.std(ddof=1) / math.sqrt(len(nll)), rel=1e-6)
    n_bytes = len(m.tokenizer.decode_bytes(seq[1:]))
    assert r.n_bytes == n_bytes
    assert r.bits_per_byte == pytest.approx(nll.sum() / math.log(2) / n_bytes, rel=1e-6)
    assert r.forward_tokens == sum(e - b for b, e, _ in plan_windows(len(seq), context, stride))
    assert r.elapsed_s > 0 and r.tokens_per_s > 0


def test_perplexity_matches_score(tiny_dir):
    m = load(tiny_dir)
    s = m.score(TEXT, context=50, stride=20)
    r = m.perplexity(TEXT, context=50, stride=20)
    assert r.nll_sum == pytest.approx(-s.sum_logprob, rel=1e-12)
    assert r.n_bytes == len(TEXT.encode())


def test_results_add_exactly(tiny_dir):
    m = load(tiny_dir)
    a = m.perplexity(TEXT[:200], context=32, stride=8)
    b = m.perplexity(TEXT[200:], context=32, stride=8)
    t = a + b
    assert t.nll_sum == a.nll_sum + b.nll_sum and t.n_tokens == a.n_tokens + b.n_tokens
    assert t.n_bytes == a.n_bytes + b.n_bytes and t.nll_sq_sum == a.nll_sq_sum + b.nll_sq_sum
    assert sum([a, b]) == t
    assert t.perplexity == math.exp((a.nll_sum + b.nll_sum) / (a.n_tokens + b.n_tokens))
    c = m.perplexity(TEXT[:50], context=32, kl_base=m)
    with pytest.raises(tinygpt.InvalidArgumentError, match="KL"):
        a + c


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_shards_add_up_to_whole(tiny_dir, n_shards):
    m = load(tiny_dir)
    whole = m.perplexity(TEXT, context=32, stride=12)
    parts = [m.perplexity(TEXT, context=32, stride=12, shard=(i, n_shards)) for i in range(n_shards)]
    total = sum(parts)
    assert total.n_tokens == whole.n_tokens and total.n_bytes == whole.n_bytes == len(TEXT.encode())
    assert total.forward_tokens == whole.forward_tokens
    assert total.nll_sum == pytest.approx(whole.nll_sum, rel=1e-14)
    assert total.nll_sq_sum == pytest.approx(whole.nll_sq_sum, rel=1e-14)
    assert all(p.n_tokens > 0 for p in parts)
    for bad in ((2, 2), (-1, 2), (0, 0), (0,), "0/2", (True, 2)):
        with pytest.raises(tinygpt.InvalidArgumentError):
            m.perplexity(TEXT, context=32, shard=bad)


def test_kl_base(tiny_dir):
    m = load(tiny_dir)
    same = m.perplexity(TEXT, context=40, stride=16, kl_base=m)
    assert abs(same.kl_mean) < 1e-12 and same.top1_agreement == 1.0 and same.delta_perplexity == 0.0
    base = load(tiny_dir, dtype="bfloat16")
    r = m.perplexity(TEXT, context=40, stride=16, kl_base=base)
    seq = [EOT] + m.tokenizer.encode(TEXT)
    kl, agree, bnll = [], 0, []
    for b, e, start in plan_windows(len(seq), 40, 16):
        lp = log_softmax64(m.logits(seq[b:e]))[start - b:]
        blp = log_softmax64(base.logits(seq[b:e]))[start - b:]
        kl.extend((np.exp(blp) * (blp - lp)).sum(1))
        agree += int((lp.argmax(1) == blp.argmax(1)).sum())
        bnll.extend(-blp[np.arange(len(blp)), seq[start + 1:e + 1]])
    assert r.kl_mean == pytest.approx(np.mean(kl), rel=1e-6) and r.kl_mean > 0
    assert r.top1_agree == agree
    assert r.base_perplexity == pytest.approx(math.exp(np.mean(bnll)), rel=1e-9)
    assert r.delta_perplexity == pytest.approx(r.perplexity - math.exp(np.mean(bnll)), rel=1e-6, abs=1e-9)


def test_at_most_one_window_of_logits_alive(tiny_dir, monkeypatch):
    import tracemalloc
    from tinygpt import scoring
    monkeypatch.setattr(scoring, "ROW_CHUNK", 8)  # small float64 temporaries, so a second window would show
    m = load(tiny_dir)
    ids = m.tokenizer.encode(TEXT * 3)[:600]
    V, C = m.config.n_vocab, 128
    m.perplexity(ids[:200], context=C, stride=C)  # warm up lazily built state outside the measurement
    m._logits_buf = None  # the logits array kept for reuse: the first window allocates again, measured
    window = C * V * 4
    chunk_temps = 3 * 8 * V * 8 + (2 << 20)  # float64 chunk, its exp, the comparison; small objects
    tracemalloc.start()
    try:
        m.perplexity(ids, context=C, stride=C)
        m.score(ids, context=C, stride=C)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak > window  # the measurement sees the logits at all
    assert peak < window + chunk_temps, f"peak {peak / 2**20:.0f} MiB"


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,exc", [
    (lambda m: m.score(""), tinygpt.InvalidArgumentError),
    (lambda m: m.score([]), tinygpt.InvalidArgumentError),
    (lambda m: m.perplexity(""), tinygpt.InvalidArgumentError),
    (lambda m: m.perplexity([5], prefix_eot=False), tinygpt.InvalidArgumentError),
    (lambda m: m.perplexity("abc", stride=0), tinygpt.InvalidArgumentError),
    (lambda m: m.perplexity("abc", stride=-3), tinygpt.InvalidArgumentError),
    (lambda m: m.perplexity("abc", context=16, stride=17), tinygpt.InvalidArgumentError),
    (lambda m: m.perplexity("abc", stride=1.5), tinygpt.InvalidArgumentError),
    (lambda m: m.perplexity("abc", context=129), tinygpt.ContextOverflowError),
    (lambda m: m.perplexity("abc", context=0), tinygpt.InvalidArgumentError),
    (lambda m: m.score("abc", context=10**9), tinygpt.ContextOverflowError),
    (lambda m: m.score("abc", top_n=-1), tinygpt.InvalidArgumentError),
    (lambda m: m.score("abc", top_n=50258), tinygpt.InvalidArgumentError),
    (lambda m: m.score("abc", top_n=True), tinygpt.InvalidArgumentError),
    (lambda m: m.score([1, 50257]), tinygpt.InvalidArgumentError),
    (lambda m: m.score([[1, 2]]), tinygpt.InvalidArgumentError),
    (lambda m: m.score([1.5]), tinygpt.InvalidArgumentError),
    (lambda m: m.score(b"bytes"), tinygpt.InvalidArgumentError),
])
def test_bad_input_typed_error(tiny_dir, call, exc):
    with pytest.raises(exc):
        call(load(tiny_dir))


def test_top_n_full_vocab_allowed(tiny_dir):
    m = load(tiny_dir)
    s = m.score([464, 3290], top_n=m.config.n_vocab)
    assert sorted(s.top_ids[1].tolist()) == list(range(m.config.n_vocab))


# -- CLI ---------------------------------------------------------------------------------------------------
def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tinygpt", "perplexity", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_perplexity_json_and_sum(tiny_dir, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT, encoding="utf-8")
    b.write_text(TEXT[::-1], encoding="utf-8")
    r = cli("-m", str(tiny_dir), "--backend", "cpu", "-f", str(a), str(b), "--context", "48", "--stride", "16",
            "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    m = load(tiny_dir)
    ra, rb = (m.perplexity(p.read_text(encoding="utf-8"), context=48, stride=16) for p in (a, b))
    assert [f["nll_sum"] for f in out["files"]] == [ra.nll_sum, rb.nll_sum]
    assert out["total"]["nll_sum"] == (ra + rb).nll_sum and out["total"]["n_tokens"] == ra.n_tokens + rb.n_tokens
    assert out["total"]["perplexity"] == (ra + rb).perplexity
    assert out["context"] == 48 and out["stride"] == 16
    halves = [json.loads(cli("-m", str(tiny_dir), "--backend", "cpu", "-f", str(a), "--context", "48", "--stride",
                             "16", "--json", "--shard", f"{i}/2").stdout)["total"] for i in range(2)]
    assert halves[0]["n_tokens"] + halves[1]["n_tokens"] == ra.n_tokens
    assert halves[0]["nll_sum"] + halves[1]["nll_sum"] == pytest.approx(ra.nll_sum, rel=1e-14)
    r = cli("-m", str(tiny_dir), "--backend", "cpu", "-f", str(a), "--kl-base", "bfloat16", "--context", "48")
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout and "mean KL" in r.stdout and "top-1 agreement" in r.stdout
    assert "Traceback" not in r.stderr and "\r" not in r.stderr  # no progress bar when stderr is not a terminal


@pytest.mark.parametrize("content,args,msg", [
    (b"", [], "empty"),
    (b"\xff\xfe bad", [], "not UTF-8"),
    (b"hello", ["--stride", "0"], "stride"),
    (b"hello", ["--stride", "-1"], "stride"),
    (b"hello", ["--context", "16", "--stride", "17"], "stride"),
    (b"hello", ["--context", "129"], "context"),
    (b"hello", ["--kl-base", "/nonexistent/model"], ""),
    (b"hello", ["--shard", "2/2"], "shard"),
    (b"hello", ["--shard", "x"], "shard"),
])
def test_cli_bad_input_exit_1(tiny_dir, tmp_path, content, args, msg):
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    r = cli("-m", str(tiny_dir), "--backend", "cpu", "-f", str(f), *args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygpt: error:") and msg in lines[0], r.stderr
    assert r.stdout == ""


def test_cli_missing_file(tiny_dir, tmp_path):
    r = cli("-m", str(tiny_dir), "-f", str(tmp_path / "nope.txt"))
    assert r.returncode == 1 and r.stderr.startswith("tinygpt: error: cannot read") and "Traceback" not in r.stderr


# -- parity with transformers ---------------------------------------------------------------------------------
@pytest.mark.parity
def test_logprobs_equal_transformers_log_softmax(tiny_dir, backend):
    torch = pytest.importorskip("torch", reason="torch not installed (CI installs it; see README)")
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    from conftest import MODEL_TOL
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tiny_dir)).eval()
    m = load(tiny_dir, backend)

    def hf_logits(x):
        with torch.no_grad():
            return hf(torch.tensor([x])).logits[0].numpy()
    ids = m.tokenizer.encode(TEXT)  # 226 tokens, longer than n_ctx (128): windows
    assert len(ids) > m.config.n_ctx
    for context, stride, prefix in ((128, 128, True), (128, 40, True), (100, 33, False)):
        s = m.score(ids, top_n=3, context=context, stride=stride, prefix_eot=prefix)
        seq = ([EOT] if prefix else []) + ids
        want = -oracle_nll(hf_logits, seq, context, stride)
        got = s.logprobs[0 if prefix else 1:]
        assert np.abs(got - want).max() <= MODEL_TOL["float32"]
        r = m.perplexity(ids, context=context, stride=stride, prefix_eot=prefix)
        assert abs(r.nll_sum + want.sum()) <= 1e-5 * abs(want.sum())
