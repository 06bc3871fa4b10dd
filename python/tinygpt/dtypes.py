"""The one table of weight dtypes: name, safetensors code, NumPy storage type, C code (csrc/forward.h DType), and
the conversions to and from float32. Loader, converter, CLI, tests and benches all read it.

bfloat16 travels as uint16 bit patterns (NumPy has no bfloat16); int8 is symmetric with one float32 scale per
output row (stored beside the matrix as `NAME.scale`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class DType:
    name: str
    st: str  # safetensors dtype code
    storage: type  # NumPy type of the stored array
    code: int  # C code, csrc/forward.h DType

    @property
    def itemsize(self) -> int:
        return np.dtype(self.storage).itemsize

    def to_stored(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 values as stored in this dtype: (array, int8 row scales or None)."""
        a = np.ascontiguousarray(arr, dtype=np.float32)
        if self.name == "float32":
            return a, None
        if self.name == "float16":
            with np.errstate(over="ignore"):
                return a.astype(np.float16), None
        if self.name == "int8":
            return quantize_int8(a)
        u = a.view(np.uint32)  # bfloat16: round to nearest even, NaN stays a quiet NaN
        out = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
        nan = np.isnan(a)
        if nan.any():
            out[nan] = 0x7FC0
        return out, None

    def widen(self, arr: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """The float32 values a stored array holds (what every kernel computes with)."""
        if self.name == "float32":
            return arr
        if self.name == "bfloat16":
            return (np.asarray(arr).astype(np.uint32) << 16).view(np.float32)
        if self.name == "int8":
            if scale is None:
                raise ValueError("int8 weights need their row scales")
            return np.asarray(arr).astype(np.float32) * scale[:, None]
        return np.asarray(arr).astype(np.float32)


DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("float32", "F32", np.float32, 0),
    DType("float16", "F16", np.float16, 1),
    DType("bfloat16", "BF16", np.uint16, 2),
    DType("int8", "I8", np.int8, 3),
)}
NAMES = tuple(DTYPES)
# what users of llama.cpp, PyTorch and Hugging Face type
ALIASES = {"f32": "float32", "fp32": "float32", "float": "float32", "f16": "float16", "fp16": "float16",
           "half": "float16", "bf16": "bfloat16", "i8": "int8"}


def get(name: str) -> DType:
    """A dtype by name or alias; InvalidArgumentError names the choices."""
    key = ALIASES.get(str(name).lower(), str(name).lower()) if isinstance(name, str) else name
    if key not in DTYPES:
        raise InvalidArgumentError(f"unknown dtype {name!r}; choose one of {', '.join(NAMES)} "
                                   f"(aliases: {', '.join(ALIASES)})")
    return DTYPES[key]


def by_st(st: str) -> DType | None:
    """The dtype of a safetensors code, or None (F64 and friends are read via to_float32 only)."""
    return next((d for d in DTYPES.values() if d.st == st), None)


def to_float32(arr: np.ndarray, st: str) -> np.ndarray:
    """A float tensor of a checkpoint (safetensors code st, including F64) as float32."""
    if st == "F64":
        return np.asarray(arr).astype(np.float32)
    d = by_st(st)
    if d is None or d.name == "int8":
        raise ValueError(f"cannot use a {st} tensor as floating-point weights")
    return d.widen(arr)


def quantize_int8(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: q = round(w / s), s = max|row| / 127 (rows of zeros get s = 1)."""
    a = np.asarray(arr, np.float32)
    amax = np.abs(a).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(a / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale
