"""The GPT-2 forward pass, written once, as a flat plan that every backend executes.

A plan is an int64 array [n_ops, 8]: (op, out_buf, in_buf, weight, bias, flags, layer, 0) (the same numbers are
in csrc/plan.h for the native executors). Weights are
indices into `weight_names`; buffers are per-session activations of n_ctx rows. The NumPy backend walks
the plan in Python; the C++ and CUDA backends walk it natively (one call per forward, so no Python
between kernels, and the CUDA decode step can be captured as a graph).
"""
from __future__ import annotations

import numpy as np

from .config import GPT2Config
from .weights import expected_shapes

OP_EMBED, OP_LAYERNORM, OP_LINEAR, OP_ATTENTION = 1, 2, 3, 4
# activation buffers: X residual [T,C], H normed [T,C], QKV [T,3C], ATT [T,C], FC [T,F], LOGITS [T|1,V]
BUF_X, BUF_H, BUF_QKV, BUF_ATT, BUF_FC, BUF_LOGITS = range(6)
F_GELU = 1  # apply GELU in the matmul epilogue
F_ACCUM = 2  # out += result (residual add fused into the matmul)
F_LAST = 4  # while generating, only the last row is needed (final norm + LM head)
NONE = -1


def buffer_widths(cfg: GPT2Config) -> list[int]:
    C = cfg.n_embd
    return [C, C, 3 * C, C, cfg.d_ff, cfg.n_vocab]


def build_plan(cfg: GPT2Config) -> tuple[np.ndarray, list[str]]:
    names = list(expected_shapes(cfg))
    wid = {n: i for i, n in enumerate(names)}
    ops = [(OP_EMBED, BUF_X, NONE, wid["wte.weight"], wid["wpe.weight"], 0, 0)]
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        ops += [
            (OP_LAYERNORM, BUF_H, BUF_X, wid[p + "ln_1.weight"], wid[p + "ln_1.bias"], 0, i),
            (OP_LINEAR, BUF_QKV, BUF_H, wid[p + "attn.c_attn.weight"], wid[p + "attn.c_attn.bias"], 0, i),
            (OP_ATTENTION, BUF_ATT, BUF_QKV, NONE, NONE, 0, i),
            (OP_LINEAR, BUF_X, BUF_ATT, wid[p + "attn.c_proj.weight"], wid[p + "attn.c_proj.bias"], F_ACCUM, i),
            (OP_LAYERNORM, BUF_H, BUF_X, wid[p + "ln_2.weight"], wid[p + "ln_2.bias"], 0, i),
            (OP_LINEAR, BUF_FC, BUF_H, wid[p + "mlp.c_fc.weight"], wid[p + "mlp.c_fc.bias"], F_GELU, i),
            (OP_LINEAR, BUF_X, BUF_FC, wid[p + "mlp.c_proj.weight"], wid[p + "mlp.c_proj.bias"], F_ACCUM, i),
        ]
    head = wid["wte.weight"] if cfg.tie_word_embeddings else wid["lm_head.weight"]
    ops += [
        (OP_LAYERNORM, BUF_H, BUF_X, wid["ln_f.weight"], wid["ln_f.bias"], F_LAST, 0),
        (OP_LINEAR, BUF_LOGITS, BUF_H, head, NONE, F_LAST, 0),
    ]
    plan = np.array([op + (0,) for op in ops], dtype=np.int64)
    return plan, names
