"""The engine on the CPU: continuous batching, blocks given back, multi-request prefills through
planned buckets, requests that can never run, bf16 checkpoints and tokenizers without BOS."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from warmgraph.engine import Engine, EngineConfig, SamplingParams, serving_limits
from warmgraph.models.loader import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

MULTI = serving_limits(max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64, block_size=32,
                       max_num_prefill_seqs=2)
PROMPTS = ["hello", "the cat watches the river", "a small dog finds three apples", "x", "the red fox"]


def engine(path: Path, serving=MULTI, dtype: str | None = None, backend: str = "eager") -> Engine:  # type: ignore[no-untyped-def]
    model, tokenizer, _ = load_checkpoint(path, dtype)
    return Engine(model, tokenizer, EngineConfig(backend=backend, cache=None, serving=serving))


def hf_greedy(path: Path, ids: list[int], n: int, dtype: torch.dtype = torch.float32) -> list[int]:
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=dtype).eval()
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      max_new_tokens=n, do_sample=False, eos_token_id=[2], pad_token_id=2)
    return out[0, len(ids):].tolist()


def test_multi_request_prefill_runs_planned_buckets_only(default_ckpt: Path) -> None:
    multi = engine(default_ckpt)
    got = multi.generate(PROMPTS, SamplingParams(max_tokens=6))
    assert got["stats"]["eager_fallbacks"] == 0
    assert any(kind == "prefill" and len(members) == 2 for kind, members in multi.last_schedule)
    one_at_a_time = engine(default_ckpt, serving_limits(max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64,
                                                        block_size=32, max_num_prefill_seqs=1))
    want = one_at_a_time.generate(PROMPTS, SamplingParams(max_tokens=6))
    assert [c["token_ids"] for c in got["completions"]] == [c["token_ids"] for c in want["completions"]]


def test_continuous_batching_and_blocks_given_back(default_ckpt: Path) -> None:
    e = engine(default_ckpt, serving_limits(max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64,
                                            block_size=16))
    # The first prompt runs into max_model_len after a few tokens; the second keeps decoding,
    # so the third must be admitted while the second still runs.
    long_prompt = "the cat watches the river and the old engineer builds a wooden box " * 4
    ids = e.encode(long_prompt)
    assert 50 < len(ids) < 63
    out = e.generate([long_prompt, "hello", "x"], SamplingParams(max_tokens=12))
    reasons = [c["finish_reason"] for c in out["completions"]]
    assert reasons[0] == "max_model_len" and all(r in ("length", "stop") for r in reasons[1:])
    log = e.last_schedule
    third = log.index(("prefill", (2,)))
    assert any(kind == "decode" and 1 in members for kind, members in log[third + 1:])
    assert e.last_free_blocks == e.serving.num_blocks  # every block came back


def test_requests_never_vanish_when_the_cache_is_too_small(default_ckpt: Path) -> None:
    e = engine(default_ckpt, serving_limits(max_num_seqs=2, max_num_batched_tokens=32, max_model_len=64,
                                            block_size=16, num_blocks=1))
    out = e.generate(["the cat watches the river and the old engineer", "hello"], SamplingParams(max_tokens=20))
    for c in out["completions"]:
        assert c["finish_reason"] == "error" and "KV blocks" in c["error"] and c["token_ids"] == []
    fits = e.generate(["x"], SamplingParams(max_tokens=3))["completions"][0]
    assert fits["finish_reason"] == "length" and len(fits["token_ids"]) == 3


def test_bfloat16_checkpoint_generates_like_transformers(default_ckpt: Path) -> None:
    e = engine(default_ckpt, serving_limits(max_num_seqs=2, max_num_batched_tokens=64, max_model_len=128,
                                            block_size=16), dtype="bfloat16")
    assert e.state[0].dtype == torch.bfloat16 and e.rope_dtype == torch.bfloat16
    out = e.generate(["the cat watches the river", "hello"], SamplingParams(max_tokens=8))
    assert out["stats"]["eager_fallbacks"] == 0
    for c in out["completions"]:
        ids = e.encode(c["prompt"])
        want = hf_greedy(default_ckpt, ids, 8, torch.bfloat16)
        # bf16: the first tokens agree exactly; later ones may part where two logits tie within bf16 rounding.
        assert c["token_ids"][:3] == want[:3], c["prompt"]
    # And the logits of a whole prompt agree within bf16 resolution of the fp32 reference.
    model, _, _ = load_checkpoint(default_ckpt, "bfloat16")
    hf = transformers.LlamaForCausalLM.from_pretrained(default_ckpt, dtype=torch.bfloat16).eval()
    ids = torch.tensor([e.encode("the cat watches the river")])
    with torch.no_grad():
        ours, theirs = model(ids).float(), hf(ids).logits.float()
    assert (ours - theirs).abs().max() < 0.1 * theirs.abs().max()


def test_no_bos_where_the_tokenizer_adds_none(default_ckpt: Path, tmp_path: Path) -> None:
    path = tmp_path / "nobos"
    shutil.copytree(default_ckpt, path)
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["post_processor"] = None
    (path / "tokenizer.json").write_text(json.dumps(tok))
    e = engine(path)
    ids = transformers.AutoTokenizer.from_pretrained(path)("the cat watches")["input_ids"]
    assert e.encode("the cat watches") == ids and ids[0] != 1
    out = e.generate(["the cat watches"], SamplingParams(max_tokens=6))
    assert out["completions"][0]["token_ids"] == hf_greedy(path, ids, 6)


@pytest.mark.parametrize("strategy", ["linear", "padding_aware"])
def test_other_plans_run_without_eager_fallbacks(default_ckpt: Path, strategy: str) -> None:
    # Their query lengths and decode batches need not reach the token budget and max_num_seqs:
    # the scheduler cuts chunks and decode batches to what a bucket covers.
    limits = serving_limits(max_num_seqs=3, max_num_batched_tokens=100, max_model_len=160, block_size=32)
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    prompts = ["hello", "the cat watches the river and the old engineer builds a wooden box " * 4, "x"]
    want = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=limits)).generate(
        prompts, SamplingParams(max_tokens=6))
    e = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=limits, strategy=strategy))
    got = e.generate(prompts, SamplingParams(max_tokens=6))
    assert got["stats"]["eager_fallbacks"] == 0
    assert [c["token_ids"] for c in got["completions"]] == [c["token_ids"] for c in want["completions"]]


def test_sampling_parameters_and_stop_tokens_do_what_they_say(default_ckpt: Path) -> None:
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    e = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=MULTI))
    prompts = ["hello", "the cat watches the river"]
    greedy = [c["token_ids"] for c in e.generate(prompts, SamplingParams(max_tokens=8))["completions"]]
    hot = [c["token_ids"] for c in e.generate(prompts, SamplingParams(max_tokens=8, temperature=5.0, seed=1))[
        "completions"]]
    assert hot != greedy
    for params in (SamplingParams(max_tokens=8, temperature=1e-6, seed=1),  # near zero: sharpened to greedy
                   SamplingParams(max_tokens=8, temperature=1e-45, seed=1),  # no overflow at the extreme
                   SamplingParams(max_tokens=8, temperature=5.0, top_p=1e-9, seed=1)):  # only the top token kept
        assert [c["token_ids"] for c in e.generate(prompts, params)["completions"]] == greedy, params
    # A stop token ends a request with reason "stop", the token included.
    first = greedy[0][0]
    e.mc = dataclasses.replace(e.mc, eos_token_id=first)
    out = e.generate(prompts[:1], SamplingParams(max_tokens=8))
    assert out["completions"][0]["token_ids"] == [first] and out["completions"][0]["finish_reason"] == "stop"


def test_stats_count_what_happened(default_ckpt: Path) -> None:
    e = engine(default_ckpt)
    out = e.generate(PROMPTS, SamplingParams(max_tokens=6))
    stats, completions = out["stats"], out["completions"]
    assert stats["generated_tokens"] == sum(len(c["token_ids"]) for c in completions) == 6 * len(PROMPTS)
    # every token after a request's first comes from a decode step
    assert stats["decode_tokens"] == sum(len(c["token_ids"]) - 1 for c in completions)
    assert 0 < stats["time_to_first_token_s"] <= stats["seconds"]
    steps = len(e.last_schedule)
    assert stats["graph_replays"] == steps and stats["eager_fallbacks"] == 0
