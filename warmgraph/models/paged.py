"""One decoder layer's step over a paged KV cache, as graphs: prefill and decode.

Regional compilation, as Gaudi does it: the graph is one decoder layer, and the layer's
weights are *inputs*, not constants, so the graph compiled for a bucket serves every layer
of the model (and any checkpoint of the same shape). Compile time does not grow with depth.

The KV cache of a layer is ``(num_blocks + 1, block_size, kv_heads, head_dim)``; the extra
last block is scratch, where padded block-table entries point so that padding never reads
or needs real memory. A step reads the cache but does not write it: it returns this step's
new K and V, and the engine stores them (only the real tokens). So graphs never mutate
their inputs, which keeps export, AOTInductor and capture simple.

Shapes follow vllm-gaudi's buckets:
  prefill (batch, query_len, ctx_blocks): ``hidden (B, Q, H)``, ``cos/sin (B, Q, D)``,
      ``ctx_blocks (B, C)`` block ids of earlier context (chunked prefill), ``ctx_lens (B,)``
      tokens of that context, ``q_lens (B,)`` real new tokens per row;
  decode (batch, 1, blocks): ``hidden (B, 1, H)``, ``cos/sin (B, 1, D)``, ``block_list (N,)``
      every cached block of the batch, ``block_seq (N,)`` which row owns it (-1: padding),
      ``block_pos (N,)`` its index within that row, ``ctx_lens (B,)`` cached tokens per row.
Masked scores use the dtype's most negative finite value, so a padded row with nothing to
attend to stays finite (it attends to itself) instead of turning into NaN.
"""

from __future__ import annotations

import torch
from torch import nn

from warmgraph.models.llama import LlamaConfig, apply_rope

# The order in which a layer's weights are passed to a step.
WEIGHT_NAMES = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def layer_weights(layer: nn.Module) -> list[torch.Tensor]:
    """A decoder layer's weights in ``WEIGHT_NAMES`` order (the tensors themselves, no copies)."""
    params = dict(layer.named_parameters())
    return [params[name].detach() for name in WEIGHT_NAMES]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back before the weight multiply (as transformers)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class _Step(nn.Module):
    """Shared pieces of the prefill and decode steps. Holds no parameters."""

    def __init__(self, config: LlamaConfig, block_size: int) -> None:
        super().__init__()
        self.eps = float(config.rms_norm_eps)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.block_size = block_size
        self.scale = float(config.head_dim) ** -0.5

    def _qkv(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ln1: torch.Tensor,
             wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = rms_norm(hidden, ln1, self.eps)
        q = (x @ wq.t()).unflatten(-1, (self.num_heads, self.head_dim))
        k = (x @ wk.t()).unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = (x @ wv.t()).unflatten(-1, (self.num_kv_heads, self.head_dim))
        q, k = apply_rope(q, k, cos, sin)
        return q, k, v

    def _expand(self, kv: torch.Tensor) -> torch.Tensor:
        """Grouped-query attention: repeat each kv head for the query heads that share it."""
        group = self.num_heads // self.num_kv_heads
        return kv if group == 1 else kv.repeat_interleave(group, dim=-2)

    def _finish(self, hidden: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, ln2: torch.Tensor,
                wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor) -> torch.Tensor:
        h = hidden + attn.flatten(-2) @ wo.t()
        y = rms_norm(h, ln2, self.eps)
        return h + (torch.nn.functional.silu(y @ wg.t()) * (y @ wu.t())) @ wd.t()


class PrefillStep(_Step):
    """A prefill (or prefill chunk) of one layer: returns ``(hidden, k_new, v_new)``."""

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx_blocks: torch.Tensor,
                ctx_lens: torch.Tensor, q_lens: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                ln1: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
                ln2: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, q_len = hidden.shape[0], hidden.shape[1]
        q, k, v = self._qkv(hidden, cos, sin, ln1, wq, wk, wv)
        pos = torch.arange(q_len, device=hidden.device)
        new_ok = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < q_lens[:, None, None])  # (B,Q,Q)
        keys, values, allowed = k, v, new_ok
        if ctx_blocks.shape[1] > 0:  # static at trace time: a ctx-free bucket has no gather at all
            ck = k_cache[ctx_blocks].flatten(1, 2)  # (B, C*bs, kv_heads, D)
            cv = v_cache[ctx_blocks].flatten(1, 2)
            ctx_pos = torch.arange(ck.shape[1], device=hidden.device)
            ctx_ok = (ctx_pos[None, :] < ctx_lens[:, None])[:, None, :].expand(b, q_len, ck.shape[1])
            keys, values = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
            allowed = torch.cat([ctx_ok, new_ok], dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, self._expand(keys)) * self.scale
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        attn = torch.einsum("bhqk,bkhd->bqhd", probs, self._expand(values))
        return self._finish(hidden, attn, wo, ln2, wg, wu, wd), k, v


class DecodeStep(_Step):
    """One decode token per row over a flat list of the batch's cached blocks."""

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, block_list: torch.Tensor,
                block_seq: torch.Tensor, block_pos: torch.Tensor, ctx_lens: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, ln1: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                wo: torch.Tensor, ln2: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = hidden.shape[0]
        q, k, v = self._qkv(hidden, cos, sin, ln1, wq, wk, wv)  # (B, 1, heads|kv_heads, D)
        ck = self._expand(k_cache[block_list].flatten(0, 1))  # (N*bs, heads, D)
        cv = self._expand(v_cache[block_list].flatten(0, 1))
        offsets = torch.arange(self.block_size, device=hidden.device)
        tok_pos = (block_pos[:, None] * self.block_size + offsets[None, :]).flatten()  # (N*bs,)
        owner = block_seq[:, None].expand(-1, self.block_size).flatten()
        rows = torch.arange(b, device=hidden.device)
        ok = (owner[None, :] == rows[:, None]) & (tok_pos[None, :] < ctx_lens[:, None])  # (B, N*bs)
        q0 = q[:, 0]  # (B, heads, D)
        cache_scores = torch.einsum("bhd,khd->bhk", q0, ck) * self.scale
        cache_scores = cache_scores.masked_fill(~ok[:, None, :], torch.finfo(cache_scores.dtype).min)
        k_self, v_self = self._expand(k[:, 0]), self._expand(v[:, 0])  # (B, heads, D)
        self_scores = (q0 * k_self).sum(-1, keepdim=True) * self.scale  # (B, heads, 1)
        probs = torch.softmax(torch.cat([cache_scores, self_scores], dim=-1), dim=-1, dtype=torch.float32)
        probs = probs.to(q.dtype)
        attn = torch.einsum("bhk,khd->bhd", probs[..., :-1], cv) + probs[..., -1:] * v_self
        return self._finish(hidden, attn[:, None], wo, ln2, wg, wu, wd), k, v
