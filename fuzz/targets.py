"""Fuzz targets for the readers of untrusted input (issue 14). Each takes bytes and may only raise a
tinygpt.errors.TinyGPTError subclass; any other exception, a crash, a hang or memory past the cap is a
finding. Run through tools/fuzz.sh (atheris, coverage-guided); fuzz/seeds.py writes the seed corpus."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TMP = Path(tempfile.mkdtemp(prefix="tinygpt-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def _file(name: str, data: bytes) -> Path:
    p = _TMP / name
    p.write_bytes(data)
    return p


def safetensors(data: bytes) -> None:
    from tinygpt.errors import TinyGPTError
    from tinygpt.safetensors_io import SafetensorsFile
    from tinygpt.weights import load_checkpoint
    p = _file("model.safetensors", data)
    try:
        sf = SafetensorsFile(p)
        for name in sf.keys():
            v, r = sf.view(name), sf.read(name)
            assert v.shape == r.shape == sf.shape_of(name)
        load_checkpoint(p)  # tinygpt metadata -> config -> every tensor checked against it
    except TinyGPTError:
        pass


def torch_bin(data: bytes) -> None:
    from tinygpt.errors import TinyGPTError
    from tinygpt.torch_bin import load_torch_bin
    p = _file("pytorch_model.bin", data)
    try:
        for name, (arr, _stype) in load_torch_bin(p).items():
            arr.sum()  # every element readable
    except TinyGPTError:
        pass


def config(data: bytes) -> None:
    from tinygpt.config import GPT2Config
    from tinygpt.errors import TinyGPTError
    p = _file("config.json", data)
    try:
        cfg = GPT2Config.from_hf_file(p)
        assert GPT2Config.from_dict(cfg.to_dict()) == cfg
    except TinyGPTError:
        pass
    try:
        GPT2Config.from_dict(json.loads(data))
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass  # not JSON: the JSON parser's own error, before tinygpt sees anything
    except TinyGPTError:
        pass


_TOK = None


def tokenizer(data: bytes) -> None:
    """Round trip, and the two merge algorithms (simple loop for short pieces, bucket/heap for long ones)
    agree on every piece of the text."""
    global _TOK
    from tinygpt.errors import TinyGPTError
    from tinygpt.tokenizer import PATTERN, Tokenizer
    if _TOK is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_model import vocab_dir
        v = vocab_dir()
        _TOK = Tokenizer.from_files(v / "encoder.json", v / "vocab.bpe")
    text = data.decode("utf-8", "replace")
    ids = _TOK.encode(text)
    assert _TOK.decode(ids) == text
    for piece in set(PATTERN.findall(text)):
        raw = piece.encode("utf-8")
        assert _TOK._bpe(raw.decode("latin-1").translate(_TOK._byte_table)) == _TOK._bpe_long(raw), piece
    n = len(data) // 2  # ids from the input: valid ones decode, others raise the typed error
    try:
        _TOK.decode(int.from_bytes(data[i:i + 2], "little") for i in range(0, 2 * n, 2))
    except TinyGPTError:
        pass


TARGETS = {"safetensors": safetensors, "torch_bin": torch_bin, "config": config, "tokenizer": tokenizer}
