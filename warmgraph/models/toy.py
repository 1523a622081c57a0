"""Small reference blocks for tests and benchmarks of the compile layer.

``MLP`` (one bucketed dimension), ``CausalAttention`` over ``(batch, seq)`` with a padding
mask from per-row lengths (two bucketed dimensions), and ``DecoderStack``: a few
pre-norm decoder blocks (RMSNorm, causal attention, SwiGLU), the shape of an LLM step.

Padding safety: masked scores use the dtype's most negative finite value, not -inf, so a
padded row whose length is 0 softmaxes to finite values instead of NaN, and real rows are
bit-for-bit what they would be without padding.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden: int = 64, inner: int = 128) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, inner)
        self.down = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class CausalAttention(nn.Module):
    """``forward(x (batch, seq, hidden), lengths (batch,) int64) -> (batch, seq, hidden)``."""

    def __init__(self, hidden: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / (h // self.heads) ** 0.5
        pos = torch.arange(s, device=x.device)
        allowed = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lengths[:, None, None])
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        att = torch.softmax(scores, dim=-1) @ v
        return self.out(att.transpose(1, 2).reshape(b, s, h))


class DecoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(hidden)
        self.attn = CausalAttention(hidden, heads)
        self.norm2 = RMSNorm(hidden)
        self.gate = nn.Linear(hidden, 2 * hidden, bias=False)
        self.up = nn.Linear(hidden, 2 * hidden, bias=False)
        self.down = nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), lengths)
        y = self.norm2(x)
        return x + self.down(torch.nn.functional.silu(self.gate(y)) * self.up(y))


class DecoderStack(nn.Module):
    """``layers`` decoder blocks: ``forward(x (batch, seq, hidden), lengths (batch,))``."""

    def __init__(self, layers: int = 4, hidden: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(hidden, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, lengths)
        return x
