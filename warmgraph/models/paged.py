"""One decoder layer's step over a paged KV cache, as graphs: prefill and decode.

Regional compilation, as Gaudi does it: the graph is one decoder layer, and the layer's
weights are *inputs*, not constants, so the graph compiled for a bucket serves every layer
of the model (and any checkpoint of the same shape). Compile time does not grow with depth.

The KV cache of a layer is ``(num_blocks + 1, block_size, kv_heads, head_dim)``
(``layer_inputs.kv_cache_shape``); the extra last block is scratch, where padded block-table
entries and padded slots point, so padding never touches a request's memory. A layer step
reads the cache but does not write it: it returns this step's new K and V, and
``ModelStep`` stores them. So the compiled graphs never mutate their inputs, which keeps
export and AOTInductor simple.

Shapes follow vllm-gaudi's buckets:
  prefill (batch, query_len, ctx_blocks): ``hidden (B, Q, H)``, ``cos/sin (B, Q, D)``,
      ``ctx_blocks (B, C)`` block ids of earlier context (chunked prefill), ``ctx_lens (B,)``
      tokens of that context, ``q_lens (B,)`` real new tokens per row;
  decode (batch, 1, blocks): ``hidden (B, 1, H)``, ``cos/sin (B, 1, D)``, ``block_list (N,)``
      every cached block of the batch, ``block_seq (N,)`` which row owns it (-1: padding),
      ``block_pos (N,)`` its index within that row, ``ctx_lens (B,)`` cached tokens per row.
Masked scores use the dtype's most negative finite value, so a padded row with nothing to
attend to stays finite (it attends to itself) instead of turning into NaN.

``ModelStep`` is a whole model step around a layer step: embedding, RoPE lookup, every layer
(through a layer callable: one compiled graph per bucket serves them all), and the store of
each layer's new K/V into its cache at the given slots. It is what a capture backend
captures, once per bucket, so a replay runs every layer with no Python in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from warmgraph.models.linear import linear
from warmgraph.models.llama import LlamaConfig, apply_rope
from warmgraph.quant.fp8 import Fp8Scales


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back before the weight multiply (as transformers)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class _Step(nn.Module):
    """Shared pieces of the prefill and decode steps. Holds no parameters."""

    def __init__(self, config: LlamaConfig, block_size: int, fp8: Fp8Scales | None = None) -> None:
        super().__init__()
        # FP8 checkpoints: the linears are FP8 GEMMs with these multipliers; None: plain matmuls.
        self.fp8 = fp8
        self.eps = float(config.rms_norm_eps)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.block_size = block_size
        self.scale = float(config.head_dim) ** -0.5

    def _linears(self, group: int, x: torch.Tensor, weights: tuple[torch.Tensor, ...],
                 scales: torch.Tensor | None) -> list[torch.Tensor]:
        """``x @ w^T`` for each weight of activation group ``group`` (``quant.fp8.GROUPS``)."""
        if self.fp8 is None:
            return [linear(x, w) for w in weights]
        return self.fp8.group(group, x, weights, scales)

    def _qkv(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ln1: torch.Tensor,
             wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
             scales: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = rms_norm(hidden, ln1, self.eps)
        q, k, v = self._linears(0, x, (wq, wk, wv), scales)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        q, k = apply_rope(q, k, cos, sin)
        return q, k, v

    def _expand(self, kv: torch.Tensor) -> torch.Tensor:
        """Grouped-query attention: repeat each kv head for the query heads that share it."""
        group = self.num_heads // self.num_kv_heads
        return kv if group == 1 else kv.repeat_interleave(group, dim=-2)

    def _finish(self, hidden: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, ln2: torch.Tensor,
                wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                scales: torch.Tensor | None = None) -> torch.Tensor:
        h = hidden + self._linears(1, attn.flatten(-2), (wo,), scales)[0]
        y = rms_norm(h, ln2, self.eps)
        gate, up = self._linears(2, y, (wg, wu), scales)
        return h + self._linears(3, torch.nn.functional.silu(gate) * up, (wd,), scales)[0]


class PrefillStep(_Step):
    """A prefill (or prefill chunk) of one layer: returns ``(hidden, k_new, v_new)``."""

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx_blocks: torch.Tensor,
                ctx_lens: torch.Tensor, q_lens: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                ln1: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
                ln2: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, q_len = hidden.shape[0], hidden.shape[1]
        q, k, v = self._qkv(hidden, cos, sin, ln1, wq, wk, wv, scales)
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
        return self._finish(hidden, attn, wo, ln2, wg, wu, wd, scales), k, v


class DecodeStep(_Step):
    """One decode token per row over a flat list of the batch's cached blocks."""

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, block_list: torch.Tensor,
                block_seq: torch.Tensor, block_pos: torch.Tensor, ctx_lens: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, ln1: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                wo: torch.Tensor, ln2: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = hidden.shape[0]
        q, k, v = self._qkv(hidden, cos, sin, ln1, wq, wk, wv, scales)  # (B, 1, heads|kv_heads, D)
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
        return self._finish(hidden, attn[:, None], wo, ln2, wg, wu, wd, scales), k, v


class ModelStep(nn.Module):
    """One model step over a paged KV cache, every layer through ``layer``.

    ``forward(ids, positions, *meta, slots, embed, cos_table, sin_table, *state) -> hidden``:
    ``ids``/``positions`` ``(B, Q)``; ``meta`` the layer step's attention inputs (prefill:
    ``ctx_blocks, ctx_lens, q_lens``; decode: ``block_list, block_seq, block_pos, ctx_lens``);
    ``slots (B, Q)`` the flat cache slot of each token's K/V (padding points at the scratch
    block); ``state`` per layer ``k_cache, v_cache`` and then that layer's inputs (weights).
    Returns the last layer's hidden states ``(B, Q, H)``; final norm and LM head are the
    caller's (they run on a few rows only). Holds no tensors: all state is passed in, by
    reference, and the caches are written in place.
    """

    def __init__(self, layer: Callable[..., Any] | list[Callable[..., Any]], num_layers: int, per_layer: int,
                 num_meta: int) -> None:
        super().__init__()
        # One callable for every layer, or one per layer (FP8 layers whose scales need their own graphs).
        self.layers = list(layer) if isinstance(layer, list) else [layer] * num_layers
        if len(self.layers) != num_layers:
            raise ValueError(f"{len(self.layers)} layer callables for {num_layers} layers")
        self.num_layers = num_layers
        self.per_layer = per_layer  # tensors per layer in ``state``: k_cache, v_cache, then the inputs
        self.num_meta = num_meta

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        meta = rest[: self.num_meta]
        slots, embed, cos_table, sin_table = rest[self.num_meta: self.num_meta + 4]
        state = rest[self.num_meta + 4:]
        hidden = nn.functional.embedding(ids, embed)
        cos, sin = cos_table[positions], sin_table[positions]
        flat_slots = slots.reshape(-1)
        for i in range(self.num_layers):
            k_cache, v_cache, *inputs = state[i * self.per_layer: (i + 1) * self.per_layer]
            hidden, k, v = self.layers[i](hidden, cos, sin, *meta, k_cache, v_cache, *inputs)
            # K/V of this step into the cache, in place: padded tokens land in the scratch block.
            k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, flat_slots, k.reshape(-1, *k.shape[2:]))
            v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, flat_slots, v.reshape(-1, *v.shape[2:]))
        return hidden
