"""Bench fixtures: GPT-2 124M-shaped random-weight checkpoints (no download), kernel implementations per
backend, and helpers that put GFLOP/s, GB/s and tokens/s into pytest-benchmark's extra_info.

Run: pytest bench/ --benchmark-only   (add --benchmark-json=out.json, then python bench/report.py out.json)
Env: TINYGPT_BENCH_SIZES=124M,355M (end-to-end sizes; default 124M), TINYGPT_BENCH_ROUNDS (default 5).
NumPy comparisons use whatever OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE the environment sets; extra_info says which.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tinygpt import backends  # noqa: E402

SIZES = {
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
    "355M": dict(n_layer=24, n_head=16, n_embd=1024),
    "774M": dict(n_layer=36, n_head=20, n_embd=1280),
    "1558M": dict(n_layer=48, n_head=25, n_embd=1600),
}
ROUNDS = int(os.environ.get("TINYGPT_BENCH_ROUNDS", "5"))
OPENBLAS_ENV = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


def bench_sizes() -> list[str]:
    return [s for s in os.environ.get("TINYGPT_BENCH_SIZES", "124M").split(",") if s]


def backend_params(include_numpy=True):
    out = []
    for name, (ok, why) in backends.status().items():
        if name == "numpy" and not include_numpy:
            continue
        out.append(pytest.param(name, id=name, marks=() if ok else pytest.mark.skip(reason=why)))
    return out


_made: dict = {}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Returns make(size) -> HF directory with random weights at that GPT-2 shape (written once)."""
    from tiny_model import write_hf_dir

    def make(size: str) -> Path:
        if size not in _made:
            cfg = dict(SIZES[size], n_positions=1024, vocab_size=50257)
            _made[size] = write_hf_dir(tmp_path_factory.mktemp(f"gpt2-{size}"), cfg, seed=1)
        return _made[size]
    return make


CUDA_TIMING = "one launch on device-resident arrays + a device sync per call (floor: bench_cuda_launch_floor)"


def cuda_call(launch, *arrays):
    """A timed call for a CUDA kernel bench: `arrays` (NumPy, or lists of them) are copied to the device once,
    here, outside the timing; each call launches the kernel on the device copies (launch(*device_arrays, i) with
    i the call's number) and waits for it, so the time is the kernel's plus one launch and one sync, never a
    host-device copy. Returns (fn, device arrays)."""
    import itertools

    from tinygpt import _cuda
    dev = [[_cuda.DeviceArray(x) for x in a] if isinstance(a, list) else _cuda.DeviceArray(a) for a in arrays]
    count = itertools.count()

    def fn():
        launch(*dev, next(count))
        _cuda.dev.synchronize()
    return fn, dev


def run_pedantic(benchmark, fn, setup=None, rounds=ROUNDS):
    return benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)


def median_s(benchmark) -> float:
    return float(benchmark.stats.stats.median)


@pytest.fixture(autouse=True)
def _let_blas_threads_settle():
    """OpenBLAS worker threads keep spinning for a while after a NumPy matmul; on a 2-core machine they would
    steal the cores from the next benchmark's OpenMP threads (seen: a 0.2 ms kernel measured at 8 ms right
    after a NumPy bench). Idle briefly so every benchmark starts on quiet cores."""
    import time
    time.sleep(0.3)
    yield
