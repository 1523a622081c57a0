"""What an FP8 checkpoint will cost in graphs, before anything compiles (``warmgraph quant inspect``).

Only ``config.json`` and the scale tensors are read (a few bytes per linear, not the weights):
each layer's 11 multipliers, then for every runtime-scale-patching and trivial-scales mode the
variants ``quant.variants`` would plan, times the buckets of a plan: the graphs a cold warmup
compiles. The scale method is the one ``quant calibrate`` recorded in the safetensors metadata,
or what the values say (all 1.0, powers of two, arbitrary) when another tool wrote them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from warmgraph.errors import WarmgraphError
from warmgraph.quant.settings import Fp8Settings


def _scan_scales(root: Path, config: Any) -> tuple[dict[str, torch.Tensor], str | None]:
    """The scale tensors (checked as the loader checks them) and the recorded scale method; the
    FP8 weights' storage is checked from the headers, without reading them."""
    from safetensors import safe_open

    from warmgraph.models.loader import weight_files
    from warmgraph.quant.compressed_tensors import check_tensor, quantized_weights
    from warmgraph.quant.model import METHOD_METADATA

    files, _ = weight_files(root)
    weights = set(quantized_weights(config))
    scales: dict[str, torch.Tensor] = {}
    method = None
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            method = method or (fh.metadata() or {}).get(METHOD_METADATA)
            for name in fh.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                if name.endswith(("weight_scale", "input_scale")) or name in weights:
                    piece = fh.get_slice(name)
                    check_tensor(name, tuple(piece.get_shape()), str(piece.get_dtype()), file.name)
                if name.endswith(("weight_scale", "input_scale")):
                    scales[name] = fh.get_tensor(name)
    return scales, method


def _kind(values: list[float]) -> str:
    if all(v == 1.0 for v in values):
        return "unit (every scale 1.0)"
    if all(v > 0 and math.frexp(v)[0] == 0.5 for v in values):
        return "powers of two (maxabs_pow2, maxabs_hw or hw_aligned_single_scale)"
    return "arbitrary (maxabs_arbitrary or another tool's)"


def inspect_fp8(path: str | Path, prompt_buckets: int, decode_buckets: int, cap: int) -> dict[str, Any]:
    """The scale layout of the FP8 checkpoint at ``path`` and the graphs each mode builds for a
    plan of ``prompt_buckets`` + ``decode_buckets`` buckets (one-line errors for a directory
    that is not an FP8 checkpoint or lacks a scale)."""
    from warmgraph.models.config import LlamaConfig
    from warmgraph.models.loader import checkpoint_dir, read_json
    from warmgraph.quant.compressed_tensors import read_format
    from warmgraph.quant.model import checkpoint_vector
    from warmgraph.quant.variants import plan_variants, trivial_pattern

    root = checkpoint_dir(path)
    hf = read_json(root / "config.json")
    config = LlamaConfig.from_hf(hf)
    if read_format(hf) is None:
        raise WarmgraphError(f"{root} is not an FP8 checkpoint (its config.json has no quantization_config); "
                             "make one with warmgraph quant calibrate")
    scales, method = _scan_scales(root, config)

    def get(name: str) -> torch.Tensor:
        if name not in scales:
            raise WarmgraphError(f"checkpoint {root} lacks {name}: an FP8 checkpoint needs static per-tensor "
                                 "weight and input scales")
        return scales[name]

    vectors = [checkpoint_vector(get, f"model.layers.{i}.")[0] for i in range(config.num_hidden_layers)]
    values = [tuple(v.tolist()) for v in vectors]
    buckets = prompt_buckets + decode_buckets
    modes = []
    for patching in (True, False):
        for trivial in (0, 1, 2):
            plan = plan_variants(vectors, Fp8Settings(patching=patching, trivial=trivial, cap=cap))
            modes.append({"runtime_scale_patching": patching, "trivial_scales": trivial,
                          "variants": len(plan.variants), "graphs": plan.graphs(buckets),
                          "capped_layers": len(plan.capped)})
    stored = [float(t.float().reshape(-1)[0]) for t in scales.values()]
    return {
        "model": str(root), "layers": config.num_hidden_layers, "linears": len(scales) // 2,
        "scale_method": method, "scale_values": _kind(stored),
        "distinct_scale_tuples": len(set(values)),
        "trivial_patterns": {str(m): len({p for v in values if any(p := trivial_pattern(v, m))}) for m in (1, 2)},
        "layers_with_trivial": {str(m): sum(any(trivial_pattern(v, m)) for v in values) for m in (1, 2)},
        "buckets": {"prompt": prompt_buckets, "decode": decode_buckets}, "variant_cap": cap, "modes": modes,
    }
