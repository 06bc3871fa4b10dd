"""Read a PyTorch `pytorch_model.bin` state dict WITHOUT torch and without unpickling arbitrary objects.

torch.save writes a zip holding `data.pkl` plus one raw file per storage. The pickle is read by an
Unpickler whose find_class admits only the handful of callables a plain state dict uses; anything
else (the way a malicious pickle runs code) raises WeightsError.
"""
from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import WeightsError

_STORAGES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": np.uint16,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, _STORAGES[name]


def _rebuild_tensor_v2(storage, offset, size, stride, *_ignored):
    """A tensor as a copy of its elements. Every element must lie inside the storage (strides are never
    negative in torch, and with non-negative strides the first and last elements bound the rest), and a
    tensor may not hold more elements than its storage (a stride-0 view of 2^28 elements from a 2 KB file)."""
    arr, name = storage
    item = arr.dtype.itemsize
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= 8
            and all(type(v) is int and v >= 0 for v in (offset, *size, *stride))):
        raise WeightsError("pytorch_model.bin: a tensor has a malformed offset, size or stride (corrupt file)")
    numel = math.prod(size)
    if numel > arr.size:
        raise WeightsError(f"pytorch_model.bin: a tensor of {numel} elements views a storage of {arr.size} "
                           "(stride 0 or overlapping strides; refused)")
    if numel == 0:
        return (np.zeros(size, arr.dtype), name)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= arr.size:
        raise WeightsError("pytorch_model.bin: a tensor reaches past its storage (corrupt file)")
    view = np.lib.stride_tricks.as_strided(arr[offset:], shape=size, strides=tuple(s * item for s in stride))
    return (np.array(view), name)  # copy: detach from the zip buffer and make it contiguous


def _rebuild_parameter(data, requires_grad, backward_hooks, *_ignored):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, fp, zf: zipfile.ZipFile, prefix: str, budget: int):
        super().__init__(fp)
        self._zf, self._prefix = zf, prefix
        self._storages: dict[str, tuple] = {}
        self._budget = budget  # bytes all storages together may inflate to
        self._out_budget = 2 * budget + (1 << 20)  # bytes of tensor copies (tied weights share a storage)

    def _rebuild(self, *args):
        t = _rebuild_tensor_v2(*args)
        self._out_budget -= t[0].nbytes
        if self._out_budget < 0:  # many tensors viewing one storage: copies bounded by twice the archive
            raise WeightsError("pytorch_model.bin: its tensors add up to more than twice the archive's size "
                               "(many views of one storage); refused")
        return t

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise WeightsError(f"pytorch_model.bin references {module}.{name}, which a plain state dict never "
                               "does; refusing to unpickle it (convert the checkpoint to safetensors)")
        return fn

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise WeightsError("pytorch_model.bin: unexpected persistent id (corrupt file)")
        stype, key = pid[1], str(pid[2])
        if not isinstance(stype, _StorageType):
            raise WeightsError("pytorch_model.bin: unknown storage type")
        got = self._storages.get(key)
        if got is not None:
            if got[1] != stype.name:
                raise WeightsError(f"pytorch_model.bin: storage {key} is read as two types (corrupt file)")
            return got
        try:
            info = self._zf.getinfo(f"{self._prefix}data/{key}")
        except KeyError:
            raise WeightsError(f"pytorch_model.bin: storage {key} is missing (truncated file?)") from None
        self._budget -= info.file_size
        if self._budget < 0:  # a deflated member inflating to far more than the archive: refused before reading
            raise WeightsError("pytorch_model.bin: storages inflate past the archive's own size (torch.save "
                               "stores them uncompressed); refused")
        raw = self._zf.read(info)
        if len(raw) % np.dtype(stype.dtype).itemsize:
            raise WeightsError(f"pytorch_model.bin: storage {key} has a partial element (corrupt file)")
        got = self._storages[key] = (np.frombuffer(raw, dtype=stype.dtype), stype.name)
        return got


def load_torch_bin(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Returns {name: (array, storage type name)}; bf16 tensors come back as uint16 bit patterns."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory") from None
    except Exception as e:  # zipfile raises BadZipFile, NotImplementedError, ValueError, EOFError... on bad bytes
        raise WeightsError(f"{path}: not a torch zip checkpoint ({type(e).__name__}; legacy tar/pickle formats "
                           "are not read; re-save with a recent torch or convert to safetensors)") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise WeightsError(f"{path}: expected one data.pkl in the archive, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        budget = os.path.getsize(path)
        if zf.getinfo(pkls[0]).file_size > budget:
            raise WeightsError(f"{path}: data.pkl inflates past the archive's size; refused")
        try:
            with zf.open(pkls[0]) as fp:
                obj = _Unpickler(fp, zf, prefix, budget).load()
        except WeightsError:
            raise
        except Exception as e:  # malformed pickle stream
            raise WeightsError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)
