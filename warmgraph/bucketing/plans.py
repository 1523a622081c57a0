"""Prompt and decode bucket plans, exactly as vllm-gaudi's ``HPUBucketingManager`` makes them.

Prompt buckets are ``(batch, query_len, ctx_blocks)``; decode buckets ``(batch, 1, blocks)``
with ``blocks`` the KV blocks of the whole batch. The setting matches a vllm-gaudi V1
server with prefix caching on, so contiguous paged attention is off unless asked for, and
merged prefill off. Each strategy turns the serving limits into one ``[min, step, max, ...]``
config per dimension; the ranges are crossed, filtered and corrected the same way for all.

Environment variables a Gaudi user already sets are honoured (``EnvReader`` records which
of them changed the plan, and which were set but have no effect with the chosen strategy).
Sources: vllm-gaudi ``extension/bucketing/{common,exponential,linear,padding_aware}.py`` at
HEAD, summarised with published examples in ``shared/docs/upstream/vllm-gaudi.md`` §1.

Unlike vllm-gaudi, a plan is refused up front when a dimension's range would exceed
``limits.MAX_RANGE_VALUES`` values or a phase's ranges would cross to more than
``limits.MAX_PLAN_BUCKETS`` candidate buckets (a linear plan for ``max_model_len=10**8``
would otherwise run for minutes); the error names the range, the count, the cap and the
setting to change. Plans within the caps are exactly vllm-gaudi's.

The per-strategy configs and ranges, and the caps check, are in ``plan_ranges``; this module
holds the serving limits, the plan, and the crossing, filtering and correcting shared by all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from warmgraph.bucketing.buckets import Bucket, BucketSet
from warmgraph.bucketing.env import EnvReader
from warmgraph.bucketing.from_file import load_phases
from warmgraph.bucketing.limits import MAX_BUCKET_VALUE
from warmgraph.bucketing.plan_ranges import _CFGS, LONG_CTX_THRESHOLD, _check_crossed, _ranges
from warmgraph.bucketing.strategies import RANGE_STRATEGIES
from warmgraph.errors import BucketFileError, ConfigError

# Strategies of a serving plan: vllm-gaudi's three ranges, or a bucket file. The CLI's
# --strategy choices (buckets plan, warmup) come from here.
STRATEGIES = (*RANGE_STRATEGIES, "file")
PROMPT_DIMS = ("batch", "query_len", "ctx_blocks")
DECODE_DIMS = ("batch", "query_len", "blocks")


@dataclass(frozen=True)
class ServingConfig:
    """The serving limits a plan is made for (vLLM's names).

    ``num_blocks`` is the number of KV-cache blocks actually allocated (vllm-gaudi's
    ``num_hpu_blocks``); it bounds decode buckets.
    """

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    num_blocks: int
    block_size: int = 128
    max_num_prefill_seqs: int | None = None  # None: VLLM_PROMPT_BS_BUCKET_MAX, else 1
    contiguous_pa: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "contiguous_pa" or (f.name == "max_num_prefill_seqs" and value is None):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{f.name} is {value!r}; {flag} must be a positive integer")
            if value > MAX_BUCKET_VALUE:
                raise ConfigError(f"{f.name} is {value}; {flag} must be at most 2**53 ({MAX_BUCKET_VALUE})")
        if self.max_num_batched_tokens < self.block_size:
            raise ConfigError(
                f"max_num_batched_tokens {self.max_num_batched_tokens} is below block_size {self.block_size}; "
                "raise --max-num-batched-tokens or lower --block-size"
            )


@dataclass(frozen=True)
class Plan:
    """A plan: the buckets of both phases and how they were derived."""

    strategy: str
    config: ServingConfig
    prompt: BucketSet
    decode: BucketSet
    prompt_cfg: dict[str, list[int]] = field(default_factory=dict)
    decode_cfg: dict[str, list[int]] = field(default_factory=dict)
    env_applied: dict[str, str] = field(default_factory=dict)
    env_ignored: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "config": {f.name: getattr(self.config, f.name) for f in fields(self.config)},
            "num_prompt": len(self.prompt),
            "num_decode": len(self.decode),
            "prompt_cfg": self.prompt_cfg,
            "decode_cfg": self.decode_cfg,
            "env_applied": self.env_applied,
            "env_ignored": self.env_ignored,
            "prompt": self.prompt.to_list(),
            "decode": self.decode.to_list(),
        }


# -- crossing, filtering and correcting, shared by every strategy --------------------------


def _keep_prompt(b: Bucket, c: ServingConfig) -> bool:
    bs, query, ctx = b
    return (
        ctx <= math.ceil((c.max_model_len - 1) / c.block_size)
        and query <= c.max_model_len
        and bs * query <= c.max_num_batched_tokens
    )


def _correct_decode(b: Bucket, c: ServingConfig) -> Bucket | None:
    """Contiguous PA keeps every bucket; otherwise batch <= blocks and blocks capped per batch."""
    bs, query, blocks = b
    if c.contiguous_pa:
        return b
    if bs > blocks:
        return None
    return (bs, query, min(blocks, bs * math.ceil(c.max_model_len / c.block_size)))


def _cross(ranges: list[list[int]], c: ServingConfig, prompt: bool, ctx_bucket_max: int | None) -> set[Bucket]:
    bs_range, query_range, ctx_range = ranges
    out: set[Bucket] = set()
    max_ctx = max(ctx_range)
    for bs in bs_range:
        for ctx in ctx_range:
            for query in query_range:
                blocks = ctx
                if prompt and ctx == max_ctx and c.max_model_len >= LONG_CTX_THRESHOLD:
                    # Long context: the top ctx bucket of each query length is the most
                    # context that still fits max_model_len with it.
                    edge = (c.max_model_len - query) // c.block_size
                    if edge >= 0 and (ctx_bucket_max is None or edge < ctx_bucket_max):
                        blocks = edge
                bucket = _finish((bs, query, blocks), c, prompt)
                if bucket is not None:
                    out.add(bucket)
    return out


def _finish(b: Bucket, c: ServingConfig, prompt: bool) -> Bucket | None:
    if prompt:
        return b if _keep_prompt(b, c) else None
    return _correct_decode(b, c)


def _make_set(buckets: set[Bucket], phase: str, strategy: str, dims: tuple[str, ...]) -> BucketSet:
    if not buckets:
        raise ConfigError(
            f"the {strategy} strategy generated 0 {phase} buckets for these limits; "
            "raise --max-num-batched-tokens or --max-model-len, or widen the bucket ranges"
        )
    return BucketSet(buckets, dims=dims, fallback_steps=(2, 32, 32))


def resolve_strategy(strategy: str | None, bucket_file: str | None, env: EnvReader) -> tuple[str, str | None]:
    """The strategy and file to use: an explicit argument first, then the vllm-gaudi variables.

    Order as vllm-gaudi: ``VLLM_BUCKETING_FROM_FILE`` replaces generation;
    ``VLLM_EXPONENTIAL_BUCKETING`` (deprecated) overrides ``VLLM_BUCKETING_STRATEGY``.
    """
    if strategy is not None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy {strategy!r} is unknown; use one of: {', '.join(STRATEGIES)}")
        if strategy == "file" and not bucket_file:
            raise ConfigError("strategy 'file' needs a bucket file; pass --file PATH")
        return strategy, bucket_file
    from_file = env.str("VLLM_BUCKETING_FROM_FILE")
    if from_file:
        return "file", from_file
    exp = env.bool("VLLM_EXPONENTIAL_BUCKETING")
    if exp is not None:
        return ("exponential" if exp else "linear"), None
    name = env.str("VLLM_BUCKETING_STRATEGY")
    aliases = {"exp": "exponential", "lin": "linear", "pad": "padding_aware"}
    if name is not None:
        if name not in aliases:
            raise ConfigError(f"VLLM_BUCKETING_STRATEGY={name} is unknown; use exp, lin or pad")
        return aliases[name], None
    return "exponential", None


def plan_buckets(
    config: ServingConfig,
    strategy: str | None = None,
    bucket_file: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Plan:
    """Prompt and decode buckets for ``config``.

    ``strategy`` None means: as the vllm-gaudi environment variables say, else exponential.
    ``env`` defaults to ``os.environ``; pass ``{}`` for a plan that ignores the environment.
    """
    reader = EnvReader(os.environ if env is None else env)
    strategy_arg = strategy
    strategy, bucket_file = resolve_strategy(strategy, bucket_file, reader)
    changes: dict[str, Any] = {}
    if config.max_num_prefill_seqs is None:
        # vllm-gaudi's runner takes the prefill batch limit from this variable, default 1,
        # whatever the strategy.
        changes["max_num_prefill_seqs"] = reader.int("VLLM_PROMPT_BS_BUCKET_MAX", 1)
    if not config.contiguous_pa and reader.bool("VLLM_CONTIGUOUS_PA"):
        changes["contiguous_pa"] = True
    if changes:
        config = replace(config, **changes)
    if strategy == "file":
        assert bucket_file is not None
        try:
            file_prompt, file_decode = load_phases(bucket_file)
        except BucketFileError as exc:
            if reader.applied.get("VLLM_BUCKETING_FROM_FILE") == bucket_file and strategy_arg is None:
                raise BucketFileError(f"VLLM_BUCKETING_FROM_FILE: {exc}") from None
            raise
        prompt = {b for b in (_finish(x, config, True) for x in file_prompt) if b is not None}
        decode = {b for b in (_finish(x, config, False) for x in file_decode) if b is not None}
        prompt_cfg: dict[str, list[int]] = {}
        decode_cfg: dict[str, list[int]] = {}
    else:
        make = _CFGS[strategy]
        prompt_cfg = make(config, reader, True)
        decode_cfg = make(config, reader, False)
        ctx_max = reader.int("VLLM_PROMPT_CTX_BUCKET_MAX", None) if strategy == "exponential" else None
        prompt_ranges = _ranges(strategy, "prompt", prompt_cfg, config)
        decode_ranges = _ranges(strategy, "decode", decode_cfg, config)
        if config.contiguous_pa and decode_ranges[2][-1] < config.num_blocks:
            decode_ranges[2].append(config.num_blocks)
        _check_crossed(strategy, "prompt", PROMPT_DIMS, prompt_ranges)
        _check_crossed(strategy, "decode", DECODE_DIMS, decode_ranges)
        prompt = _cross(prompt_ranges, config, True, ctx_max)
        decode = _cross(decode_ranges, config, False, None)
    return Plan(
        strategy=strategy,
        config=config,
        prompt=_make_set(prompt, "prompt", strategy, PROMPT_DIMS),
        decode=_make_set(decode, "decode", strategy, DECODE_DIMS),
        prompt_cfg=prompt_cfg,
        decode_cfg=decode_cfg,
        env_applied=reader.applied,
        env_ignored=reader.ignored(),
    )
