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

from .config import GPT2Config
from .errors import FormatVersionError, WeightsError
from .safetensors_io import SafetensorsFile, write_safetensors
from .tokenizer import find_vocab_files

FORMAT_NAME = "tinygpt"
FORMAT_VERSION = "1"
DTYPES = ("float32", "float16", "bfloat16", "int8")
_ST_OF = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int8": "I8"}
SCALE = ".scale"  # suffix of an int8 matrix's per-row scales
_HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_MAX_INDEX_BYTES = 16 << 20


def expected_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor tinygpt needs, in its own [out, in] layout, in plan order."""
    C, F, V = cfg.n_embd, cfg.d_ff, cfg.n_vocab
    s: dict[str, tuple[int, ...]] = {"wte.weight": (V, C), "wpe.weight": (cfg.n_ctx, C)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        s.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (F, C), p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (C, F), p + "mlp.c_proj.bias": (C,),
        })
    s.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    if not cfg.tie_word_embeddings:
        s["lm_head.weight"] = (V, C)
    return s


def is_matrix(name: str) -> bool:
    """Tensors stored in the checkpoint's matrix dtype (the rest are float32)."""
    return name.endswith(".weight") and (name in ("wte.weight", "lm_head.weight") or
                                         any(name.endswith(m) for m in _HF_CONV1D))


# -- dtype conversion (bfloat16 travels as uint16 bit patterns) ---------------------------------------
def to_float32(arr: np.ndarray, st_dtype: str) -> np.ndarray:
    if st_dtype == "F32":
        return arr
    if st_dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if st_dtype in ("F16", "F64"):
        return arr.astype(np.float32)
    raise WeightsError(f"cannot use a {st_dtype} tensor as floating-point weights")


def quantize_int8(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: q = round(w / s), s = max|row| / 127 (rows of zeros get s = 1)."""
    a = np.asarray(arr, np.float32)
    amax = np.abs(a).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(a / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def head_screen(w: np.ndarray, dtype: str, chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy decoding's screening copy of an LM head w [N, K] stored as `dtype` (float32, float16, or bfloat16
    bits): (q int8 [N, K], qs float32 [N], err float32 [N, 3]) such that for any float32 x, the head's float32 GEMV
    value of row n and the int8 GEMV value x . q[n] * qs[n] differ by at most
    min(||x||_2 err[n, 0], ||x||_1 err[n, 1]) + ||x||_2 err[n, 2].

    With e = w[n] - qs[n] q[n] (the quantization error): err[n, 0] = ||e||_2 (Cauchy-Schwarz), err[n, 1] = max|e|
    (Hoelder; tighter when x has a few large entries), err[n, 2] = g (||w[n]||_2 + qs[n] ||q[n]||_2) for the
    float32 rounding of both dot products in any summation order, with or without FMA (g = (2K + 8) 2^-24 >=
    gamma_(2K+8)). Computed in float64, scaled by 1 + 1e-6 and rounded up to float32. Built in row chunks, so the
    float64 temporaries stay a few MB (the peak-RSS budget has little room)."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"no head screen for {dtype} weights")
    N, K = w.shape
    q = np.empty((N, K), np.int8)
    qs = np.empty(N, np.float32)
    err = np.empty((N, 3), np.float32)
    g = (2 * K + 8) * 2.0 ** -24
    for r0 in range(0, N, chunk):
        wf = to_float32(np.asarray(w[r0:r0 + chunk]), _ST_OF[dtype])
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite weights: err is NaN/inf, the kernel reads
            qq, ss = quantize_int8(wf)                       # every row (no warning from library code)
        w64, q64, s64 = wf.astype(np.float64), qq.astype(np.float64), ss.astype(np.float64)
        d = w64 - q64 * s64[:, None]  # q * s is exact in float64 (8 by 24 bits)
        with np.errstate(invalid="ignore", over="ignore"):
            norm = lambda a: np.sqrt(np.einsum("ij,ij->i", a, a))  # noqa: E731
            e = np.stack([norm(d), np.abs(d).max(axis=1), g * (norm(w64) + s64 * norm(q64))], axis=1) * (1 + 1e-6)
            e32 = e.astype(np.float32)
        q[r0:r0 + chunk], qs[r0:r0 + chunk] = qq, ss
        err[r0:r0 + chunk] = np.where(e32 < e, np.nextafter(e32, np.float32(np.inf)), e32)
    return q, qs, err


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None]


def encode(arr: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 values as stored in `dtype`: (array, int8 row scales or None)."""
    return quantize_int8(arr) if dtype == "int8" else (from_float32(arr, dtype), None)


def from_float32(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "int8":
        raise ValueError("int8 needs scales: use encode or quantize_int8")
    if dtype == "float32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if dtype == "float16":
        return np.ascontiguousarray(arr).astype(np.float16)
    u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(arr)
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = 0x7FC0
    return out


@dataclass
class Checkpoint:
    config: GPT2Config
    tensors: dict  # name -> np.ndarray, tinygpt layout
    dtype: str  # matrix dtype: float32 | float16 | bfloat16
    source: str  # "tinygpt" | "hf-safetensors" | "hf-bin"
    path: Path
    vocab_dir: Path | None

    def float32(self, name: str) -> np.ndarray:
        a = self.tensors[name]
        if not is_matrix(name):
            return a
        if self.dtype == "int8":
            return dequantize_int8(a, self.tensors[name + SCALE])
        return to_float32(a, _ST_OF[self.dtype])

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
    for name, shape in expected_shapes(cfg).items():
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
        if not transpose and st == _ST_OF[target]:
            tensors[name] = load(False)  # zero-copy (mmap view when the source is safetensors)
            if st == "I8":
                tensors[name + SCALE] = _scale_entry(entries, name, shape[0], where)
            continue
        if st == "I8":
            arr = dequantize_int8(load(True), _scale_entry(entries, name, shape[0], where))
        else:
            arr = to_float32(load(True), st)
        if transpose:
            arr = arr.T
        tensors[name], scale = encode(arr, target)
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


def _check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise WeightsError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def load_tinygpt_file(path: Path, dtype: str | None = None) -> Checkpoint:
    _check_dtype(dtype)
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
    if stored not in DTYPES:
        raise WeightsError(f"{path}: unknown stored dtype {stored!r}")
    entries = _safetensors_entries([sf])
    tensors = _build(cfg, entries, dtype or stored, hf_layout=False, where=str(path))
    return Checkpoint(cfg, tensors, dtype or stored, "tinygpt", Path(path),
                      Path(path).parent if find_vocab_files(Path(path).parent) else None)


def load_hf_dir(directory: Path, dtype: str | None = None) -> Checkpoint:
    _check_dtype(dtype)
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
    _check_dtype(dtype)
    dtype = dtype or ck.dtype
    dst = Path(dst)
    file, vocab_to = (dst, dst.parent) if dst.suffix == ".safetensors" else (dst / "model.safetensors", dst)
    try:
        vocab_to.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the destination folder {vocab_to}: {e.strerror or e}") from None
    out = {}
    names = list(expected_shapes(ck.config))
    for i, name in enumerate(names):
        f32 = ck.float32(name)  # widened once: checked here, converted below when the dtype changes
        if not np.isfinite(f32).all():
            raise WeightsError(f"{ck.path}: tensor {name!r} holds NaN or inf values (corrupt checkpoint)")
        if not is_matrix(name):
            out[name] = ("F32", ck.tensors[name])
        elif dtype == ck.dtype:
            out[name] = (_ST_OF[dtype], ck.tensors[name])
            if dtype == "int8":
                out[name + SCALE] = ("F32", ck.tensors[name + SCALE])
        else:
            a, scale = encode(f32, dtype)
            out[name] = (_ST_OF[dtype], a)
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
