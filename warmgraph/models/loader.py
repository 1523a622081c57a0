"""Hugging Face-format Llama checkpoints from a local directory: load strictly, save compatibly.

A checkpoint directory holds ``config.json``, ``tokenizer.json`` and the weights as one
``model.safetensors`` or as shards listed in ``model.safetensors.index.json``. Loading checks
everything before any weight is read: every tensor the config implies is present with its
shape, nothing unexpected is there (old checkpoints' rotary ``inv_freq`` buffers excepted), and
each problem is one line naming the file or tensor and what was expected. warmgraph never
downloads: the path is a directory on disk.

``save_checkpoint`` writes the same layout (plus ``generation_config.json`` and a minimal
``tokenizer_config.json``) so transformers' ``from_pretrained`` reads it as well.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.models.config import LlamaConfig, canonical_dtype, dtype_name
from warmgraph.models.config import torch_dtype as to_torch_dtype
from warmgraph.models.llama import LlamaForCausalLM, expected_shapes

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
_FLOAT_STORAGE = ("F32", "F16", "BF16", "F64")
_SHOWN = 3  # names listed in a one-line error before "and N more"


def _require(module: str) -> Any:
    """Import an optional dependency of checkpoint I/O, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise WarmgraphError(f"reading Hugging Face checkpoints needs the {module!r} package; run: "
                             "pip install safetensors tokenizers") from None


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def read_json(path: Path) -> Any:
    """Parsed JSON, or a one-line error naming the file (and line) that is missing or garbled."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WarmgraphError(f"{path.name} is missing from checkpoint directory {path.parent}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WarmgraphError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None


def read_config(path: str | os.PathLike[str]) -> LlamaConfig:
    """The ``LlamaConfig`` of a checkpoint directory's ``config.json`` (ConfigError if unusable)."""
    return LlamaConfig.from_hf(read_json(Path(path) / CONFIG))


def checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    root = Path(path).expanduser()
    hint = ("warmgraph loads Hugging Face-format checkpoints from a local directory and does not download them; "
            "fetch the model first (e.g. huggingface-cli download ORG/NAME --local-dir DIR) and pass DIR")
    if not root.exists():
        raise ConfigError(f"checkpoint directory {root} does not exist; {hint}")
    if not root.is_dir():
        raise ConfigError(f"checkpoint path {root} is not a directory; {hint}")
    return root


def weight_files(root: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files to read and, for a sharded checkpoint, the index's name -> file map."""
    index_path = root / INDEX
    if index_path.exists():
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConfigError(f"{index_path} has no 'weight_map' object of tensor name -> file name")
        files = []
        for name in sorted(set(weight_map.values())):
            if Path(name).name != name:
                raise ConfigError(f"{index_path} names shard {name!r}; shards must be files in the same directory")
            if not (root / name).is_file():
                raise WarmgraphError(f"{INDEX} lists shard {name} but it is missing from {root}")
            files.append(root / name)
        return files, weight_map
    if (root / WEIGHTS).is_file():
        return [root / WEIGHTS], None
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise WarmgraphError(f"no weights in checkpoint directory {root}: expected {WEIGHTS} or shards with "
                             f"{INDEX} (only safetensors is read; convert .bin/.pth checkpoints first)")
    return files, None


def _scan(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """name -> (file, shape, storage dtype) from the safetensors headers, without reading data."""
    safe_open = _require("safetensors").safe_open
    found: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as fh:
                for name in fh.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                    piece = fh.get_slice(name)
                    if name in found:
                        raise WarmgraphError(f"tensor {name} is stored twice: in {found[name][0].name} and {file.name}")
                    found[name] = (file, tuple(piece.get_shape()), str(piece.get_dtype()))
        except WarmgraphError:
            raise
        except Exception as exc:  # safetensors raises its own SafetensorError (an Exception) and OSError
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise WarmgraphError(f"{file.name} in {file.parent} is not a readable safetensors file ({reason}); "
                                 "it may be truncated or corrupt: download or save it again") from None
    return found


def _check_tensors(root: Path, config: LlamaConfig, found: dict[str, tuple[Path, tuple[int, ...], str]],
                   weight_map: dict[str, str] | None, fp8: Any = None) -> list[str]:
    """The names to load; one-line WarmgraphError for anything missing, extra or mis-shaped.
    ``fp8`` (a ``quant.compressed_tensors.Fp8Format``): the decoder linears are FP8 with scales."""
    expected = expected_shapes(config)
    quantized: set[str] = set()
    if fp8 is not None:
        from warmgraph.quant import compressed_tensors

        scales = compressed_tensors.expected_scales(config)
        quantized = set(compressed_tensors.quantized_weights(config)) | set(scales)
        absent = [n for n in scales if n not in found]
        if absent:
            raise WarmgraphError(f"checkpoint {root} lacks {absent[0]}"
                                 f"{f' and {len(absent) - 1} more scale(s)' if len(absent) > 1 else ''}: an FP8 "
                                 "checkpoint needs static per-tensor weight and input scales (make one with "
                                 "warmgraph quant calibrate)")
        expected.update(scales)
    optional = {"lm_head.weight": (config.vocab_size, config.hidden_size)} if config.tie_word_embeddings else {}
    if weight_map is not None:
        for name, shard in sorted(weight_map.items()):
            if name in found and found[name][0].name != shard:
                raise WarmgraphError(f"{INDEX} puts {name} in {shard} but it is in {found[name][0].name}")
            if name not in found and name in expected:
                raise WarmgraphError(f"{INDEX} puts {name} in {shard} but that file does not hold it")
    missing = [n for n in expected if n not in found]
    if missing:
        described = [f"{n} (shape {list(expected[n])})" for n in missing]
        raise WarmgraphError(f"checkpoint {root} lacks {len(missing)} tensor(s) its config.json needs: "
                             f"{_listing(described)}; are the weights and config.json from the same model?")
    unexpected = [n for n in found if n not in expected and n not in optional and not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        described = [f"{n} (shape {list(found[n][1])}, in {found[n][0].name})" for n in sorted(unexpected)]
        raise WarmgraphError(f"checkpoint {root} has {len(unexpected)} tensor(s) a Llama with this config.json does "
                             f"not use: {_listing(described)}; is it another architecture or a quantised export?")
    for name, shape in {**expected, **{n: s for n, s in optional.items() if n in found}}.items():
        file, got, storage = found[name]
        if name in quantized:
            compressed_tensors.check_tensor(name, got, storage, file.name)
            if name.endswith(".weight") and got != shape:
                raise WarmgraphError(f"tensor {name} in {file.name} has shape {list(got)}, expected {list(shape)} "
                                     "from config.json")
            continue
        if got != shape:
            raise WarmgraphError(f"tensor {name} in {file.name} has shape {list(got)}, expected {list(shape)} "
                                 "from config.json")
        if storage not in _FLOAT_STORAGE:
            raise WarmgraphError(f"tensor {name} in {file.name} is stored as {storage}; warmgraph loads float "
                                 "checkpoints (float32, bfloat16, float16), not quantised ones")
    return list(expected)


def _read_tokenizer(root: Path) -> Tokenizer:
    path = root / TOKENIZER
    if not path.is_file():
        raise WarmgraphError(f"{TOKENIZER} is missing from checkpoint directory {root}; warmgraph needs the fast "
                             "tokenizer file (tokenizer.model alone is not read)")
    tokenizer_cls = _require("tokenizers").Tokenizer
    try:
        return tokenizer_cls.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception with serde's message
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise WarmgraphError(f"{path} cannot be parsed by the tokenizers library ({reason})") from None


def load_checkpoint(path: str | os.PathLike[str],
                    dtype: str | None = None) -> tuple[LlamaForCausalLM, Tokenizer, LlamaConfig]:
    """Load a local Hugging Face-format Llama checkpoint on the CPU, in eval mode, without grads.

    ``dtype`` (float32/bfloat16/float16 or fp32/bf16/fp16) overrides the config's ``torch_dtype``,
    which defaults to float32. The returned config records the dtype actually loaded. Raises
    ConfigError/WarmgraphError with a one-line message for a missing directory or file, garbled
    JSON, an unreadable safetensors file, missing/unexpected/mis-shaped tensors or an unsupported
    ``model_type``; nothing is downloaded.
    """
    root = checkpoint_dir(path)
    hf = read_json(root / CONFIG)
    if dtype is not None and isinstance(hf, dict):
        # The argument wins, so a config that names a dtype warmgraph does not load (float64,
        # "auto") still loads when the caller picks one.
        hf = {k: v for k, v in hf.items() if k != "dtype"} | {"torch_dtype": canonical_dtype(dtype)}
    config = LlamaConfig.from_hf(hf)
    fp8 = None
    if isinstance(hf, dict) and "quantization_config" in hf:
        from warmgraph.quant.compressed_tensors import read_format

        fp8 = read_format(hf)
    target = to_torch_dtype(config.torch_dtype)
    tokenizer = _read_tokenizer(root)
    files, weight_map = weight_files(root)
    found = _scan(files)
    names = _check_tensors(root, config, found, weight_map, fp8)
    safe_open = _require("safetensors").safe_open
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for tensor_name in names:
        by_file.setdefault(found[tensor_name][0], []).append(tensor_name)
    for file, file_names in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            for tensor_name in file_names:
                tensor = fh.get_tensor(tensor_name)
                # FP8 weights and their float32 scales are kept as stored; quant.model places them.
                keep = fp8 is not None and (tensor.dtype == torch.float8_e4m3fn or tensor_name.endswith("_scale"))
                state[tensor_name] = tensor if keep else tensor.to(target)
    if fp8 is not None:
        from warmgraph.quant.model import fp8_model

        model = fp8_model(config, state)
        return model, tokenizer, config
    model = LlamaForCausalLM.from_state_dict(config, state)
    model.eval().requires_grad_(False)
    return model, tokenizer, config


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _token(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.id_to_token(token_id)


def save_checkpoint(model: LlamaForCausalLM, tokenizer: Tokenizer, config: LlamaConfig,
                    path: str | os.PathLike[str]) -> None:
    """Write ``config.json``, ``model.safetensors`` (tied head stored once), ``tokenizer.json``,
    ``generation_config.json`` and ``tokenizer_config.json`` into ``path`` (created if missing;
    existing files replaced). ``config.torch_dtype`` is written as the weights' actual dtype.
    Output is byte-for-byte deterministic for the same inputs."""
    save_file = _require("safetensors.torch").save_file
    root = Path(path).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same storage as the embedding; safetensors refuses aliases
    config = dataclasses.replace(config, torch_dtype=dtype_name(model.model.embed_tokens.weight.dtype))
    save_file(state, str(root / WEIGHTS), metadata={"format": "pt"})
    _write_json(root / CONFIG, config.to_hf())
    (root / TOKENIZER).write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    eos = list(config.eos_token_ids)
    _write_json(root / GENERATION_CONFIG, {"bos_token_id": config.bos_token_id,
                                           "eos_token_id": eos[0] if len(eos) == 1 else eos or None})
    _write_json(root / TOKENIZER_CONFIG, {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _token(tokenizer, config.bos_token_id),
        "eos_token": _token(tokenizer, eos[0]) if eos else None,
        "model_max_length": config.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    })

