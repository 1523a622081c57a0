"""How an FP8 model becomes graphs: the settings, with Gaudi's environment names. No torch here:
the CLI and the engine config read them before anything heavy is imported."""

from __future__ import annotations

import os
from dataclasses import dataclass

from warmgraph.errors import ConfigError

DEFAULT_CAP = 4
MATHS = ("auto", "scaled_mm", "emulate")


@dataclass(frozen=True)
class Fp8Settings:
    """How FP8 layers become graphs: ``patching`` (runtime scale patching), ``trivial`` (0, 1
    or 2), ``cap`` (most trivial-scale variants per bucket, besides the mode-0 graph), ``math``
    (``auto``, ``scaled_mm``, ``emulate``; None: ``$WARMGRAPH_FP8_MATH``)."""

    patching: bool = True
    trivial: int = 0
    cap: int = DEFAULT_CAP
    math: str | None = None

    def __post_init__(self) -> None:
        if self.trivial not in (0, 1, 2):
            raise ConfigError(f"trivial scales mode {self.trivial!r} is not 0, 1 or 2")
        if isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 0:
            raise ConfigError(f"trivial-scale variant cap {self.cap!r} (--trivial-variants) must be an integer >= 0")
        if self.math is not None and self.math.strip().lower() not in MATHS:
            raise ConfigError(f"FP8 math {self.math!r} (WARMGRAPH_FP8_MATH, --fp8-math) is not one of "
                              f"{', '.join(MATHS)}")

    @classmethod
    def from_env(cls, patching: bool | None = None, trivial: int | None = None, cap: int | None = None,
                 math: str | None = None) -> Fp8Settings:
        """Settings from arguments, falling back to ``RUNTIME_SCALE_PATCHING`` (on unless "0" or
        "false"), ``PT_HPU_H2D_TRIVIAL_SCALES_MODE`` (0) and ``$WARMGRAPH_FP8_MATH`` (auto)."""
        from warmgraph.quant.scale_methods import runtime_scale_patching, trivial_scales_mode

        return cls(patching=runtime_scale_patching() if patching is None else patching,
                   trivial=trivial_scales_mode() if trivial is None else trivial,
                   cap=DEFAULT_CAP if cap is None else cap,
                   math=math if math is not None else os.environ.get("WARMGRAPH_FP8_MATH"))
