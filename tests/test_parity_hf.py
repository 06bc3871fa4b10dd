"""Live parity with Hugging Face transformers on torch CPU: a checkpoint saved by
GPT2LMHeadModel.save_pretrained loads directly and after `tinygpt convert`; logits within 1e-4 (fp32) and 64
greedy tokens identical, for every backend; the CLI prints the same text. Also reads pytorch_model.bin
without torch's unpickler. CI installs torch + transformers and fails (not skips) if they are missing."""
import subprocess
import sys

import numpy as np
import pytest

import tinygpt
from conftest import CI, MODEL_TOL
from tiny_model import gpt2_init_124m, log_softmax64, save_hf_model

pytestmark = pytest.mark.parity


def _need(mod):
    if CI:
        return __import__(mod)
    return pytest.importorskip(mod, reason=f"{mod} not installed (CI installs it; see README)")


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    torch = _need("torch")
    transformers = _need("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=160, vocab_size=50257)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # widen margins so greedy tokens depend on the context (see tests/tiny_model.py)
        for name, p in model.named_parameters():
            if name.endswith("weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc", "wpe")):
                p.mul_(6.0)
        model.transformer.ln_f.weight.mul_(20.0)
    d = save_hf_model(model, tmp_path_factory.mktemp("hf") / "saved")
    return d, model, torch


def _hf(model, torch, ids, n):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        gen = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=50256,
                             eos_token_id=None)[0, len(ids):].tolist()
    return logits, gen


def test_live_parity(hf_saved, backend, tmp_path):
    d, model, torch = hf_saved
    conv = tmp_path / "conv"
    tinygpt.weights.save_tinygpt(tinygpt.weights.load_checkpoint(d), conv)
    for path in (d, conv):
        m = tinygpt.load(path, backend=backend)
        ids = m.tokenizer.encode("The meaning of life is a question that philosophers have asked for centuries")
        ref_logits, ref_tokens = _hf(model, torch, ids, 64)
        assert np.abs(m.logits(ids) - ref_logits).max() <= MODEL_TOL["float32"]
        toks = m.generate_result(ids, max_new_tokens=64, temperature=0, ignore_eos=True).tokens
        assert toks == ref_tokens
        assert len(set(toks)) > 10


def test_cli_prints_transformers_text(hf_saved):
    d, model, torch = hf_saved
    tok = tinygpt.Tokenizer.from_dir(d)
    prompt = "Alan Turing theorized that"
    ids = tok.encode(prompt)
    _, ref_tokens = _hf(model, torch, ids, 32)
    r = subprocess.run([sys.executable, "-m", "tinygpt", "generate", prompt, "-m", str(d), "-n", "32",
                        "--temperature", "0", "--ignore-eos"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == tok.decode(ref_tokens) + "\n"


def test_pytorch_bin_without_torch_unpickler(hf_saved, tmp_path):
    d, model, torch = hf_saved
    import shutil
    out = tmp_path / "bin"
    out.mkdir()
    for f in ("config.json", "vocab.json", "merges.txt"):
        shutil.copyfile(d / f, out / f)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    ids = [464, 3616, 286, 1204, 318]
    ref = tinygpt.load(d, backend="numpy").logits(ids)
    np.testing.assert_array_equal(tinygpt.load(out, backend="numpy").logits(ids), ref)


def test_malicious_pickle_refused(tmp_path, hf_saved):
    d, _, torch = hf_saved
    import shutil

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    out = tmp_path / "evil"
    out.mkdir()
    shutil.copyfile(d / "config.json", out / "config.json")
    torch.save({"x": Evil()}, out / "pytorch_model.bin")
    with pytest.raises(tinygpt.WeightsError, match="refusing"):
        tinygpt.weights.load_checkpoint(out)


@pytest.fixture(scope="module")
def hf_124m(tmp_path_factory):
    """tiny_model.gpt2_init_124m saved with its vocabulary, 1024 random ids and transformers' fp32 logits. The
    bench checkpoints' large random weights are ill-conditioned at this size: no float32 implementation is within
    1e-4 of float64 there (bench/precision_fp64.py)."""
    torch = _need("torch")
    transformers = _need("transformers")
    model = gpt2_init_124m(torch, transformers)
    d = save_hf_model(model, tmp_path_factory.mktemp("hf124m") / "saved")
    ids = np.random.default_rng(0).integers(0, 50000, 1024)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    return d, ids, ref


def test_logprobs_at_124m_shape(hf_124m, backend):
    """Issue 11: logprobs within 1e-4 of log_softmax(transformers' fp32 logits) at the 124M shape, at every one
    of 1024 positions and over the whole vocabulary, and Model.score's per-token logprobs the same."""
    if backend == "cuda":
        pytest.skip("cuda: unverified here (no GPU); its tolerance is MODEL_TOL per logit")
    d, ids, ref = hf_124m
    m = tinygpt.load(d, backend=backend)
    want = log_softmax64(ref)
    assert np.exp(want.max(axis=1)).mean() > 0.2  # peaked distributions, not near-uniform ones
    assert np.abs(log_softmax64(m.logits(ids)) - want).max() <= 1e-4
    s = m.score(ids.tolist(), prefix_eot=False)  # the first token is context only
    np.testing.assert_allclose(s.logprobs[1:], want[np.arange(1023), ids[1:]], rtol=0, atol=1e-4)
