"""Weight loading and conversion: every HF layout quirk, tinygpt's own format, and a clear typed error for
each kind of bad file."""
import json
import shutil
import struct

import numpy as np
import pytest

import tinygpt
from tiny_model import TINY, hf_tensors, write_hf_dir
from tinygpt.errors import FormatVersionError, WeightsError
from tinygpt.safetensors_io import SafetensorsFile, write_safetensors
from tinygpt.weights import load_checkpoint, save_tinygpt


def logits_of(path, **kw):
    m = tinygpt.load(path, backend="numpy", **kw)
    return m.logits([15496, 995, 11, 318, 257])


@pytest.fixture(scope="module")
def base_logits(tiny_dir):
    return logits_of(tiny_dir)


@pytest.mark.parametrize("variant", [dict(prefix="transformer."), dict(buffers=True), dict(shards=3),
                                     dict(prefix="transformer.", buffers=True, shards=2)],
                         ids=["prefix", "buffers", "shards", "all"])
def test_hf_layout_variants(tmp_path, base_logits, variant):
    d = write_hf_dir(tmp_path / "m", seed=0, **variant)
    np.testing.assert_array_equal(logits_of(d), base_logits)


def test_f16_source(tmp_path, base_logits):
    d = write_hf_dir(tmp_path / "m", seed=0, dtype="F16")
    assert np.abs(logits_of(d) - base_logits).max() < 0.02  # measured 0.008 (max |logit| ~10)


def test_conv1d_is_transposed(tiny_dir):
    ck = load_checkpoint(tiny_dir)
    raw = hf_tensors(TINY, 0)
    np.testing.assert_array_equal(ck.tensors["h.0.mlp.c_fc.weight"], raw["h.0.mlp.c_fc.weight"].T)
    assert ck.tensors["h.1.mlp.c_proj.weight"].shape == (32, 128)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_convert_roundtrip(tmp_path, tiny_dir, base_logits, dtype):
    out = tmp_path / "tg"
    save_tinygpt(load_checkpoint(tiny_dir), out, dtype)
    ck = load_checkpoint(out)
    assert ck.source == "tinygpt" and ck.dtype == dtype
    if dtype == "float32":
        np.testing.assert_array_equal(logits_of(out), base_logits)
    else:  # measured 0.006 / 0.043 / 0.17 for fp16 / bf16 / int8 (max |logit| ~10)
        bound = {"float16": 0.02, "bfloat16": 0.1, "int8": 0.35}[dtype]
        assert np.abs(logits_of(out) - base_logits).max() < bound


def test_converted_file_is_memory_mapped(tiny_converted):
    ck = load_checkpoint(tiny_converted)
    a = ck.tensors["h.0.attn.c_attn.weight"]
    assert not a.flags.writeable and not a.flags.owndata  # a view of the file, not a copy


def test_converted_single_file(tmp_path, tiny_dir, base_logits):
    f = tmp_path / "x" / "gpt.safetensors"
    save_tinygpt(load_checkpoint(tiny_dir), f)
    assert (f.parent / "vocab.json").is_file()
    np.testing.assert_array_equal(logits_of(f), base_logits)


def test_interop_with_safetensors_package(tiny_converted):
    st = pytest.importorskip("safetensors.numpy", reason="safetensors package not installed")
    d = st.load_file(str(tiny_converted / "model.safetensors"))
    ck = load_checkpoint(tiny_converted)
    np.testing.assert_array_equal(d["wte.weight"], ck.tensors["wte.weight"])


def test_untied_head(tmp_path):
    d = write_hf_dir(tmp_path / "m", seed=0)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="lm_head.weight"):
        load_checkpoint(d)
    sf = SafetensorsFile(d / "model.safetensors")
    items = {k: (sf.dtype_of(k), np.array(sf.view(k))) for k in sf.keys()}
    head = np.random.default_rng(1).standard_normal((50257, 32)).astype(np.float32)
    items["lm_head.weight"] = ("F32", head)
    write_safetensors(d / "model.safetensors", items, {})
    m = tinygpt.load(d, backend="numpy")
    np.testing.assert_array_equal(m.backend.weights["lm_head.weight"], head)
    if "cpu" in tinygpt.available_backends():  # the native engine reads lm_head too, not wte
        ids = [1, 2, 3]
        ref = m.logits(ids)
        np.testing.assert_allclose(tinygpt.load(d, backend="cpu").logits(ids), ref, atol=2e-5 * np.abs(ref).max())


# -- bad files ------------------------------------------------------------------------------------------
@pytest.fixture
def hf_copy(tmp_path, tiny_dir):
    d = tmp_path / "copy"
    shutil.copytree(tiny_dir, d)
    return d


def test_missing_dir(tmp_path):
    with pytest.raises(tinygpt.ModelNotFoundError):
        tinygpt.load(tmp_path / "nope")


def test_missing_weights(hf_copy):
    (hf_copy / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no model.safetensors"):
        load_checkpoint(hf_copy)


def test_truncated(hf_copy):
    f = hf_copy / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_checkpoint(hf_copy)


@pytest.mark.parametrize("header", [b"\xff" * 8, struct.pack("<Q", 20) + b"not json at all!!!!!", b"abc"])
def test_corrupt_header(hf_copy, header):
    (hf_copy / "model.safetensors").write_bytes(header)
    with pytest.raises(WeightsError, match="corrupt|truncated"):
        load_checkpoint(hf_copy)


def test_missing_tensor(hf_copy):
    sf = SafetensorsFile(hf_copy / "model.safetensors")
    items = {k: (sf.dtype_of(k), np.array(sf.view(k))) for k in sf.keys() if k != "h.1.ln_2.bias"}
    write_safetensors(hf_copy / "model.safetensors", items, {})
    with pytest.raises(WeightsError, match="missing tensor 'h.1.ln_2.bias'"):
        load_checkpoint(hf_copy)


def test_wrong_shape(hf_copy):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["n_embd"] = 64
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="shape"):
        load_checkpoint(hf_copy)


def test_bad_config(hf_copy):
    (hf_copy / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="JSON"):
        load_checkpoint(hf_copy)
    (hf_copy / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(WeightsError, match="GPT-2 models only"):
        load_checkpoint(hf_copy)
    (hf_copy / "config.json").write_text(json.dumps({"activation_function": "relu"}))
    with pytest.raises(WeightsError, match="activation_function"):
        load_checkpoint(hf_copy)


def test_unknown_format_version(tmp_path, tiny_converted):
    f = tiny_converted / "model.safetensors"
    sf = SafetensorsFile(f)
    items = {k: (sf.dtype_of(k), np.array(sf.view(k))) for k in sf.keys()}
    meta = dict(sf.metadata, **{"tinygpt.format_version": "99"})
    out = tmp_path / "v99.safetensors"
    write_safetensors(out, items, meta)
    with pytest.raises(FormatVersionError, match="version '99'"):
        load_checkpoint(out)


def test_nan_weights_rejected_by_convert(tmp_path, hf_copy):
    sf = SafetensorsFile(hf_copy / "model.safetensors")
    items = {k: (sf.dtype_of(k), np.array(sf.view(k))) for k in sf.keys()}
    items["h.0.mlp.c_fc.bias"][1][3] = np.nan
    write_safetensors(hf_copy / "model.safetensors", items, {})
    with pytest.raises(WeightsError, match="NaN"):
        save_tinygpt(load_checkpoint(hf_copy), tmp_path / "out")


def test_missing_vocab(tmp_path):
    d = write_hf_dir(tmp_path / "m", vocab=False)
    with pytest.raises(WeightsError, match="vocab.json"):
        tinygpt.load(d, backend="numpy")


def test_int8_scales_required(tmp_path, tiny_dir):
    out = tmp_path / "q.safetensors"
    save_tinygpt(load_checkpoint(tiny_dir), out, "int8")
    sf = SafetensorsFile(out)
    assert sf.dtype_of("h.0.mlp.c_fc.weight") == "I8" and sf.shape_of("h.0.mlp.c_fc.weight.scale") == (128,)
    items = {k: (sf.dtype_of(k), np.array(sf.view(k))) for k in sf.keys() if k != "wte.weight.scale"}
    write_safetensors(out, items, sf.metadata)
    with pytest.raises(WeightsError, match="wte.weight.scale"):
        load_checkpoint(out)


def test_int8_dequantizes_within_half_a_step(tiny_dir):
    ck = load_checkpoint(tiny_dir)
    q = load_checkpoint(tiny_dir, "int8")
    name = "h.0.attn.c_attn.weight"
    w, wq, s = ck.widened(name), q.widened(name), q.scale_of(name)
    assert np.all(np.abs(w - wq) <= s[:, None] * 0.5 + 1e-7)
