"""Minimal safetensors reader/writer: memory-mapped reads (zero-copy), bf16 as raw uint16, streaming writes.

Our own code rather than the `safetensors` package because that package's NumPy API copies every
tensor and has no bfloat16; the format is an 8-byte little-endian header length, a JSON header, then
raw row-major little-endian bytes. Files written here load with the `safetensors` package (tested).
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from .errors import WeightsError

# safetensors dtype -> numpy dtype (BF16 is carried as uint16 bit patterns)
DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
# Limits on an untrusted header (README "Limits"): GPT-2 XL's header is ~60 KB and ~580 tensors; 16 MiB and
# 65,536 tensors leave room for any GPT-2 with int8 scales (tinygpt's config limit is 1024 layers ~ 12,300
# tensors) while bounding the JSON parse to ~10x that in memory. Tensors may not overlap and must lie inside
# the file, so their total bytes never exceed the file's size.
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 1 << 16
_MAX_DIM = 1 << 40  # also for empty tensors, whose other dims no size check bounds (NumPy needs them < 2^63)


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _is_uint(v) -> bool:
    return type(v) is int and v >= 0


class SafetensorsFile:
    """One .safetensors file: header parsed and validated up front, tensors served as views of an mmap."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise WeightsError(f"{self.path}: file not found") from None
        except IsADirectoryError:
            raise WeightsError(f"{self.path}: is a directory, expected a .safetensors file") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{self.path}: truncated or not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise WeightsError(f"{self.path}: corrupt or truncated safetensors header (length field {n}, "
                                   f"file {size} bytes, limit {MAX_HEADER_BYTES})")
            raw = f.read(n)
            try:
                header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise WeightsError(f"{self.path}: corrupt safetensors header (not JSON: {str(e)[:80]})") from None
            if not isinstance(header, dict):
                raise WeightsError(f"{self.path}: corrupt safetensors header (not an object)")
            md = header.pop("__metadata__", None)
            if md is None:
                md = {}
            if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
                raise WeightsError(f"{self.path}: corrupt safetensors header (__metadata__ must map strings to "
                                   "strings)")
            self.metadata = md
            if len(header) > MAX_TENSORS:
                raise WeightsError(f"{self.path}: {len(header)} tensors, above the limit of {MAX_TENSORS}")
            self.data_start = 8 + n
            data_len = size - self.data_start
            self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
            for name, e in header.items():
                try:
                    dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
                except (KeyError, TypeError):
                    raise WeightsError(f"{self.path}: corrupt header entry for tensor {name!r}") from None
                if not isinstance(dt, str) or dt not in DTYPES:
                    raise WeightsError(f"{self.path}: tensor {name!r} has unsupported dtype {str(dt)[:20]}")
                if not isinstance(shape, list) or len(shape) > 8 or not all(_is_uint(d) and d <= _MAX_DIM for d in shape):
                    raise WeightsError(f"{self.path}: tensor {name!r} has a malformed shape")
                if not isinstance(offs, list) or len(offs) != 2 or not all(_is_uint(o) for o in offs):
                    raise WeightsError(f"{self.path}: tensor {name!r} has malformed data_offsets")
                b, end = offs
                if end > data_len:
                    raise WeightsError(f"{self.path}: truncated: tensor {name!r} ends at byte {end} but the "
                                       f"file holds {data_len} data bytes")
                want = math.prod(shape) * np.dtype(DTYPES[dt]).itemsize  # Python ints: no overflow
                if not (b <= end) or end - b != want:
                    raise WeightsError(f"{self.path}: tensor {name!r} offsets {b}..{end} do not match its "
                                       f"shape {shape} and dtype {dt}")
                self.entries[name] = (dt, tuple(shape), b, end)
            spans = sorted((b, end, name) for name, (_, _, b, end) in self.entries.items() if end > b)
            for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
                if b1 < e0:
                    raise WeightsError(f"{self.path}: tensors {n0!r} and {n1!r} overlap in the file (corrupt)")
        self._mm = None

    def keys(self):
        return self.entries.keys()

    def _map(self):
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def dtype_of(self, name: str) -> str:
        return self.entries[name][0]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def view(self, name: str) -> np.ndarray:
        """Zero-copy read-only view backed by the file's mmap."""
        dt, shape, b, end = self.entries[name]
        arr = np.frombuffer(self._map(), dtype=DTYPES[dt], count=(end - b) // np.dtype(DTYPES[dt]).itemsize,
                            offset=self.data_start + b)
        return arr.reshape(shape)

    def read(self, name: str) -> np.ndarray:
        """A private writable copy read with plain file I/O (keeps the mmap's pages out of RSS)."""
        dt, shape, b, end = self.entries[name]
        out = np.empty(shape, dtype=DTYPES[dt])
        with open(self.path, "rb") as f:
            f.seek(self.data_start + b)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != end - b:
            raise WeightsError(f"{self.path}: truncated while reading {name!r}")
        return out


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """Write {name: (safetensors dtype, array)} tensor by tensor, atomically (temp file + rename)."""
    header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    off = 0
    for name, (dt, arr) in tensors.items():
        if np.dtype(DTYPES[dt]) != arr.dtype:
            raise ValueError(f"{name}: array dtype {arr.dtype} does not match safetensors dtype {dt}")
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        off += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for _, (_, arr) in tensors.items():
                f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt leaves no half-written .tmp behind
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
