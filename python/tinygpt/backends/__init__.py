"""Backend registry: which backends exist here, why the others do not, and `auto` selection; and the contract
every backend keeps (base.py: Backend, Sequence). Nothing here prints.
"""
from __future__ import annotations

import os

from ..errors import BackendUnavailableError, InvalidArgumentError

NAMES = ("numpy", "cpu", "cuda")


def _import(name):
    import importlib
    try:
        return importlib.import_module(f"tinygpt.{name}"), None
    except ModuleNotFoundError as e:
        if e.name == f"tinygpt.{name}":
            return None, "not built"
        return None, f"failed to import ({e})"
    except ImportError as e:
        return None, f"failed to import ({e})"


def _probe_cpu():
    mod, err = _import("_cpu")
    if mod is None:
        return None, f"compiled module tinygpt._cpu {err}; reinstall with a C++ compiler (pip install .)"
    return mod, None


def _probe_cuda():
    _cuda, err = _import("_cuda")
    if _cuda is None:
        return None, f"compiled module tinygpt._cuda {err}; it is built when nvcc is found at install time " \
                     "(TINYGPT_CUDA=ON to require it)"
    try:
        n, msg = _cuda.device_count()
    except Exception as e:  # a broken driver must not break import of tinygpt
        return None, f"CUDA runtime error: {e}"
    if n <= 0:
        return None, f"no CUDA device ({msg})"
    return _cuda, None


def status() -> dict[str, tuple[bool, str]]:
    """{name: (available, reason or detail)} for `tinygpt info`."""
    out = {"numpy": (True, "always available")}
    mod, why = _probe_cpu()
    try:  # build_info picks the kernel level; a bad TINYGPT_ISA is the user's error, never a silent fallback
        out["cpu"] = (True, mod.build_info()["isa"]) if mod else (False, why)
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from None
    mod, why = _probe_cuda()
    out["cuda"] = (True, mod.device_name(0)) if mod else (False, why)
    return out


def available() -> list[str]:
    return [n for n, (ok, _) in status().items() if ok]


def resolve(name: str | None) -> str:
    """'auto' (or None / $TINYGPT_BACKEND) -> cuda if present, else cpu, else numpy. An explicit name that
    is unavailable raises BackendUnavailableError instead of falling back silently."""
    name = name or os.environ.get("TINYGPT_BACKEND") or "auto"
    if name not in NAMES + ("auto",):
        raise BackendUnavailableError(f"unknown backend {name!r}; choose auto, numpy, cpu or cuda")
    st = status()
    if name == "auto":
        for n in ("cuda", "cpu", "numpy"):
            if st[n][0]:
                return n
    ok, why = st[name]
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {why}")
    return name


def create(name: str, checkpoint, threads: int | None = None, bf16_activations: bool = False):
    if bf16_activations and checkpoint.dtype != "bfloat16":
        raise InvalidArgumentError("bf16_activations needs bfloat16 weights (dtype='bfloat16'), not "
                                   f"{checkpoint.dtype}")
    if bf16_activations and name != "cpu":
        raise InvalidArgumentError(f"bf16_activations is a cpu backend option (backend {name!r})")
    if name == "numpy":
        from .numpy_backend import NumpyBackend
        return NumpyBackend(checkpoint)
    if name == "cpu":
        from .cpu_backend import CpuBackend
        return CpuBackend(checkpoint, threads, bf16_activations=bf16_activations)
    if name == "cuda":
        from .cuda_backend import CudaBackend
        return CudaBackend(checkpoint)
    raise BackendUnavailableError(f"unknown backend {name!r}")
