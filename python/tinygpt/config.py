"""GPT-2 hyperparameters, read from a Hugging Face config.json or tinygpt metadata (never constants).

Values from a file are untrusted: each must have its JSON type (no strings, null, lists, booleans for
integers; no NaN or infinity) and lie within LIMITS, checked before anything is sized from them.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import WeightsError

_ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


# Upper bounds for config values: ~20x GPT-2 XL (48 layers, 1600 wide, 1024 positions, 50257 tokens) in each,
# so every real GPT-2 loads while a 50-byte config.json cannot make the loader build a 10^6-layer table or
# sizes whose products overflow int64. The weights must still match the config tensor by tensor.
LIMITS = {"n_vocab": 1 << 20, "n_ctx": 1 << 16, "n_embd": 1 << 15, "n_head": 1 << 10, "n_layer": 1024,
          "n_inner": 1 << 17}
_MAX_CONFIG_BYTES = 1 << 20


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
        for name in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "n_inner"):
            v = getattr(self, name)
            if type(v) is not int or v < (0 if name == "n_inner" else 1):
                raise WeightsError(f"config: {name} must be a positive integer, got {_show(v)}")
            if v > LIMITS[name]:
                raise WeightsError(f"config: {name}={v} is above tinygpt's limit of {LIMITS[name]} (corrupt config?)")
        if self.n_embd % self.n_head:
            raise WeightsError(f"config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if type(self.eps) not in (int, float) or not math.isfinite(self.eps) or not (0 < self.eps < 1):
            raise WeightsError(f"config: layer_norm_epsilon must be a number in (0, 1), got {_show(self.eps)}")
        if type(self.tie_word_embeddings) is not bool:
            raise WeightsError(f"config: tie_word_embeddings must be true or false, got {_show(self.tie_word_embeddings)}")

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
        if not isinstance(d, dict):
            raise WeightsError(f"config: expected a JSON object, got {type(d).__name__}")
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
        n_inner = d.get("n_inner")
        return cls(
            n_vocab=d.get("vocab_size", 50257),
            n_ctx=n_pos,
            n_embd=d.get("n_embd", 768),
            n_head=d.get("n_head", 12),
            n_layer=d.get("n_layer", 12),
            n_inner=0 if n_inner is None else n_inner,
            eps=d.get("layer_norm_epsilon", 1e-5),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
        )

    @classmethod
    def from_hf_file(cls, path: Path) -> "GPT2Config":
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_CONFIG_BYTES + 1)
            if len(raw) > _MAX_CONFIG_BYTES:
                raise WeightsError(f"{path}: larger than {_MAX_CONFIG_BYTES} bytes; not a config.json")
            d = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"{path}: config.json not found") from None
        except (IsADirectoryError, PermissionError) as e:
            raise WeightsError(f"{path}: cannot read config.json ({e.strerror})") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise WeightsError(f"{path}: not valid JSON ({type(e).__name__})") from None
        if not isinstance(d, dict):
            raise WeightsError(f"{path}: expected a JSON object")
        return cls.from_hf(d)


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."
