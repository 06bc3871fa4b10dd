"""Causal multi-head attention over a KV cache.

qkv[T, 3C] holds q|k|v for positions pos0..pos0+T-1 (head h is columns h*hd..(h+1)*hd of each third).
k_cache/v_cache[n_head, n_ctx, hd] receive this chunk's k and v; out[T, C] gets softmax(q k^T / sqrt(hd)) v
with query t seeing keys 0..pos0+t (mask aligned bottom-right, as HF does with a cache).
"""
import math

import numpy as np


def attention(out: np.ndarray, qkv: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos0: int,
              n_head: int) -> None:
    T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_head
    L = pos0 + T
    q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(T, n_head, hd).transpose(1, 0, 2) for i in range(3))
    k_cache[:, pos0:L] = k
    v_cache[:, pos0:L] = v
    K, V = k_cache[:, :L], v_cache[:, :L]
    s = (q @ K.transpose(0, 2, 1)) * (1.0 / math.sqrt(hd))  # [H, T, L]
    if T > 1:
        mask = np.arange(L)[None, :] > (pos0 + np.arange(T))[:, None]
        s[:, mask] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    out[...] = (s @ V).transpose(1, 0, 2).reshape(T, C)
