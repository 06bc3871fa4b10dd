"""The compiled modules: _cpu builds and reports its ISA levels; _cuda, when built, imports next to _cpu on a
machine without a driver and says why there is no device. CI sets TINYGPT_REQUIRE_CUDA_BUILD=1 where nvcc is
on PATH, so a CUDA build that silently went missing fails there."""
import importlib.util
import os

import pytest

import tinygpt
from tinygpt import backends


def test_cpu_module_builds():
    from tinygpt import _cpu
    info = _cpu.build_info()
    assert info["isa"] in ("base", "avx2", "avx512", "native")
    assert "base" in _cpu.isa_levels()
    assert _cpu.get_num_threads() >= 1


def test_cuda_module_imports_without_gpu():
    built = importlib.util.find_spec("tinygpt._cuda") is not None
    if os.environ.get("TINYGPT_REQUIRE_CUDA_BUILD") == "1":
        assert built, "nvcc is on PATH but tinygpt._cuda was not built"
    if not built:
        pytest.skip("tinygpt._cuda not built (no nvcc at install time)")
    from tinygpt import _cpu, _cuda  # noqa: F401  (both at once: no clash of registered types)
    assert _cpu.build_info()
    n, why = _cuda.device_count()
    assert n >= 0
    assert "architectures" in _cuda.build_info()
    ok, detail = backends.status()["cuda"]
    assert ok == (n > 0)
    if not ok:
        assert "no CUDA device" in detail and why in detail


def test_unavailable_backend_is_an_error_not_a_fallback(tiny_dir):
    if "cuda" in tinygpt.available_backends():
        pytest.skip("a GPU is present")
    with pytest.raises(tinygpt.BackendUnavailableError, match="cuda"):
        tinygpt.load(tiny_dir, backend="cuda")
