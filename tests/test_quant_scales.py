"""INC's per-tensor FP8 scale methods (``quant.scale_methods``) and INC max-abs measurement
files (``quant.inc``). Expected values are worked out by hand here, never by the code under
test: scale = maxabs / (448 * backoff), backoff 0.5 for weights and 0.25 for inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.quant import inc
from warmgraph.quant.scale_methods import (
    METHODS,
    PER_CHANNEL,
    check_method,
    runtime_scale_patching,
    scale_for,
    trivial_scales_mode,
)


def f32(x: float) -> float:
    return float(np.float32(x))


# (maxabs, kind, arbitrary, pow2, hw): 448 * 0.5 = 224 for weights, 448 * 0.25 = 112 for inputs.
CASES = [
    (1.0, "weight", f32(1 / 224), 2.0**-7, 2.0**-7),  # 1/224 = 0.00446: 2**-8 < it <= 2**-7
    (1.0, "input", f32(1 / 112), 2.0**-6, 2.0**-6),  # 1/112 = 0.00893: 2**-7 < it <= 2**-6
    (224.0, "weight", 1.0, 1.0, 1.0),  # exactly a power of two: not rounded up
    (225.0, "weight", f32(225 / 224), 2.0, 2.0),
    (112.0, "input", 1.0, 1.0, 1.0),
    (3.5, "input", 0.03125, 0.03125, 0.03125),  # 3.5/112 = 1/32 exactly
    (1e6, "weight", f32(1e6 / 224), 8192.0, 128.0),  # 4464.3 -> 2**13; Gaudi3's largest is 2**7
    (1e-20, "input", f32(1e-20 / 112), 2.0**-73, 2.0**-55),  # 8.9e-23 -> 2**-73; smallest 2**-55
]


@pytest.mark.parametrize(("maxabs", "kind", "arbitrary", "pow2", "hw"), CASES)
def test_each_method_on_hand_worked_values(maxabs: float, kind: str, arbitrary: float, pow2: float,
                                           hw: float) -> None:
    assert scale_for(maxabs, "maxabs_arbitrary", kind) == arbitrary
    assert scale_for(maxabs, "maxabs_pow2", kind) == pow2
    assert scale_for(maxabs, "maxabs_hw", kind) == hw
    assert scale_for(maxabs, "unit_scale", kind) == 1.0
    assert scale_for(maxabs, "hw_aligned_single_scale", kind) == 128.0  # INC's first Gaudi3 scale, 2**7


def test_pow2_scale_never_clips_the_maxabs() -> None:
    # 224 * 2**20 plus one float32 step (16): the scale is 2**20 + 1/8 in float32, so pow2 is
    # 2**21 (INC's float32 log2 rounds this to 20 and would give 2**20, clipping the tensor).
    just_above = 224.0 * 2**20 + 16
    assert scale_for(224.0 * 2**20, "maxabs_pow2", "weight") == 2.0**20
    assert scale_for(just_above, "maxabs_pow2", "weight") == 2.0**21
    assert scale_for(just_above, "maxabs_hw", "weight") == 128.0


def test_scales_are_float32_exact_positive_and_finite() -> None:
    for maxabs in (0.0, 1e-45, 1e-30, 0.1, 1.0, 3.0, 447.9, 1e5, 3.0e38):
        for method in METHODS:
            for kind in ("weight", "input"):
                s = scale_for(maxabs, method, kind)
                assert isinstance(s, float)
                assert f32(s) == s and s > 0 and math.isfinite(s) and math.isfinite(f32(1 / s)), (maxabs, method)


def test_zero_maxabs_gets_the_smallest_scale_of_the_method() -> None:
    assert scale_for(0.0, "maxabs_arbitrary", "weight") == 2.0**-126  # float32's smallest normal
    assert scale_for(0, "maxabs_pow2", "input") == 2.0**-126
    assert scale_for(0.0, "maxabs_hw", "weight") == 2.0**-55  # Gaudi3's smallest
    assert scale_for(1e-45, "maxabs_arbitrary", "input") == 2.0**-126  # underflows in float32
    assert scale_for(0.0, "unit_scale", "weight") == 1.0


def test_numpy_maxabs_values_are_numbers() -> None:
    assert scale_for(np.float32(224.0), "maxabs_pow2", "weight") == 1.0  # not a float subclass
    assert scale_for(np.float64(112.0), "maxabs_arbitrary", "input") == 1.0


def test_method_names_are_case_insensitive_like_inc() -> None:
    assert scale_for(1.0, "MAXABS_POW2", "weight") == 2.0**-7
    check_method(" Maxabs_HW ", runtime_patching=True)


@pytest.mark.parametrize("maxabs", [-1.0, float("nan"), float("inf"), 1e39, True, "1.0", None])
def test_a_broken_maxabs_is_refused(maxabs: object) -> None:
    with pytest.raises(ConfigError, match="finite number >= 0") as err:
        scale_for(maxabs, "maxabs_hw", "weight")  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_a_bad_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="weight, input"):
        scale_for(1.0, "maxabs_hw", "activation")  # type: ignore[arg-type]


@pytest.mark.parametrize("patching", [True, False])
def test_per_tensor_methods_pass_either_way(patching: bool) -> None:
    assert METHODS == ("maxabs_hw", "maxabs_pow2", "maxabs_arbitrary", "unit_scale", "hw_aligned_single_scale")
    for method in METHODS:
        check_method(method, runtime_patching=patching)


def test_per_channel_list_is_inc_pcs_and_smoothquant_names() -> None:
    assert "act_maxabs_pow2_weights_pcs_opt_pow2" in PER_CHANNEL
    assert "act_maxabs_hw_weights_pcs_maxabs_pow2" in PER_CHANNEL
    assert "smoothquant_opt" in PER_CHANNEL
    assert len(PER_CHANNEL) == 9
    assert all("pcs" in m or "smoothquant" in m for m in PER_CHANNEL)
    assert not set(PER_CHANNEL) & set(METHODS)


@pytest.mark.parametrize("method", PER_CHANNEL)
def test_per_channel_under_patching_gives_inc_reason_and_the_fix(method: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_method(method, runtime_patching=True)
    text = str(err.value)
    assert "\n" not in text and method in text
    assert "not supported for runtime scale patching (graph recompile reduction)" in text
    assert "per-tensor" in text and "maxabs_hw" in text


@pytest.mark.parametrize("method", PER_CHANNEL)
def test_per_channel_without_patching_is_refused_too(method: str) -> None:
    with pytest.raises(ConfigError, match="warmgraph reads per-tensor FP8 scales only") as err:
        check_method(method, runtime_patching=False)
    assert "\n" not in str(err.value) and "runtime scale patching" not in str(err.value)
    with pytest.raises(ConfigError, match="per-tensor"):
        scale_for(1.0, method, "weight")


def test_unknown_and_tensor_search_methods_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown scale method 'maxabs_fancy'") as err:
        check_method("maxabs_fancy", runtime_patching=False)
    assert all(m in str(err.value) for m in METHODS)
    with pytest.raises(ConfigError, match="searches weight scales"):
        check_method("maxabs_hw_opt_weight", runtime_patching=True)


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("true", True), ("TRUE", True), (" True ", True),
                                               ("0", False), ("false", False), ("False", False)])
def test_runtime_scale_patching_values(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("RUNTIME_SCALE_PATCHING", raw)
    assert runtime_scale_patching(default=not expected) is expected


def test_runtime_scale_patching_unset_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_SCALE_PATCHING", raising=False)
    assert runtime_scale_patching() is True
    assert runtime_scale_patching(default=False) is False
    monkeypatch.setenv("RUNTIME_SCALE_PATCHING", "")
    assert runtime_scale_patching(default=False) is False


@pytest.mark.parametrize("raw", ["yes", "2", "on", "tru"])
def test_runtime_scale_patching_refuses_other_values(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("RUNTIME_SCALE_PATCHING", raw)
    with pytest.raises(ConfigError, match="RUNTIME_SCALE_PATCHING") as err:
        runtime_scale_patching()
    assert "1, true, 0, false" in str(err.value) and "\n" not in str(err.value)


def test_trivial_scales_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PT_HPU_H2D_TRIVIAL_SCALES_MODE", raising=False)
    assert trivial_scales_mode() == 0
    assert trivial_scales_mode(default=2) == 2
    for raw, expected in (("0", 0), ("1", 1), ("2", 2)):
        monkeypatch.setenv("PT_HPU_H2D_TRIVIAL_SCALES_MODE", raw)
        assert trivial_scales_mode(default=1) == expected
    for raw in ("3", "-1", "one"):
        monkeypatch.setenv("PT_HPU_H2D_TRIVIAL_SCALES_MODE", raw)
        with pytest.raises(ConfigError, match="PT_HPU_H2D_TRIVIAL_SCALES_MODE") as err:
            trivial_scales_mode()
        assert "0, 1, 2" in str(err.value) and "\n" not in str(err.value)


# --- INC measurement files ---------------------------------------------------------------

Q = "model.layers.0.self_attn.q_proj"
DOWN = "model.layers.0.mlp.down_proj"


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    nodes = {Q: {"input": 3.5, "weight": 0.25, "output": 12.0}, DOWN: {"input": 0.0, "weight": 1.5, "output": None}}
    path = inc.write_measurements(tmp_path / "run", {**nodes, DOWN: {"input": np.float32(0.0), "weight": 1.5}})
    assert path == tmp_path / "run_hooks_maxabs.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_hooks_maxabs.json", "run_hooks_maxabs.npz"]
    assert inc.read_measurements(tmp_path / "run") == nodes
    assert inc.read_measurements(path) == nodes
    assert inc.read_measurements(str(tmp_path / "run_hooks_maxabs")) == nodes  # INC's measure_file name


def test_written_json_is_inc_layout(tmp_path: Path) -> None:
    path = inc.write_measurements(str(tmp_path / "run"), {Q: {"input": 3.5, "weight": 0.25, "output": 12.0},
                                                         DOWN: {"input": 2.0, "weight": 0.5}})
    doc = json.loads(path.read_text())
    assert list(doc) == ["GlobalRank", "LocalRank", "Mode", "Nodes"]
    assert doc == {"GlobalRank": None, "LocalRank": None, "Mode": "DynamicRange", "Nodes": {
        Q: {"inputs": [[[3.5]]], "outputs": [[[12.0]]], "params": {"weight": [[0.25]]}},
        DOWN: {"inputs": [[[2.0]]], "params": {"weight": [[0.5]]}}}}
    assert path.read_text().startswith('{\n    "GlobalRank": null')  # json.dump(..., indent=4), as INC


def test_written_npz_loads_as_inc_loads_it(tmp_path: Path) -> None:
    inc.write_measurements(tmp_path / "run", {Q: {"input": 3.5, "weight": 0.25, "output": 12.0}})
    doc = np.load(tmp_path / "run_hooks_maxabs.npz", allow_pickle=True)["arr_0"].item()
    assert doc["Mode"] == "DynamicRange" and doc["GlobalRank"] is None
    node = doc["Nodes"][Q]
    assert node["inputs"][0].shape == (1, 1) and node["inputs"][0].dtype == np.float32
    assert node["inputs"][0][0, 0] == 3.5 and node["outputs"][0][0, 0] == 12.0
    assert node["params"]["weight"].shape == (1, 1) and node["params"]["weight"][0, 0] == 0.25


def test_values_are_stored_as_float32(tmp_path: Path) -> None:
    inc.write_measurements(tmp_path / "run", {Q: {"input": 0.1, "weight": 1 / 3}})
    assert inc.read_measurements(tmp_path / "run")[Q] == {"input": f32(0.1), "weight": f32(1 / 3), "output": None}


def test_reads_a_hand_written_inc_file(tmp_path: Path) -> None:
    text = """{
    "NumSamples": 128,
    "GlobalRank": 0,
    "LocalRank": 0,
    "Mode": "DynamicRange",
    "Nodes": {
        "model.layers.0.self_attn.q_proj": {
            "inputs": [[[6.375]]],
            "outputs": [[[41.25]]],
            "params": {"weight": [[0.1396484375]]}
        },
        "model.layers.0.mlp.down_proj": {"input": [[[2]]], "params": {"weight": [[0.5]]}},
        "model.layers.0.self_attn.attn.impl.matmul_qk": {"inputs": [[[3.0]], [[4.0]]], "outputs": [[[9.0]]]}
    }
}"""
    (tmp_path / "llama_hooks_maxabs_0_2.json").write_text(text)
    assert inc.read_measurements(tmp_path / "llama_hooks_maxabs_0_2.json") == {
        Q: {"input": 6.375, "weight": 0.1396484375, "output": 41.25},
        DOWN: {"input": 2.0, "weight": 0.5, "output": None},
    }


GOOD_NODE = {"inputs": [[[1.0]]], "params": {"weight": [[0.5]]}}


def _doc(node: object) -> str:
    return json.dumps({"GlobalRank": None, "LocalRank": None, "Mode": "DynamicRange", "Nodes": {Q: node}})


MALFORMED = [
    ("{", ["not JSON", "line 1"]),
    ("[1, 2]", ["not a JSON object"]),
    (json.dumps({"Mode": "Scale", "Nodes": {}}), ["Mode is 'Scale'", "'DynamicRange'", "max-abs measurement"]),
    (json.dumps({"Mode": "Shape", "Nodes": {}}), ["Mode is 'Shape'", "max-abs measurement"]),
    (json.dumps({"Nodes": {}}), ["Mode is missing", "max-abs measurement"]),
    (json.dumps({"Mode": "DynamicRange"}), ["Nodes is missing"]),
    (_doc([1.0]), [f"Nodes['{Q}'] is not an object"]),
    (_doc({"params": {"weight": [[0.5]]}}), [f"Nodes['{Q}'] has no inputs"]),
    (_doc({"inputs": [[[1.0]]], "params": {}}), [f"Nodes['{Q}'] has no params.weight"]),
    (_doc({**GOOD_NODE, "params": {"weight": [["big"]]}}), [f"Nodes['{Q}'].params.weight holds 'big', not a number"]),
    (_doc({**GOOD_NODE, "params": {"weight": [[True]]}}), [f"Nodes['{Q}'].params.weight holds True, not a number"]),
    (_doc({**GOOD_NODE, "params": {"weight": [[-0.5]]}}), [f"Nodes['{Q}'].params.weight is -0.5", ">= 0"]),
    (_doc({**GOOD_NODE, "inputs": [[[float("nan")]]]}), [f"Nodes['{Q}'].inputs[0] is nan", "finite"]),
    (_doc({**GOOD_NODE, "params": {"weight": [[float("inf")]]}}), [f"Nodes['{Q}'].params.weight is inf", "finite"]),
    (_doc({**GOOD_NODE, "params": {"weight": [0.5]}}),
     [f"Nodes['{Q}'].params.weight is not a max-abs value [[v]]"]),
    (_doc({**GOOD_NODE, "params": {"weight": 0.5}}), [f"Nodes['{Q}'].params.weight is not a max-abs value [[v]]"]),
    (_doc({**GOOD_NODE, "params": {"weight": [[0.5], [0.25], [1.0]]}}),
     [f"Nodes['{Q}'].params.weight is a per-channel measurement (3 values)", "warmgraph reads per-tensor max-abs"]),
    (_doc({**GOOD_NODE, "inputs": [[[1.0, 2.0]]]}), [f"Nodes['{Q}'].inputs[0] is a per-channel measurement"]),
    (_doc({**GOOD_NODE, "inputs": [[[1.0]], [[2.0]]]}), [f"Nodes['{Q}'].inputs holds 2 tensors"]),
    (_doc({**GOOD_NODE, "inputs": 1.0}), [f"Nodes['{Q}'].inputs is not a list"]),
    (_doc({**GOOD_NODE, "outputs": [[[-1.0]]]}), [f"Nodes['{Q}'].outputs[0] is -1.0"]),
]


@pytest.mark.parametrize(("text", "words"), MALFORMED)
def test_malformed_files_give_one_line_naming_file_and_field(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "measurements.json"
    path.write_text(text)
    with pytest.raises(WarmgraphError) as err:
        inc.read_measurements(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for word in words:
        assert word in message


def test_missing_file_names_the_file_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(WarmgraphError, match="no such measurement file") as err:
        inc.read_measurements(tmp_path / "absent")
    assert str(tmp_path / "absent_hooks_maxabs.json") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("node", [{"input": -1.0, "weight": 0.5}, {"input": 1.0, "weight": float("nan")},
                                  {"input": 1.0}, {"input": 1.0, "weight": 0.5, "output": float("inf")}])
def test_write_refuses_values_that_are_not_max_abs(tmp_path: Path, node: dict) -> None:
    with pytest.raises(ConfigError, match=f"nodes\\['{Q}'\\]"):
        inc.write_measurements(tmp_path / "run", {Q: node})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(WarmgraphError, match="cannot write") as err:
        inc.write_measurements(blocker / "run", {Q: {"input": 1.0, "weight": 0.5}})
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [blocker]


def test_a_write_that_fails_midway_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inc.os, "replace", full_disk)
    with pytest.raises(WarmgraphError, match="No space left on device") as err:
        inc.write_measurements(tmp_path / "run", {Q: {"input": 1.0, "weight": 0.5}})
    assert str(tmp_path / "run_hooks_maxabs.npz") in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
