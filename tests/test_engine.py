"""The engine: greedy output identical to transformers, cached graphs, isolation of bad requests,
and a warmup that survives Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

from warmgraph.engine import Engine, EngineConfig, SamplingParams, serving_limits
from warmgraph.errors import ConfigError
from warmgraph.models.llama import LlamaConfig, LlamaForCausalLM
from warmgraph.models.loader import load_checkpoint, save_checkpoint

GQA = LlamaConfig(vocab_size=600, hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2])
PROMPTS = ["hello", "the cat watches the river and the old engineer builds a wooden box",
           "a small dog finds three apples " * 5, "x"]  # the third needs chunked prefill at 64 tokens/step
SMALL = serving_limits(max_num_seqs=2, max_num_batched_tokens=32, max_model_len=64, block_size=32)
# Two prompts per prefill where a bucket covers it: 6 prompt and 4 decode buckets.
MIXED = serving_limits(max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64, block_size=32,
                       max_num_prefill_seqs=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gqa_ckpt(tmp_path_factory: pytest.TempPathFactory, default_ckpt: Path) -> Path:
    model = LlamaForCausalLM(GQA)
    model.init_weights(torch.Generator().manual_seed(11), std=0.1)
    _, tokenizer, _ = load_checkpoint(default_ckpt)
    path = tmp_path_factory.mktemp("gqa")
    save_checkpoint(model, tokenizer, GQA, path)
    return path


def hf_greedy(hf: transformers.LlamaForCausalLM, ids: list[int], n: int, eos: tuple[int, ...]) -> list[int]:
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      max_new_tokens=n, do_sample=False, eos_token_id=list(eos), pad_token_id=eos[0])
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("which", ["default", "gqa"])
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_identical_to_transformers(request: pytest.FixtureRequest, which: str, batch: int) -> None:
    path = request.getfixturevalue(f"{which}_ckpt")
    model, tokenizer, config = load_checkpoint(path)
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    limits = serving_limits(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256, block_size=16)
    engine = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=limits))
    out = engine.generate(PROMPTS[:batch] if batch == 1 else PROMPTS, SamplingParams(max_tokens=10))
    for completion in out["completions"]:
        ids = tokenizer.encode(completion["prompt"]).ids  # the tokenizer adds <s> itself, as the engine expects
        assert ids[0] == config.bos_token_id
        assert completion["token_ids"] == hf_greedy(hf, ids, 10, config.eos_token_ids), completion["prompt"]
    assert out["stats"]["eager_fallbacks"] == 0 and out["stats"]["graph_replays"] > 0


def test_aot_cold_in_workers_then_warm_start(default_ckpt: Path, tmp_path: Path) -> None:
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    reference = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=MIXED))
    # 4 prompts through 2 slots, two of them prefilled together, one in 2 chunks
    prompts = [*PROMPTS[:2], "a small dog finds three apples " * 8, "x"]
    expected = reference.generate(prompts, SamplingParams(max_tokens=8))
    cold = Engine(model, tokenizer, EngineConfig(backend="aot", cache=tmp_path, serving=MIXED))
    graphs = len(cold.plan.prompt) + len(cold.plan.decode)
    report = cold.warmup(workers=2)
    assert report.compiled == graphs == 10 and report.loaded == 0
    assert cold.counter("compiles") == 0 and cold.counter("cache_hits") == graphs  # workers compiled them
    got = cold.generate(prompts, SamplingParams(max_tokens=8))
    assert [c["token_ids"] for c in got["completions"]] == [c["token_ids"] for c in expected["completions"]]
    assert got["stats"]["eager_fallbacks"] == 0
    assert any(kind == "prefill" and len(members) == 2 for kind, members in cold.last_schedule)
    assert 64 // 2 < max(len(i) for i in map(cold.encode, prompts)) < 63  # two chunks when prefilled beside another
    warm = Engine(model, tokenizer, EngineConfig(backend="aot", cache=tmp_path, serving=MIXED))
    report = warm.warmup(workers=2)
    assert report.loaded == graphs and report.compiled == 0
    again = warm.generate(prompts, SamplingParams(max_tokens=8))
    assert [c["token_ids"] for c in again["completions"]] == [c["token_ids"] for c in expected["completions"]]


def test_a_prompt_too_long_fails_alone(default_ckpt: Path) -> None:
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    engine = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=SMALL))
    out = engine.generate(["word " * 200, "hello"], SamplingParams(max_tokens=4))
    bad, good = out["completions"]
    assert bad["finish_reason"] == "error" and "max_model_len is 64" in bad["error"] and bad["token_ids"] == []
    assert good["finish_reason"] == "length" and len(good["token_ids"]) == 4


def test_seeded_sampling_is_reproducible(default_ckpt: Path) -> None:
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    engine = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=SMALL))
    params = SamplingParams(max_tokens=12, temperature=1.5, top_p=0.9, seed=3)
    first = engine.generate(["hello", "the cat"], params)
    second = engine.generate(["hello", "the cat"], params)
    assert [c["token_ids"] for c in first["completions"]] == [c["token_ids"] for c in second["completions"]]
    greedy = engine.generate(["hello", "the cat"], SamplingParams(max_tokens=12))
    assert [c["token_ids"] for c in first["completions"]] != [c["token_ids"] for c in greedy["completions"]]


def test_ctrl_c_during_warmup_leaves_a_cache_the_next_run_uses(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "WARMGRAPH_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, "-m", "warmgraph", "warmup", "--model", "tiny", "--backend", "aot", "--workers", "1",
            "--max-num-seqs", "2", "--max-num-batched-tokens", "32", "--max-model-len", "64", "--block-size", "32"]
    # A shell that starts a job in the background (`cmd &`) leaves SIGINT ignored, and the child
    # would inherit that; reset it so Python installs its Ctrl-C handler, as in a terminal.
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        entries = cache / "entries"
        if entries.is_dir() and any(entries.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, (proc.returncode, err[-3000:])
    rerun = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(rerun.stdout)
    assert result["loaded"] >= 1 and result["loaded"] + result["compiled"] == result["buckets"] == 6


def test_default_threads_leave_busy_cores_alone() -> None:
    from warmgraph.engine.config import default_threads

    assert default_threads(cores=2, busy=0, env={}) == 2
    assert default_threads(cores=2, busy=1, env={}) == 1  # one core taken by other work
    assert default_threads(cores=2, busy=4, env={}) == 1  # never below one
    assert default_threads(cores=16, busy=5, env={}) == 11
    assert default_threads(cores=16, busy=30, env={"OMP_NUM_THREADS": "4"}) == 4  # the user's word wins
    assert default_threads(cores=16, busy=0, env={"OMP_NUM_THREADS": " 3,1"}) == 3  # OpenMP's nested list form
    assert default_threads(cores=2, busy=0, env={"OMP_NUM_THREADS": "8"}) == 2  # but not past the cores
    for bad in ("abc", "0", "-3", "1.5", ""):
        with pytest.raises(ConfigError, match=r"OMP_NUM_THREADS=.* is not a positive integer; unset it"):
            default_threads(cores=4, busy=0, env={"OMP_NUM_THREADS": bad})
    assert 1 <= default_threads(env={}) <= (os.cpu_count() or 1)  # this machine, now


def test_a_chat_turn_is_encoded_without_a_second_bos(default_ckpt: Path) -> None:
    """A template that writes its own BOS (Llama 3's do) must not get another from the tokenizer."""
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    engine = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=SMALL))
    assert engine.encode("the cat")[0] == 1  # the tiny tokenizer adds <s> to plain text
    params = SamplingParams(max_tokens=6)
    chat = engine.generate(["<s>the cat watches"], params, chat=[True])["completions"][0]
    plain = engine.generate(["the cat watches"], params)["completions"][0]
    doubled = engine.generate(["<s>the cat watches"], params)["completions"][0]
    assert chat["token_ids"] == plain["token_ids"] != doubled["token_ids"]
    with pytest.raises(ValueError, match="1 flags for 2 prompts"):
        engine.generate(["a", "b"], params, chat=[True])


def test_a_damaged_builtin_model_says_how_to_recreate_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import run

    from warmgraph.models.tiny import ensure_tiny_model

    weights = ensure_tiny_model(tmp_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as a full disk or a killed copy leaves it
    code, _, err = run(capsys, "generate", "--model", "tiny", "--cache-dir", str(tmp_path), "--prompt", "hi")
    assert code == 2 and err.count("\n") == 1
    assert f"remove {weights.parent} and warmgraph creates it again" in err


def test_generate_with_warmup_builds_every_bucket_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import run_json

    base = ["generate", "--model", "tiny", "--cache-dir", str(tmp_path), "--backend", "eager", "--prompt", "hello",
            "--max-tokens", "3", "--max-num-seqs", "2", "--max-model-len", "128"]
    lazy = run_json(capsys, *base)
    assert "warmup" not in lazy and lazy["stats"]["eager_fallbacks"] == 0
    warm = run_json(capsys, *base, "--warmup", "--workers", "1")
    assert warm["warmup"]["buckets"] == warm["warmup"]["prompt"] + warm["warmup"]["decode"] == 6
    assert warm["completions"][0]["token_ids"] == lazy["completions"][0]["token_ids"]
