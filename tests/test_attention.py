"""attention kernels vs a float64 causal-softmax reference: prefill, single-token decode over a long cache,
chunked prefill (pos0 > 0), odd head dims; and prefill == token-by-token decode."""
import numpy as np
import pytest

from conftest import TOL, rel_err


def reference(qkv, k_prev, v_prev, pos0, H):
    """qkv[T,3C]; k_prev/v_prev[H, pos0, hd] hold earlier positions."""
    T, C = qkv.shape[0], qkv.shape[1] // 3
    hd = C // H
    q, k, v = (qkv[:, i * C:(i + 1) * C].astype(np.float64).reshape(T, H, hd).transpose(1, 0, 2) for i in range(3))
    K = np.concatenate([k_prev.astype(np.float64), k], axis=1)
    V = np.concatenate([v_prev.astype(np.float64), v], axis=1)
    s = q @ K.transpose(0, 2, 1) / np.sqrt(hd)
    mask = np.arange(pos0 + T)[None, :] > (pos0 + np.arange(T))[:, None]
    s[:, mask] = -np.inf
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ V).transpose(1, 0, 2).reshape(T, C)


@pytest.mark.parametrize("T,pos0,H,hd,n_ctx", [
    (1, 0, 1, 1, 4), (1, 0, 2, 8, 16), (5, 0, 3, 7, 8), (17, 0, 4, 16, 32), (64, 0, 12, 64, 64),
    (1, 1023, 12, 64, 1024), (1, 300, 5, 20, 512), (9, 40, 2, 64, 64), (33, 100, 3, 24, 160),
    (1, 31, 2, 8, 64), (1, 32, 2, 8, 64), (1, 95, 2, 128, 96)])  # decode at 1-, 2- and 3-chunk edges; hd 128
def test_attention(kern, rng, T, pos0, H, hd, n_ctx):
    C = H * hd
    qkv = rng.standard_normal((T, 3 * C)).astype(np.float32)
    kc = np.full((H, n_ctx, hd), np.nan, np.float32)  # unwritten positions must never be read
    vc = np.full((H, n_ctx, hd), np.nan, np.float32)
    kc[:, :pos0] = rng.standard_normal((H, pos0, hd))
    vc[:, :pos0] = rng.standard_normal((H, pos0, hd))
    ref = reference(qkv, kc[:, :pos0], vc[:, :pos0], pos0, H)
    out = np.full((T, C), np.nan, np.float32)
    kern.attention(out, qkv, kc, vc, pos0, H)
    assert rel_err(out, ref) <= TOL["attention"]
    kq = qkv[:, C:2 * C].reshape(T, H, hd).transpose(1, 0, 2)
    assert np.array_equal(kc[:, pos0:pos0 + T], kq), "k not written to the cache"


def test_prefill_equals_decode(kern, rng):
    T, H, hd, n_ctx = 12, 3, 16, 16
    C = H * hd
    qkv = rng.standard_normal((T, 3 * C)).astype(np.float32)
    caches = [np.zeros((H, n_ctx, hd), np.float32) for _ in range(4)]
    full = np.zeros((T, C), np.float32)
    kern.attention(full, qkv, caches[0], caches[1], 0, H)
    step = np.zeros((T, C), np.float32)
    for t in range(T):
        o = np.zeros((1, C), np.float32)
        kern.attention(o, qkv[t:t + 1].copy(), caches[2], caches[3], t, H)
        step[t] = o[0]
    np.testing.assert_allclose(step, full, rtol=0, atol=1e-5)


def _chunked(kern, qkv, H, hd, n_ctx, sizes):
    """Runs qkv through kern.attention in chunks of the given sizes; returns (out, k_cache, v_cache)."""
    T, C = qkv.shape[0], H * hd
    kc, vc = np.zeros((H, n_ctx, hd), np.float32), np.zeros((H, n_ctx, hd), np.float32)
    out = np.full((T, C), np.nan, np.float32)
    t = 0
    for n in sizes:
        o = np.full((n, C), np.nan, np.float32)
        kern.attention(o, qkv[t:t + n].copy(), kc, vc, t, H)
        out[t:t + n] = o
        t += n
    assert t == T
    return out, kc, vc


@pytest.mark.parametrize("T,H,hd", [(37, 3, 64), (150, 2, 64), (23, 2, 7), (29, 3, 20), (19, 1, 128), (6, 1, 1),
                                    (41, 2, 33)])
def test_query_output_bitwise_independent_of_grouping(kern, rng, T, H, hd):
    """The project's exactness invariant (a query's output is the same bits alone in a decode step or inside a
    prefill of any length or chunking), checked on odd sizes: whole prefill, random chunks (sizes that take both
    the per-query and the query-block paths, at unaligned offsets), and token-by-token decode."""
    if not kern.name.startswith("cpu"):
        pytest.skip("bitwise grouping invariance is the cpu backend's guarantee")
    C, n_ctx = H * hd, T + 5
    qkv = (rng.standard_normal((T, 3 * C)) * 2).astype(np.float32)
    whole = _chunked(kern, qkv, H, hd, n_ctx, [T])
    cuts = []
    while sum(cuts) < T:
        cuts.append(int(min(rng.integers(1, max(3, T // 2)), T - sum(cuts))))
    assert len(cuts) > 1
    for sizes in (cuts, [1] * T):
        got = _chunked(kern, qkv, H, hd, n_ctx, sizes)
        for g, w in zip(got, whole):
            assert np.array_equal(g.view(np.uint32), w.view(np.uint32)), f"chunks {sizes}"
    assert rel_err(whole[0], reference(qkv, np.zeros((H, 0, hd)), np.zeros((H, 0, hd)), 0, H)) <= TOL["attention"]
