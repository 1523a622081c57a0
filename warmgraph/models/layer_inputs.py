"""The state one decoder layer passes to its step graph: names, shapes, extraction, zeros.

A step graph takes a layer's weights as inputs, so one graph serves every layer. This spec
is the one place that says which tensors those are and in what order: the engine reads
them from a loaded model (``from_layer``), parallel warmup workers make zeros of the same
shapes (``zeros``), and the step's signature follows ``names``. ``extra`` leaves room for
more per-layer inputs (FP8 scales, for instance) without touching any of those places.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from warmgraph.models.config import LlamaConfig

ShapeOf = Callable[[LlamaConfig], tuple[int, ...]]


def _hidden(c: LlamaConfig) -> tuple[int, ...]:
    return (c.hidden_size,)


def _q(c: LlamaConfig) -> tuple[int, ...]:
    assert c.head_dim is not None
    return (c.num_attention_heads * c.head_dim, c.hidden_size)


def _kv(c: LlamaConfig) -> tuple[int, ...]:
    assert c.head_dim is not None and c.num_key_value_heads is not None
    return (c.num_key_value_heads * c.head_dim, c.hidden_size)


def _o(c: LlamaConfig) -> tuple[int, ...]:
    assert c.head_dim is not None
    return (c.hidden_size, c.num_attention_heads * c.head_dim)


def _up(c: LlamaConfig) -> tuple[int, ...]:
    return (c.intermediate_size, c.hidden_size)


def _down(c: LlamaConfig) -> tuple[int, ...]:
    return (c.hidden_size, c.intermediate_size)


# Transformers' names within a decoder layer, in the order the step takes them.
WEIGHTS: tuple[tuple[str, ShapeOf], ...] = (
    ("input_layernorm.weight", _hidden),
    ("self_attn.q_proj.weight", _q),
    ("self_attn.k_proj.weight", _kv),
    ("self_attn.v_proj.weight", _kv),
    ("self_attn.o_proj.weight", _o),
    ("post_attention_layernorm.weight", _hidden),
    ("mlp.gate_proj.weight", _up),
    ("mlp.up_proj.weight", _up),
    ("mlp.down_proj.weight", _down),
)


@dataclass(frozen=True)
class LayerInputs:
    """Per-layer step inputs: the nine Llama weights, then ``extra`` (name, shape-of-config) pairs."""

    extra: tuple[tuple[str, ShapeOf], ...] = ()

    @property
    def entries(self) -> tuple[tuple[str, ShapeOf], ...]:
        return WEIGHTS + self.extra

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def shapes(self, config: LlamaConfig) -> list[tuple[int, ...]]:
        """Each input's shape for ``config``, in order."""
        return [shape_of(config) for _, shape_of in self.entries]

    def from_layer(self, layer: nn.Module) -> list[torch.Tensor]:
        """A layer's tensors in order: the parameters (or buffers) themselves, detached, never copies."""
        found = dict(layer.named_parameters())
        found.update(dict(layer.named_buffers()))
        missing = [n for n in self.names if n not in found]
        if missing:
            raise KeyError(f"decoder layer has no {', '.join(missing)}")
        return [found[n].detach() for n in self.names]

    def zeros(self, config: LlamaConfig, dtype: torch.dtype, device: torch.device | str = "cpu"
              ) -> list[torch.Tensor]:
        """Zero tensors of the right shapes: enough to compile a step graph with."""
        return [torch.zeros(s, dtype=dtype, device=device) for s in self.shapes(config)]


def kv_cache_shape(config: LlamaConfig, num_blocks: int, block_size: int) -> tuple[int, int, int, int]:
    """One layer's K (or V) cache: ``num_blocks`` blocks plus one scratch block that padding writes to."""
    assert config.head_dim is not None and config.num_key_value_heads is not None
    return (num_blocks + 1, block_size, config.num_key_value_heads, config.head_dim)


def flatten_state(per_layer: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-layer lists of state tensors, concatenated in layer order (the step's bound arguments)."""
    return [t for layer in per_layer for t in layer]
