"""Writes the seed corpus for each fuzz target into DIR/<target>/ (generated, so the repo holds no binaries):
tiny valid files of each kind plus a few near-misses."""
from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from tinygpt.config import GPT2Config  # noqa: E402
from tinygpt.safetensors_io import write_safetensors  # noqa: E402
from tinygpt.gpt2 import weight_shapes as expected_shapes  # noqa: E402
from tinygpt.weights import Checkpoint, save_tinygpt  # noqa: E402

MICRO = GPT2Config(n_vocab=8, n_ctx=4, n_embd=4, n_head=1, n_layer=1)


def _micro_checkpoint() -> Checkpoint:
    rng = np.random.default_rng(0)
    t = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(MICRO).items()}
    return Checkpoint(MICRO, t, "float32", "tinygpt", Path("micro"), None)


def safetensors_seeds(out: Path) -> None:
    for dtype in ("float32", "float16", "bfloat16", "int8"):
        save_tinygpt(_micro_checkpoint(), out / f"micro_{dtype}.safetensors", dtype)
    write_safetensors(out / "plain.safetensors", {"a": ("F32", np.arange(3, dtype=np.float32)),
                                                  "b": ("I8", np.arange(4, dtype=np.int8).reshape(2, 2))},
                      {"format": "pt"})
    h = json.dumps({"__metadata__": {"format": "tinygpt"}, "x": {"dtype": "F16", "shape": [1, 2],
                                                                 "data_offsets": [0, 4]}}).encode()
    (out / "handmade.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * 4)


def _s(x: str) -> bytes:
    b = x.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(v: int) -> bytes:
    return b"I" + str(v).encode() + b"\n"


def bin_bytes(tensors: dict, storages: dict) -> bytes:
    """torch.save's layout: a zip of archive/data.pkl (protocol 2) and one raw file per storage."""
    pkl = bytearray(b"\x80\x02ccollections\nOrderedDict\n)R")
    for name, (key, stype, numel, offset, size, stride) in tensors.items():
        pkl += _s(name) + b"ctorch._utils\n_rebuild_tensor_v2\n("
        pkl += b"(" + _s("storage") + b"ctorch\n" + stype.encode() + b"\n" + _s(key) + _s("cpu") + _i(numel) + b"tQ"
        pkl += _i(offset) + b"(" + b"".join(map(_i, size)) + b"t(" + b"".join(map(_i, stride)) + b"t\x89ccollections\nOrderedDict\n)RtRs"
    pkl += b"."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", bytes(pkl))
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return buf.getvalue()


def bin_seeds(out: Path) -> None:
    f = np.arange(12, dtype=np.float32).tobytes()
    (out / "two.bin").write_bytes(bin_bytes({"w": ("0", "FloatStorage", 12, 0, (3, 4), (4, 1)),
                                             "t": ("0", "FloatStorage", 12, 0, (4, 3), (1, 4))}, {"0": f}))
    (out / "half.bin").write_bytes(bin_bytes({"h": ("1", "HalfStorage", 4, 0, (2, 2), (2, 1))},
                                             {"1": np.ones(4, np.float16).tobytes()}))
    (out / "scalar.bin").write_bytes(bin_bytes({"s": ("0", "FloatStorage", 12, 3, (), ())}, {"0": f}))


def config_seeds(out: Path) -> None:
    base = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_head": 12,
            "n_layer": 12, "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
            "tie_word_embeddings": True}
    (out / "gpt2.json").write_text(json.dumps(base))
    (out / "aliases.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4,
                                                  "num_hidden_layers": 2, "max_position_embeddings": 32}))
    (out / "tinygpt.json").write_text(json.dumps(MICRO.to_dict()))
    (out / "nan.json").write_text('{"n_layer": NaN, "layer_norm_epsilon": Infinity}')


def tokenizer_seeds(out: Path) -> None:
    texts = ["Hello world, it's 2024!", "a" * 100, "0123456789" * 10, "日本語のテキスト", "🙂🙃 emoji",
             "  \n\n\t spaces", "don't 'S 'll", "<|endoftext|>", "x\u0301\u0302 combining", "𝔘𝔫𝔦 𝟙𝟚𝟛"]
    for i, t in enumerate(texts):
        (out / f"t{i}.txt").write_bytes(t.encode())
    (out / "bytes.bin").write_bytes(bytes(range(256)))


def main(directory: str) -> None:
    d = Path(directory)
    for name, fn in (("safetensors", safetensors_seeds), ("torch_bin", bin_seeds), ("config", config_seeds),
                     ("tokenizer", tokenizer_seeds)):
        (d / name).mkdir(parents=True, exist_ok=True)
        fn(d / name)


if __name__ == "__main__":
    main(sys.argv[1])
