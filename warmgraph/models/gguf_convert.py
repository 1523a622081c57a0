"""GGUF (llama.cpp's file format) to a Hugging Face-format Llama directory warmgraph loads.

``convert_gguf`` reads a Llama-architecture GGUF with the ``gguf`` library, dequantises every
tensor with ``gguf.quants.dequantize`` (float32 first, then the requested dtype), undoes the
row permutation llama.cpp applies to the Q and K projections for its rotary layout, and writes
``model.safetensors``, ``config.json``, ``tokenizer.json`` (rebuilt by ``gguf_tokenizer``),
``tokenizer_config.json`` (with the chat template), ``generation_config.json`` and
``gguf_source.json`` (where it came from). Everything is written into a temporary directory
beside the target and renamed into place in one step, so a failure leaves nothing behind (nor
the parent directories it created).

Everything that can be refused is refused before a tensor is dequantised or a directory made:
an existing OUT_DIR, another architecture, mixture-of-experts, a rope scaling or quantisation
type this decoder cannot reproduce, a tensor that is missing, extra or mis-shaped, a vocabulary
the embedding or the merges do not match. Each is one line naming what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from warmgraph.errors import ConfigError, WarmgraphError
from warmgraph.graph_cache.files import sha256_file
from warmgraph.models.atomic import make_parents, remove_created, remove_dead_leftovers, write_directory
from warmgraph.models.config import LlamaConfig, canonical_dtype, torch_dtype
from warmgraph.models.gguf_tokenizer import adds_bos, build_tokenizer, special_ids
from warmgraph.models.llama import expected_shapes

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ARCHITECTURES = ("llama",)
# The storage types read here: floats and the block quantisations gguf.quants dequantises in numpy.
TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SOURCE_FILE = "gguf_source.json"
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


@dataclass(frozen=True)
class GGUFModel:
    """A parsed, validated GGUF: its metadata, tensors by Hugging Face name, and the config."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, Any]  # HF name -> gguf ReaderTensor
    config: LlamaConfig

    @property
    def tensor_types(self) -> dict[str, int]:
        """How many tensors each storage type holds, e.g. ``{"Q4_1": 210, "F32": 61}``."""
        return dict(Counter(t.tensor_type.name for t in self.tensors.values()))


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # its text tells a missing package from a broken install
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise WarmgraphError(f"reading GGUF files needs the 'gguf' package ({reason}); run: "
                             "pip install 'gguf>=0.16'") from None
    return gguf


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face tensor name for a llama.cpp one, or None if it has no Llama counterpart."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    match = _LAYER.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"
    return None


def _metadata(reader: Any) -> dict[str, Any]:
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def _int(meta: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = "missing" if key not in meta else f"{value!r}, not one integer"
        raise WarmgraphError(f"GGUF metadata {key} is {shown}; a Llama GGUF needs it")
    return value


def _count(meta: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """A size or count: checked positive here, because some are divided by (hidden // heads)
    before LlamaConfig could refuse them."""
    value = _int(meta, key, default)
    if value <= 0:
        shown = value if key in meta else f"{value} (its default)"
        raise WarmgraphError(f"GGUF metadata {key} is {shown}, not a positive integer; a Llama GGUF needs it, so "
                             "the file is damaged: re-create it from the original model")
    return value


def _rope_scaling(meta: Mapping[str, Any], arch: str) -> dict[str, Any] | None:
    """The rope scaling llama.cpp would run (llama-model.cpp): the type defaults to linear, the
    factor is rope.scaling.factor else the legacy rope.scale_linear, and none or 0 is unscaled.
    An explicit "linear" without any factor is refused rather than guessed."""
    type_key = f"{arch}.rope.scaling.type"
    scaling_type = meta.get(type_key, "linear")
    if scaling_type == "none":
        return None
    if scaling_type != "linear":
        raise WarmgraphError(f"GGUF rope scaling {scaling_type!r} is not supported (only none and linear)")
    keys = [k for k in (f"{arch}.rope.scaling.factor", f"{arch}.rope.scale_linear") if k in meta]
    if not keys:
        if type_key in meta:
            _float(meta, f"{arch}.rope.scaling.factor")  # raises: missing
        return None
    factor = _float(meta, keys[0])
    return {"rope_type": "linear", "factor": factor} if factor != 0 else None


def _float(meta: Mapping[str, Any], key: str, default: float | None = None) -> float:
    """A float metadata value. GGUF stores these as float32, where 1e-5 reads back as
    9.99999974738e-06; the shortest decimal with the same float32 value (1e-05, what the original
    config.json said) is returned instead, which float32 arithmetic cannot tell apart."""
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        shown = "missing" if key not in meta else f"{value!r}, not one finite number"
        raise WarmgraphError(f"GGUF metadata {key} is {shown}; a Llama GGUF needs it")
    single = np.float32(value)
    return float(str(single)) if float(single) == value else float(value)


def config_from_metadata(meta: Mapping[str, Any], tied: bool, dtype: str) -> LlamaConfig:
    """The LlamaConfig a GGUF's metadata describes; WarmgraphError for what this decoder lacks."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise WarmgraphError(f"GGUF architecture {arch!r} is not supported; convert-gguf reads "
                             f"{', '.join(ARCHITECTURES)} models")
    if meta.get(f"{arch}.expert_count"):
        raise WarmgraphError(f"GGUF is a mixture-of-experts model ({meta[f'{arch}.expert_count']} experts); "
                             "only dense Llama models are supported")
    heads = _count(meta, f"{arch}.attention.head_count")
    hidden = _count(meta, f"{arch}.embedding_length")
    head_dim = _count(meta, f"{arch}.attention.key_length", hidden // heads)
    rotary = _count(meta, f"{arch}.rope.dimension_count", head_dim)
    if rotary != head_dim or _count(meta, f"{arch}.attention.value_length", head_dim) != head_dim:
        raise WarmgraphError(f"GGUF rotates {rotary} of {head_dim} head dimensions or has another value size; "
                             "only full-width RoPE with equal key and value sizes is supported")
    scaling = _rope_scaling(meta, arch)
    ids = special_ids(meta, len(meta.get("tokenizer.ggml.tokens") or []))
    eos = tuple(dict.fromkeys(i for i in (ids["eos"], ids["eot"]) if i is not None))
    try:
        return LlamaConfig(
            vocab_size=_count(meta, f"{arch}.vocab_size", len(meta.get("tokenizer.ggml.tokens") or []) or None),
            hidden_size=hidden, intermediate_size=_count(meta, f"{arch}.feed_forward_length"),
            num_hidden_layers=_count(meta, f"{arch}.block_count"), num_attention_heads=heads,
            num_key_value_heads=_count(meta, f"{arch}.attention.head_count_kv", heads),
            head_dim=head_dim if head_dim != hidden // heads else None,
            max_position_embeddings=_count(meta, f"{arch}.context_length"),
            rms_norm_eps=_float(meta, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=_float(meta, f"{arch}.rope.freq_base", 10000.0), rope_scaling=scaling,
            tie_word_embeddings=tied, bos_token_id=ids["bos"],
            eos_token_id=eos[0] if len(eos) == 1 else (eos or None), torch_dtype=dtype)
    except ConfigError as exc:
        raise WarmgraphError(f"GGUF metadata describes an unusable model: {exc}") from None


def read_gguf(path: str | os.PathLike[str], dtype: str = "float32") -> GGUFModel:
    """Open and validate a GGUF file without dequantising anything; one-line errors for bad input."""
    gguf = _require_gguf()
    src = Path(path).expanduser()
    if not src.is_file():
        raise WarmgraphError(f"GGUF file {src} does not exist" if not src.exists() else f"{src} is not a file")
    try:
        reader = gguf.GGUFReader(str(src))
        meta = _metadata(reader)
    except PermissionError:
        raise WarmgraphError(f"cannot read {src}: permission denied; make it readable (chmod u+r) or copy it "
                             "somewhere you can read") from None
    # What the reader raises on bad bytes (and OSError on an unreadable disk). Only these: an
    # AttributeError, say, is a bug or a too-old gguf, not a bad file, and must show as itself.
    except (ValueError, struct.error, IndexError, TypeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise WarmgraphError(f"{src} is not a readable GGUF file ({reason}); is it truncated or another "
                             "format?") from None
    tensors = {hf_name(t.name): t for t in reader.tensors}
    tensors.pop(None, None)
    config = config_from_metadata(meta, "lm_head.weight" not in tensors, canonical_dtype(dtype))
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) > config.vocab_size:
        # The embedding (checked against vocab_size below) would have no row for the last ids:
        # the conversion would succeed and generation crash the first time one came up.
        raise WarmgraphError(f"GGUF vocabulary has {len(tokens)} tokens but {meta['general.architecture']}"
                             f".vocab_size is {config.vocab_size}: token ids from {config.vocab_size} up have no "
                             "embedding row; the file is inconsistent, re-create it from the original model")
    expected = expected_shapes(config)
    # Unknown names, and known ones the metadata does not account for (a block beyond
    # block_count): written out, the latter would make a directory the loader refuses.
    extra = [t.name for t in reader.tensors if hf_name(t.name) not in expected]
    if extra:
        raise WarmgraphError(f"GGUF holds {len(extra)} tensor(s) a dense Llama does not use ({', '.join(extra[:3])}"
                             f"); rope_freqs, biases, layers beyond block_count and other extras are not supported")
    for tensor in tensors.values():
        if tensor.tensor_type.name not in TENSOR_TYPES:
            raise WarmgraphError(f"GGUF tensor {tensor.name} is stored as {tensor.tensor_type.name}, which "
                                 f"convert-gguf cannot dequantise; supported: {', '.join(TENSOR_TYPES)}")
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise WarmgraphError(f"GGUF lacks {len(missing)} tensor(s) its metadata implies, e.g. {missing[0]}")
    for name, shape in expected.items():
        got = tuple(int(d) for d in reversed(tensors[name].shape))  # GGUF lists dimensions innermost first
        if got != shape:
            raise WarmgraphError(f"GGUF tensor {tensors[name].name} has shape {list(got)}, expected {list(shape)}")
    return GGUFModel(src, meta, tensors, config)


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order: it interleaves each head's two rotary halves
    (rows 0, d/2, 1, d/2+1, ...); Hugging Face's rotate-half layout keeps them apart."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def iter_weights(model: GGUFModel, dtype: torch.dtype, permuted: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every weight, dequantised to float32, Q/K un-permuted unless
    ``permuted`` is False (kept only to show what skipping it does), then cast to ``dtype``."""
    from gguf.quants import dequantize

    config = model.config
    for name, tensor in model.tensors.items():
        shape = tuple(int(d) for d in reversed(tensor.shape))
        values = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype("float32"))
        if permuted and name.endswith("q_proj.weight"):
            values = unpermute(values, config.num_attention_heads)
        elif permuted and name.endswith("k_proj.weight"):
            values = unpermute(values, config.num_key_value_heads)
        yield name, values.to(dtype).contiguous()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_converted(model: GGUFModel, out: Path, dtype: torch.dtype, progress: bool = False,
                    tokenizer: Tokenizer | None = None) -> None:
    """Write the Hugging Face files for ``model`` into the existing directory ``out`` (not atomic
    by itself: callers write into a temporary directory, as ``convert_gguf`` does). ``tokenizer``
    is ``build_tokenizer(model.meta)``, built here unless the caller already has it."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from warmgraph._version import __version__

    if tokenizer is None:
        tokenizer = build_tokenizer(model.meta)
    bar = tqdm(total=len(model.tensors), desc=f"dequantising {model.path.name}", unit="tensor", disable=not progress)
    state = {}
    for name, tensor in iter_weights(model, dtype):
        state[name] = tensor
        bar.update()
    bar.close()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    _write_json(out / "config.json", config.to_hf())
    (out / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")  # compact: parses faster
    ids = special_ids(model.meta, tokenizer.get_vocab_size())
    token = {k: (tokenizer.id_to_token(v) if v is not None else None) for k, v in ids.items()}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "model_max_length": config.max_position_embeddings, "add_bos_token": adds_bos(model.meta),
        "add_eos_token": False, "bos_token": token["bos"], "eos_token": token["eos"], "pad_token": token["pad"],
        "unk_token": token["unk"],
    }
    if isinstance(model.meta.get("tokenizer.chat_template"), str):
        tokenizer_config["chat_template"] = model.meta["tokenizer.chat_template"]
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    eos = list(config.eos_token_ids)
    _write_json(out / "generation_config.json", {"bos_token_id": config.bos_token_id, "pad_token_id": ids["pad"],
                                                 "eos_token_id": eos[0] if len(eos) == 1 else eos or None})
    _write_json(out / SOURCE_FILE, {"file": model.path.name, "sha256": sha256_file(model.path),
                                    "bytes": model.path.stat().st_size, "tensor_types": model.tensor_types,
                                    "dtype": config.torch_dtype, "warmgraph": __version__})


def resolve_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` as the absolute path ``convert_gguf`` writes (``~`` expanded, symlinks and
    ``..`` resolved)."""
    return Path(out_dir).expanduser().resolve()


def _check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The resolved OUT_DIR, refused if anything is there or a parent is a file."""
    given = Path(out_dir).expanduser()
    # Anything at all, even an empty directory or a dangling link: rename(2) replaces an empty
    # directory, which was once the user's cwd (OUT_DIR ".") or a mount point ("Device or
    # resource busy" after the whole conversion).
    if os.path.lexists(given):
        raise WarmgraphError(f"OUT_DIR {os.path.abspath(given)} exists; give a new directory: it is created "
                             "complete, in one rename")
    out = resolve_out_dir(given)
    ancestor = out.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise WarmgraphError(f"cannot write {out}: {ancestor} is a file, not a directory; choose a writable OUT_DIR")
    return out


def convert_gguf(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], dtype: str = "float32",
                 progress: bool = False) -> GGUFModel:
    """Convert ``src`` into the Hugging Face directory ``out_dir`` (which must not exist; its
    missing parents are created) with weights in ``dtype`` (float32/bfloat16/float16). Atomic:
    a temporary directory beside ``out_dir`` is renamed into place only when complete, and a
    failure removes the parents it created. Returns the parsed model. Raises WarmgraphError
    (one line) for an existing ``out_dir``, unreadable or unsupported input and unwritable output."""
    out = _check_out_dir(out_dir)
    model = read_gguf(src, dtype)
    # Built before anything is created, so a vocabulary it refuses leaves no directories behind.
    tokenizer = build_tokenizer(model.meta)
    created: list[Path] = []
    done = False
    try:
        created = make_parents(out.parent)
        remove_dead_leftovers(out)  # a killed conversion's temporary directory, maybe gigabytes
        write_directory(out, lambda tmp: write_converted(model, tmp, torch_dtype(dtype), progress, tokenizer))
        done = True
    except OSError as exc:
        raise WarmgraphError(f"cannot write {out}: {exc.strerror or exc}; choose a writable OUT_DIR") from None
    finally:
        if not done:
            remove_created(created)
    return model
