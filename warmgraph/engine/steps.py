"""The engine's two runners per phase, and the tensors of one scheduled step.

Per phase (prefill, decode) the engine has:

  - a *layer* runner: one decoder layer's step (``PrefillStep`` / ``DecodeStep``) compiled
    once per bucket by the compile backend (aot, inductor or eager) and kept in the graph
    cache. The layer's KV cache and weights are bound arguments, so one graph serves every
    layer and compile time does not grow with depth;
  - a *step* runner: ``ModelStep`` (embedding, every layer through the layer runner, K/V
    stores) over the whole model state as bound arguments. With a capture backend it is
    captured once per bucket, so a replay runs the whole step with no Python and no copies
    of state; otherwise it pads each step once and runs eagerly around the layer graphs.

Every name, shape, dtype and padding fill of those arguments is written here once; the
parallel warmup workers build the same layer runners from zeros of the same shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from warmgraph.bucketing.buckets import BucketSet
from warmgraph.bucketing.plans import ServingConfig
from warmgraph.compiler.base import Backend
from warmgraph.compiler.registry import get_backend
from warmgraph.engine.scheduler import DecodeBatch, PrefillBatch
from warmgraph.models.config import LlamaConfig
from warmgraph.models.layer_inputs import LayerInputs
from warmgraph.models.paged import DecodeStep, ModelStep, PrefillStep
from warmgraph.quant.fp8 import Fp8Scales
from warmgraph.runtime.dims import BOUND, Dims
from warmgraph.runtime.runner import GraphRunner

PREFILL_META = ("ctx_blocks", "ctx_lens", "q_lens")
DECODE_META = ("block_list", "block_seq", "block_pos", "ctx_lens")
_BQ = {0: "batch", 1: "query_len"}


@dataclass
class Phase:
    """The runners of one phase (see the module docstring). ``layers`` holds every distinct
    layer runner (more than one only for FP8 layers whose scales need graphs of their own);
    ``layer`` is the first."""

    layers: list[GraphRunner]
    step: GraphRunner

    @property
    def layer(self) -> GraphRunner:
        return self.layers[0]


def split_backend(backend: Backend) -> tuple[Backend, Backend]:
    """(the backend that compiles layers, the backend that runs whole steps).

    A capture backend captures whole steps, and its inner compiler (eager when it has none)
    builds the layer graphs, which the graph cache keeps. Any other backend compiles the layers,
    and steps run eagerly around them.
    """
    if not backend.captures:
        return backend, get_backend("eager")
    layers = getattr(backend, "inner", None) or get_backend("eager")
    steps = copy.copy(backend)  # the same device API; its own pool, stream and log from the first capture
    steps.inner = None  # type: ignore[attr-defined]  # the layers it replays come from their own runner
    steps.captures_log = []  # type: ignore[attr-defined]
    return layers, steps


def _meta_dims(decode: bool) -> list[dict[int, str]]:
    if decode:
        return [{0: "blocks"}, {0: "blocks"}, {0: "blocks"}, {0: "batch"}]
    return [{0: "batch", 1: "ctx_blocks"}, {0: "batch"}, {0: "batch"}]


def _meta_fill(decode: bool, scratch_block: int) -> list[int]:
    # Padded block-table entries point at the scratch block; a padded block belongs to no row (-1).
    return [scratch_block, -1, 0, 0] if decode else [scratch_block, 0, 0]


def _meta_examples(decode: bool, device: torch.device | str) -> list[torch.Tensor]:
    one = torch.zeros(1, dtype=torch.long, device=device)
    if decode:
        return [one, one, one, one]
    return [torch.zeros(1, 0, dtype=torch.long, device=device), one, one]


def layer_runner(mc: LlamaConfig, serving: ServingConfig, decode: bool, buckets: BucketSet, backend: Backend,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, inputs: Sequence[torch.Tensor],
                 rope_dtype: torch.dtype, cache: Any, fp8: Fp8Scales | None = None) -> GraphRunner:
    """The layer runner of a phase; ``k_cache``/``v_cache``/``inputs`` are any layer's (or zeros).
    ``fp8``: the layers are FP8, with these multipliers (a bound input, or baked)."""
    device = k_cache.device
    hidden = torch.zeros(1, 1, mc.hidden_size, dtype=k_cache.dtype, device=device)
    rope = torch.zeros(1, 1, mc.head_dim, dtype=rope_dtype, device=device)  # type: ignore[arg-type]
    example = (hidden, rope, rope, *_meta_examples(decode, device), k_cache, v_cache, *inputs)
    state_dims: list[Any] = [BOUND] * (2 + len(inputs))
    meta_fill = dict(enumerate(_meta_fill(decode, serving.num_blocks), start=3))
    dims = Dims(inputs=[_BQ, _BQ, _BQ, *_meta_dims(decode), *state_dims], fill=meta_fill, outputs=[_BQ, _BQ, _BQ])
    step = (DecodeStep if decode else PrefillStep)(mc, serving.block_size, fp8)
    return GraphRunner(step, buckets, example, backend, dims=dims, cache=cache)


def step_runner(layer: GraphRunner | list[GraphRunner], mc: LlamaConfig, serving: ServingConfig, decode: bool,
                buckets: BucketSet, backend: Backend, state: Sequence[torch.Tensor], per_layer: int) -> GraphRunner:
    """The step runner of a phase over ``state`` (embedding, cos and sin tables, then per layer);
    ``layer``: the layer runner of every layer, or a list with each layer's."""
    device = state[0].device
    scratch = serving.num_blocks
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    meta = _meta_examples(decode, device)
    example = (ids, ids, *meta, ids, *state)
    fills = [0, 0, *_meta_fill(decode, scratch), scratch * serving.block_size]  # padded slots: the scratch block
    dims = Dims(inputs=[_BQ, _BQ, *_meta_dims(decode), _BQ, *[BOUND] * len(state)], fill=fills, outputs=[_BQ])
    model_step = ModelStep(layer, mc.num_hidden_layers, per_layer, len(meta))
    return GraphRunner(model_step, buckets, example, backend, dims=dims, cache=None)


def zero_layer_state(mc: LlamaConfig, serving: ServingConfig, dtype: torch.dtype, device: torch.device | str,
                     layer_inputs: LayerInputs) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A KV cache pair and one layer's inputs, all zeros: enough to compile the layer graphs with."""
    from warmgraph.models.layer_inputs import kv_cache_shape

    shape = kv_cache_shape(mc, serving.num_blocks, serving.block_size)
    k = torch.zeros(shape, dtype=dtype, device=device)
    return k, torch.zeros_like(k), layer_inputs.zeros(mc, dtype, device)


# -- one step's tensors ---------------------------------------------------------------------


def _slots(blocks: Sequence[int], positions: range, block_size: int) -> list[int]:
    return [blocks[p // block_size] * block_size + p % block_size for p in positions]


def prefill_tensors(batch: PrefillBatch, serving: ServingConfig) -> list[torch.Tensor]:
    """Host tensors ``ids, positions, ctx_blocks, ctx_lens, q_lens, slots`` of a prefill step.

    Rows shorter than the longest chunk are padded here (they are real rows of the batch):
    ids 0, their slots in the scratch block, so nothing is written to a request's blocks.
    """
    bs, scratch = serving.block_size, serving.num_blocks
    n, q, c = batch.shape
    ids = torch.zeros(n, q, dtype=torch.long)
    positions = torch.zeros(n, q, dtype=torch.long)
    ctx_blocks = torch.full((n, c), scratch, dtype=torch.long)
    slots = torch.full((n, q), scratch * bs, dtype=torch.long)
    for i, chunk in enumerate(batch.chunks):
        r, length = chunk.request, chunk.end - chunk.begin
        ids[i, :length] = torch.tensor(r.prompt_ids[chunk.begin:chunk.end])
        positions[i, :length] = torch.arange(chunk.begin, chunk.end)
        held = -(-chunk.begin // bs)
        ctx_blocks[i, :held] = torch.tensor(r.blocks[:held], dtype=torch.long)
        slots[i, :length] = torch.tensor(_slots(r.blocks, range(chunk.begin, chunk.end), bs))
    ctx_lens = torch.tensor([c.begin for c in batch.chunks], dtype=torch.long)
    q_lens = torch.tensor([c.end - c.begin for c in batch.chunks], dtype=torch.long)
    return [ids, positions, ctx_blocks, ctx_lens, q_lens, slots]


def decode_tensors(batch: DecodeBatch, serving: ServingConfig) -> list[torch.Tensor]:
    """Host tensors ``ids, positions, block_list, block_seq, block_pos, ctx_lens, slots`` of a decode step."""
    bs = serving.block_size
    block_list, block_seq, block_pos = [], [], []
    for i, r in enumerate(batch.requests):
        held = -(-r.cached // bs)
        block_list += r.blocks[:held]
        block_seq += [i] * held
        block_pos += list(range(held))
    ctx = [r.cached for r in batch.requests]

    def t(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    ids = t([r.tokens[-1] for r in batch.requests])[:, None]
    slots = t([_slots(r.blocks, range(r.cached, r.cached + 1), bs)[0] for r in batch.requests])[:, None]
    return [ids, t(ctx)[:, None], t(block_list), t(block_seq), t(block_pos), t(ctx), slots]
