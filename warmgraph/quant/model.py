"""A Llama model whose decoder linears are FP8: built from a checkpoint, read back, written out.

``fp8_model`` takes a loaded compressed-tensors state (float8 weights, float32 scales, the
rest in the model dtype) and returns a ``LlamaForCausalLM`` whose 7 linears per layer are
``Fp8Linear``s. Operands that read one activation share its input scale, the largest of
theirs (vLLM's ``input_scale.max()``): one cast per activation. Each decoder layer also gets
a non-persistent buffer ``fp8_scales``, the layer's 11 float32 multipliers
(``quant.fp8.layer_vector``): what a step graph takes as a bound input under runtime scale
patching, or bakes in without it. The dense ``forward`` of the returned model is the eager
FP8 reference the compiled steps are held to.

``fp8_state`` goes the other way: a float model and per-linear scales to the tensors of a
compressed-tensors checkpoint (``write_fp8_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from warmgraph.errors import WarmgraphError
from warmgraph.models.config import LlamaConfig, dtype_name
from warmgraph.models.config import torch_dtype as to_torch_dtype
from warmgraph.models.llama import LlamaForCausalLM
from warmgraph.quant.fp8 import CAST_SLOTS, FP8_DTYPE, GROUPS, LINEARS, Fp8Linear, layer_vector, to_fp8, weight_dtype

SCALES_BUFFER = "fp8_scales"
METHOD_METADATA = "warmgraph.scale_method"  # safetensors metadata key: the scale method calibrate used


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, dotted: str, child: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, child)


def fp8_model(config: LlamaConfig, state: Mapping[str, torch.Tensor], math: str = "emulate") -> LlamaForCausalLM:
    """The model of a compressed-tensors FP8 state (names as ``quant.compressed_tensors``
    expects; the loader has checked them). Weights are held for ``math`` (``weight_dtype``)."""
    dtype = to_torch_dtype(config.torch_dtype)
    plain = {}
    for name, t in state.items():
        if name.endswith(("weight_scale", "input_scale")):
            continue
        plain[name] = t.to(dtype)  # every e4m3 value is exact in fp32, bf16 and fp16
    model = LlamaForCausalLM.from_state_dict(config, plain)
    for i, layer in enumerate(model.layers):
        prefix = f"model.layers.{i}."
        vector, scale, group_input = checkpoint_vector(state.__getitem__, prefix)
        for n in LINEARS:
            weight = state[f"{prefix}{n}.weight"].to(weight_dtype(math, dtype))
            _set(layer, n, Fp8Linear(weight, scale[n], group_input[n], math))
        layer.register_buffer(SCALES_BUFFER, vector, persistent=False)
        set_multipliers(layer)
    model.eval().requires_grad_(False)
    return model


def checkpoint_vector(get: Callable[[str], torch.Tensor], prefix: str
                      ) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
    """A layer's multipliers from its checkpoint scales (``get(name)``, names under ``prefix``):
    the vector, each linear's weight scale, and the input scale it shares with its group (the
    largest of the group's: one cast per activation, as vLLM's ``input_scale.max()``)."""
    def scale(name: str) -> float:
        tensor = get(name)
        value = float(tensor.float().reshape(-1)[0]) if tensor.numel() == 1 else float("nan")
        if not (value > 0 and value < float("inf")):
            shown = value if tensor.numel() == 1 else f"a tensor of shape {list(tensor.shape)}"
            raise WarmgraphError(f"tensor {name} is {shown}; an FP8 scale must be one positive, finite number "
                                 "(calibrate the model again)")
        return value

    weight = {n: scale(f"{prefix}{n}.weight_scale") for n in LINEARS}
    inputs = {n: scale(f"{prefix}{n}.input_scale") for n in LINEARS}
    shared = [max(inputs[n] for n in names) for _, names in GROUPS]
    group_input = {n: s for (_, names), s in zip(GROUPS, shared) for n in names}
    return layer_vector(shared, [weight[n] for n in LINEARS]), weight, group_input


def set_multipliers(layer: nn.Module) -> None:
    """Copy a layer's ``fp8_scales`` vector into its ``Fp8Linear``s (after loading or patching)."""
    vector = getattr(layer, SCALES_BUFFER)
    slot = 0
    for g, (_, names) in enumerate(GROUPS):
        assert slot == CAST_SLOTS[g]
        inv = vector[slot]
        for j, n in enumerate(names):
            _get(layer, n).set_multipliers(inv, vector[slot + 1 + j])
        slot += 1 + len(names)


def is_fp8(model: LlamaForCausalLM) -> bool:
    """True when the model's decoder linears are FP8."""
    return bool(model.layers) and hasattr(model.layers[0], SCALES_BUFFER)


def layer_vectors(model: LlamaForCausalLM) -> list[torch.Tensor]:
    """Each layer's ``fp8_scales`` (11 float32 multipliers), in layer order."""
    return [getattr(layer, SCALES_BUFFER) for layer in model.layers]


def set_math(model: LlamaForCausalLM, math: str) -> None:
    """Hold the FP8 weights as ``math`` needs them (float8 for ``scaled_mm``, else upcast)."""
    dtype = model.model.embed_tokens.weight.dtype
    for layer in model.layers:
        for n in LINEARS:
            linear = _get(layer, n)
            linear.weight = nn.Parameter(linear.weight.to(weight_dtype(math, dtype)), requires_grad=False)
            linear.math = math


def patch_scales(model: LlamaForCausalLM, vectors: list[torch.Tensor]) -> None:
    """Replace every layer's multipliers in place. Only graphs that take the scales as inputs
    see the change, and only new *input* scales are right this way (new weight scales come
    with other FP8 weights): ``Engine.patch_fp8_scales`` checks both, use it on a running engine."""
    for layer, vector in zip(model.layers, vectors, strict=True):
        getattr(layer, SCALES_BUFFER).copy_(vector)
        set_multipliers(layer)


# -- writing --------------------------------------------------------------------------------


def fp8_state(model: LlamaForCausalLM, scales: Mapping[str, tuple[float, float]],
              dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A compressed-tensors FP8 state of a float ``model``: ``scales[linear] = (weight_scale,
    input_scale)`` by full module name (``model.layers.0.self_attn.q_proj``). Scales are
    stored in ``dtype`` (as vLLM's checkpoints are) and the weights quantised with the stored
    value, so a reader dequantises exactly what was quantised."""
    state: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        module = name.removesuffix(".weight")
        if module in scales:
            w_scale, x_scale = (torch.tensor([s], dtype=dtype) for s in scales[module])
            state[name] = to_fp8(t.detach().float(), 1.0 / w_scale.float()).contiguous()
            state[f"{module}.weight_scale"] = w_scale
            state[f"{module}.input_scale"] = x_scale
        else:
            state[name] = t.detach().to(dtype).contiguous()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    assert all(t.dtype in (dtype, FP8_DTYPE) for t in state.values())
    return state


def write_fp8_checkpoint(model: LlamaForCausalLM, tokenizer: Any, config: LlamaConfig,
                         scales: Mapping[str, tuple[float, float]], out_dir: str | os.PathLike[str],
                         dtype: str, source: Path | None = None, scale_method: str | None = None
                         ) -> dict[str, float]:
    """Write a compressed-tensors FP8 checkpoint directory at ``out_dir``, all at once (a
    temporary directory renamed; nothing is left on failure). Other files of ``source``
    (``tokenizer_config.json`` with the chat template, ``generation_config.json``) are copied.
    ``scale_method`` is recorded in the safetensors metadata (``quant inspect`` shows it).
    Missing parents are created (and removed again on failure). Returns ``quantisation_loss``."""
    from safetensors.torch import save_file

    from warmgraph.models.atomic import write_directory
    from warmgraph.quant.compressed_tensors import quantization_config

    target = Path(out_dir).expanduser().absolute()
    torch_dtype = to_torch_dtype(dtype)
    state = fp8_state(model, scales, torch_dtype)
    hf = dataclasses.replace(config, torch_dtype=dtype_name(torch_dtype)).to_hf()
    hf["quantization_config"] = quantization_config()

    def build(tmp: Path) -> None:
        metadata = {"format": "pt", **({METHOD_METADATA: scale_method} if scale_method else {})}
        save_file(state, str(tmp / "model.safetensors"), metadata=metadata)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
        for extra in ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
            if source is not None and (source / extra).is_file():
                (tmp / extra).write_bytes((source / extra).read_bytes())

    from warmgraph.models.atomic import make_parents, remove_created, remove_dead_leftovers

    created: list[Path] = []
    done = False
    try:
        created = make_parents(target.parent)
        remove_dead_leftovers(target)  # a killed writer's temporary directory
        write_directory(target, build)
        done = True
    except FileExistsError:
        raise WarmgraphError(f"{target} already exists; choose a new OUT_DIR (nothing is overwritten)") from None
    except OSError as exc:
        raise WarmgraphError(f"cannot write {target}: {exc.strerror or exc}; choose a writable OUT_DIR") from None
    finally:
        if not done:
            remove_created(created)
    return quantisation_loss(state)


def quantisation_loss(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Of the FP8 weights in ``state``: the fraction that is 0 (underflow: a weight scale too
    large for the weights) and the fraction at +-448 (saturation: a scale too small)."""
    from warmgraph.quant.fp8 import FP8_MAX

    zero = saturated = total = 0
    for t in state.values():
        if t.dtype == FP8_DTYPE:
            v = t.float()
            zero += int((v == 0).sum())
            saturated += int((v.abs() == FP8_MAX).sum())
            total += v.numel()
    return {"zero": zero / max(total, 1), "saturated": saturated / max(total, 1)}
