"""LlamaConfig: a Llama-family model's shape, read from and written to Hugging Face ``config.json``.

Validated on construction: a field that cannot work raises ConfigError naming the field, the
value and what is allowed. Also the dtype names warmgraph accepts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from warmgraph.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def canonical_dtype(name: str) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` for a name or alias (fp32, bf16, fp16, half)."""
    key = str(name).removeprefix("torch.").lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in _DTYPES:
        raise ConfigError(f"dtype {name!r} is not supported; use one of {', '.join(_DTYPES)} (or fp32, bf16, fp16)")
    return key


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a name accepted by ``canonical_dtype``."""
    return _DTYPES[canonical_dtype(name)]


def dtype_name(dtype: torch.dtype) -> str:
    """The config name (``"bfloat16"`` ...) of a torch dtype warmgraph supports."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ConfigError(f"dtype {dtype} is not supported; use one of {', '.join(_DTYPES)}")


# -- config ---------------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"LlamaConfig.{name}={value!r} is not allowed; it must be a positive integer")


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"LlamaConfig.{name}={value!r} is not allowed; it must be a positive finite number")
    return value


def _normalize_rope_scaling(scaling: Any, max_positions: int) -> dict[str, Any] | None:
    """A validated copy of ``rope_scaling`` with ``rope_type`` set, or None for plain RoPE."""
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping):
        raise ConfigError(f"LlamaConfig.rope_scaling={scaling!r} is not allowed; it must be a dict or null")
    # Older checkpoints spell the key "type"; transformers reads either.
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type == "dynamic":
        raise ConfigError("LlamaConfig.rope_scaling.rope_type='dynamic' is not supported: dynamic NTK scaling changes "
                          "the frequencies with the sequence length, which a captured graph cannot follow; "
                          f"supported: {', '.join(ROPE_TYPES)}")
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"LlamaConfig.rope_scaling.rope_type={rope_type!r} is not supported; "
                          f"supported: {', '.join(ROPE_TYPES)}")
    partial = scaling.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise ConfigError(f"LlamaConfig.rope_scaling.partial_rotary_factor={partial!r} is not supported; "
                          "only 1.0 (RoPE over the whole head)")
    out: dict[str, Any] = {"rope_type": rope_type}
    keys = ("factor",) if rope_type == "linear" else _LLAMA3_KEYS
    for key in keys:
        value = scaling.get(key)
        if value is None and key == "original_max_position_embeddings":
            value = max_positions  # transformers' fallback when a llama3 config omits it
        if value is None:
            raise ConfigError(f"LlamaConfig.rope_scaling.{key} is missing; rope_type {rope_type!r} needs "
                              f"{', '.join(keys)}")
        out[key] = _positive_number(f"rope_scaling.{key}", value)
    if rope_type == "llama3" and not out["high_freq_factor"] > out["low_freq_factor"]:
        raise ConfigError(f"LlamaConfig.rope_scaling: high_freq_factor={out['high_freq_factor']} must be greater "
                          f"than low_freq_factor={out['low_freq_factor']} (the llama3 smoothing divides by the gap)")
    return out


@dataclass(frozen=True)
class LlamaConfig:
    """The shape and numerics of a Llama-family decoder, as in a Hugging Face ``config.json``.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads`` and ``num_key_value_heads`` to
    ``num_attention_heads``; both are filled in after construction. ``rope_scaling`` is stored
    normalised (``rope_type`` key present) or None for plain RoPE. ``eos_token_id`` given as a
    list is stored as a tuple so the config stays immutable. Invalid values raise ConfigError
    naming the field, the value and what is allowed.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    torch_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            _positive_int(name, getattr(self, name))
        heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % heads:
                raise ConfigError(f"LlamaConfig.hidden_size={self.hidden_size} is not divisible by "
                                  f"num_attention_heads={heads}; give head_dim explicitly or change one of them")
            object.__setattr__(self, "head_dim", self.hidden_size // heads)
        _positive_int("head_dim", self.head_dim)
        if self.head_dim % 2:
            raise ConfigError(f"LlamaConfig.head_dim={self.head_dim} is not allowed; rotate-half RoPE needs it even")
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", heads)
        _positive_int("num_key_value_heads", self.num_key_value_heads)
        if heads % self.num_key_value_heads:
            raise ConfigError(f"LlamaConfig.num_key_value_heads={self.num_key_value_heads} is not allowed; it must "
                              f"divide num_attention_heads={heads} (each kv head serves a whole group)")
        _positive_number("rms_norm_eps", self.rms_norm_eps)
        _positive_number("rope_theta", self.rope_theta)
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError(f"LlamaConfig.tie_word_embeddings={self.tie_word_embeddings!r} must be true or false")
        object.__setattr__(self, "rope_scaling",
                           _normalize_rope_scaling(self.rope_scaling, self.max_position_embeddings))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        for name, tid in [("bos_token_id", self.bos_token_id), *(("eos_token_id", t) for t in self.eos_token_ids)]:
            bad = isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < self.vocab_size
            if tid is not None and bad:
                raise ConfigError(f"LlamaConfig.{name}={tid!r} is not allowed; it must be a token id in "
                                  f"[0, {self.vocab_size}) or null")
        object.__setattr__(self, "torch_dtype", canonical_dtype(self.torch_dtype))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """``eos_token_id`` as a tuple (empty when there is none)."""
        eos = self.eos_token_id
        return () if eos is None else eos if isinstance(eos, tuple) else (eos,)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> LlamaConfig:
        """Read a Hugging Face ``config.json`` dict (transformers 4.x ``rope_scaling``/``rope_theta``
        or 5.x ``rope_parameters``). Raises ConfigError naming the field that is missing, has a bad
        value or asks for something this decoder does not implement (biases, other activations,
        sliding-window attention, partial rotary)."""
        if not isinstance(hf, Mapping):
            raise ConfigError(f"config.json must hold a JSON object, found {type(hf).__name__}")
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"config.json: model_type={model_type!r} is not supported; warmgraph loads Llama-family "
                              f"decoders ({', '.join(SUPPORTED_MODEL_TYPES)})")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        for name in required:
            if hf.get(name) is None:
                raise ConfigError(f"config.json: field {name!r} is missing; a {model_type} config needs "
                                  f"{', '.join(required)}")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"config.json: hidden_act={act!r} is not supported; the Llama MLP here is SwiGLU (silu)")
        for name in ("attention_bias", "mlp_bias"):
            if hf.get(name):
                raise ConfigError(f"config.json: {name}=true is not supported; only bias-free projections")
        window = hf.get("sliding_window")
        max_pos = hf.get("max_position_embeddings", 2048)
        if isinstance(window, int) and isinstance(max_pos, int) and window < max_pos:
            raise ConfigError(f"config.json: sliding_window={window} is below max_position_embeddings={max_pos}; "
                              "sliding-window attention is not supported (set sliding_window to null)")
        if hf.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError(f"config.json: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")
        params = hf.get("rope_parameters")
        if params:
            if not isinstance(params, Mapping) or any(isinstance(v, Mapping) for v in params.values()):
                raise ConfigError("config.json: rope_parameters must be one flat dict (per-layer RoPE is unsupported)")
            scaling = {k: v for k, v in params.items() if k != "rope_theta"}
            theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        else:
            scaling, theta = hf.get("rope_scaling"), hf.get("rope_theta", 10000.0)
        eos = hf.get("eos_token_id", 2)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim"),
            max_position_embeddings=max_pos,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=dict(scaling) if isinstance(scaling, Mapping) else scaling,
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            torch_dtype=hf.get("torch_dtype") or hf.get("dtype") or "float32",
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers 4.x and 5.x both read as ``LlamaForCausalLM``."""
        out = asdict(self)
        out["eos_token_id"] = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        out["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        out.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", attention_bias=False,
                   mlp_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True)
        return out
