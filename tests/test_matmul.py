"""matmul kernels vs the float64 reference: odd sizes, M=1 (GEMV) and M>1 (GEMM), bias/GELU/accumulate
epilogues, and f16/bf16 weights (reference built from the same rounded weights); and on the cpu backend, row
invariance: a row's values, bit for bit, whatever else is in the call. The greedy head: test_head_argmax.py."""
import math

import numpy as np
import pytest

from conftest import TOL, make_weights, rel_err, widen
from tinygpt import dtypes

SHAPES = [(1, 1, 1), (1, 7, 5), (1, 37, 29), (1, 50, 768), (2, 3, 5), (5, 33, 17), (6, 64, 64), (7, 65, 129),
          (13, 100, 300), (64, 96, 257), (1, 2304, 768)]


def reference(inp, w64, b, flags, out0):
    y = inp.astype(np.float64) @ w64.T
    if b is not None:
        y += b
    if flags & 1:
        y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))
    return out0.astype(np.float64) + y if flags & 2 else y


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
def test_matmul_f32(kern, rng, M, N, K, flags):
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32) / math.sqrt(K)
    b = rng.standard_normal(N).astype(np.float32)
    out = rng.standard_normal((M, N)).astype(np.float32)  # poison / residual
    ref = reference(inp, w.astype(np.float64), b, flags, out)
    kern.matmul(out, inp, w, b, flags=flags)
    assert rel_err(out, ref) <= TOL["matmul"]


@pytest.mark.parametrize("wdtype", ["float16", "bfloat16", "int8"])
@pytest.mark.parametrize("M,N,K", [(1, 37, 29), (1, 64, 768), (9, 70, 100), (64, 96, 256), (7, 33, 300)])
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
def test_matmul_reduced_precision(kern, rng, M, N, K, wdtype, flags):
    if wdtype == "int8" and kern.name.startswith("cuda"):
        pytest.skip("int8 weights are cpu-only")
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w, scale = make_weights(rng, (N, K), wdtype, 1 / math.sqrt(K))
    w64 = widen(w, wdtype, scale).astype(np.float64)
    b = rng.standard_normal(N).astype(np.float32)
    out = rng.standard_normal((M, N)).astype(np.float32)
    inp_ref = inp
    if kern.name.startswith("cuda") and M > 1:  # tensor-core GEMM: activations are rounded to the weights' 16-bit type
        inp_ref = widen(dtypes.get(wdtype).to_stored(inp)[0], wdtype)
    ref = reference(inp_ref, w64, b, flags, out)
    kw = dict(wscale=scale) if scale is not None else {}
    kern.matmul(out, inp, w, b, flags=flags, wdtype=wdtype, **kw)
    assert rel_err(out, ref) <= TOL["matmul"]


def test_matmul_no_bias_large_k(kern, rng):
    inp = rng.standard_normal((3, 3072)).astype(np.float32)
    w = rng.standard_normal((40, 3072)).astype(np.float32) / 55
    out = np.full((3, 40), np.nan, np.float32)
    kern.matmul(out, inp, w, None)
    assert rel_err(out, reference(inp, w.astype(np.float64), None, 0, out)) <= TOL["matmul"]


@pytest.mark.parametrize("M", [1, 20])
def test_matmul_empty_k(kern, M):
    """K = 0: every dot product is 0, so out is the bias (plus out with accumulate), for small and large M."""
    b = np.arange(3, dtype=np.float32)
    out = np.full((M, 3), 7, np.float32)
    kern.matmul(out, np.zeros((M, 0), np.float32), np.zeros((3, 0), np.float32), b)
    np.testing.assert_array_equal(out, np.broadcast_to(b, (M, 3)))
    kern.matmul(out, np.zeros((M, 0), np.float32), np.zeros((3, 0), np.float32), b, flags=2)
    np.testing.assert_array_equal(out, np.broadcast_to(2 * b, (M, 3)))


def test_matmul_rejects_bad_shapes():
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    from tinygpt import _cpu
    with pytest.raises(ValueError, match="expected shape"):
        _cpu.matmul(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError):  # float64 output cannot be written in place
        _cpu.matmul(np.zeros((2, 4)), np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        _cpu.matmul(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float16))



# -- bf16 activations ("bfloat16a": bf16 weights times activations rounded to bf16, vdpbf16ps where the CPU has it) --
def stored(wdtype):
    return "bfloat16" if wdtype == "bfloat16a" else wdtype


def round_bf16(x):
    """float32 -> nearest bfloat16 (ties to even), as float32: the dtype table's own conversion."""
    return widen(dtypes.get("bfloat16").to_stored(np.asarray(x, np.float32))[0], "bfloat16")


@pytest.mark.parametrize("M,N,K", [(1, 37, 29), (1, 64, 768), (3, 50, 33), (9, 70, 100), (64, 96, 257), (17, 33, 64)])
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
def test_matmul_bf16_activations(kern, rng, M, N, K, flags):
    """Within float32 rounding of the float64 product of the rounded activations and the bf16 weights, at every
    cpu ISA level (AVX512_BF16 or not); an unrounded reference is off by the rounding (so the rounding happens)."""
    if not isinstance(kern.name, str) or not kern.name.startswith("cpu"):
        pytest.skip("bf16 activations are a cpu-backend option")
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w, _ = make_weights(rng, (N, K), "bfloat16", 1 / math.sqrt(K))
    w64 = widen(w, "bfloat16").astype(np.float64)
    b = rng.standard_normal(N).astype(np.float32)
    out = rng.standard_normal((M, N)).astype(np.float32)
    ref = reference(round_bf16(inp), w64, b, flags, out)
    exact = reference(inp, w64, b, flags, out)
    kern.matmul(out, inp, w, b, flags=flags, wdtype="bfloat16a")
    assert rel_err(out, ref) <= TOL["matmul"]
    if K >= 29 and flags != 2:
        assert rel_err(out, exact) > 10 * TOL["matmul"]


def test_bf16_activations_is_a_matmul_dtype_only():
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    from tinygpt import _cpu
    with pytest.raises(ValueError, match="dtype"):
        _cpu.embedding(np.zeros((1, 4), np.float32), np.zeros(1, np.int32), np.zeros((3, 4), np.uint16),
                       np.zeros((2, 4), np.float32), 0, "bfloat16a")


# -- row invariance: a row's values do not depend on the other rows of the call, nor on the thread count --------
def _cpu_kern(kern):
    if not isinstance(kern.name, str) or not kern.name.startswith("cpu"):
        pytest.skip("bitwise row invariance is a cpu-backend property (numpy's BLAS and cuda are not held to it)")
    return kern


@pytest.mark.parametrize("wdtype", ["float32", "float16", "bfloat16", "int8", "bfloat16a"])
@pytest.mark.parametrize("flags", [0, 1, 2], ids=["plain", "gelu", "accum"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
# bf16a: N = 1999 chunks of several L2 parts; K > 1536 in k-blocks of 1536 (K = 2001: a first and a last one with
# a tail step; 4000 and 6000: middle ones too)
@pytest.mark.parametrize("N,K", [(301, 203), (37, 5), (70, 768), (45, 4000), (1999, 1000), (29, 6000), (33, 2001)])
def test_matmul_rows_bitwise_invariant(kern, rng, N, K, wdtype, flags, bias):
    """The rows of one M-row call equal bit for bit the same rows computed one at a time, in random sub-batches
    (small and large M take different drivers), and with 1 or 2 threads."""
    kern = _cpu_kern(kern)
    from tinygpt import _cpu
    M = 40
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w, scale = make_weights(rng, (N, K), stored(wdtype), 1 / math.sqrt(K))
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    resid = rng.standard_normal((M, N)).astype(np.float32)
    kw = dict(wscale=scale) if scale is not None else {}

    def run(rows, threads=2):
        out = resid[rows].copy()
        before = _cpu.get_num_threads()
        _cpu.set_num_threads(threads)
        try:
            kern.matmul(out, np.ascontiguousarray(inp[rows]), w, b, flags=flags, wdtype=wdtype, **kw)
        finally:
            _cpu.set_num_threads(before)
        return out

    full = run(np.arange(M))
    inp_ref = round_bf16(inp) if wdtype == "bfloat16a" else inp
    w64 = widen(w, stored(wdtype), scale).astype(np.float64)
    assert rel_err(full, reference(inp_ref, w64, b, flags, resid)) <= 3e-5
    np.testing.assert_array_equal(run(np.arange(M), threads=1), full)
    for m in rng.choice(M, 12, replace=False):
        np.testing.assert_array_equal(run(np.array([m]))[0], full[m], err_msg=f"row {m} alone")
    for _ in range(2):
        perm, at = rng.permutation(M), 0
        while at < M:
            n = int(rng.integers(1, 21))
            rows = perm[at:at + n]
            np.testing.assert_array_equal(run(rows, threads=int(rng.integers(1, 3))), full[rows],
                                          err_msg=f"sub-batch of {len(rows)}")
            at += n


@pytest.mark.parametrize("wdtype", ["float32", "bfloat16", "int8"])
def test_matmul_gemm_weight_chunks_and_concurrent_callers(kern, rng, wdtype):
    """The prefill GEMM packs each thread's weight rows in chunks of up to 8 MB (here K = 4000: 512 rows, so 2
    chunks per thread with 2 threads, 3 with 1), in a workspace leased for the call from a small pool. Rows are the
    same bits as each row alone (the small-M driver, no chunks), with 1 or 2 threads, and when three Python threads
    call at once with different shapes (each with its own lease; the pool keeps two idle buffers)."""
    import threading
    kern = _cpu_kern(kern)
    from tinygpt import _cpu
    M, N, K = 37, 1100, 4000
    inp = rng.standard_normal((M, K)).astype(np.float32)
    w, scale = make_weights(rng, (N, K), wdtype, 1 / math.sqrt(K))
    b = rng.standard_normal(N).astype(np.float32)
    kw = dict(wscale=scale) if scale is not None else {}

    def run(x, flags=1):
        out = np.zeros((len(x), N), np.float32)
        kern.matmul(out, np.ascontiguousarray(x), w, b, flags=flags, wdtype=wdtype, **kw)
        return out

    full = run(inp)
    assert rel_err(full, reference(inp, widen(w, wdtype, scale).astype(np.float64), b, 1, full)) <= 3e-5
    for m in (0, 17, 36):
        np.testing.assert_array_equal(run(inp[m:m + 1])[0], full[m], err_msg=f"row {m} alone")
    before = _cpu.get_num_threads()
    _cpu.set_num_threads(1)
    try:
        np.testing.assert_array_equal(run(inp), full)
    finally:
        _cpu.set_num_threads(before)
    # concurrent callers: 20, 37 and 30 rows, several times each, against the single-threaded results
    jobs = [inp[:20], inp, inp[7:]]
    want = [full[:20], full, full[7:]]
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                if not np.array_equal(run(jobs[i]), want[i]):
                    errors.append(f"caller {i}: different bits")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"caller {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


_TEAM_SCRIPT = """
import sys, numpy as np
from tinygpt import _cpu
rng = np.random.default_rng(0)
res = []
for M, N, K, dt in ((4, 301, 203, "float32"), (40, 45, 6000, "float32"), (4, 301, 203, "bfloat16a"),
                    (40, 301, 203, "bfloat16a")):
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    if dt == "bfloat16a":
        w = (w.view(np.uint32) >> 16).astype(np.uint16)
    out = rng.standard_normal((M, N)).astype(np.float32)
    _cpu.matmul(out, x, w, None, 2, dt)  # accumulate: the small-M driver's per-thread scratch
    res.append(out.ravel())
np.save(sys.argv[1], np.concatenate(res))
"""


def test_matmul_cpu_team_smaller_than_asked(tmp_path):
    """OpenMP may run a region with fewer threads than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC, a nested region):
    each thread then takes a longer range of columns than a split over the asked count would give it. Per-thread
    buffers must not be sized from that split (an earlier fp32 GEMM kept a copy of its range's weights sized so,
    and this test failed; now a thread packs its range in chunks of a fixed size), and the values are the same
    bits."""
    pytest.importorskip("tinygpt._cpu", reason="C++ backend not built")
    import os
    import subprocess
    import sys
    got = {}
    for name, limit in (("full", None), ("one", "1")):
        env = dict(os.environ, TINYGPT_NUM_THREADS="2")
        env.pop("OMP_THREAD_LIMIT", None)
        if limit:
            env["OMP_THREAD_LIMIT"] = limit
        r = subprocess.run([sys.executable, "-c", _TEAM_SCRIPT, str(tmp_path / f"{name}.npy")], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        got[name] = np.load(tmp_path / f"{name}.npy")
    assert np.array_equal(got["full"], got["one"])
