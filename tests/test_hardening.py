"""Untrusted weights and configs (issue 14): each bad input gives a typed TinyGPTError in bounded time and
memory, never a crash, a traceback of another type, or an out-of-bounds read. The hub's attacks are in
test_hub.py, the tokenizer's in test_tokenizer.py, the CLI's in test_cli.py."""
import json
import struct
import time
import zipfile

import numpy as np
import pytest

import tinygpt
from tinygpt.config import GPT2Config, LIMITS
from tinygpt.safetensors_io import MAX_HEADER_BYTES, MAX_TENSORS, SafetensorsFile
from tinygpt.torch_bin import load_torch_bin
from tinygpt.weights import load_checkpoint

# -- config.json -------------------------------------------------------------------------------------------
BAD_CONFIGS = [
    {"n_layer": "12"}, {"n_layer": None}, {"n_layer": [12]}, {"n_layer": 12.0}, {"n_layer": True},
    {"n_embd": 1e999}, {"layer_norm_epsilon": float("nan")}, {"layer_norm_epsilon": "1e-5"},
    {"layer_norm_epsilon": 1e999}, {"vocab_size": -1}, {"n_head": 0}, {"n_inner": "x"}, {"n_inner": -4},
    {"tie_word_embeddings": "false"}, {"n_layer": 10**6}, {"n_layer": 10**7}, {"n_ctx": 10**30, "n_positions": 10**30},
    {"vocab_size": 10**12}, {"n_embd": 2**40, "n_head": 1},
]


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[json.dumps(b, default=str)[:40] for b in BAD_CONFIGS])
def test_config_values_are_checked(tmp_path, bad):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "gpt2", **bad}))
    t0 = time.monotonic()
    with pytest.raises(tinygpt.WeightsError, match="config"):
        GPT2Config.from_hf_file(p)
    with pytest.raises(tinygpt.WeightsError):  # the whole loader, from a directory holding only that config
        load_checkpoint(tmp_path)
    assert time.monotonic() - t0 < 2


def test_config_limits_admit_every_gpt2():
    xl = dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=48)
    assert all(v <= LIMITS[k] for k, v in xl.items())
    GPT2Config(**xl)


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "{" * 100000, "1" * 5000, "{\"n_layer\": " + "9" * 5000 + "}"])
def test_config_json_shapes(tmp_path, text):
    p = tmp_path / "config.json"
    p.write_text(text)
    with pytest.raises(tinygpt.WeightsError):
        GPT2Config.from_hf_file(p)


def test_tinygpt_metadata_config_checked():
    for bad in ({"n_layer": "3"}, {"n_layer": 10**6}, [], "x"):
        with pytest.raises(tinygpt.WeightsError):
            GPT2Config.from_dict(bad)


# -- safetensors headers -----------------------------------------------------------------------------------
def _st(tmp_path, header, data=b"", raw=None):
    h = raw if raw is not None else json.dumps(header).encode()
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return p


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BAD_HEADERS = {
    "metadata list": {"__metadata__": [1], **GOOD},
    "metadata str": {"__metadata__": "x", **GOOD},
    "metadata non-str value": {"__metadata__": {"format": {"x": 1}}, **GOOD},
    "offsets floats": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}},
    "offsets strings": {"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}},
    "offsets three": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}},
    "offsets negative": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
    "offsets bool": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [False, 8]}},
    "dim 2^63": {"a": {"dtype": "F32", "shape": [2**63, 2], "data_offsets": [0, 8]}},
    "dim 2^64 wraps to 0": {"a": {"dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}},
    "dims overflow int64": {"a": {"dtype": "F32", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 8]}},
    "dim float": {"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}},
    "dim negative": {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
    "shape not list": {"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}},
    "dtype list": {"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}},
    "entry not object": {"a": [1, 2, 3]},
    "overlap": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
    "past end": {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_safetensors_header_checked(tmp_path, name):
    p = _st(tmp_path, BAD_HEADERS[name], b"\0" * 12)
    with pytest.raises(tinygpt.WeightsError):
        SafetensorsFile(p)


def test_safetensors_duplicate_keys(tmp_path):
    raw = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    with pytest.raises(tinygpt.WeightsError, match="duplicate"):
        SafetensorsFile(_st(tmp_path, None, b"\0" * 8, raw=raw))


def test_safetensors_size_limits(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * (MAX_HEADER_BYTES + 1))
    with pytest.raises(tinygpt.WeightsError, match="limit"):
        SafetensorsFile(p)
    many = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_TENSORS + 1)}
    with pytest.raises(tinygpt.WeightsError, match="tensors"):
        SafetensorsFile(_st(tmp_path, many))
    deep = b"[" * 200000 + b"]" * 200000
    with pytest.raises(tinygpt.WeightsError):
        SafetensorsFile(_st(tmp_path, None, raw=deep))


def test_safetensors_good_still_loads(tmp_path):
    sf = SafetensorsFile(_st(tmp_path, {"__metadata__": {"k": "v"}, **GOOD,
                                        "z": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}}, b"\0" * 8))
    assert sf.view("a").shape == (2,) and sf.metadata == {"k": "v"}


# -- pytorch_model.bin ----------------------------------------------------------------------------------------
def _s(x: str) -> bytes:
    b = x.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(v: int) -> bytes:
    return b"I" + str(v).encode() + b"\n"


def _pickle(tensors) -> bytes:
    """A torch.save-style data.pkl (protocol 2), hand-assembled so that offsets and strides can be anything:
    {name: _rebuild_tensor_v2(persistent storage, offset, size, stride)}."""
    out = bytearray(b"\x80\x02}")
    for name, (key, stype, numel, offset, size, stride) in tensors.items():
        out += _s(name) + b"ctorch._utils\n_rebuild_tensor_v2\n("
        out += b"(" + _s("storage") + b"ctorch\n" + stype.encode() + b"\n" + _s(key) + _s("cpu") + _i(numel) + b"tQ"
        out += _i(offset) + b"(" + b"".join(map(_i, size)) + b"t" + b"(" + b"".join(map(_i, stride)) + b"t"
        out += b"tRs"
    return bytes(out + b".")


def _bin(tmp_path, tensors, storages, compress=zipfile.ZIP_STORED):
    p = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", _pickle(tensors))
        for key, data in storages.items():
            z.writestr(zipfile.ZipInfo(f"archive/data/{key}"), data, compress_type=compress)
    return p


def test_bin_reader_good(tmp_path):
    st = np.arange(6, dtype=np.float32).tobytes()
    got = load_torch_bin(_bin(tmp_path, {"w": ("0", "FloatStorage", 6, 0, (2, 3), (3, 1)),
                                         "t": ("0", "FloatStorage", 6, 0, (3, 2), (1, 3)),
                                         "s": ("0", "FloatStorage", 6, 5, (), ())}, {"0": st}))
    assert got["w"][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["t"][0].tolist() == [[0, 3], [1, 4], [2, 5]]
    assert got["s"][0].tolist() == 5


BAD_BINS = {
    "negative stride": ("0", "FloatStorage", 64, 63, (64,), (-1,)),
    "negative stride reaching before": ("0", "FloatStorage", 64, 0, (4, 4), (-8, 1)),
    "negative offset": ("0", "FloatStorage", 64, -1, (4,), (1,)),
    "past the end": ("0", "FloatStorage", 64, 60, (8,), (1,)),
    "stride-0 blow-up": ("0", "FloatStorage", 64, 0, (1 << 14, 1 << 14), (0, 0)),
    "huge size": ("0", "FloatStorage", 64, 0, (1 << 62,), (1,)),
    "size/stride length mismatch": ("0", "FloatStorage", 64, 0, (4, 4), (1,)),
    "missing storage": ("9", "FloatStorage", 64, 0, (4,), (1,)),
}


@pytest.mark.parametrize("name", sorted(BAD_BINS))
def test_bin_tensor_checked(tmp_path, name):
    p = _bin(tmp_path, {"w": BAD_BINS[name]}, {"0": np.zeros(64, np.float32).tobytes()})
    t0 = time.monotonic()
    with pytest.raises(tinygpt.WeightsError):
        load_torch_bin(p)
    assert time.monotonic() - t0 < 2


def test_bin_deflate_bomb_refused(tmp_path):
    p = _bin(tmp_path, {"w": ("0", "FloatStorage", 1 << 24, 0, (1 << 24,), (1,))},
             {"0": bytes(1 << 26)}, compress=zipfile.ZIP_DEFLATED)  # 64 MiB of zeros in ~64 KB
    assert p.stat().st_size < 1 << 20
    with pytest.raises(tinygpt.WeightsError, match="inflate"):
        load_torch_bin(p)


def test_bin_many_views_of_one_storage_refused(tmp_path):
    n = 1 << 16  # 256 KB storage, 200 full views of it: 50 MB of copies from a ~270 KB file
    views = {f"w{i}": ("0", "FloatStorage", n, 0, (n,), (1,)) for i in range(200)}
    p = _bin(tmp_path, views, {"0": np.zeros(n, np.float32).tobytes()})
    with pytest.raises(tinygpt.WeightsError, match="twice"):
        load_torch_bin(p)


# -- CLI: one line `tinygpt: error: ...`, exit 1, no traceback ---------------------------------------------------
def _cli(*args, env=None, **kw):
    import os
    import subprocess
    import sys
    e = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "tinygpt", *map(str, args)], stderr=subprocess.PIPE, text=True,
                          env=e, timeout=300, **kw)


def _one_line_error(r, *words):
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("tinygpt: error:") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def _has_cpu():
    return "cpu" in tinygpt.available_backends()


def test_cli_bad_threads_and_isa(tiny_dir):
    import subprocess
    if not _has_cpu():
        pytest.skip("no cpu backend built")
    _one_line_error(_cli("generate", "Hi", "-m", tiny_dir, "-n", 2, "-t", 100000, stdout=subprocess.PIPE), "100000")
    _one_line_error(_cli("generate", "Hi", "-m", tiny_dir, "-n", 2, env={"TINYGPT_ISA": "bogus"},
                         stdout=subprocess.PIPE), "TINYGPT_ISA")
    with pytest.raises(tinygpt.InvalidArgumentError):
        tinygpt.load(tiny_dir, backend="cpu", threads=100000)


def test_cli_decode_bad_id(tiny_dir):
    import subprocess
    _one_line_error(_cli("tokenize", "--decode", "99999", "-m", tiny_dir, stdout=subprocess.PIPE), "99999")


@pytest.mark.parametrize("dst", ["/proc/no/such/dir", "/dev/null/x.safetensors", "/dev/full/x", "{file}/sub"])
def test_cli_convert_impossible_destination(tiny_dir, tmp_path, dst):
    import subprocess
    f = tmp_path / "a_file"
    f.write_text("x")
    _one_line_error(_cli("convert", tiny_dir, dst.format(file=f), stdout=subprocess.PIPE), "cannot")


def test_cli_stdout_closed(tiny_dir):
    import os
    _one_line_error(_cli("tokenize", "hello", "-m", tiny_dir, preexec_fn=lambda: os.close(1)), "closed")


def test_cli_stdout_full(tiny_dir):
    with open("/dev/full", "w") as full:
        _one_line_error(_cli("generate", "Hi", "-m", tiny_dir, "-n", 40, "--seed", 1, "--backend", "numpy",
                             stdout=full), "cannot write")


def test_cli_non_utf8_terminal_while_streaming(tiny_dir):
    import subprocess
    r = _cli("tokenize", "--decode", "71 2634 18798", "-m", tiny_dir, env={"PYTHONIOENCODING": "ascii"},
             stdout=subprocess.PIPE)
    _one_line_error(r, "encoding")
    # streaming generate: bytes that decode to U+FFFD or any non-ASCII text cannot be shown in latin-1's
    # absence either; find a seed whose continuation is not ASCII, then check the error is one line
    m = tinygpt.load(tiny_dir, backend="numpy")
    seed = next(s for s in range(200) if not m.generate("Hi", max_new_tokens=20, seed=s).isascii())
    r = _cli("generate", "Hi", "-m", tiny_dir, "-n", 20, "--seed", seed, "--backend", "numpy",
             env={"PYTHONIOENCODING": "ascii"}, stdout=subprocess.PIPE)
    _one_line_error(r, "encoding")


def test_bin_zip_quirks_are_typed(tmp_path):
    """Found by the fuzzer: zipfile raises NotImplementedError for an unknown 'version needed' field."""
    good = _bin(tmp_path, {"w": ("0", "FloatStorage", 4, 0, (4,), (1,))}, {"0": np.zeros(4, np.float32).tobytes()})
    data = bytearray(good.read_bytes())
    cd = data.find(b"PK\x01\x02")
    data[cd + 6:cd + 8] = struct.pack("<H", 118)  # version needed to extract: 11.8
    good.write_bytes(bytes(data))
    with pytest.raises(tinygpt.WeightsError, match="not a torch zip"):
        load_torch_bin(good)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", 7, ""])
def test_shard_index_names_stay_in_the_directory(tmp_path, shard):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"n_layer": 1, "n_embd": 4, "n_head": 1, "vocab_size": 8,
                                               "n_positions": 4}))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": shard}}))
    with pytest.raises(tinygpt.WeightsError, match="shard"):
        load_checkpoint(d)
