"""GPT-2: the weight schema and the forward pass in NumPy (picoGPT's shape), over a batch of sequences.

The native executors run the same forward from csrc/forward.h (one C++ template for the CPU and CUDA backends);
this module is the NumPy backend's. Every matrix is stored [out, in] (nn.Linear's layout).
"""
from __future__ import annotations

import numpy as np

from .config import GPT2Config
from .ref.attention import attention
from .ref.embedding import embedding
from .ref.layernorm import layernorm
from .ref.matmul import matmul

_MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def weight_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, [out, in] for matrices, in the order csrc/forward.h lists them."""
    C, F, V = cfg.n_embd, cfg.d_ff, cfg.n_vocab
    s: dict[str, tuple[int, ...]] = {"wte.weight": (V, C), "wpe.weight": (cfg.n_ctx, C)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        s.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (F, C), p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (C, F), p + "mlp.c_proj.bias": (C,),
        })
    s.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    if not cfg.tie_word_embeddings:
        s["lm_head.weight"] = (V, C)
    return s


def is_matrix(name: str) -> bool:
    """Tensors stored in the checkpoint's matrix dtype (the rest are float32)."""
    return name in ("wte.weight", "lm_head.weight") or name.endswith(_MATRICES)


def head_name(cfg: GPT2Config) -> str:
    return "wte.weight" if cfg.tie_word_embeddings else "lm_head.weight"


def forward(w: dict, cfg: GPT2Config, tokens: list, caches: list, pos: list, out_rows: list) -> np.ndarray:
    """One forward over a ragged batch: sequence s appends tokens[s] (int32 [n_s]) at position pos[s] of its cache
    caches[s] = (k, v), each float32 [n_layer, H, n_ctx, hd]. Returns the logits of the rows listed in out_rows
    (indices into the concatenated rows), float32 [len(out_rows), n_vocab]. w: float32 arrays by schema name."""
    C, H = cfg.n_embd, cfg.n_head
    r0 = np.cumsum([0] + [len(t) for t in tokens])
    R = int(r0[-1])
    x = np.empty((R, C), np.float32)
    for s, t in enumerate(tokens):
        embedding(x[r0[s]:r0[s + 1]], t, w["wte.weight"], w["wpe.weight"], pos[s])
    h, att = np.empty_like(x), np.empty_like(x)
    qkv = np.empty((R, 3 * C), np.float32)
    fc = np.empty((R, cfg.d_ff), np.float32)
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        layernorm(h, x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], cfg.eps)
        matmul(qkv, h, w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"])
        for s in range(len(tokens)):
            rows = slice(r0[s], r0[s + 1])
            attention(att[rows], qkv[rows], caches[s][0][i], caches[s][1][i], pos[s], H)
        matmul(x, att, w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"], accumulate=True)
        layernorm(h, x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], cfg.eps)
        matmul(fc, h, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"], gelu_act=True)
        matmul(x, fc, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"], accumulate=True)
    out = np.empty((len(out_rows), C), np.float32)
    layernorm(out, x[np.asarray(out_rows, np.int64)], w["ln_f.weight"], w["ln_f.bias"], cfg.eps)
    logits = np.empty((len(out_rows), cfg.n_vocab), np.float32)
    matmul(logits, out, w[head_name(cfg)], None)
    return logits
