"""The Llama decoder, checkpoint loader and default model against transformers itself.

transformers is a test dependency (the ``test`` extra) and is imported plainly: if it is missing
this module errors rather than skipping, so the parity tests can never pass by not running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.models.llama import (
    LlamaConfig,
    LlamaForCausalLM,
    causal_attention,
    expected_shapes,
    greedy_generate_reference,
    random_state_dict,
    rope_inv_freq,
)
from warmgraph.models.loader import load_checkpoint, save_checkpoint
from warmgraph.models.tiny import MODEL_NAME, TINY_CONFIG, build_tokenizer, ensure_tiny_model, tiny_model_dir

GQA_CONFIG = LlamaConfig(
    vocab_size=600, hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2, 7],
)
PROMPTS = ("The cat watches the river", "Why does the old engineer keep a paper map? On day 7,",
           "x", "Hello, world! 1234 ~{}")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gqa_ckpt(tmp_path_factory: pytest.TempPathFactory, default_ckpt: Path) -> Path:
    """A second, unrelated Llama: wider, 6 heads over 2 kv heads, untied head, plain RoPE, two eos."""
    model = LlamaForCausalLM(GQA_CONFIG)
    model.init_weights(torch.Generator().manual_seed(7), std=0.1)
    _, tokenizer, _ = load_checkpoint(default_ckpt)
    path = tmp_path_factory.mktemp("gqa")
    save_checkpoint(model, tokenizer, GQA_CONFIG, path)
    return path


@pytest.fixture(scope="module", params=["default", "gqa"])
def pair(request: pytest.FixtureRequest) -> tuple[Path, LlamaForCausalLM, object, LlamaConfig, object]:
    path = request.getfixturevalue(f"{request.param}_ckpt")
    model, tokenizer, config = load_checkpoint(path)
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, model, tokenizer, config, hf


def _batch(tokenizer: object, texts: tuple[str, ...], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer.encode(t).ids for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


# -- numerics against transformers ------------------------------------------------------------


def test_rope_tables_match_transformers_bit_for_bit() -> None:
    scalings = [None, {"rope_type": "linear", "factor": 4.0}, TINY_CONFIG.rope_scaling,
                {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}]
    for scaling in scalings:
        config = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, rope_theta=500000.0, rope_scaling=scaling,
                             max_position_embeddings=300)
        hf_config = transformers.LlamaConfig(**{k: v for k, v in config.to_hf().items() if k != "model_type"})
        hf_rope = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_config)
        assert torch.equal(hf_rope.inv_freq, rope_inv_freq(config)), scaling
        positions = torch.arange(300)[None]
        cos, sin = hf_rope(torch.zeros(1), positions)
        ours = LlamaForCausalLM(config).rope_cos_sin(positions)
        assert torch.equal(cos, ours[0]) and torch.equal(sin, ours[1]), scaling


def test_logits_match_transformers(pair: tuple) -> None:
    _, model, tokenizer, config, hf = pair
    with torch.no_grad():
        for texts in (PROMPTS[:1], PROMPTS[:3]):
            ids, mask = _batch(tokenizer, texts, left=False)
            ours = model(ids, attention_mask=mask)
            theirs = hf(input_ids=ids, attention_mask=mask).logits
            real = mask.bool()
            torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)
        # Left padding with explicit positions exercises the positions argument and masked rows.
        ids, mask = _batch(tokenizer, PROMPTS, left=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ours = model(ids, positions, mask)
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=1e-4, rtol=0)
        # Unpadded equal-length batch, default positions.
        ids = torch.randint(3, config.vocab_size, (4, 40), generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, atol=1e-4, rtol=0)


def test_greedy_tokens_match_transformers(pair: tuple) -> None:
    _, model, tokenizer, config, hf = pair
    for text in PROMPTS[:2]:
        prompt = tokenizer.encode(text).ids
        ours = greedy_generate_reference(model, prompt, 24, config.eos_token_ids)
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.int64),
                          max_new_tokens=24, do_sample=False, eos_token_id=list(config.eos_token_ids),
                          pad_token_id=config.eos_token_ids[0])
        assert ours == out[0, len(prompt):].tolist()
        assert len(set(ours)) > 3  # the random model's output depends on context, not one repeated token


def test_layer_pieces_compose_to_the_dense_forward(default_ckpt: Path) -> None:
    model, tokenizer, _ = load_checkpoint(default_ckpt)
    ids, mask = _batch(tokenizer, PROMPTS[:2], left=False)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    layer = model.layers[0]
    hidden = model.embed(ids)
    cos, sin = model.rope_cos_sin(positions)
    q, k, v = layer.qkv(hidden, cos, sin)
    assert q.shape == (*ids.shape, 4, 16) and k.shape == v.shape == (*ids.shape, 2, 16)
    attn = layer.self_attn
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (4, 2, 16)
    manual = layer.finish(hidden, causal_attention(q, k, v, mask))
    torch.testing.assert_close(manual, layer(hidden, positions, mask), atol=0, rtol=0)
    # One step on unbatched (T, H) input, as a paged engine would feed flattened tokens.
    q1, k1, _ = layer.qkv(hidden[0], cos[0], sin[0])
    torch.testing.assert_close(q1, q[0])
    torch.testing.assert_close(k1, k[0])
    for block in model.layers:
        hidden = block(hidden, positions, mask)
    torch.testing.assert_close(model.logits(hidden), model(ids, positions, mask), atol=0, rtol=0)


def test_bf16_and_fp16_loads_are_close_to_fp32(default_ckpt: Path) -> None:
    fp32, tokenizer, _ = load_checkpoint(default_ckpt)
    bf16, _, config = load_checkpoint(default_ckpt, dtype="bf16")
    assert config.torch_dtype == "bfloat16"
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert bf16.lm_head.weight is bf16.model.embed_tokens.weight
    hf_bf16 = transformers.LlamaForCausalLM.from_pretrained(default_ckpt, dtype=torch.bfloat16).eval()
    fp16, _, _ = load_checkpoint(default_ckpt, dtype="float16")
    ids = torch.tensor([tokenizer.encode(PROMPTS[1]).ids])
    with torch.no_grad():
        ref, low, theirs, half = fp32(ids), bf16(ids), hf_bf16(input_ids=ids).logits, fp16(ids)
    assert low.dtype == torch.bfloat16 and half.dtype == torch.float16
    # Logits here have std ~0.8 and peaks ~3; bf16 keeps 8 mantissa bits (relative error ~4e-3
    # per op), which compounds to a few 1e-2 through 4 layers (measured: ~0.05; fp16: ~0.006).
    assert (low.float() - ref).abs().max() < 0.1
    assert (low.float() - theirs.float()).abs().max() < 0.1
    assert (half.float() - ref).abs().max() < 0.02
    assert (low.float().argmax(-1) == ref.argmax(-1)).float().mean() > 0.75


def test_sharded_checkpoint_loads_identically(default_ckpt: Path, tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(default_ckpt / name, tmp_path / name)
    with safe_open(str(default_ckpt / "model.safetensors"), framework="pt") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(tmp_path / file), metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    whole, tokenizer, _ = load_checkpoint(default_ckpt)
    sharded, _, _ = load_checkpoint(tmp_path)
    for (name, a), (_, b) in zip(whole.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.tensor([tokenizer.encode(PROMPTS[0]).ids])
    assert torch.equal(whole(ids), sharded(ids))


# -- loader errors ------------------------------------------------------------------------------


def _broken(default_ckpt: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    shutil.copytree(default_ckpt, path)
    return path


def _rewrite_tensors(path: Path, change: Callable[[dict[str, torch.Tensor]], object]) -> None:
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _error(path: Path, kind: type[Exception] = WarmgraphError) -> str:
    with pytest.raises(kind) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_or_non_directory_path(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope", ConfigError)
    assert "does not exist" in message and "does not download" in message and "local directory" in message
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _error(tmp_path / "file", ConfigError)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_file_is_named(default_ckpt: Path, tmp_path: Path, name: str) -> None:
    path = _broken(default_ckpt, tmp_path)
    (path / name).unlink()
    assert name in _error(path)


def test_garbled_config_names_file_and_line(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    (path / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}\n')
    message = _error(path, ConfigError)
    assert "config.json" in message and "line 3" in message


def test_garbled_tokenizer_is_named(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    (path / "tokenizer.json").write_text('{"model": ')
    assert "tokenizer.json" in _error(path)


def test_unsupported_model_type(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (path / "config.json").write_text(json.dumps(config))
    message = _error(path, ConfigError)
    assert "'gpt2'" in message and "llama" in message


def test_truncated_safetensors_is_named(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    message = _error(path)
    assert "model.safetensors" in message and "truncated" in message


def test_missing_tensor_is_named_with_its_shape(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    _rewrite_tensors(path, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    message = _error(path)
    assert "model.layers.2.mlp.up_proj.weight" in message and "[172, 64]" in message


def test_wrong_shape_names_both_shapes(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    _rewrite_tensors(path, lambda t: t.update({"model.layers.1.self_attn.k_proj.weight": torch.zeros(64, 64)}))
    message = _error(path)
    assert "model.layers.1.self_attn.k_proj.weight" in message and "[64, 64]" in message and "[32, 64]" in message


def test_unexpected_tensor_is_named_but_inv_freq_is_allowed(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    _rewrite_tensors(path, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    load_checkpoint(path)
    _rewrite_tensors(path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}))
    assert "model.layers.0.self_attn.q_proj.bias" in _error(path)


def test_missing_shard_is_named(default_ckpt: Path, tmp_path: Path) -> None:
    path = _broken(default_ckpt, tmp_path)
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    weight_map = {"model.norm.weight": "model-00002-of-00002.safetensors"}
    with safe_open(str(path / "model-00001-of-00002.safetensors"), framework="pt") as fh:
        weight_map.update({n: "model-00001-of-00002.safetensors" for n in fh.keys() if n != "model.norm.weight"})  # noqa: SIM118
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert "model-00002-of-00002.safetensors" in _error(path)


# -- config -----------------------------------------------------------------------------------


def test_config_round_trips_and_validates() -> None:
    assert LlamaConfig.from_hf(GQA_CONFIG.to_hf()) == GQA_CONFIG
    assert LlamaConfig.from_hf(TINY_CONFIG.to_hf()) == TINY_CONFIG
    assert GQA_CONFIG.eos_token_ids == (2, 7) and TINY_CONFIG.head_dim == 16
    # transformers 5 writes rope_theta inside rope_parameters
    hf5 = {k: v for k, v in TINY_CONFIG.to_hf().items() if k not in ("rope_scaling", "rope_theta")}
    hf5["rope_parameters"] = {**TINY_CONFIG.rope_scaling, "rope_theta": 500000.0}
    assert LlamaConfig.from_hf(hf5) == TINY_CONFIG
    base = TINY_CONFIG.to_hf()
    bad_cases = [({"num_key_value_heads": 3}, "num_key_value_heads=3"),
                 ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),
                 ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
                 ({"hidden_act": "gelu"}, "hidden_act"),
                 ({"torch_dtype": "int8"}, "int8"),
                 ({"vocab_size": None}, "'vocab_size'")]
    for change, needle in bad_cases:
        with pytest.raises(ConfigError, match=needle):
            LlamaConfig.from_hf({**base, **change})


# -- the default model --------------------------------------------------------------------------


def test_default_model_is_deterministic_across_processes(default_ckpt: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-root"
    code = "import sys, pathlib; from warmgraph.models.tiny import ensure_tiny_model as e; " \
           "print(e(pathlib.Path(sys.argv[1])))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(other)], env=env, check=True, capture_output=True, text=True)
    second = Path(out.stdout.strip())
    assert second == tiny_model_dir(other) and second.name == MODEL_NAME
    names = sorted(p.name for p in default_ckpt.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(names)
    for name in names:
        assert (default_ckpt / name).read_bytes() == (second / name).read_bytes(), name
    assert stat.S_IMODE(second.stat().st_mode) == 0o700
    assert [p.name for p in second.parent.iterdir() if p.name.startswith(".") and ".tmp." in p.name] == []


def test_default_model_concurrent_callers_and_leftovers(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    leftover = models / f".{MODEL_NAME}.tmp.999999.deadbeef"
    leftover.mkdir()  # a writer that crashed mid-way
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_tiny_model(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tiny_model_dir(tmp_path)] * 2
    assert not leftover.exists()
    assert ensure_tiny_model(tmp_path) == results[0]


def test_default_tokenizer_round_trips_ascii(default_ckpt: Path) -> None:
    _, tokenizer, config = load_checkpoint(default_ckpt)
    assert tokenizer.get_vocab_size() <= config.vocab_size
    assert [tokenizer.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    texts = [*PROMPTS, "".join(chr(c) for c in range(32, 127)), "  leading and trailing  ", "tab\tnew\nline\r\n",
             "", "a" * 300, "Mixed CASE, numbers 3.14159 and $5 (parens) [brackets] {braces} @#%^&*"]
    for text in texts:
        ids = tokenizer.encode(text).ids
        assert ids[0] == config.bos_token_id
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode(PROMPTS[0]).ids) < len(PROMPTS[0]) / 2  # merges learnt, not bytes only
    assert build_tokenizer().to_str() == tokenizer.to_str()


def test_expected_shapes_are_the_modules_own() -> None:
    for config in (TINY_CONFIG, GQA_CONFIG, dataclasses.replace(GQA_CONFIG, tie_word_embeddings=False, head_dim=24)):
        with torch.device("meta"):
            module = LlamaForCausalLM(config)
        shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        if config.tie_word_embeddings:
            shapes.pop("lm_head.weight")
        assert expected_shapes(config) == shapes


def test_building_from_a_state_dict_leaves_nn_init_intact() -> None:
    before = (torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_)
    LlamaForCausalLM.from_state_dict(TINY_CONFIG, random_state_dict(TINY_CONFIG, torch.Generator().manual_seed(0)))
    assert (torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_) == before
    assert torch.nn.Linear(4, 4).weight.abs().sum() > 0  # a fresh module is still initialised
