"""The per-dimension ranges of a serving plan, one recipe per vllm-gaudi strategy.

Each strategy (exponential, linear, padding_aware) turns the serving limits, and the
vllm-gaudi range variables it honours, into one ``[min, step, max, ...]`` config per
dimension of a phase (``_CFGS``); ``_ranges`` expands those configs into bucket values and
``_check_crossed`` refuses ranges that would cross into too many candidate buckets, with the
setting to change. ``plans`` crosses, filters and corrects the ranges into a ``Plan``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from warmgraph.bucketing.env import EnvReader
from warmgraph.bucketing.exponential import exponential_range
from warmgraph.bucketing.limits import MAX_PLAN_BUCKETS, TooManyBucketsError, check_count
from warmgraph.bucketing.linear import linear_range
from warmgraph.bucketing.padding_aware import padding_aware_range
from warmgraph.errors import ConfigError

if TYPE_CHECKING:  # plans imports this module; the config is only an annotation here
    from warmgraph.bucketing.plans import ServingConfig

LONG_CTX_THRESHOLD = 8192  # vllm-gaudi: max_model_len from which long-context rules apply


def _log2_limit(n: int) -> int:
    return math.ceil(math.log2(n)) + 1


# -- per-strategy configs: each returns ({dim: cfg}, {dim: range}) for one phase -------------


def _exponential_cfgs(c: ServingConfig, env: EnvReader, prompt: bool) -> dict[str, list[int]]:
    # Exponential ignores the linear-style range variables (vllm-gaudi warns they "will be
    # overwritten"); two exceptions are read where they are used.
    if prompt:
        t = c.max_num_batched_tokens
        # VLLM_PROMPT_QUERY_BUCKET_MIN=1 (a P/D decode instance) is the one range variable
        # exponential honours: it adds query length 1.
        query_min = c.block_size
        if env.peek_int("VLLM_PROMPT_QUERY_BUCKET_MIN") == 1:
            env.mark_applied("VLLM_PROMPT_QUERY_BUCKET_MIN")
            query_min = 1
        if c.max_model_len >= LONG_CTX_THRESHOLD:
            max_ctx = max(1, (c.max_model_len - c.max_num_batched_tokens) // c.block_size)
        else:
            max_ctx = max(1, (c.max_model_len - query_min) // c.block_size)
        return {
            "batch": [1, 2, c.max_num_prefill_seqs, _log2_limit(c.max_num_prefill_seqs)],
            # No +1 on the query limit: upstream's choice, kept for identical plans.
            "query_len": [query_min, c.block_size, t, math.ceil(math.log2(t))],
            "ctx_blocks": [0, 1, max_ctx, 2 if max_ctx == 1 else _log2_limit(max_ctx)],
        }
    worst = math.ceil(c.max_model_len / c.block_size) * c.max_num_seqs
    # Without contiguous PA, 3x headroom: prefix-cache shared blocks count once per sequence.
    max_blocks = min(c.num_blocks, worst) if c.contiguous_pa else min(worst, 3 * c.num_blocks)
    limit = _log2_limit(max_blocks)
    if not c.contiguous_pa and max_blocks > 3 * c.num_blocks:
        limit += _log2_limit(max_blocks / (3 * c.num_blocks))
    return {
        "batch": [1, 2, c.max_num_seqs, _log2_limit(c.max_num_seqs)],
        "query_len": [1, 1, 1, 1],
        "blocks": [1, c.max_num_seqs, max_blocks, limit],
    }


def _linear_cfgs(c: ServingConfig, env: EnvReader, prompt: bool) -> dict[str, list[int]]:
    if prompt:
        bs = env.range_cfg("prompt", "bs", [1, 1, c.max_num_prefill_seqs])
        query = env.range_cfg("prompt", "query", [c.block_size, c.block_size, c.max_num_batched_tokens])
        if c.max_model_len < query[0]:  # vllm-gaudi fails an assert here
            raise ConfigError(
                f"linear plan: max_model_len {c.max_model_len} is below the smallest prompt query length "
                f"{query[0]}; raise --max-model-len, or lower --block-size or VLLM_PROMPT_QUERY_BUCKET_MIN"
            )
        max_ctx = (c.max_model_len - query[0]) // c.block_size
        ctx = env.range_cfg("prompt", "ctx", [0, 1, max_ctx])
        return {"batch": bs, "query_len": query, "ctx_blocks": ctx}
    bs = env.range_cfg("decode", "bs", [1, 32, c.max_num_seqs])
    worst = max(c.max_model_len * c.max_num_seqs // c.block_size, c.block_size)
    max_blocks = c.num_blocks if c.contiguous_pa else worst
    blocks = env.range_cfg("decode", "block", [1, c.block_size, max_blocks])
    if c.contiguous_pa:
        _clamp_decode_blocks(blocks, c)
    elif blocks[0] > c.num_blocks:
        blocks[0] = max(1, c.num_blocks - blocks[1])
    return {"batch": bs, "query_len": [1, 1, 1], "blocks": blocks}


def _padding_aware_cfgs(c: ServingConfig, env: EnvReader, prompt: bool) -> dict[str, list[int]]:
    def cfg(phase: str, dim: str, bmin: int, step: int, bmax: int, pad_max: int) -> list[int]:
        return env.range_cfg(phase, dim, [bmin, step, bmax, pad_max, 25])

    if prompt:
        n, t = c.max_num_prefill_seqs, c.max_num_batched_tokens
        bs = cfg("prompt", "bs", 1, 1, n, math.ceil(n / 4))
        query = cfg("prompt", "query", c.block_size, c.block_size, t, math.ceil(t / 4))
        max_ctx = math.ceil((c.max_model_len - query[0]) / c.block_size)
        ctx = cfg("prompt", "ctx", 0, 2, max_ctx, math.ceil(t / c.block_size))
        return {"batch": bs, "query_len": query, "ctx_blocks": ctx}
    n = c.max_num_seqs
    bs = cfg("decode", "bs", 1, 2, n, math.ceil(n / 4))
    max_blocks = max(math.ceil(c.max_model_len * n / c.block_size), c.block_size)
    if c.contiguous_pa:
        max_blocks = c.num_blocks
    blocks = cfg("decode", "block", c.block_size, c.block_size, max_blocks, math.ceil(max_blocks / 4))
    if c.contiguous_pa:
        _clamp_decode_blocks(blocks, c)
    elif blocks[0] > c.num_blocks:
        blocks[0] = max(1, c.num_blocks - blocks[1])
    return {"batch": bs, "query_len": [1, 1, 1, 1, 0], "blocks": blocks}


def _clamp_decode_blocks(blocks: list[int], c: ServingConfig) -> None:
    """No decode bucket beyond the KV blocks that exist; a min above them moves down a step."""
    if blocks[2] > c.num_blocks:
        blocks[2] = c.num_blocks
    if blocks[0] > c.num_blocks:
        blocks[0] = max(1, c.num_blocks - blocks[1])


# What sets each plan dimension: the serving flag that bounds it and the vllm-gaudi name
# (VLLM_{PHASE}_{NAME}_BUCKET_*) of its range variables.
_DIM_SOURCES = {
    ("prompt", "batch"): ("--max-num-prefill-seqs", "BS"),
    ("prompt", "query_len"): ("--max-num-batched-tokens", "QUERY"),
    ("prompt", "ctx_blocks"): ("--max-model-len", "CTX"),
    ("decode", "batch"): ("--max-num-seqs", "BS"),
    ("decode", "blocks"): ("--max-model-len or --max-num-seqs", "BLOCK"),
}


def _range_fix(strategy: str, phase: str, dims: list[str]) -> str:
    """What to change when ``dims`` of ``phase`` make too many buckets."""
    flags = [_DIM_SOURCES[(phase, d)][0] for d in dims if (phase, d) in _DIM_SOURCES]
    fix = f"lower {' or '.join(dict.fromkeys(flags))}" if flags else "lower the serving limits"
    if strategy == "linear":
        names = [f"VLLM_{phase.upper()}_{_DIM_SOURCES[(phase, d)][1]}_BUCKET_STEP" for d in dims
                 if (phase, d) in _DIM_SOURCES]
        fix += f", raise {' or '.join(names)}" if names else ""
    elif strategy == "padding_aware":
        fix += f", raise VLLM_{phase.upper()}_*_BUCKET_PAD_PERCENT"
    if strategy != "exponential":
        fix += ", or use --strategy exponential"
    return fix


def _ranges(strategy: str, phase: str, cfgs: dict[str, list[int]], c: ServingConfig) -> list[list[int]]:
    out = []
    for dim, cfg in cfgs.items():
        try:
            if strategy == "exponential":
                out.append(exponential_range(*cfg, contiguous_pa=c.contiguous_pa))
            elif strategy == "linear":
                out.append(linear_range(*cfg))
            else:
                out.append(padding_aware_range(*cfg))
        except TooManyBucketsError as exc:
            raise TooManyBucketsError(
                f"{strategy} plan: the {phase} {dim} range {cfg} would make {exc.count:,} bucket values, above the "
                f"cap of {exc.cap:,} per dimension; {_range_fix(strategy, phase, [dim])}",
                exc.count, exc.cap,
            ) from None
        except ConfigError as exc:
            raise ConfigError(f"{strategy} plan, {phase} {dim} range {cfg}: {exc}") from None
    return out


def _check_crossed(strategy: str, phase: str, dims: tuple[str, ...], ranges: list[list[int]]) -> None:
    """Refuse to cross ranges into more than MAX_PLAN_BUCKETS candidates (checked before crossing)."""
    sizes = [len(r) for r in ranges]
    product = " x ".join(f"{n:,} {d}" for n, d in zip(sizes, dims))
    biggest = [d for n, d in sorted(zip(sizes, dims), reverse=True) if n > 1][:2]
    check_count(f"{strategy} plan: the {phase} ranges ({product})", math.prod(sizes), MAX_PLAN_BUCKETS,
                f"{_range_fix(strategy, phase, biggest)}", noun=f"candidate {phase} buckets", per=" per phase")


_CFGS = {"exponential": _exponential_cfgs, "linear": _linear_cfgs, "padding_aware": _padding_aware_cfgs}
