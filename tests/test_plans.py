"""Serving plans against vllm-gaudi: cfgs from its unit tests, bucket counts from its HEAD code.

Then what vllm-gaudi lacks: plans that would be too big are refused up front (the caps of
``bucketing.limits``), and limits that cannot work get an error naming the fix.
"""

from __future__ import annotations

import math
import time

import pytest

from warmgraph.bucketing.limits import MAX_PLAN_BUCKETS, MAX_RANGE_VALUES, TooManyBucketsError
from warmgraph.bucketing.plans import ServingConfig, plan_buckets
from warmgraph.errors import ConfigError

BIG = dict(max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=32768, num_blocks=4127)
SMALL = dict(max_num_seqs=128, max_num_batched_tokens=2048, max_model_len=4096, num_blocks=2000)


@pytest.mark.parametrize(
    ("limits", "strategy", "n_prompt", "n_decode"),
    [
        (BIG, "exponential", 120, 87),
        (BIG, "linear", 16321, 2390),
        (BIG, "padding_aware", 303, 266),
        (SMALL, "exponential", 63, 45),
        (SMALL, "linear", 512, 114),
        (SMALL, "padding_aware", 110, 100),
    ],
)
def test_bucket_counts_match_vllm_gaudi_head(limits: dict, strategy: str, n_prompt: int, n_decode: int) -> None:
    plan = plan_buckets(ServingConfig(**limits), strategy, env={})
    assert (len(plan.prompt), len(plan.decode)) == (n_prompt, n_decode)


def test_exponential_cfgs_match_upstream_unit_tests() -> None:
    plan = plan_buckets(ServingConfig(256, 2048, 91964, 3593), "exponential", env={})
    assert plan.prompt_cfg == {"batch": [1, 2, 1, 1], "query_len": [128, 128, 2048, 11], "ctx_blocks": [0, 1, 702, 11]}
    assert plan.decode_cfg["batch"] == [1, 2, 256, 9]
    assert plan.decode_cfg["blocks"] == [1, 256, min(math.ceil(91964 / 128) * 256, 3 * 3593), 15]
    assert plan.decode.values("batch") == [1, 2, 4, 8, 14, 24, 42, 78, 140, 256]


def test_exponential_long_context_prompt_ranges_and_edge_buckets() -> None:
    plan = plan_buckets(ServingConfig(256, 8192, 32768, 4127), "exponential", env={})
    assert plan.prompt.values("query_len") == [128, 256, 384, 512, 768, 1024, 1536, 2048, 2944, 4096, 5888, 8192]
    ctx = plan.prompt.values("ctx_blocks")
    assert ctx[:9] == [0, 1, 2, 4, 8, 14, 27, 52, 100]
    # The top ctx of each query length is the most context that still fits max_model_len.
    for q in plan.prompt.values("query_len"):
        top = max(b[2] for b in plan.prompt if b[1] == q)
        assert top == (32768 - q) // 128


def test_all_buckets_respect_limits() -> None:
    c = ServingConfig(**SMALL)
    for strategy in ("exponential", "linear", "padding_aware"):
        plan = plan_buckets(c, strategy, env={})
        for bs, q, ctx in plan.prompt:
            assert bs * q <= c.max_num_batched_tokens and q <= c.max_model_len
            assert ctx <= math.ceil((c.max_model_len - 1) / c.block_size)
        for bs, q, blocks in plan.decode:
            assert q == 1 and bs <= blocks <= bs * math.ceil(c.max_model_len / c.block_size)


def test_lookup_on_plan_buckets() -> None:
    plan = plan_buckets(ServingConfig(**BIG), "exponential", env={})
    assert plan.prompt.lookup((1, 300, 5)) == (1, 384, 8)
    assert plan.decode.lookup((3, 1, 700)) == (4, 1, 768)


def test_contiguous_pa_adds_num_blocks_bucket() -> None:
    plan = plan_buckets(ServingConfig(**SMALL, contiguous_pa=True), "exponential", env={})
    assert max(b[2] for b in plan.decode) == 2000


def test_env_strategy_and_overrides_are_reported() -> None:
    c = ServingConfig(**SMALL)
    env = {"VLLM_BUCKETING_STRATEGY": "lin", "VLLM_DECODE_BS_BUCKET_STEP": "16", "VLLM_PROMPT_SEQ_BUCKET_MAX": "1024",
           "VLLM_DECODE_BS_BUCKET_MIN": "1"}
    plan = plan_buckets(c, None, env=env)
    assert plan.strategy == "linear"
    assert plan.decode_cfg["batch"] == [1, 16, 128]
    assert plan.prompt_cfg["query_len"][2] == 1024  # deprecated SEQ name read for the query dimension
    assert max(b[1] for b in plan.prompt) == 1024
    assert plan.env_applied == {"VLLM_BUCKETING_STRATEGY": "lin", "VLLM_DECODE_BS_BUCKET_STEP": "16",
                                "VLLM_PROMPT_SEQ_BUCKET_MAX": "1024"}
    assert plan.env_ignored == {"VLLM_DECODE_BS_BUCKET_MIN": "equals the default"}


def test_exponential_ignores_range_variables_but_says_so() -> None:
    env = {"VLLM_DECODE_BS_BUCKET_STEP": "16", "VLLM_PROMPT_BS_BUCKET_MAX": "4"}
    plan = plan_buckets(ServingConfig(**SMALL), "exponential", env=env)
    assert plan.env_ignored == {"VLLM_DECODE_BS_BUCKET_STEP": "not read by this strategy"}
    # VLLM_PROMPT_BS_BUCKET_MAX sets the prefill batch limit whatever the strategy.
    assert plan.config.max_num_prefill_seqs == 4 and plan.prompt.values("batch") == [1, 2, 4]
    assert plan.env_applied == {"VLLM_PROMPT_BS_BUCKET_MAX": "4"}
    assert plan_buckets(ServingConfig(**SMALL), "exponential", env={}) != plan


def test_query_min_one_adds_query_len_one() -> None:
    plan = plan_buckets(ServingConfig(**SMALL), "exponential", env={"VLLM_PROMPT_QUERY_BUCKET_MIN": "1"})
    assert plan.prompt.values("query_len")[0] == 1


def test_deprecated_exponential_flag_overrides_strategy() -> None:
    env = {"VLLM_BUCKETING_STRATEGY": "pad", "VLLM_EXPONENTIAL_BUCKETING": "false"}
    assert plan_buckets(ServingConfig(**SMALL), None, env=env).strategy == "linear"
    assert plan_buckets(ServingConfig(**SMALL), None, env={}).strategy == "exponential"


def test_file_strategy_filters_and_corrects(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "buckets.txt"
    f.write_text("# comment\n(1, 2048, 0)\n(1, [256, 512], [0, 4, 8])\n(64, 1, 1024)\n(32, 1, 512)\n"
                 "(1, 1, range(256, 512, 32))\n(4, 4096, 0)\n")
    plan = plan_buckets(ServingConfig(**SMALL), "file", str(f), env={})
    assert (4, 4096, 0) not in plan.prompt  # over max_num_batched_tokens
    assert len(plan.prompt) == 7
    # Decode corrector: blocks capped at batch * ceil(max_model_len / block_size) = 1 * 32.
    assert plan.decode.buckets == ((1, 1, 32), (32, 1, 512), (64, 1, 1024))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(SMALL, max_num_seqs=0), "max_num_seqs is 0"),
        (dict(SMALL, num_blocks=-3), "num_blocks is -3"),
        (dict(SMALL, max_num_batched_tokens=64), "max_num_batched_tokens 64 is below block_size 128"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServingConfig(**kwargs)


def test_bad_env_and_impossible_limits() -> None:
    with pytest.raises(ConfigError, match="VLLM_BUCKETING_STRATEGY=fast is unknown"):
        plan_buckets(ServingConfig(**SMALL), None, env={"VLLM_BUCKETING_STRATEGY": "fast"})
    with pytest.raises(ConfigError, match="VLLM_DECODE_BS_BUCKET_STEP=x is not an integer"):
        plan_buckets(ServingConfig(**SMALL), "linear", env={"VLLM_DECODE_BS_BUCKET_STEP": "x"})
    with pytest.raises(ConfigError, match="needs a bucket file"):
        plan_buckets(ServingConfig(**SMALL), "file", env={})
    with pytest.raises(ConfigError, match="0 prompt buckets"):
        env = {"VLLM_PROMPT_QUERY_BUCKET_MIN": "4096", "VLLM_PROMPT_QUERY_BUCKET_MAX": "4096"}
        plan_buckets(ServingConfig(**SMALL), "linear", env=env)


# -- one list of strategy names; caps on plans ------------------------------------------------


def test_strategy_names_have_one_home() -> None:
    from warmgraph.bucketing import plans, strategies

    assert tuple(plans._CFGS) == strategies.RANGE_STRATEGIES
    assert plans.STRATEGIES[:-1] == strategies.RANGE_STRATEGIES and plans.STRATEGIES[-1] == "file"
    assert strategies.NAMES[:3] == strategies.RANGE_STRATEGIES and strategies.NAMES[3:] == ("fitted", "file")


@pytest.mark.parametrize(
    ("limits", "strategy", "fragments"),
    [
        (dict(BIG, max_model_len=10**8), "linear",
         ["linear plan: the prompt ctx_blocks range [0, 1, 781249] would make 781,250 bucket values",
          f"cap of {MAX_RANGE_VALUES:,} per dimension", "lower --max-model-len", "VLLM_PROMPT_CTX_BUCKET_STEP"]),
        (dict(max_num_seqs=256, max_num_batched_tokens=16384, max_model_len=131072, num_blocks=40000,
              max_num_prefill_seqs=2), "linear",
         ["(2 batch x 128 query_len x 1,024 ctx_blocks) would make 262,144 candidate prompt buckets",
          f"cap of {MAX_PLAN_BUCKETS:,} per phase", "--strategy exponential"]),
        (dict(max_num_seqs=1024, max_num_batched_tokens=8192, max_model_len=131072, num_blocks=40000,
              block_size=16), "linear", ["decode blocks range", "lower --max-model-len or --max-num-seqs"]),
    ],
)
def test_plans_above_the_caps_are_refused_at_once(limits: dict, strategy: str, fragments: list[str]) -> None:
    start = time.perf_counter()
    with pytest.raises(TooManyBucketsError) as info:
        plan_buckets(ServingConfig(**limits), strategy, env={})
    assert time.perf_counter() - start < 2  # the last one used to take 100 s
    for fragment in fragments:
        assert fragment in str(info.value)


def test_large_plans_within_the_caps_still_match_upstream_rules() -> None:
    # A 128k context: linear stays under the caps (131,072 candidates); padding_aware and
    # exponential stay small even for absurd lengths, because their ranges are sparse.
    c = ServingConfig(max_num_seqs=256, max_num_batched_tokens=16384, max_model_len=131072, num_blocks=40000)
    assert len(plan_buckets(c, "linear", env={}).prompt) == 130945
    start = time.perf_counter()
    for strategy in ("padding_aware", "exponential"):
        plan = plan_buckets(ServingConfig(**dict(BIG, max_model_len=10**8)), strategy, env={})
        assert len(plan.prompt) < MAX_PLAN_BUCKETS
    assert time.perf_counter() - start < 5


def test_limits_that_cannot_work_name_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"--max-model-len must be at most 2\*\*53"):
        ServingConfig(**dict(SMALL, max_model_len=2**60))
    with pytest.raises(ConfigError, match="max_model_len 64 is below the smallest prompt query length 128"):
        plan_buckets(ServingConfig(**dict(SMALL, max_model_len=64)), "linear", env={})
    with pytest.raises(ConfigError, match=r"prompt ctx_blocks range \[0, 0, 31\]: linear: step is 0"):
        plan_buckets(ServingConfig(**SMALL), "linear", env={"VLLM_PROMPT_CTX_BUCKET_STEP": "0"})
    with pytest.raises(ConfigError, match=r"VLLM_BUCKETING_FROM_FILE: bucket file .* is a directory"):
        plan_buckets(ServingConfig(**SMALL), None, env={"VLLM_BUCKETING_FROM_FILE": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^bucket file .* is a directory"):
        plan_buckets(ServingConfig(**SMALL), "file", str(tmp_path), env={})
