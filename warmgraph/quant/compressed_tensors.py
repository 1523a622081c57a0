"""FP8 checkpoints in compressed-tensors' "float-quantized" format, as vLLM reads them.

``config.json`` carries ``quantization_config``: ``quant_method: compressed-tensors``,
``format: float-quantized``, one config group targeting ``Linear`` with 8-bit float,
per-tensor (``strategy: tensor``), symmetric, static weights and input activations, and
``ignore: ["lm_head"]``. Each decoder linear stores ``<name>.weight`` as F8_E4M3 ``(N, K)``,
``<name>.weight_scale`` and ``<name>.input_scale`` of shape ``(1,)``; embeddings, norms and the
LM head stay in the model's float dtype. Dequantised weight = e4m3 value x ``weight_scale``.

This module reads and checks that layout (``Fp8Format``), says which tensors a checkpoint of
a config must hold (``expected_tensors``), and writes it (``quantization_config``). What it
refuses, each as one line naming the field or tensor: another quantisation method or format,
integer or 4-bit types, dynamic or per-channel/per-group scales, asymmetric scales, a float8
other than e4m3 (``check_tensor``), a missing ``input_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.models.config import LlamaConfig
from warmgraph.quant.fp8 import LINEARS

METHOD = "compressed-tensors"
FORMAT = "float-quantized"
FP8_STORAGE = "F8_E4M3"
SCALE_SUFFIXES = ("weight_scale", "input_scale")
_QUANT_ARGS = {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False}


def quantization_config(ignore: tuple[str, ...] = ("lm_head",)) -> dict[str, Any]:
    """The ``quantization_config`` warmgraph writes: static per-tensor FP8 weights and inputs."""
    return {
        "quant_method": METHOD,
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": dict(_QUANT_ARGS),
                                      "input_activations": dict(_QUANT_ARGS), "output_activations": None}},
        "ignore": list(ignore),
        "kv_cache_scheme": None,
    }


@dataclass(frozen=True)
class Fp8Format:
    """A checked ``quantization_config``: static per-tensor FP8 weights and input activations."""

    ignore: tuple[str, ...]


def _check_args(where: str, args: Any, what: str) -> None:
    if not isinstance(args, Mapping):
        raise ConfigError(f"config.json: {where} is missing; warmgraph needs static per-tensor FP8 {what}")
    checks = (
        ("type", "float", "only float (FP8) quantisation is read, not integer"),
        ("num_bits", 8, "only 8-bit floats (FP8) are read"),
        ("strategy", "tensor", "only per-tensor scales are read (per-channel or per-group scales are not supported "
                               "for runtime scale patching, and warmgraph reads per-tensor FP8 scales only)"),
        ("symmetric", True, "only symmetric scales are read"),
        ("dynamic", False, "only static scales are read (dynamic scales are computed per call)"),
    )
    for field, wanted, why in checks:
        got = args.get(field, wanted if field in ("symmetric", "dynamic") else None)
        if got != wanted:
            raise ConfigError(f"config.json: {where}.{field} is {got!r}, not {wanted!r}: {why}")


def read_format(hf: Mapping[str, Any]) -> Fp8Format | None:
    """The FP8 format of a ``config.json`` dict, or None when it has no ``quantization_config``.

    Raises ConfigError (one line, naming the field) for anything but compressed-tensors
    float-quantized static per-tensor FP8 of the decoder's linears."""
    qc = hf.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, Mapping):
        raise ConfigError("config.json: quantization_config must be an object")
    method = qc.get("quant_method")
    if method != METHOD:
        raise ConfigError(f"config.json: quantization_config.quant_method is {method!r}; warmgraph reads FP8 "
                          f"checkpoints in {METHOD!r} format (vLLM's), or float checkpoints without a "
                          "quantization_config")
    fmt = qc.get("format")
    if fmt != FORMAT:
        raise ConfigError(f"config.json: quantization_config.format is {fmt!r}; warmgraph reads {FORMAT!r} "
                          "(FP8 weights stored as F8_E4M3)")
    groups = qc.get("config_groups")
    if not isinstance(groups, Mapping) or len(groups) != 1:
        raise ConfigError("config.json: quantization_config.config_groups must hold exactly one group "
                          "(every Linear quantised the same way)")
    (name, group), = groups.items()
    if not isinstance(group, Mapping) or "Linear" not in (group.get("targets") or []):
        raise ConfigError(f"config.json: quantization_config.config_groups.{name}.targets must include 'Linear'")
    _check_args(f"quantization_config.config_groups.{name}.weights", group.get("weights"), "weights")
    _check_args(f"quantization_config.config_groups.{name}.input_activations", group.get("input_activations"),
                "input activations (input_scale)")
    ignore = tuple(qc.get("ignore") or ())
    quantised_ignored = [n for n in ignore if any(n.endswith(linear) for linear in LINEARS)]
    if quantised_ignored:
        raise ConfigError(f"config.json: quantization_config.ignore lists {quantised_ignored[0]}; warmgraph runs "
                          "every decoder linear in FP8 (only lm_head may stay unquantised)")
    return Fp8Format(ignore=ignore)


def quantized_weights(config: LlamaConfig) -> list[str]:
    """The names of the FP8 weights of ``config``'s decoder linears, layer by layer."""
    return [f"model.layers.{i}.{linear}.weight" for i in range(config.num_hidden_layers) for linear in LINEARS]


def expected_scales(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every scale tensor a checkpoint of ``config`` holds, with its shape ``(1,)``."""
    return {f"{w.removesuffix('.weight')}.{suffix}": (1,) for w in quantized_weights(config)
            for suffix in SCALE_SUFFIXES}


def check_tensor(name: str, shape: tuple[int, ...], storage: str, file: str) -> None:
    """Refuse an FP8 weight or scale a per-tensor e4m3 checkpoint cannot hold (one line, naming it)."""
    if name.endswith(".weight"):
        if storage.startswith("F8") and storage != FP8_STORAGE:
            raise WarmgraphError(f"tensor {name} in {file} is stored as {storage}; warmgraph reads FP8 weights as "
                                 f"{FP8_STORAGE} (float8_e4m3fn) only")
        if storage != FP8_STORAGE:
            raise WarmgraphError(f"tensor {name} in {file} is stored as {storage}; config.json's quantization_config "
                                 f"says it is FP8 ({FP8_STORAGE})")
        return
    if len(shape) > 1 or (shape and shape[0] != 1):
        raise WarmgraphError(f"tensor {name} in {file} has shape {list(shape)}: per-channel scales are not "
                             "supported for runtime scale patching, and warmgraph reads per-tensor FP8 scales "
                             "only (shape [1]); quantise the model per tensor")
    if storage not in ("F32", "BF16", "F16"):
        raise WarmgraphError(f"tensor {name} in {file} is stored as {storage}; a scale must be a float32, "
                             "bfloat16 or float16 number")
