"""FP8 checkpoints through the engine: runtime scale patching, trivial-scale variants, the format.

The tiny random model is calibrated into a compressed-tensors FP8 checkpoint, and then some of
its scales are set to exactly 1.0 (layer 0's q/k/v input and q weight, layer 1's down-proj
input) so every trivial-scales mode has patterns to find, and one to 2.0 (layer 2's gate/up
input: a multiply by 0.5, which no mode may leave out). Tokens are held to the dense eager FP8
reference (``greedy_generate_reference`` over ``Fp8Linear``s), graphs are counted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import Capsys, assert_one_line_error, run, run_json
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from warmgraph.engine import Engine, EngineConfig, SamplingParams, serving_limits
from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.models.llama import greedy_generate_reference
from warmgraph.models.loader import load_checkpoint
from warmgraph.quant.calibrate import DEFAULT_TEXTS, decoder_linears, measure, scales_from_measurement
from warmgraph.quant.model import layer_vectors, write_fp8_checkpoint
from warmgraph.quant.settings import Fp8Settings

pytestmark = pytest.mark.usefixtures("one_thread")
LIMITS = serving_limits(max_num_seqs=1, max_num_batched_tokens=32, max_model_len=32, block_size=32)  # 3 buckets
BUCKETS = 3
PROMPTS = ["The capital of France is", "hello world"]


def _calibrated(src: Path, method: str) -> tuple[object, object, object, dict[str, tuple[float, float]]]:
    model, tokenizer, config = load_checkpoint(src)
    measured = measure(model, [tokenizer.encode(t).ids for t in DEFAULT_TEXTS])
    linears = decoder_linears(config.num_hidden_layers)
    return model, tokenizer, config, scales_from_measurement(measured, method, linears)


@pytest.fixture(scope="module")
def fp8_ckpt(default_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model in FP8 with a few scales of exactly 1.0 (see the module docstring)."""
    model, tokenizer, config, scales = _calibrated(default_ckpt, "maxabs_pow2")
    for name in ("q_proj", "k_proj", "v_proj"):
        w, _ = scales[f"model.layers.0.self_attn.{name}"]
        scales[f"model.layers.0.self_attn.{name}"] = (1.0 if name == "q_proj" else w, 1.0)
    w, _ = scales["model.layers.1.mlp.down_proj"]
    scales["model.layers.1.mlp.down_proj"] = (w, 1.0)
    for name in ("gate_proj", "up_proj"):  # a cast multiply of 0.5: near 1.0, not trivial
        w, _ = scales[f"model.layers.2.mlp.{name}"]
        scales[f"model.layers.2.mlp.{name}"] = (w, 2.0)
    out = tmp_path_factory.mktemp("fp8") / "tiny-fp8"
    write_fp8_checkpoint(model, tokenizer, config, scales, out, "float32", source=default_ckpt,
                         scale_method="maxabs_pow2")
    return out


def _reference(path: Path) -> list[list[int]]:
    model, tokenizer, _ = load_checkpoint(path)
    return [greedy_generate_reference(model, tokenizer.encode(p).ids, 6) for p in PROMPTS]


def _engine(path: Path, backend: str, cache: object, **settings: object) -> Engine:
    model, tokenizer, _ = load_checkpoint(path)
    return Engine(model, tokenizer, EngineConfig(serving=LIMITS, backend=backend, cache=cache,
                                                 fp8=Fp8Settings(**settings)))  # type: ignore[arg-type]


def _tokens(engine: Engine) -> list[list[int]]:
    out = engine.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0))
    return [c["token_ids"] for c in out["completions"]]


# (patching, trivial) -> layer graphs per bucket for fp8_ckpt (4 layers): layer 0 drops its qkv cast (mode 1)
# and also q's rescale (mode 2); layer 1 drops its down cast (mode 1 and 2); layers 2 and 3 drop nothing,
# so they run the mode-0 graph. Without patching, one graph per distinct tuple of multipliers (DISTINCT).
ON = {0: 1, 1: 3, 2: 3}
VARIANTS = [(True, 0), (True, 1), (True, 2), (False, 0), (False, 1), (False, 2)]


def _distinct(path: Path) -> int:
    return len({tuple(v.tolist()) for v in layer_vectors(load_checkpoint(path)[0])})


@pytest.mark.parametrize(("patching", "trivial"), VARIANTS)
def test_every_mode_runs_its_variants_and_matches_the_eager_fp8_reference(fp8_ckpt: Path, patching: bool,
                                                                          trivial: int) -> None:
    engine = _engine(fp8_ckpt, "eager", None, patching=patching, trivial=trivial)
    report = engine.warmup()
    expected = ON[trivial] if patching else _distinct(fp8_ckpt)
    assert engine.fp8_plan is not None and len(engine.fp8_plan.variants) == expected
    assert report.compiled == expected * BUCKETS
    assert _tokens(engine) == _reference(fp8_ckpt)


def test_patching_on_and_off_compile_the_predicted_graphs_and_agree(fp8_ckpt: Path, tmp_path: Path,
                                                                     capsys: Capsys) -> None:
    reference = _reference(fp8_ckpt)
    inspected = run_json(capsys, "quant", "inspect", str(fp8_ckpt), "--max-num-seqs", "1", "--max-model-len", "32",
                         "--max-num-batched-tokens", "32", "--block-size", "32")
    assert inspected["buckets"] == {"prompt": 2, "decode": 1}
    distinct = _distinct(fp8_ckpt)
    assert distinct >= 3 and inspected["distinct_scale_tuples"] == distinct
    assert inspected["scale_method"] == "maxabs_pow2"
    for patching in (True, False):
        engine = _engine(fp8_ckpt, "aot", tmp_path, patching=patching)
        report = engine.warmup()
        assert report.compiled == (1 if patching else distinct) * BUCKETS
        assert _tokens(engine) == reference
        assert engine.counter("eager_fallbacks") == 0
    modes = {(m["runtime_scale_patching"], m["trivial_scales"]): m["graphs"] for m in inspected["modes"]}
    assert modes == {(p, t): (ON[t] if p else distinct) * BUCKETS for p, t in VARIANTS}


def _recalibrated(src: Path, out: Path, method: str, texts: list[str]) -> Path:
    model, tokenizer, config = load_checkpoint(src)
    measured = measure(model, [tokenizer.encode(t).ids for t in texts])
    scales = scales_from_measurement(measured, method, decoder_linears(config.num_hidden_layers))
    write_fp8_checkpoint(model, tokenizer, config, scales, out, "float32", source=src)
    return out


def test_new_scales_with_patching_on_recompile_nothing(default_ckpt: Path, tmp_path: Path) -> None:
    first = _recalibrated(default_ckpt, tmp_path / "a", "maxabs_arbitrary", list(DEFAULT_TEXTS))
    engine = _engine(first, "aot", tmp_path / "cache", patching=True)
    assert engine.warmup().compiled == BUCKETS
    # Recalibrated on other text: the same weights and weight scales, other input scales.
    second = _recalibrated(default_ckpt, tmp_path / "b", "maxabs_arbitrary", ["0 1 2 3 4 5 6 7 8 9 " * 3])
    model = load_checkpoint(second)[0]
    assert torch.equal(model.layers[0].self_attn.q_proj.weight, engine.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(layer_vectors(model)[0], layer_vectors(engine.model)[0])
    # In place, in a running engine: the graphs read the new values at their next call.
    engine.patch_fp8_scales(layer_vectors(model))
    compiles = engine.counter("compiles")
    assert _tokens(engine) == _reference(second)
    assert engine.counter("compiles") == compiles
    # Another method (other weight scales, so other FP8 weights too) in a new engine: every graph
    # comes from the cache, because scale values are not in the key.
    third = _recalibrated(default_ckpt, tmp_path / "c", "maxabs_hw", list(DEFAULT_TEXTS))
    warm = _engine(third, "aot", tmp_path / "cache", patching=True)
    report = warm.warmup()
    assert (report.compiled, report.loaded) == (0, BUCKETS)
    assert _tokens(warm) == _reference(third)


def test_patching_scales_that_cannot_take_effect_is_refused(fp8_ckpt: Path) -> None:
    baked = _engine(fp8_ckpt, "eager", None, patching=False)
    with pytest.raises(ConfigError, match="baked into the graphs"):
        baked.patch_fp8_scales(layer_vectors(baked.model))
    trivial = _engine(fp8_ckpt, "eager", None, patching=True, trivial=1)
    vectors = [v.clone() for v in layer_vectors(trivial.model)]
    vectors[0][0] = 0.5  # layer 0's qkv cast multiply was exactly 1.0, and its variant leaves it out
    with pytest.raises(ConfigError, match="layer 0 leaves out"):
        trivial.patch_fp8_scales(vectors)
    before = [v.clone() for v in layer_vectors(trivial.model)]
    vectors[0][0] = 1.0
    vectors[3][1] *= 2  # not trivial before or after: allowed
    trivial.patch_fp8_scales(vectors)
    assert torch.equal(layer_vectors(trivial.model)[3][1], 2 * before[3][1])


def test_the_checkpoint_is_compressed_tensors_and_transformers_reads_it_bit_for_bit(fp8_ckpt: Path) -> None:
    pytest.importorskip("compressed_tensors")  # a test dependency (pyproject's test extra)
    import transformers

    qc = json.loads((fp8_ckpt / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["format"], qc["ignore"]) == ("compressed-tensors", "float-quantized", ["lm_head"])
    group = qc["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"]
    for side in ("weights", "input_activations"):
        assert {k: group[side][k] for k in ("num_bits", "type", "strategy", "symmetric", "dynamic")} == {
            "num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False}
    with safe_open(str(fp8_ckpt / "model.safetensors"), "pt") as fh:
        q = "model.layers.1.self_attn.q_proj"
        assert fh.get_slice(f"{q}.weight").get_dtype() == "F8_E4M3"
        assert fh.get_slice(f"{q}.weight_scale").get_shape() == [1]
        assert fh.get_slice(f"{q}.input_scale").get_shape() == [1]
        assert fh.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(fp8_ckpt)
    ours, tokenizer, _ = load_checkpoint(fp8_ckpt)
    ids = torch.tensor([tokenizer.encode(PROMPTS[0]).ids])
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, ours(ids))


def test_baked_scales_past_dynamos_recompile_limit_still_run_compiled(fp8_ckpt: Path) -> None:
    """Dynamo guards a baked float by value and, after its recompile limit (8), runs the rest
    eagerly without a word. Here every (variant, bucket) graph has its own entry point: more than
    8 graphs of one step class, all compiled, none recompiled, no eager fallback."""
    engine = _engine(fp8_ckpt, "inductor", None, patching=False)
    graphs = _distinct(fp8_ckpt) * BUCKETS
    assert graphs > 8 and engine.warmup().compiled == graphs
    assert _tokens(engine) == _reference(fp8_ckpt)
    assert engine.counter("recompiles") == 0 and engine.counter("eager_fallbacks") == 0
    assert engine.counter("compiles") == graphs


def test_trivial_scales_come_from_the_environment_and_the_cap_sends_the_rest_to_mode_0(
        fp8_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PT_HPU_H2D_TRIVIAL_SCALES_MODE", "1")
    monkeypatch.setenv("RUNTIME_SCALE_PATCHING", "true")
    settings = Fp8Settings.from_env(cap=1)
    model, tokenizer, _ = load_checkpoint(fp8_ckpt)
    engine = Engine(model, tokenizer, EngineConfig(serving=LIMITS, backend="eager", cache=None, fp8=settings))
    plan = engine.fp8_plan
    assert plan is not None and plan.capped == (1,)  # a tie: layer 0's pattern comes first
    assert [v.layers for v in plan.variants] == [(1, 2, 3), (0,)] and plan.variants[1].dropped == ["qkv.input"]
    assert engine.warmup().compiled == 2 * BUCKETS
    assert _tokens(engine) == _reference(fp8_ckpt)


# -- bad input --------------------------------------------------------------------------------


def _edited(src: Path, dst: Path, edit: object = None, config_edit: object = None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        state = load_file(str(dst / "model.safetensors"))
        edit(state)  # type: ignore[operator]
        save_file(state, str(dst / "model.safetensors"))
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config["quantization_config"])  # type: ignore[operator]
        (dst / "config.json").write_text(json.dumps(config))
    return dst


Q = "model.layers.0.self_attn.q_proj"


def _per_channel(state: dict) -> None:
    state[f"{Q}.weight_scale"] = torch.ones(state[f"{Q}.weight"].shape[0], 1)


def _e5m2(state: dict) -> None:
    state[f"{Q}.weight"] = state[f"{Q}.weight"].to(torch.float32).to(torch.float8_e5m2)


BAD = {
    "per-channel": (_per_channel, None, [f"{Q}.weight_scale", "per-channel", "per-tensor"]),
    "no input scale": (lambda s: s.pop(f"{Q}.input_scale"), None, [f"{Q}.input_scale", "static per-tensor"]),
    "e5m2": (_e5m2, None, [f"{Q}.weight", "F8_E5M2", "F8_E4M3"]),
    "channel strategy": (None, lambda qc: qc["config_groups"]["group_0"]["weights"].update(strategy="channel"),
                         ["config_groups.group_0.weights.strategy", "per-tensor"]),
    "dynamic inputs": (None, lambda qc: qc["config_groups"]["group_0"]["input_activations"].update(dynamic=True),
                       ["input_activations.dynamic", "static"]),
    "another method": (None, lambda qc: qc.update(quant_method="gptq"), ["quant_method is 'gptq'"]),
    "negative scale": (lambda s: s.update({f"{Q}.input_scale": torch.tensor([-1.0])}), None,
                       [f"{Q}.input_scale is -1.0", "positive, finite"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_fp8_checkpoint_is_one_line_naming_the_tensor_or_field(fp8_ckpt: Path, tmp_path: Path, case: str,
                                                                    capsys: Capsys) -> None:
    edit, config_edit, fragments = BAD[case]
    bad = _edited(fp8_ckpt, tmp_path / "bad", edit, config_edit)
    with pytest.raises(WarmgraphError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    code, out, stderr = run(capsys, "generate", str(bad), "--prompt", "x", "--backend", "eager")
    assert_one_line_error(code, out, stderr, fragments[0])
    if case not in ("another method",):  # quant inspect reads the scales and headers: the same refusals
        code, out, stderr = run(capsys, "quant", "inspect", str(bad))
        assert_one_line_error(code, out, stderr, fragments[0])


def test_calibrate_refuses_bad_requests_in_one_line(default_ckpt: Path, fp8_ckpt: Path, tmp_path: Path,
                                                    capsys: Capsys) -> None:
    out = str(tmp_path / "out")
    code, o, e = run(capsys, "quant", "calibrate", str(default_ckpt), out, "--scale-method",
                     "act_maxabs_pow2_weights_pcs_opt_pow2")
    assert_one_line_error(code, o, e, "not supported for runtime scale patching (graph recompile reduction)")
    node = {"inputs": [[[1.0]]], "params": {"weight": [["x"]]}}
    (tmp_path / "broken_hooks_maxabs.json").write_text(json.dumps({"Mode": "DynamicRange", "Nodes": {Q: node}}))
    code, o, e = run(capsys, "quant", "calibrate", str(default_ckpt), out, "--scales-from", "inc",
                     str(tmp_path / "broken"))
    assert_one_line_error(code, o, e, f"Nodes['{Q}'].params.weight holds 'x', not a number")
    code, o, e = run(capsys, "quant", "calibrate", str(fp8_ckpt), out)
    assert_one_line_error(code, o, e, "already an FP8 checkpoint")
    code, o, e = run(capsys, "quant", "calibrate", str(default_ckpt), str(fp8_ckpt))
    assert_one_line_error(code, o, e, "already exists")
    assert not Path(out).exists()


def test_calibrate_from_its_own_inc_file_writes_the_same_checkpoint(default_ckpt: Path, tmp_path: Path,
                                                                    capsys: Capsys) -> None:
    first = run_json(capsys, "quant", "calibrate", str(default_ckpt), str(tmp_path / "a"), "--scale-method",
                     "maxabs_hw", "--save-measurements", str(tmp_path / "m"))
    assert first["measurements"] == str(tmp_path / "m_hooks_maxabs.json") and first["linears"] == 4 * 7
    again = run_json(capsys, "quant", "calibrate", str(default_ckpt), str(tmp_path / "b"), "--scale-method",
                     "maxabs_hw", "--scales-from", "inc", str(tmp_path / "m_hooks_maxabs.json"))
    assert again["source"] == "inc"
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.mark.parametrize("patching", [True, False])
@pytest.mark.parametrize("name", ["cuda_graph", "acl_graph", "hpu_graph"])
def test_fp8_variants_inside_one_capture_per_bucket_on_each_fake_device(fp8_ckpt: Path, name: str,
                                                                        patching: bool) -> None:
    from fake_devices import FakeCudaModule, FakeHpuModule, FakeNpuModule

    from warmgraph.compiler.devices import CudaGraphAPI, HpuGraphAPI, NpuGraphAPI
    from warmgraph.compiler.registry import get_backend

    api_cls, fake_cls = {"cuda_graph": (CudaGraphAPI, FakeCudaModule), "acl_graph": (NpuGraphAPI, FakeNpuModule),
                         "hpu_graph": (HpuGraphAPI, FakeHpuModule)}[name]
    fake = fake_cls()
    backend = get_backend(name, api=api_cls(fake, device_type=fake.device_type), inner="eager", debug=True)
    with fake.placement():
        model, tokenizer, _ = load_checkpoint(fp8_ckpt)
        engine = Engine(model, tokenizer, EngineConfig(serving=LIMITS, backend=backend, device="cpu", cache=None,
                                                       fp8=Fp8Settings(patching=patching, trivial=1)))
        assert all(fake.is_device_tensor(t) for t in engine.state)  # FP8 weights (and patched scales) included
        report = engine.warmup()
        # Every layer's variant replays inside the one capture of its bucket.
        assert report.captured == BUCKETS == engine.counter("captures")
        assert report.compiled == (ON[1] if patching else _distinct(fp8_ckpt)) * BUCKETS
        out = engine.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0))
    assert [c["token_ids"] for c in out["completions"]] == _reference(fp8_ckpt)
    assert out["stats"]["eager_fallbacks"] == 0 and out["stats"]["graph_replays"] == fake.count("replay") > 0


def test_an_inc_file_of_other_weights_or_layers_is_refused(default_ckpt: Path, tmp_path: Path,
                                                           capsys: Capsys) -> None:
    from warmgraph.quant import inc

    run_json(capsys, "quant", "calibrate", str(default_ckpt), str(tmp_path / "a"), "--save-measurements",
             str(tmp_path / "m"))
    nodes = inc.read_measurements(tmp_path / "m")
    wrong = {**nodes, Q: {**nodes[Q], "weight": nodes[Q]["weight"] / 400}}  # would saturate most of q_proj
    inc.write_measurements(tmp_path / "wrong", wrong)
    code, o, e = run(capsys, "quant", "calibrate", str(default_ckpt), str(tmp_path / "b"), "--scales-from", "inc",
                     str(tmp_path / "wrong"))
    assert_one_line_error(code, o, e, f"node {Q} says the weight's max-abs is")
    extra = {**nodes, "model.layers.9.mlp.down_proj": nodes[Q]}
    inc.write_measurements(tmp_path / "extra", extra)
    code, o, e = run(capsys, "quant", "calibrate", str(default_ckpt), str(tmp_path / "b"), "--scales-from", "inc",
                     str(tmp_path / "extra"))
    assert_one_line_error(code, o, e, "model.layers.9.mlp.down_proj is beyond this model's 4 layers")
    assert not (tmp_path / "b").exists()


def test_calibrate_creates_parents_and_warns_when_a_method_wrecks_the_weights(default_ckpt: Path, tmp_path: Path,
                                                                             capsys: Capsys) -> None:
    out = tmp_path / "new" / "deeper" / "fp8"
    code, stdout, stderr = run(capsys, "quant", "calibrate", str(default_ckpt), str(out), "--scale-method",
                               "hw_aligned_single_scale")
    assert code == 0 and out.is_dir() and "FP8 linears" in stdout
    assert "of the FP8 weights are 0" in stderr and "try maxabs_hw" in stderr
    good = run_json(capsys, "quant", "calibrate", str(default_ckpt), str(tmp_path / "good"))
    assert good["weights_zero"] < 0.05 and good["weights_saturated"] < 0.05


def test_bf16_steps_are_bit_identical_with_scales_as_inputs_or_baked(smollm2_ckpt: Path, tmp_path: Path) -> None:
    """SmolLM2's first layer in bf16: Inductor fuses the patched and the baked graph differently,
    and without rounding at every cast (``engine._rounding_casts``) their decode steps over a
    cached context differed (measured: from the first decode step on)."""
    import dataclasses

    from warmgraph.models.llama import LlamaForCausalLM

    model, tokenizer, config = load_checkpoint(smollm2_ckpt)
    one = dataclasses.replace(config, num_hidden_layers=1)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.layers.") or k.split(".")[2] == "0"}
    cut = LlamaForCausalLM.from_state_dict(one, state)
    measured = measure(cut, [tokenizer.encode(t).ids for t in DEFAULT_TEXTS])
    out = tmp_path / "smollm2-1l-fp8"
    write_fp8_checkpoint(cut, tokenizer, one, scales_from_measurement(measured, "maxabs_hw", decoder_linears(1)), out,
                         "bfloat16", source=smollm2_ckpt)
    steps = {}
    for patching in (True, False):
        engine = _engine(out, "inductor", None, patching=patching)
        outputs: list[torch.Tensor] = []

        def recorded(phase: object, tensors: list, run: object = engine._run, outputs: list = outputs) -> torch.Tensor:
            outputs.append(run(phase, tensors))  # type: ignore[operator]
            return outputs[-1]

        engine._run = recorded  # type: ignore[method-assign]
        engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4, temperature=0))
        steps[patching] = outputs
    assert len(steps[True]) == 4 and all(torch.equal(a, b) for a, b in zip(steps[True], steps[False]))
