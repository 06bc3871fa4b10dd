"""GPT-2 hyperparameters, read from a Hugging Face config.json or tinygpt metadata (never constants)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import WeightsError

_ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


@dataclass(frozen=True)
class GPT2Config:
    n_vocab: int = 50257
    n_ctx: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    n_inner: int = 0  # 0 means 4 * n_embd, as HF's n_inner=None
    eps: float = 1e-5
    tie_word_embeddings: bool = True

    def __post_init__(self):
        for name in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise WeightsError(f"config: {name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise WeightsError(f"config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not (0 < self.eps < 1):
            raise WeightsError(f"config: layer_norm_epsilon={self.eps!r} is out of range")

    @property
    def d_ff(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPT2Config":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_hf(cls, d: dict) -> "GPT2Config":
        """Map a Hugging Face GPT2Config dict; missing keys take GPT2Config's defaults."""
        d = dict(d)
        for alias, name in _ALIASES.items():
            if alias in d and name not in d:
                d[name] = d[alias]
        mt = d.get("model_type", "gpt2")
        if mt != "gpt2":
            raise WeightsError(f"config.json: model_type is {mt!r}; tinygpt runs GPT-2 models only")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise WeightsError(
                f"config.json: activation_function {act!r} is not supported (tinygpt implements gelu_new, "
                "the tanh approximation GPT-2 uses)")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if d.get(flag):
                raise WeightsError(f"config.json: {flag}=true is not supported")
        if d.get("scale_attn_weights", True) is False:
            raise WeightsError("config.json: scale_attn_weights=false is not supported")
        n_pos = d.get("n_positions", d.get("n_ctx", 1024))
        return cls(
            n_vocab=int(d.get("vocab_size", 50257)),
            n_ctx=int(n_pos),
            n_embd=int(d.get("n_embd", 768)),
            n_head=int(d.get("n_head", 12)),
            n_layer=int(d.get("n_layer", 12)),
            n_inner=int(d.get("n_inner") or 0),
            eps=float(d.get("layer_norm_epsilon", 1e-5)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        )

    @classmethod
    def from_hf_file(cls, path: Path) -> "GPT2Config":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"{path}: config.json not found") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise WeightsError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise WeightsError(f"{path}: expected a JSON object")
        return cls.from_hf(d)
