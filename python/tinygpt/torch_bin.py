"""Read a PyTorch `pytorch_model.bin` state dict WITHOUT torch and without unpickling arbitrary objects.

torch.save writes a zip holding `data.pkl` plus one raw file per storage. The pickle is read by an
Unpickler whose find_class admits only the handful of callables a plain state dict uses; anything
else (the way a malicious pickle runs code) raises WeightsError.
"""
from __future__ import annotations

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
    arr, name = storage
    item = arr.dtype.itemsize
    if not size:
        return (arr[offset:offset + 1].reshape(()), name)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if offset < 0 or last >= arr.size:
        raise WeightsError("pytorch_model.bin: a tensor reaches past its storage (corrupt file)")
    view = np.lib.stride_tricks.as_strided(arr[offset:], shape=tuple(size), strides=tuple(s * item for s in stride))
    return (np.array(view), name)  # copy: detach from the zip buffer and make it contiguous


def _rebuild_parameter(data, requires_grad, backward_hooks, *_ignored):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, fp, zf: zipfile.ZipFile, prefix: str):
        super().__init__(fp)
        self._zf, self._prefix = zf, prefix

    def find_class(self, module, name):
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
        try:
            raw = self._zf.read(f"{self._prefix}data/{key}")
        except KeyError:
            raise WeightsError(f"pytorch_model.bin: storage {key} is missing (truncated file?)") from None
        return (np.frombuffer(raw, dtype=stype.dtype), stype.name)


def load_torch_bin(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Returns {name: (array, storage type name)}; bf16 tensors come back as uint16 bit patterns."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, OSError):
        raise WeightsError(f"{path}: not a torch zip checkpoint (legacy tar/pickle formats are not read; "
                           "re-save with a recent torch or convert to safetensors)") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise WeightsError(f"{path}: expected one data.pkl in the archive, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        try:
            with zf.open(pkls[0]) as fp:
                obj = _Unpickler(fp, zf, prefix).load()
        except WeightsError:
            raise
        except Exception as e:  # malformed pickle stream
            raise WeightsError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)
