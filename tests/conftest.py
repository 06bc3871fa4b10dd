"""Shared fixtures: kernel implementations parametrized over the backends present (missing ones skip with
the reason), the tolerance table, and tiny random-weight checkpoints."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinygpt import backends  # noqa: E402
from tinygpt.ref import attention as ref_attention  # noqa: E402
from tinygpt.ref import embedding as ref_embedding  # noqa: E402
from tinygpt.ref import gelu as ref_gelu  # noqa: E402
from tinygpt.ref import layernorm as ref_layernorm  # noqa: E402
from tinygpt.ref import matmul as ref_matmul  # noqa: E402

# Max error / max(1, max|reference|) against the float64 reference, by kernel. Reduced-precision weights are
# compared with a reference built from the same rounded weights, so they share the float32 tolerance: what
# is tested is the kernel's arithmetic (fp32 accumulation), not the rounding of the weights.
TOL = {"matmul": 3e-6, "layernorm": 3e-6, "attention": 3e-6, "gelu": 2e-6, "embedding": 0.0}
# Whole-model logits vs transformers (fp32): the brief's bound.
MODEL_TOL = {"float32": 1e-4}

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def rel_err(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    assert np.isfinite(got).all(), "non-finite output"
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(1.0, np.abs(ref).max()))


def widen(w, wdtype, wscale=None):
    """Weights of any stored dtype as the float32 values the kernels must compute with."""
    from tinygpt import dtypes
    return dtypes.get(wdtype).widen(w, wscale)


def make_weights(rng, shape, wdtype, scale=1.0):
    """Random weights stored as wdtype: (array, row scales or None)."""
    from tinygpt import dtypes
    return dtypes.get(wdtype).to_stored((rng.standard_normal(shape) * scale).astype(np.float32))


class NumpyKernels:
    name = "numpy"

    def matmul(self, out, inp, w, b=None, flags=0, wdtype="float32", wscale=None):
        w = widen(w, wdtype, wscale)
        ref_matmul.matmul(out, inp, w, b, gelu_act=bool(flags & 1), accumulate=bool(flags & 2))

    def layernorm(self, out, inp, w, b, eps=1e-5):
        ref_layernorm.layernorm(out, inp, w, b, eps)

    def attention(self, out, qkv, k_cache, v_cache, pos0, n_head):
        ref_attention.attention(out, qkv, k_cache, v_cache, pos0, n_head)

    def gelu(self, out, inp):
        ref_gelu.gelu(out, inp)

    def embedding(self, out, tokens, wte, wpe, pos0=0, wdtype="float32", wscale=None):
        wte = widen(wte, wdtype, wscale)
        ref_embedding.embedding(out, np.asarray(tokens), wte, wpe, pos0)


class CpuKernels:
    def __init__(self, mod, isa):
        self.mod, self.isa, self.name = mod, isa, f"cpu-{isa}"

    def __getattr__(self, fn):
        f = getattr(self.mod, fn)
        return lambda *a, **k: f(*a, isa=self.isa, **k)


class CudaKernels:
    name = "cuda"

    def __init__(self, mod):
        self.mod = mod

    def __getattr__(self, fn):
        return getattr(self.mod, fn)


class CudaDeviceKernels:
    """The cuda kernels through DeviceArray and _cuda.dev, the path the kernel benches time: upload, launch,
    download (which waits for the kernel)."""
    name = "cuda-dev"

    def __init__(self, mod):
        self.mod = mod

    def matmul(self, out, inp, w, b=None, flags=0, wdtype="float32"):
        D = self.mod.DeviceArray
        d_out = D(out)
        self.mod.dev.matmul(d_out, D(inp), D(w), None if b is None else D(b), flags, wdtype)
        d_out.download(out)

    def layernorm(self, out, inp, w, b, eps=1e-5):
        D = self.mod.DeviceArray
        d_out = D(out)
        self.mod.dev.layernorm(d_out, D(inp), D(w), D(b), eps)
        d_out.download(out)

    def attention(self, out, qkv, k_cache, v_cache, pos0, n_head):
        D = self.mod.DeviceArray
        H, n_ctx, hd = k_cache.shape
        scratch = D(np.empty(self.mod.dev.attention_scratch_floats(H, hd, n_ctx), np.float32))
        d = [D(a) for a in (out, k_cache, v_cache)]
        self.mod.dev.attention(d[0], D(qkv), d[1], d[2], pos0, n_head, scratch)
        for dev, host in zip(d, (out, k_cache, v_cache)):
            dev.download(host)

    def gelu(self, out, inp):
        D = self.mod.DeviceArray
        d_out = D(out)
        self.mod.dev.gelu(d_out, D(inp))
        d_out.download(out)

    def embedding(self, *a, **k):
        pytest.skip("no DeviceArray embedding binding (no bench times it)")


def _kernel_params():
    params = [pytest.param(NumpyKernels(), id="numpy")]
    ok, why = backends.status()["cpu"]
    levels = ("base", "avx2", "avx512")
    if ok:
        from tinygpt import _cpu
        have = _cpu.isa_levels()
        for isa in levels:
            if isa in have:
                params.append(pytest.param(CpuKernels(_cpu, isa), id=f"cpu-{isa}"))
            else:
                params.append(pytest.param(None, id=f"cpu-{isa}", marks=pytest.mark.skip(
                    reason=f"ISA level {isa} not supported by this CPU (have {', '.join(have)})")))
    else:
        params.append(pytest.param(None, id="cpu", marks=pytest.mark.skip(reason=why)))
    ok, why = backends.status()["cuda"]
    if ok:
        from tinygpt import _cuda
        params.append(pytest.param(CudaKernels(_cuda), id="cuda"))
        params.append(pytest.param(CudaDeviceKernels(_cuda), id="cuda-dev"))
    else:
        params.append(pytest.param(None, id="cuda", marks=pytest.mark.skip(reason=why)))
        params.append(pytest.param(None, id="cuda-dev", marks=pytest.mark.skip(reason=why)))
    return params


KERNEL_PARAMS = _kernel_params()


@pytest.fixture(params=KERNEL_PARAMS)
def kern(request):
    return request.param


def _backend_params():
    out = []
    for name, (ok, why) in backends.status().items():
        out.append(pytest.param(name, id=name, marks=() if ok else pytest.mark.skip(reason=why)))
    return out


BACKEND_PARAMS = _backend_params()


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    return request.param


@pytest.fixture
def rng(request):
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from tiny_model import write_hf_dir
    return write_hf_dir(tmp_path_factory.mktemp("tiny") / "hf", seed=0)


@pytest.fixture(scope="session")
def tiny_converted(tiny_dir, tmp_path_factory):
    from tinygpt.weights import load_checkpoint, save_tinygpt
    out = tmp_path_factory.mktemp("conv") / "tg"
    save_tinygpt(load_checkpoint(tiny_dir), out)
    return out
