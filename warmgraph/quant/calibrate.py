"""Calibration: max-abs observers on every decoder linear, and scales from what they saw.

``measure`` runs calibration text through a float model (the dense forward, eager) with a
forward hook on each of the 7 linears of every layer that keeps the largest absolute value
of its input; the weight's largest absolute value is read directly. The result has INC's
shape (``{module: {"input", "weight"}}``, what ``quant.inc`` writes and reads), so scales
come from a measurement either way: ours, or an INC measurement file. ``scales_from``
applies one of INC's per-tensor scale methods with its backoffs (``quant.scale_methods``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.models.llama import LlamaForCausalLM
from warmgraph.quant.fp8 import LINEARS
from warmgraph.quant.scale_methods import scale_for

# Used when no --calib file is given: varied registers of English, a list, code and numbers,
# so every linear sees activations of the kinds a chat model meets.
DEFAULT_TEXTS = (
    "The capital of France is Paris. It lies on the Seine, and about two million people live in the city itself.",
    "A good way to learn a new language is to read a little every day, speak with people who use it, "
    "and not be afraid of mistakes.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    "The capital of France is Paris.<|im_end|>",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Shopping list: 3 apples, 2 litres of milk, 12 eggs, bread, and 500 g of coffee beans.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on its surface.",
    "Water boils at 100 degrees Celsius at sea level, and freezes at 0 degrees.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his cat.",
)


def read_texts(path: str | Path) -> list[str]:
    """Calibration samples from a text file: one per paragraph (blank-line separated)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read calibration file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    samples = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not samples:
        raise ConfigError(f"calibration file {path} holds no text; give paragraphs separated by blank lines")
    return samples


@torch.no_grad()
def measure(model: LlamaForCausalLM, token_ids: Iterable[list[int]],
            progress: Callable[[int], None] | None = None) -> dict[str, dict[str, float]]:
    """Max-abs of every decoder linear's input (over all samples) and weight, by module name
    (``model.layers.0.self_attn.q_proj``). Samples longer than the model's positions are cut."""
    seen: dict[str, float] = {}
    hooks = []

    def observer(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen[name] = max(seen.get(name, 0.0), float(args[0].detach().abs().max().float()))
        return hook

    names = {}
    for i, layer in enumerate(model.layers):
        for linear in LINEARS:
            module = layer.get_submodule(linear)
            name = f"model.layers.{i}.{linear}"
            names[name] = module
            hooks.append(module.register_forward_hook(observer(name)))
    device = model.model.embed_tokens.weight.device
    limit = model.config.max_position_embeddings
    count = 0
    try:
        for ids in token_ids:
            if not ids:
                continue
            model(torch.tensor([ids[:limit]], dtype=torch.int64, device=device))
            count += 1
            if progress is not None:
                progress(count)
    finally:
        for h in hooks:
            h.remove()
    if count == 0:
        raise ConfigError("no calibration text: every sample was empty")
    return {name: {"input": seen[name], "weight": float(m.weight.detach().abs().max().float())}
            for name, m in names.items()}


def scales_from_measurement(measurements: Mapping[str, Mapping[str, float]], method: str,
                modules: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``{module: (weight_scale, input_scale)}`` for every name in ``modules``, by ``method``;
    a module the measurement lacks is a one-line WarmgraphError naming it."""
    out = {}
    for name in modules:
        node = measurements.get(name)
        if node is None:
            raise WarmgraphError(f"the measurement has no node {name}; it must cover every decoder linear "
                                 "(measure the same model again)")
        out[name] = (scale_for(node["weight"], method, "weight"), scale_for(node["input"], method, "input"))
    return out


def with_model_weights(measurements: Mapping[str, Mapping[str, float]], model: LlamaForCausalLM,
                       source: str) -> dict[str, dict[str, float]]:
    """An outside measurement (an INC file) checked against the model it is applied to: every
    decoder linear present, no layer the model lacks, and each weight max-abs equal to the
    weight's own (within float32 rounding), else a one-line WarmgraphError naming the node."""
    layers = len(model.layers)
    for name in measurements:
        parts = name.split(".")
        if name.startswith("model.layers.") and len(parts) > 2 and parts[2].isdigit() and int(parts[2]) >= layers:
            raise WarmgraphError(f"{source}: node {name} is beyond this model's {layers} layers; the measurement "
                                 "is of another model")
    out = {}
    for name in decoder_linears(layers):
        node = measurements.get(name)
        if node is None:
            raise WarmgraphError(f"{source}: no node {name}; the measurement must cover every decoder linear "
                                 "(measure the same model again)")
        actual = float(model.get_submodule(name).weight.detach().abs().max().float())
        if abs(node["weight"] - actual) > 1e-3 * actual:
            raise WarmgraphError(f"{source}: node {name} says the weight's max-abs is {node['weight']:g}, but this "
                                 f"model's is {actual:g}; the measurement is of other weights")
        out[name] = {"input": node["input"], "weight": actual}
    return out


def decoder_linears(num_layers: int) -> list[str]:
    """The full names of every FP8 linear of a model of ``num_layers`` layers."""
    return [f"model.layers.{i}.{linear}" for i in range(num_layers) for linear in LINEARS]
