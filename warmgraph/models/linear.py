"""``linear`` and ``Linear``: a projection whose one-row product, compiled for a CPU, streams its weight.

Decoding one sequence multiplies a single row by every weight matrix of the model, so a
decode step on a CPU is bound by how fast it reads the weights. Measured on this project's
2-core AVX2 machine (SmolLM2-135M, fp32, one thread, ``bench/decode_floor.py``): MKL's and
oneDNN's one-row GEMMs read weights at 5-7 GB/s, a plain ``sum()`` over the same weights at
9.3 GB/s. Written as a multiply and a row sum, the product is one reduction loop that Inductor
generates and vectorises itself, and it reads at nearly the ``sum()`` rate. The engine's fp32
decode at batch 1 went from 10.9 to 13.3 tok/s at one thread and from 14.4 to 21.5 at two
(``bench/peers.py --gemm``, 2026-12-02), greedy tokens unchanged.

Inductor has this rewrite as a pass (``post_grad_fusion_options["decompose_mm_pass"]``), but
its CPU size limit (2048) is read once when Inductor is imported, so a model with wider
matrices, or an LM head, would silently keep the GEMM. Written here it applies to every size
and only where it pays: one row, a CPU, under compilation. Eager calls (and many rows, and
other devices, where the GEMM libraries are at their best) use ``F.linear``: an eager
multiply would materialise the whole ``rows x out x in`` product.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def streams_row(x: torch.Tensor) -> bool:
    """Whether a product with input ``x`` takes the multiply-and-sum form: one row (a static
    count, not a symbolic one), on a CPU, while a compiler traces."""
    rows = math.prod(x.shape[:-1])
    return x.device.type == "cpu" and isinstance(rows, int) and rows == 1 and torch.compiler.is_compiling()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, or ``row_linear`` where ``streams_row`` says so."""
    if streams_row(x):
        return row_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as a multiply and a sum over ``in``, accumulated in float32
    as a GEMM accumulates (a bf16 product summed in bf16 would lose bits), cast back to ``x``'s dtype."""
    out = (x.float().unsqueeze(-2) * weight.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict keys) through ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
