"""Which step graphs an FP8 model needs: runtime scale patching and trivial-scale variants.

Gaudi's FP8 warm-up is long because a scale baked into a graph as a constant makes the graph
of every layer with other scales a different graph. The two settings here, named as Gaudi
names them, decide how many graphs a bucket needs:

- ``RUNTIME_SCALE_PATCHING`` on (the default): the 11 multipliers of a layer are a graph
  input, so one graph per bucket serves every layer; their values never enter a cache key.
  Off: they are baked in, one graph per bucket per distinct tuple of a layer's multipliers
  (layers with equal tuples share one), and the values are in the key.
- ``PT_HPU_H2D_TRIVIAL_SCALES_MODE`` 0/1/2: 1 leaves out the cast multiplies (``1 / s_x``)
  that are exactly 1.0; 2 also the GEMM output rescales (``s_x * s_w``) that are exactly 1.0.
  Leaving out a multiply by 1.0 changes no bit. With patching on, each distinct pattern of
  left-out multiplies is another graph per bucket: the ``cap`` most common patterns get
  one (ties: the pattern of the earliest layer), every other layer runs the mode-0 graph.
  With patching off, a baked graph simply leaves its 1.0s out: no extra graphs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from warmgraph.quant.fp8 import CAST_SLOTS, NUM_SLOTS, RESCALE_SLOTS, SLOTS
from warmgraph.quant.settings import Fp8Settings

NONE_DROPPED = (False,) * NUM_SLOTS


@dataclass(frozen=True)
class Variant:
    """One layer graph per bucket: the slots whose multiply is left out, and the baked values
    (None under runtime scale patching), for ``layers``."""

    drop: tuple[bool, ...]
    baked: tuple[float, ...] | None
    layers: tuple[int, ...]

    @property
    def dropped(self) -> list[str]:
        return [name for name, d in zip(SLOTS, self.drop) if d]


@dataclass(frozen=True)
class VariantPlan:
    """The variants of an FP8 model and which one each layer runs."""

    variants: tuple[Variant, ...]
    assignment: tuple[int, ...]  # layer -> index into variants
    settings: Fp8Settings
    capped: tuple[int, ...] = ()  # layers with a trivial pattern past the cap, sent to the mode-0 graph

    def graphs(self, buckets: int) -> int:
        """Graphs to build for ``buckets`` buckets."""
        return len(self.variants) * buckets


def _values(vector: torch.Tensor | Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in (vector.tolist() if isinstance(vector, torch.Tensor) else vector))
    if len(values) != NUM_SLOTS:
        raise ValueError(f"an FP8 layer has {NUM_SLOTS} multipliers, got {len(values)}")
    return values


def trivial_pattern(values: Sequence[float], mode: int) -> tuple[bool, ...]:
    """The slots a trivial-scales ``mode`` leaves out for these multipliers (exactly 1.0 only)."""
    slots = set(CAST_SLOTS) if mode >= 1 else set()
    if mode >= 2:
        slots |= set(RESCALE_SLOTS)
    return tuple(i in slots and v == 1.0 for i, v in enumerate(values))


def plan_variants(vectors: Sequence[torch.Tensor | Sequence[float]], settings: Fp8Settings) -> VariantPlan:
    """The variants for layers with these multipliers (``quant.model.layer_vectors``)."""
    values = [_values(v) for v in vectors]
    patterns = [trivial_pattern(v, settings.trivial) for v in values]
    if not settings.patching:
        keys: dict[tuple[float, ...], int] = {}
        for v in values:
            keys.setdefault(v, len(keys))
        members: dict[int, list[int]] = {}
        for layer, v in enumerate(values):
            members.setdefault(keys[v], []).append(layer)
        variants = tuple(Variant(trivial_pattern(v, settings.trivial), v, tuple(members[k])) for v, k in keys.items())
        return VariantPlan(variants, tuple(keys[v] for v in values), settings)
    counts = Counter(p for p in patterns if any(p))
    first = {p: patterns.index(p) for p in counts}
    kept = sorted(counts, key=lambda p: (-counts[p], first[p]))[: settings.cap]
    chosen = [p if p in kept else NONE_DROPPED for p in patterns]
    capped = tuple(i for i, p in enumerate(patterns) if any(p) and p not in kept)
    order = ([NONE_DROPPED] if NONE_DROPPED in chosen else []) + kept
    index = {p: i for i, p in enumerate(order)}
    variants = tuple(Variant(p, None, tuple(i for i, c in enumerate(chosen) if c == p)) for p in order)
    return VariantPlan(variants, tuple(index[c] for c in chosen), settings, capped)
