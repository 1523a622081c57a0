"""FP8 (e4m3) matmuls of a decoder layer: the scale vector, the math, and the dense module.

A Llama layer has four activations that feed linears, and each is cast to FP8 once, with
one input scale, whatever number of linears reads it (q/k/v share the normed input, gate/up
share the post-attention norm, as vLLM shares ``input_scale.max()``). Per layer that is 4
casts and 7 GEMMs, and 11 numbers say everything a graph multiplies by (``SLOTS``)::

    x_fp8 = fp8(x * (1 / s_x))                 # the cast: one multiply per activation
    y     = (x_fp8 @ w_fp8^T) * (s_x * s_w)    # the GEMM and its output rescale, per linear

Both numbers are float32, computed once on the host (``layer_vector``), so a graph that reads
them from a tensor (runtime scale patching) and one that has them baked in as constants
multiply by the same float32 value, and produce the same bits. A dropped multiply (a trivial
scale of exactly 1.0) is the identity, so trivial-scale variants are bit-exact too.

The math runs one of two ways, chosen by ``WARMGRAPH_FP8_MATH`` (``auto``, ``scaled_mm``,
``emulate``): ``torch._scaled_mm`` where the device has FP8 GEMMs (CUDA sm89 and later), with
weights kept as float8; elsewhere emulation: the FP8 weights upcast to the activations' dtype
once at load (every e4m3 value is exact in bf16 and fp32), the cast of the activation done for
real (``.to(float8_e4m3fn)`` and back), a GEMM in that dtype, then the rescale. On a CPU,
``_scaled_mm`` runs a reference kernel about 700 times slower than bf16 at one token
(measured here), so emulation is the usable path there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from warmgraph.errors import ConfigError
from warmgraph.quant.settings import MATHS

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3fn value

# The activations of a layer and the linears that read each, in the step's order.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("o", ("self_attn.o_proj",)),
    ("gate_up", ("mlp.gate_proj", "mlp.up_proj")),
    ("down", ("mlp.down_proj",)),
)
LINEARS: tuple[str, ...] = tuple(name for _, names in GROUPS for name in names)


def _slots() -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    names, casts, rescales = [], [], []
    for group, linears in GROUPS:
        casts.append(len(names))
        names.append(f"{group}.input")  # 1 / s_x: the multiply of the cast to FP8
        for linear in linears:
            rescales.append(len(names))
            names.append(f"{linear}.rescale")  # s_x * s_w: the GEMM's output rescale
    return tuple(names), tuple(casts), tuple(rescales)


SLOTS, CAST_SLOTS, RESCALE_SLOTS = _slots()
NUM_SLOTS = len(SLOTS)  # 11 for a Llama layer


def layer_vector(input_scales: Sequence[float], weight_scales: Sequence[float]) -> torch.Tensor:
    """The float32 ``(NUM_SLOTS,)`` vector of a layer from its 4 input scales (one per group) and
    7 weight scales (``LINEARS`` order). Raises ConfigError for a scale that is not positive."""
    if len(input_scales) != len(GROUPS) or len(weight_scales) != len(LINEARS):
        raise ValueError(f"need {len(GROUPS)} input and {len(LINEARS)} weight scales, "
                         f"got {len(input_scales)} and {len(weight_scales)}")
    for value in (*input_scales, *weight_scales):
        if not (value > 0 and value < float("inf")):
            raise ConfigError(f"an FP8 scale of {value!r} cannot work; scales must be positive and finite")
    values: list[torch.Tensor] = []
    weights = iter(weight_scales)
    for (_, linears), s_x in zip(GROUPS, input_scales):
        sx = torch.tensor(s_x, dtype=torch.float32)
        values.append(torch.tensor(1.0, dtype=torch.float32) / sx)
        values.extend(sx * torch.tensor(next(weights), dtype=torch.float32) for _ in linears)
    return torch.stack(values)


def fp8_math(device_type: str, choice: str | None = None) -> str:
    """``scaled_mm`` or ``emulate`` for a device; ``choice`` (default ``$WARMGRAPH_FP8_MATH``,
    else ``auto``) forces one. ``scaled_mm`` on a device without FP8 GEMMs is a ConfigError."""
    choice = (choice or os.environ.get("WARMGRAPH_FP8_MATH") or "auto").strip().lower()
    if choice not in MATHS:
        raise ConfigError(f"WARMGRAPH_FP8_MATH={choice!r} is not one of {', '.join(MATHS)}")
    native = device_type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
    if choice == "scaled_mm" and not native:
        raise ConfigError(f"FP8 math 'scaled_mm' needs a GPU with FP8 GEMMs (CUDA sm89 or later), not {device_type}; "
                          "use --fp8-math emulate or auto (WARMGRAPH_FP8_MATH=emulate)")
    if choice == "auto":
        return "scaled_mm" if native else "emulate"
    return choice


def weight_dtype(math: str, activation_dtype: torch.dtype) -> torch.dtype:
    """How FP8 weights are held for ``math``: float8 for ``scaled_mm``, upcast for emulation."""
    return FP8_DTYPE if math == "scaled_mm" else activation_dtype


def to_fp8(x: torch.Tensor, inv_scale: torch.Tensor | float | None) -> torch.Tensor:
    """Cast to e4m3fn, saturating at +-448 (a plain cast would make inf out of range);
    ``inv_scale`` None: the multiply is dropped (a trivial scale).

    The multiply is done in float32 whatever ``x``'s dtype: a 0-dim float32 tensor times a bf16
    tensor may be rounded to bf16 first on some devices (a Python float is not), so patched and
    baked scales would differ; in float32 both are the same operation everywhere."""
    x = x.to(torch.float32)
    if inv_scale is not None:
        x = x * inv_scale
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _rescale(y: torch.Tensor, rescale: torch.Tensor | float | None) -> torch.Tensor:
    """The GEMM output times its rescale, in float32 (see ``to_fp8``), back in ``y``'s dtype."""
    return y if rescale is None else (y.to(torch.float32) * rescale).to(y.dtype)


def fp8_group(x: torch.Tensor, weights: Sequence[torch.Tensor], inv_scale: torch.Tensor | float | None,
              rescales: Sequence[torch.Tensor | float | None], math: str) -> list[torch.Tensor]:
    """The linears that read one activation: ``x (..., K)`` cast once, then ``x_fp8 @ w^T *
    rescale`` per weight ``(N, K)``; a None multiplier is skipped. Outputs in ``x``'s dtype."""
    xq = to_fp8(x, inv_scale)
    out = []
    if math == "scaled_mm":
        flat = xq.reshape(-1, xq.shape[-1])
        one = torch.ones((), dtype=torch.float32, device=x.device)
        for w, rescale in zip(weights, rescales):
            scale = one if rescale is None else torch.as_tensor(rescale, dtype=torch.float32, device=x.device)
            y = torch._scaled_mm(flat, w.t(), scale_a=scale, scale_b=one, out_dtype=x.dtype)
            out.append(y.reshape(*x.shape[:-1], w.shape[0]))
        return out
    xe = xq.to(x.dtype)
    for w, rescale in zip(weights, rescales):
        out.append(_rescale(xe @ w.t(), rescale))
    return out


class Fp8Scales(nn.Module):
    """How a step graph gets its 11 multipliers: from a bound tensor (runtime scale patching,
    ``baked`` None) or as constants baked into the graph (``baked``: the vector's float32 values
    as Python floats). ``drop[i]`` leaves slot ``i``'s multiply out (trivial-scale variants).

    Plain attributes, so they are part of the graph's fingerprint: the layout, the math, the
    dropped slots and (baked) the values: a baked graph's cache key carries its scales.
    """

    def __init__(self, math: str, drop: Sequence[bool] = (False,) * NUM_SLOTS,
                 baked: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(drop) != NUM_SLOTS or (baked is not None and len(baked) != NUM_SLOTS):
            raise ValueError(f"an FP8 layer has {NUM_SLOTS} scale slots")
        self.math = math
        self.slots = SLOTS
        self.drop = tuple(bool(d) for d in drop)
        self.baked = None if baked is None else tuple(float(v) for v in baked)

    @property
    def patched(self) -> bool:
        """True when the scales are a graph input (runtime scale patching)."""
        return self.baked is None

    def value(self, slot: int, scales: torch.Tensor | None) -> torch.Tensor | float | None:
        if self.drop[slot]:
            return None
        if self.baked is not None:
            return self.baked[slot]
        assert scales is not None, "runtime scale patching: the step needs the layer's scale vector"
        return scales[slot]

    def group(self, index: int, x: torch.Tensor, weights: Sequence[torch.Tensor],
              scales: torch.Tensor | None) -> list[torch.Tensor]:
        """Group ``index`` of ``GROUPS`` applied to ``x`` with that group's weights."""
        cast = CAST_SLOTS[index]
        rescales = [self.value(cast + 1 + j, scales) for j in range(len(weights))]
        return fp8_group(x, weights, self.value(cast, scales), rescales, self.math)


class Fp8Linear(nn.Module):
    """A linear with an FP8 weight, for the dense reference forward: the same ``fp8_group`` math
    as the step graphs, on the same float32 multipliers, so both give the same bits.

    ``weight`` holds the e4m3 values (float8 for ``scaled_mm``, else upcast); ``weight_scale``
    and ``input_scale`` the checkpoint's scales (shape ``(1,)``, float32); ``inv`` and
    ``rescale`` the two multipliers, set by ``set_multipliers`` from the layer's vector.
    """

    def __init__(self, weight: torch.Tensor, weight_scale: float, input_scale: float, math: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", torch.tensor([weight_scale], dtype=torch.float32))
        self.register_buffer("input_scale", torch.tensor([input_scale], dtype=torch.float32))
        self.register_buffer("inv", torch.ones((), dtype=torch.float32), persistent=False)
        self.register_buffer("rescale", torch.ones((), dtype=torch.float32), persistent=False)
        self.math = math

    def set_multipliers(self, inv: torch.Tensor, rescale: torch.Tensor) -> None:
        self.inv.copy_(inv)
        self.rescale.copy_(rescale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_group(x, [self.weight], self.inv, [self.rescale], self.math)[0]
