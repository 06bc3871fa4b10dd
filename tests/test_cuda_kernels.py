"""The CUDA-only kernels and bindings: the device argmax of greedy steps, the split-K decode attention, the
LayerNorm-in-GEMV fusion, and DeviceArray / _cuda.dev (what the kernel benches time). Each kernel's arithmetic is also emulated in NumPy here
and checked against np.argmax / a float64 reference, so the algorithm is tested on machines without a GPU; the
device tests skip without one."""
import math

import numpy as np
import pytest

from conftest import TOL, rel_err
from test_attention import reference as attention_reference
from tinygpt import backends

CUDA_OK, CUDA_WHY = backends.status()["cuda"]
needs_device = pytest.mark.skipif(not CUDA_OK, reason=CUDA_WHY)


def _cuda():
    from tinygpt import _cuda
    return _cuda


# -- argmax (cuda/head_argmax.cu) ------------------------------------------------------------------------------
def argmax_keys(x):
    """The kernel's 64-bit keys: high word = the float's order as unsigned (-0.0 as +0.0, NaN above +inf),
    low word = ~index. The largest key is np.argmax's answer; max is order-free, so the block's reduction
    tree needs no emulation."""
    x = np.ascontiguousarray(x, np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = np.where(x == 0, np.uint64(0), u)
    u = np.where(u & np.uint64(0x80000000), ~u & np.uint64(0xFFFFFFFF), u | np.uint64(0x80000000))
    u = np.where(np.isnan(x), np.uint64(0xFFFFFFFF), u)
    idx = np.arange(x.size, dtype=np.uint64)
    return (u << np.uint64(32)) | (~idx & np.uint64(0xFFFFFFFF))


def emulated_argmax(x):
    return int(~argmax_keys(x).max() & np.uint64(0xFFFFFFFF))


def argmax_cases():
    rng = np.random.default_rng(7)
    inf, nan, big = np.inf, np.nan, np.finfo(np.float32).max
    cases = [[0.0], [-0.0, 0.0], [0.0, -0.0], [-inf] * 5, [-inf, nan], [inf, nan, inf], [nan, nan], [-1.0, -inf],
             [inf, inf], [-big, -inf, -big], [1e-45, 0.0, 1e-45], [-1e-45, -0.0], [3.0] * 7, [-nan, 1.0]]
    for n in (1, 2, 31, 1024, 1025, 50257):
        cases.append(rng.standard_normal(n))
        cases.append(rng.integers(-3, 3, n))  # many ties of the maximum
        x = rng.standard_normal(n)
        x[rng.integers(0, n, 2)] = nan
        cases.append(x)
    x = np.full(50257, -inf)
    x[50256] = -big
    cases.append(x)
    return [np.asarray(c, np.float32) for c in cases]


ARGMAX_CASES = argmax_cases()


def test_argmax_emulation_is_np_argmax():
    for x in ARGMAX_CASES:
        assert emulated_argmax(x) == int(np.argmax(x)), x[:8]


@needs_device
def test_argmax_device():
    c = _cuda()
    out = c.DeviceArray(np.zeros(1, np.int32))
    for x in ARGMAX_CASES:
        want = int(np.argmax(x))
        assert c.argmax(x) == want, x[:8]
        c.dev.argmax(c.DeviceArray(x), out)
        assert int(out.numpy()[0]) == want


def test_argmax_rejects_bad_input():
    c = pytest.importorskip("tinygpt._cuda", reason="CUDA backend not built")
    with pytest.raises(ValueError, match="non-empty"):
        c.argmax(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        c.argmax(np.zeros((2, 2), np.float32))


# -- decode attention (cuda/attention.cu, T == 1) --------------------------------------------------------------
CHUNK, THREADS = 32, 128


def decode_emulation(qkv, kc, vc, pos0, H):
    """attn_decode_kernel in float32: one block per CHUNK keys; scores; chunk softmax (max, exp, sum); V weighted
    by G = THREADS // hd key groups of threads, then summed over the groups; the last block combines the chunks'
    partials by exp(m_c - M). One chunk: its own result."""
    C = qkv.shape[1] // 3
    hd, L = C // H, pos0 + 1
    scale = np.float32(1.0) / np.sqrt(np.float32(hd))
    K, V = kc.copy(), vc.copy()
    K[:, pos0] = qkv[0, C:2 * C].reshape(H, hd)  # kv_write_kernel
    V[:, pos0] = qkv[0, 2 * C:].reshape(H, hd)
    out = np.empty(C, np.float32)
    nch, G = -(-L // CHUNK), THREADS // hd
    for h in range(H):
        q = qkv[0, h * hd:(h + 1) * hd] * scale
        parts = []
        for c in range(nch):
            j0 = c * CHUNK
            k, v = K[h, j0:min(L, j0 + CHUNK)], V[h, j0:min(L, j0 + CHUNK)]
            s = k @ q
            m = s.max()
            p = np.exp(s - m)
            acc = np.zeros(hd, np.float32)
            for g in range(G):
                acc += (p[g::G, None] * v[g::G]).sum(0, dtype=np.float32)
            parts.append((m, p.sum(dtype=np.float32), acc))
        if nch == 1:
            m, l, acc = parts[0]
        else:
            M = max(m for m, _, _ in parts)
            w = [np.exp(np.float32(m - M)) for m, _, _ in parts]
            l = sum(np.float32(wi * li) for wi, (_, li, _) in zip(w, parts))
            acc = sum(wi * a for wi, (_, _, a) in zip(w, parts))
        out[h * hd:(h + 1) * hd] = acc / l
    return out


DECODE_SHAPES = [(0, 1, 1, 4), (31, 2, 8, 64), (32, 2, 8, 64), (63, 3, 20, 64), (64, 3, 24, 160), (95, 2, 128, 96),
                 (300, 5, 20, 512), (1023, 12, 64, 1024)]


def _decode_case(rng, pos0, H, hd, n_ctx):
    C = H * hd
    qkv = rng.standard_normal((1, 3 * C)).astype(np.float32)
    kc = np.full((H, n_ctx, hd), np.nan, np.float32)  # unwritten positions must never be read
    vc = np.full((H, n_ctx, hd), np.nan, np.float32)
    kc[:, :pos0] = rng.standard_normal((H, pos0, hd))
    vc[:, :pos0] = rng.standard_normal((H, pos0, hd))
    return qkv, kc, vc


@pytest.mark.parametrize("pos0,H,hd,n_ctx", DECODE_SHAPES)
def test_decode_emulation_matches_reference(rng, pos0, H, hd, n_ctx):
    qkv, kc, vc = _decode_case(rng, pos0, H, hd, n_ctx)
    ref = attention_reference(qkv, kc[:, :pos0], vc[:, :pos0], pos0, H)
    assert rel_err(decode_emulation(qkv, kc, vc, pos0, H)[None], ref) <= TOL["attention"]


@needs_device
def test_decode_steps_reuse_scratch(rng):
    """Decode steps 0..69 on one set of device buffers, as a session replays its graph: the per-head finish
    counters in the scratch must be reset for every launch (kv_write_kernel zeroes them), across the 1-, 2- and
    3-chunk cases."""
    c = _cuda()
    D = c.DeviceArray
    H, hd, n_ctx, steps = 3, 16, 96, 70
    C = H * hd
    qkv = rng.standard_normal((steps, 3 * C)).astype(np.float32)
    kc, vc, out = D(np.zeros((H, n_ctx, hd), np.float32)), D(np.zeros((H, n_ctx, hd), np.float32)), D(
        np.zeros((1, C), np.float32))
    scratch = D(np.full(c.dev.attention_scratch_floats(H, hd, n_ctx), np.nan, np.float32))
    k_all = qkv[:, C:2 * C].reshape(steps, H, hd).transpose(1, 0, 2)
    v_all = qkv[:, 2 * C:].reshape(steps, H, hd).transpose(1, 0, 2)
    for t in range(steps):
        c.dev.attention(out, D(qkv[t:t + 1].copy()), kc, vc, t, H, scratch)
        ref = attention_reference(qkv[t:t + 1], k_all[:, :t], v_all[:, :t], t, H)
        assert rel_err(out.numpy(), ref) <= TOL["attention"], t


# -- LayerNorm folded into the GEMV (cuda/matmul.cu launch_layernorm_matmul) ---------------------------------------
@needs_device
@pytest.mark.parametrize("wdtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M,N,K", [(1, 37, 29), (1, 2304, 768), (1, 50, 1600), (1, 7, 9000), (3, 70, 100)])
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
def test_layernorm_matmul(rng, M, N, K, wdtype, flags):
    """out (+)= act(layernorm(x) . W^T + b): one kernel at M == 1 (K = 9000 > LN_GEMV_MAX_K and M > 1 take the
    two-kernel path); against float64, and at M == 1 against the device's own layernorm then matmul."""
    from conftest import make_weights, widen
    from test_matmul import reference as matmul_reference
    from tinygpt import dtypes
    c = _cuda()
    D = c.DeviceArray
    x = (rng.standard_normal((M, K)) * 3 + 5).astype(np.float32)
    lw, lb = rng.standard_normal(K).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    w, _ = make_weights(rng, (N, K), wdtype, 1 / math.sqrt(K))
    b = rng.standard_normal(N).astype(np.float32)
    out0 = rng.standard_normal((M, N)).astype(np.float32)
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    ln = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * lw + lb
    d_out, d_w, d_b, d_ln = D(out0), D(w), D(b), D(np.zeros((M, K), np.float32))
    c.dev.layernorm_matmul(d_out, D(x), D(lw), D(lb), d_ln, d_w, d_b, flags, wdtype)
    got = d_out.numpy()
    if M > 1:  # two kernels: ln_out holds the layernorm
        assert rel_err(d_ln.numpy(), ln) <= TOL["layernorm"]
        if wdtype != "float32":  # tensor-core GEMM: the activations are rounded to the weights' 16-bit type; round
            # the device's own layernorm, since a last-bit difference can flip a 16-bit rounding
            ln = widen(dtypes.get(wdtype).to_stored(d_ln.numpy())[0], wdtype)
    ref = matmul_reference(ln, widen(w, wdtype).astype(np.float64), b, flags, out0)
    assert rel_err(got, ref) <= 1e-5
    if M == 1:
        d_ln, d_out2 = D(np.zeros((1, K), np.float32)), D(out0)
        c.dev.layernorm(d_ln, D(x), D(lw), D(lb), 1e-5)
        c.dev.matmul(d_out2, d_ln, d_w, d_b, flags, wdtype)
        assert rel_err(got, d_out2.numpy()) <= 1e-6


# -- DeviceArray and _cuda.dev bindings ------------------------------------------------------------------------
@needs_device
def test_device_array_round_trip_and_checks():
    c = _cuda()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = c.DeviceArray(x)
    assert d.shape == (3, 4) and d.dtype == np.float32 and d.nbytes == 48
    assert np.array_equal(d.numpy(), x)
    d.upload(x * 2)
    y = np.empty_like(x)
    d.download(y)
    assert np.array_equal(y, x * 2)
    with pytest.raises(ValueError, match="shape"):
        d.upload(np.zeros((4, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        c.DeviceArray(x.T)
    D = c.DeviceArray
    with pytest.raises(ValueError, match="expected shape"):
        c.dev.matmul(D(np.zeros((2, 5), np.float32)), D(np.zeros((2, 3), np.float32)), D(np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match="does not match weight dtype"):
        c.dev.matmul(D(np.zeros((2, 4), np.float32)), D(np.zeros((2, 3), np.float32)),
                     D(np.zeros((4, 3), np.float16)), wdtype="bfloat16")
    with pytest.raises(ValueError, match="cpu backend only"):
        c.dev.matmul(D(np.zeros((2, 4), np.float32)), D(np.zeros((2, 3), np.float32)), D(np.zeros((4, 3), np.int8)),
                     wdtype="int8")
    kv = D(np.zeros((2, 8, 4), np.float32))
    small = D(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="scratch needs"):
        c.dev.attention(D(np.zeros((1, 8), np.float32)), D(np.zeros((1, 24), np.float32)), kv, kv, 0, 2, small)
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        c.dev.attention(D(np.zeros((1, 8), np.float32)), D(np.zeros((1, 24), np.float32)), kv, kv, 8, 2, small)
    with pytest.raises(ValueError, match="one int32"):
        c.dev.argmax(D(np.zeros(4, np.float32)), D(np.zeros(2, np.int32)))
    c.dev.synchronize()


def test_scratch_size_formula():
    """attention_scratch_floats = H * ceil(n_ctx / CHUNK) * (2 + hd) partials + H counters (the emulation's CHUNK)."""
    c = pytest.importorskip("tinygpt._cuda", reason="CUDA backend not built")
    for H, hd, n_ctx in [(1, 1, 1), (12, 64, 1024), (25, 64, 1024), (3, 20, 33)]:
        assert c.dev.attention_scratch_floats(H, hd, n_ctx) == H * math.ceil(n_ctx / CHUNK) * (2 + hd) + H
