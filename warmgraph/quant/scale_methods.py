"""INC's FP8 per-tensor scale methods: one max-abs value in, one float32 scale out.

Intel Neural Compressor (``neural_compressor/torch/algorithms/fp8_quant``) quantises as
``x_fp8 = x / scale`` with ``scale = maxabs / (fullscale * backoff)``, where fullscale is the
largest e4m3 value (448) and the backoff leaves headroom (0.5 for weights, 0.25 for inputs),
then rounds the scale as the method says:

* ``maxabs_arbitrary``: no rounding.
* ``maxabs_pow2``: up to a power of two, ``2**ceil(log2(scale))``.
* ``maxabs_hw`` (INC's default): up to a power of two the FP8 cast applies for free (an
  exponent-bias change), clamped into the hardware's set. We use Gaudi3's e4m3 set,
  ``2**7`` down to ``2**-55`` (exponent biases 0..62); Gaudi2's is only {16, 1, 1/16, 1/256}.
* ``unit_scale``: 1.0. ``hw_aligned_single_scale``: the first value of the hardware set,
  which on Gaudi3 is ``2**7`` = 128.0 (not 1.0; 16.0 on Gaudi2), whatever was measured.

The division runs in float32, as INC's does with a float32 ``hp_dtype``, so the rounding
methods see the same value INC sees. Per-channel and SmoothQuant methods are refused
(``check_method``): warmgraph holds one scale per tensor.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Literal

import numpy as np

from warmgraph.errors import ConfigError

FP8_E4M3_MAX = 448.0  # the largest finite float8_e4m3fn value: INC's "fullscale" for e4m3
WEIGHT_BACKOFF = 0.5
INPUT_BACKOFF = 0.25
DEFAULT_METHOD = "maxabs_hw"

METHODS: tuple[str, ...] = ("maxabs_hw", "maxabs_pow2", "maxabs_arbitrary", "unit_scale", "hw_aligned_single_scale")
# INC's methods with "PCS" (per-channel scales) or "SMOOTHQUANT" in their names: the ones INC
# refuses under runtime scale patching. The three SmoothQuant ones left INC in June 2025
# (SW-230641) but still appear in older configs.
PER_CHANNEL: tuple[str, ...] = (
    "act_maxabs_hw_weights_pcs_maxabs_pow2",
    "act_maxabs_hw_weights_pcs_opt_pow2",
    "act_maxabs_pow2_weights_pcs_maxabs_pow2",
    "act_maxabs_pow2_weights_pcs_opt_pow2",
    "act_maxabs_pcs_pow2_weight_maxabs_pts_pow2_hw",
    "maxabs_pcs_pow2",
    "smoothquant_weights_output_channel_maxabs_pow2",
    "weaksmoothquant_weights_output_channel_maxabs_pow2",
    "smoothquant_opt",
)
# Per-tensor in INC, but their weight scale is a search over the weight tensor (least squared
# error of the FP8 round trip), which one max-abs value cannot reproduce.
_NEEDS_TENSOR = ("maxabs_hw_opt_weight", "maxabs_pow2_opt_weight")

HW_SCALE_MAX = 2.0**7  # Gaudi3 e4m3: exponent bias 0
HW_SCALE_MIN = 2.0**-55  # Gaudi3 e4m3: exponent bias 62
HW_ALIGNED_SINGLE_SCALE = HW_SCALE_MAX  # INC takes the first scale of the hardware set
# Floor of the unbounded methods: float32's smallest normal (2**-126, also bfloat16's tiny,
# INC's floor for per-channel scales). A zero max-abs (a tensor that was all zeros) then gets
# the smallest scale instead of 0, and 1/scale stays finite in float32.
MIN_SCALE = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)

Kind = Literal["weight", "input"]
_BACKOFF = {"weight": WEIGHT_BACKOFF, "input": INPUT_BACKOFF}


def _pow2_ceil(x: float) -> float:
    """The smallest power of two >= ``x > 0``, exactly. INC's float32 ``exp2(ceil(log2(x)))``
    lands one power low for an ``x`` just above a large or small power of two (log2 rounds to
    the integer), which would clip that tensor's max-abs; frexp has no rounding step."""
    mantissa, exponent = math.frexp(x)  # x = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return math.ldexp(1.0, exponent - 1 if mantissa == 0.5 else exponent)


def scale_for(maxabs: float, method: str, kind: Kind) -> float:
    """The FP8 e4m3 scale of a tensor whose largest magnitude is ``maxabs``, by INC's ``method``.

    Always a positive Python float exactly representable in float32: a zero ``maxabs`` gives
    the method's smallest scale (``MIN_SCALE`` for arbitrary and pow2, ``2**-55`` for hw).
    Raises ConfigError for an unknown or per-channel method, a ``kind`` other than weight or
    input, or a ``maxabs`` that is negative, NaN or beyond float32 (a broken calibration)."""
    method = _normalise(method)
    _refuse(method, runtime_patching=False)
    if kind not in _BACKOFF:
        raise ConfigError(f"scale kind {kind!r} is not one of weight, input")
    if isinstance(maxabs, bool) or not isinstance(maxabs, numbers.Real) or not 0 <= maxabs <= _F32_MAX:
        raise ConfigError(f"a max-abs of {maxabs!r} cannot give an FP8 scale: it must be a finite number >= 0 "
                          "(in float32 range); re-run the calibration")
    if method == "unit_scale":
        return 1.0
    if method == "hw_aligned_single_scale":
        return HW_ALIGNED_SINGLE_SCALE
    # np.float32 arithmetic rounds once, like INC's float32 tensors; 448 * backoff is exact.
    # The floor comes first: it is a power of two, so pow2 and hw rounding keep it.
    scale = max(float(np.float32(maxabs) / np.float32(FP8_E4M3_MAX * _BACKOFF[kind])), MIN_SCALE)
    if method == "maxabs_arbitrary":
        return scale
    if method == "maxabs_pow2":
        return _pow2_ceil(scale)
    # maxabs_hw: Gaudi3's set is every power of two in a range, so rounding up to a power of
    # two and clamping is rounding up to the set (INC's ScaleToHwAligned with a factor of 1).
    return min(max(_pow2_ceil(scale), HW_SCALE_MIN), HW_SCALE_MAX)


def check_method(method: str, runtime_patching: bool) -> None:
    """Raise ConfigError (one line: what is wrong and what to do) unless warmgraph can run
    ``method`` (INC's names, case-insensitive) with runtime scale patching on or off."""
    _refuse(_normalise(method), runtime_patching)


def _normalise(method: str) -> str:
    if not isinstance(method, str):
        raise ConfigError(f"scale method {method!r} is not a name; use one of {', '.join(METHODS)}")
    return method.strip().lower()  # INC looks methods up by upper-cased name


def _refuse(method: str, runtime_patching: bool) -> None:
    supported = ", ".join(METHODS)
    if method in METHODS:
        return
    if method in PER_CHANNEL:
        if runtime_patching:
            raise ConfigError(f"scale method {method!r} is per-channel, which is not supported for runtime scale "
                              f"patching (graph recompile reduction); pick a per-tensor method ({supported})")
        raise ConfigError(f"scale method {method!r} is per-channel; warmgraph reads per-tensor FP8 scales only: "
                          f"pick one of {supported}")
    if method in _NEEDS_TENSOR:
        raise ConfigError(f"scale method {method!r} searches weight scales over the weight tensor, which "
                          f"warmgraph does not do; pick one of {supported}")
    raise ConfigError(f"unknown scale method {method!r}; pick one of {supported}")


def runtime_scale_patching(default: bool = True) -> bool:
    """``$RUNTIME_SCALE_PATCHING`` as INC reads it ("1"/"true", any case, is on; "0"/"false" is
    off), or ``default`` when unset or empty. INC treats every other value as off; we refuse
    it, since a typo would silently bake every scale into the graphs."""
    raw = os.environ.get("RUNTIME_SCALE_PATCHING", "").strip()
    if not raw:
        return default
    if raw.lower() in ("1", "true"):
        return True
    if raw.lower() in ("0", "false"):
        return False
    raise ConfigError(f"RUNTIME_SCALE_PATCHING={raw!r} is not one of 1, true, 0, false (any case)")


def trivial_scales_mode(default: int = 0) -> int:
    """``$PT_HPU_H2D_TRIVIAL_SCALES_MODE`` (0, 1 or 2; the Gaudi bridge's trivial-scale graph
    variants), or ``default`` when unset or empty."""
    raw = os.environ.get("PT_HPU_H2D_TRIVIAL_SCALES_MODE", "").strip()
    if not raw:
        return default
    if raw not in ("0", "1", "2"):
        raise ConfigError(f"PT_HPU_H2D_TRIVIAL_SCALES_MODE={raw!r} is not one of 0, 1, 2")
    return int(raw)
