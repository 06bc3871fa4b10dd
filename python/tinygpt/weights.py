"""Load GPT-2 weights (Hugging Face layout or tinygpt's own) into tinygpt's in-memory layout.

tinygpt layout: every matrix is [out, in] (as nn.Linear; HF's Conv1D stores [in, out], so those four per
layer are transposed once, at load or at `tinygpt convert`). That lets the tied head use `wte` as is and
gives every matmul the same kernel. Matrices (and wte) may be float32, float16, bfloat16 (uint16 bits) or
int8 (symmetric, one float32 scale per output row, stored as `NAME.scale`); vectors are always float32.
A converted tinygpt file is memory-mapped: no copy, no transpose at load.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import dtypes
from .config import GPT2Config
from .errors import FormatVersionError, WeightsError
from .gpt2 import is_matrix, weight_shapes
from .safetensors_io import SafetensorsFile, write_safetensors
from .tokenizer import find_vocab_files

FORMAT_NAME = "tinygpt"
FORMAT_VERSION = "1"
SCALE = ".scale"  # suffix of an int8 matrix's per-row scales
_HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_MAX_INDEX_BYTES = 16 << 20


@dataclass
class Checkpoint:
    config: GPT2Config
    tensors: dict  # name -> np.ndarray, tinygpt layout
    dtype: str  # matrix dtype: float32 | float16 | bfloat16 | int8
    source: str  # "tinygpt" | "hf-safetensors" | "hf-bin"
    path: Path
    vocab_dir: Path | None

    def widened(self, name: str) -> np.ndarray:
        """The tensor as float32 values (a view when it is stored as float32)."""
        a = self.tensors[name]
        return dtypes.get(self.dtype).widen(a, self.scale_of(name)) if is_matrix(name) else a

    def scale_of(self, name: str) -> np.ndarray | None:
        return self.tensors.get(name + SCALE)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())


# -- sources: name -> (safetensors dtype, shape, loader(copy: bool)) -----------------------------------
_Entry = tuple  # (st_dtype, shape, Callable[[bool], np.ndarray])


def _safetensors_entries(files: list[SafetensorsFile]) -> dict[str, _Entry]:
    out: dict[str, _Entry] = {}
    for sf in files:
        for name in sf.keys():
            out[name] = (sf.dtype_of(name), sf.shape_of(name),
                         (lambda copy, sf=sf, name=name: sf.read(name) if copy else sf.view(name)))
    return out


def _bin_entries(path: Path) -> dict[str, _Entry]:
    from .torch_bin import load_torch_bin
    st = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64"}
    out = {}
    for name, val in load_torch_bin(path).items():
        arr, stype = val if isinstance(val, tuple) else (val, "")
        out[name] = (st.get(stype, "OTHER"), arr.shape, (lambda copy, arr=arr: arr))
    return out


def _strip_prefix(entries: dict[str, _Entry]) -> dict[str, _Entry]:
    out = {}
    for k, v in entries.items():
        if k.startswith("transformer."):
            k = k[len("transformer."):]
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        out[k] = v
    return out


def _build(cfg: GPT2Config, entries: dict[str, _Entry], dtype: str, hf_layout: bool, where: str) -> dict:
    tensors = {}
    for name, shape in weight_shapes(cfg).items():
        if name not in entries:
            raise WeightsError(f"{where}: missing tensor {name!r} (is this a GPT-2 checkpoint of the size its "
                               "config describes?)")
        st, got_shape, load = entries[name]
        transpose = hf_layout and any(name.endswith(m) for m in _HF_CONV1D)
        want = tuple(reversed(shape)) if transpose else shape
        if tuple(got_shape) != want:
            raise WeightsError(f"{where}: tensor {name!r} has shape {list(got_shape)}, expected {list(want)} "
                               "from the config")
        if st not in ("F32", "F16", "BF16", "F64") and not (st == "I8" and not hf_layout):
            raise WeightsError(f"{where}: tensor {name!r} has non-float dtype {st}")
        target = dtype if is_matrix(name) else "float32"
        if not transpose and st == dtypes.get(target).st:
            tensors[name] = load(False)  # zero-copy (mmap view when the source is safetensors)
            if st == "I8":
                tensors[name + SCALE] = _scale_entry(entries, name, shape[0], where)
            continue
        if st == "I8":
            arr = dtypes.get("int8").widen(load(True), _scale_entry(entries, name, shape[0], where))
        else:
            arr = dtypes.to_float32(load(True), st)
        if transpose:
            arr = arr.T
        tensors[name], scale = dtypes.get(target).to_stored(arr)
        if scale is not None:
            tensors[name + SCALE] = scale
    return tensors


def _scale_entry(entries: dict, name: str, rows: int, where: str) -> np.ndarray:
    e = entries.get(name + SCALE)
    if e is None:
        raise WeightsError(f"{where}: int8 tensor {name!r} has no {name + SCALE!r}")
    st, shape, load = e
    if st != "F32" or tuple(shape) != (rows,):
        raise WeightsError(f"{where}: {name + SCALE!r} must be float32 [{rows}], got {st} {list(shape)}")
    return load(False)


def _check_dtype(dtype: str | None) -> str | None:
    """The canonical dtype name (aliases such as bf16 accepted), or None."""
    return None if dtype is None else dtypes.get(dtype).name


def load_tinygpt_file(path: Path, dtype: str | None = None) -> Checkpoint:
    dtype = _check_dtype(dtype)
    sf = SafetensorsFile(path)
    md = sf.metadata
    if md.get("format") != FORMAT_NAME:
        raise WeightsError(f"{path}: not a tinygpt file (metadata format={md.get('format')!r}); load the "
                           "Hugging Face directory that holds it, or run `tinygpt convert` on it")
    ver = md.get("tinygpt.format_version")
    if ver != FORMAT_VERSION:
        raise FormatVersionError(f"{path}: tinygpt format version {ver!r} is not supported by this tinygpt "
                                 f"(reads version {FORMAT_VERSION}); re-run `tinygpt convert` with this version")
    try:
        cfg = GPT2Config.from_dict(json.loads(md["tinygpt.config"]))
        stored = md["tinygpt.dtype"]
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: corrupt tinygpt metadata ({e})") from None
    if stored not in dtypes.NAMES:
        raise WeightsError(f"{path}: unknown stored dtype {stored!r}")
    entries = _safetensors_entries([sf])
    tensors = _build(cfg, entries, dtype or stored, hf_layout=False, where=str(path))
    return Checkpoint(cfg, tensors, dtype or stored, "tinygpt", Path(path),
                      Path(path).parent if find_vocab_files(Path(path).parent) else None)


def load_hf_dir(directory: Path, dtype: str | None = None) -> Checkpoint:
    dtype = _check_dtype(dtype)
    d = Path(directory)
    cfg = GPT2Config.from_hf_file(d / "config.json")
    index = d / "model.safetensors.index.json"
    single = d / "model.safetensors"
    if single.is_file():
        entries, source = _safetensors_entries([SafetensorsFile(single)]), "hf-safetensors"
    elif index.is_file():
        try:
            if index.stat().st_size > _MAX_INDEX_BYTES:
                raise ValueError(f"larger than {_MAX_INDEX_BYTES} bytes")
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as e:
            raise WeightsError(f"{index}: corrupt shard index ({str(e)[:80]})") from None
        for s in shards:  # shards sit beside the index: a path elsewhere is a corrupt (or hostile) index
            if not isinstance(s, str) or Path(s).name != s or s in ("", ".", ".."):
                raise WeightsError(f"{index}: shard {str(s)[:80]!r} is not a file name in {d}")
        entries, source = _safetensors_entries([SafetensorsFile(d / s) for s in shards]), "hf-safetensors"
    elif (d / "pytorch_model.bin").is_file():
        entries, source = _bin_entries(d / "pytorch_model.bin"), "hf-bin"
    else:
        raise WeightsError(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    entries = _strip_prefix(entries)
    tensors = _build(cfg, entries, dtype or "float32", hf_layout=True, where=str(d))
    return Checkpoint(cfg, tensors, dtype or "float32", source, d, d if find_vocab_files(d) else None)


def load_checkpoint(path: Path, dtype: str | None = None) -> Checkpoint:
    """A local HF directory, a tinygpt directory, or a tinygpt .safetensors file."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return load_hf_dir(p, dtype)
        if (p / "model.safetensors").is_file():
            return load_tinygpt_file(p / "model.safetensors", dtype)
        raise WeightsError(f"{p}: neither a Hugging Face GPT-2 directory (config.json) nor a tinygpt directory")
    if p.is_file():
        if p.suffix == ".bin":
            raise WeightsError(f"{p}: load the directory holding pytorch_model.bin (its config.json is needed)")
        sf = SafetensorsFile(p)
        if sf.metadata.get("format") != FORMAT_NAME and (p.parent / "config.json").is_file():
            return load_hf_dir(p.parent, dtype)
        return load_tinygpt_file(p, dtype)
    raise WeightsError(f"{p}: no such file or directory")


def save_tinygpt(ck: Checkpoint, dst: Path, dtype: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Write ck in tinygpt's format (converting matrices to dtype) and copy the vocabulary beside it.

    DST ending in .safetensors is the file; otherwise DST is a directory that gets model.safetensors.
    """
    dtype = _check_dtype(dtype)
    dtype = dtype or ck.dtype
    dst = Path(dst)
    file, vocab_to = (dst, dst.parent) if dst.suffix == ".safetensors" else (dst / "model.safetensors", dst)
    try:
        vocab_to.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the destination folder {vocab_to}: {e.strerror or e}") from None
    out = {}
    names = list(weight_shapes(ck.config))
    for i, name in enumerate(names):
        f32 = ck.widened(name)  # widened once: checked here, converted below when the dtype changes
        if not np.isfinite(f32).all():
            raise WeightsError(f"{ck.path}: tensor {name!r} holds NaN or inf values (corrupt checkpoint)")
        if not is_matrix(name):
            out[name] = ("F32", ck.tensors[name])
        elif dtype == ck.dtype:
            out[name] = (dtypes.get(dtype).st, ck.tensors[name])
            if dtype == "int8":
                out[name + SCALE] = ("F32", ck.tensors[name + SCALE])
        else:
            a, scale = dtypes.get(dtype).to_stored(f32)
            out[name] = (dtypes.get(dtype).st, a)
            if scale is not None:
                out[name + SCALE] = ("F32", scale)
        if progress:
            progress(i + 1, len(names))
    meta = {
        "format": FORMAT_NAME,
        "tinygpt.format_version": FORMAT_VERSION,
        "tinygpt.config": json.dumps(ck.config.to_dict()),
        "tinygpt.dtype": dtype,
        "tinygpt.weight_layout": "out_in",
    }
    try:
        write_safetensors(file, out, meta)
        if ck.vocab_dir is not None:
            enc, mer = find_vocab_files(ck.vocab_dir)
            for srcf, name in ((enc, "vocab.json"), (mer, "merges.txt")):
                target = vocab_to / name
                if srcf.resolve() != target.resolve():
                    shutil.copyfile(srcf, target)
    except OSError as e:
        raise WeightsError(f"cannot write {e.filename or file}: {e.strerror or e}") from None
    return file
