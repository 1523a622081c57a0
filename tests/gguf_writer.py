"""Synthetic llama-architecture GGUF files for the convert-gguf tests, written with ``gguf.GGUFWriter``.

No real model is needed: ``write_gguf`` stores the tiny model (random weights, its trained
byte-level BPE) as a llama-architecture GGUF the way llama.cpp's ``convert_hf_to_gguf.py`` does:
the same metadata keys and value types, llama.cpp tensor names, the Q and K rows permuted into
llama.cpp's interleaved rotary order, ``output.weight`` only when the head is not tied, and
(in the quantised files) 1-D tensors kept F32 and rows the quantisation's blocks do not divide
stored F16. Each refusal test edits one thing in that picture.

The tiny config uses llama3 RoPE scaling, which the converter refuses (llama.cpp stores it as
an extra ``rope_freqs`` tensor), so the files here use a copy without ``rope_scaling``.

A helper module like ``cli_helpers``: the test modules import it as ``from gguf_writer import ...``
and wrap ``make_tiny`` in their own module-scoped ``tiny`` fixture.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf  # a dependency (pyproject); imported plainly so these tests cannot pass by skipping
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf.quants import quantize

from warmgraph.errors import WarmgraphError
from warmgraph.models.llama import LlamaConfig, random_state_dict
from warmgraph.models.tiny import build_tiny_model

K = gguf.Keys
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
# llama.cpp's token types (gguf.TokenType values).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# The HF name of each per-layer llama.cpp tensor, written out here rather than taken from the
# converter so a wrong entry there cannot agree with itself.
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}

Meta = dict[str, Any]
Tensors = dict[str, Any]  # llama.cpp name -> float32 array, or (quantised bytes, type)


@dataclass(frozen=True)
class Tiny:
    """The tiny model's pieces in the form a GGUF needs them."""

    config: LlamaConfig  # untied, no rope scaling
    state: dict[str, torch.Tensor]  # includes lm_head.weight
    tokenizer: Any  # the tiny tokenizers.Tokenizer
    tokens: list[str]
    types: list[int]
    merges: list[str]

    def variant(self, tied: bool) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
        config = dataclasses.replace(self.config, tie_word_embeddings=tied)
        state = {n: t for n, t in self.state.items() if not (tied and n == "lm_head.weight")}
        return config, state


@functools.cache
def make_tiny() -> Tiny:
    """The tiny model's config, random weights (seed 7) and vocabulary; built once per process
    (the test modules share it through their ``tiny`` fixtures and never mutate it)."""
    _, tokenizer, tiny_config = build_tiny_model()
    config = dataclasses.replace(tiny_config, rope_scaling=None, tie_word_embeddings=False)
    state = random_state_dict(config, torch.Generator().manual_seed(7), std=0.1)
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in data["added_tokens"]}
    tokens, types = [], []
    # As llama.cpp's get_vocab_base: ids in order, added tokens CONTROL (special) or USER_DEFINED,
    # and holes up to the model's vocab_size padded with unused [PADn] tokens.
    for i in range(config.vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append((CONTROL if added[i]["special"] else USER_DEFINED) if i in added else NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return Tiny(config, state, tokenizer, tokens, types, merges)


def llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's rotary halves interleaved."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def metadata(tiny: Tiny, config: LlamaConfig, arch: str = "llama") -> Meta:
    """The key/values llama.cpp writes for ``config`` and the tiny tokenizer (keys from gguf.Keys)."""
    assert config.head_dim is not None and config.num_key_value_heads is not None
    return {
        K.General.ARCHITECTURE: arch,
        K.General.NAME: "warmgraph tiny",
        K.General.FILE_TYPE: 0,  # ALL_F32; informative only
        K.LLM.BLOCK_COUNT.format(arch=arch): config.num_hidden_layers,
        K.LLM.CONTEXT_LENGTH.format(arch=arch): config.max_position_embeddings,
        K.LLM.EMBEDDING_LENGTH.format(arch=arch): config.hidden_size,
        K.LLM.FEED_FORWARD_LENGTH.format(arch=arch): config.intermediate_size,
        K.Attention.HEAD_COUNT.format(arch=arch): config.num_attention_heads,
        K.Attention.HEAD_COUNT_KV.format(arch=arch): config.num_key_value_heads,
        K.Rope.FREQ_BASE.format(arch=arch): config.rope_theta,
        K.Attention.LAYERNORM_RMS_EPS.format(arch=arch): config.rms_norm_eps,
        K.Rope.DIMENSION_COUNT.format(arch=arch): config.head_dim,
        K.LLM.VOCAB_SIZE.format(arch=arch): config.vocab_size,
        K.Tokenizer.MODEL: "gpt2",
        K.Tokenizer.PRE: "gpt2",
        K.Tokenizer.LIST: list(tiny.tokens),
        K.Tokenizer.TOKEN_TYPE: list(tiny.types),
        K.Tokenizer.MERGES: list(tiny.merges),
        K.Tokenizer.BOS_ID: 1,
        K.Tokenizer.EOS_ID: 2,
        K.Tokenizer.UNK_ID: 0,
        K.Tokenizer.ADD_BOS: True,
        K.Tokenizer.CHAT_TEMPLATE: CHAT_TEMPLATE,
    }


def llama_cpp_names(config: LlamaConfig) -> dict[str, str]:
    """llama.cpp tensor name -> Hugging Face name, for every tensor of an untied ``config``."""
    names = {"token_embd.weight": "model.embed_tokens.weight"}
    for i in range(config.num_hidden_layers):
        names |= {f"blk.{i}.{short}.weight": f"model.layers.{i}.{long}.weight" for short, long in LAYER_TENSORS.items()}
    return names | {"output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def tensors(config: LlamaConfig, state: Mapping[str, torch.Tensor]) -> Tensors:
    """llama.cpp's tensors for ``state``: its names, Q/K permuted, float32 numpy arrays
    (``output.weight`` only when ``state`` has an untied ``lm_head.weight``)."""
    assert config.num_key_value_heads is not None
    out = {}
    for name, hf in llama_cpp_names(config).items():
        if hf not in state:
            continue
        weight = state[hf]
        if name.endswith("attn_q.weight"):
            weight = llama_cpp_permute(weight, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            weight = llama_cpp_permute(weight, config.num_key_value_heads)
        out[name] = weight.numpy().copy()
    return out


def quantised(arrays: Tensors, qtype: QType) -> Tensors:
    """As llama.cpp stores a ``qtype`` file: 1-D tensors F32, matrices ``qtype`` where its block
    divides the row, else F16 (here ffn_down, whose rows are the 172-wide intermediate size)."""
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    out: Tensors = {}
    for name, array in arrays.items():
        if array.ndim == 1:
            out[name] = array
        elif array.shape[-1] % block == 0:
            out[name] = (quantize(array, qtype), qtype)
        else:
            out[name] = quantize(array, QType.F16)  # a float16 array: GGUFWriter stores it as F16
    return out


def write_gguf(path: Path, meta: Meta, arrays: Tensors) -> Path:
    """Write ``meta`` with the value types llama.cpp's writer calls use (counts uint32, floats
    float32, flags bool, lists typed arrays) and ``arrays`` in order."""
    writer = gguf.GGUFWriter(str(path), arch=meta[K.General.ARCHITECTURE])
    for key, value in meta.items():
        if key == K.General.ARCHITECTURE:
            continue  # the writer adds it from arch
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, item in arrays.items():
        if isinstance(item, tuple):
            data, qtype = item
            writer.add_tensor(name, data, raw_dtype=qtype)
        else:
            writer.add_tensor(name, item)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_gguf(tiny: Tiny, path: Path, tied: bool = True) -> Path:
    config, state = tiny.variant(tied)
    return write_gguf(path, metadata(tiny, config), tensors(config, state))


def one_line_error(excinfo: pytest.ExceptionInfo[WarmgraphError], *fragments: str) -> str:
    """The error's message, checked to be one line holding every fragment."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message
