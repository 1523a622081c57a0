"""convert-gguf against synthetic GGUF files, written here with ``gguf.GGUFWriter``.

No real model is needed: ``write_gguf`` stores the tiny model (random weights, its trained
byte-level BPE) as a llama-architecture GGUF the way llama.cpp's ``convert_hf_to_gguf.py`` does:
the same metadata keys and value types, llama.cpp tensor names, the Q and K rows permuted into
llama.cpp's interleaved rotary order, ``output.weight`` only when the head is not tied, and
(in the quantised files) 1-D tensors kept F32 and rows the quantisation's blocks do not divide
stored F16. Each refusal test edits one thing in that picture.

The tiny config uses llama3 RoPE scaling, which the converter refuses (llama.cpp stores it as
an extra ``rope_freqs`` tensor), so the files here use a copy without ``rope_scaling``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf  # a dependency (pyproject); imported plainly so these tests cannot pass by skipping
import numpy as np
import pytest
import torch
from cli_helpers import Capsys, one_json, run
from gguf import GGMLQuantizationType as QType
from gguf.quants import dequantize, quantize
from safetensors import safe_open
from safetensors.torch import load_file

from warmgraph.errors import WarmgraphError
from warmgraph.graph_cache.files import sha256_file
from warmgraph.models import gguf_convert
from warmgraph.models.gguf_convert import convert_gguf, iter_weights, read_gguf
from warmgraph.models.gguf_tokenizer import build_tokenizer
from warmgraph.models.llama import LlamaConfig, LlamaForCausalLM, random_state_dict
from warmgraph.models.loader import load_checkpoint
from warmgraph.models.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

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
TEXTS = ("The cat watches the river slowly.", "On day 17, our team counts 42 of the garden gate!",
         "  leading spaces,\ttabs\nand newlines\n\n", "Unicode: café, naïve, 日本語, emoji 🙂",
         "$499.99 -- 12345678 'quoted' \"double\" it's we'll", "")

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


@pytest.fixture(scope="module")
def tiny() -> Tiny:
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


@pytest.fixture
def f32_gguf(tiny: Tiny, tmp_path: Path) -> Path:
    return tiny_gguf(tiny, tmp_path / "tiny-f32.gguf")


def one_line_error(excinfo: pytest.ExceptionInfo[WarmgraphError], *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def logits(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))


# -- 1. F32: exact round trip --------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_f32_round_trip_is_bit_exact(tiny: Tiny, tmp_path: Path, tied: bool) -> None:
    config, state = tiny.variant(tied)
    src = tiny_gguf(tiny, tmp_path / "m.gguf", tied)
    out = tmp_path / "out"
    model = convert_gguf(src, out)
    assert model.config == config
    assert model.tensor_types == {"F32": len(state)}

    written = load_file(str(out / "model.safetensors"))
    assert sorted(written) == sorted(state)
    for name, original in state.items():
        assert written[name].dtype == torch.float32
        # Bit for bit, so the Q and K rows are back in Hugging Face order exactly.
        assert torch.equal(written[name].view(torch.int32), original.view(torch.int32)), name

    # The un-permute is what makes Q and K right: without it they differ and nothing else does.
    raw = dict(iter_weights(read_gguf(src), torch.float32, permuted=False))
    for name, original in state.items():
        permuted = name.endswith(("q_proj.weight", "k_proj.weight"))
        assert torch.equal(raw[name], original) != permuted, name

    assert json.loads((out / "config.json").read_text()) == config.to_hf()
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == CHAT_TEMPLATE
    assert (tokenizer_config["add_bos_token"], tokenizer_config["bos_token"], tokenizer_config["eos_token"],
            tokenizer_config["unk_token"]) == (True, "<s>", "</s>", "<unk>")
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    source = json.loads((out / gguf_convert.SOURCE_FILE).read_text())
    assert (source["file"], source["sha256"], source["bytes"]) == ("m.gguf", sha256_file(src), src.stat().st_size)

    loaded, tokenizer, loaded_config = load_checkpoint(out)
    assert loaded_config == config
    reference = LlamaForCausalLM.from_state_dict(config, state).eval()
    ids = tokenizer.encode("The red fox reads a paper map, then 37 apples!").ids
    assert ids[0] == 1 and len(ids) > 8
    assert torch.equal(logits(loaded, ids), logits(reference, ids))


# -- 2. Q8_0 and F16: the file's own dequantisation ----------------------------------------------

# The largest error each storage type may add, as a fraction of the tensor's largest magnitude:
# half a quantisation step, with room for the float16 block scales.
RELATIVE_ERROR = {QType.F32: 0.0, QType.F16: 1 / 1024, QType.BF16: 1 / 128, QType.Q8_0: 1 / 127,
                  QType.Q5_1: 1 / 16, QType.Q4_0: 1 / 8}


@pytest.mark.parametrize("qtype", [QType.Q8_0, QType.Q4_0, QType.Q5_1, QType.BF16], ids=lambda q: q.name)
def test_quantised_tensors_equal_gguf_dequantize(tiny: Tiny, tmp_path: Path, qtype: QType) -> None:
    config, state = tiny.variant(tied=True)
    assert config.num_key_value_heads is not None
    stored = quantised(tensors(config, state), qtype)
    file_type = gguf.LlamaFileType[f"MOSTLY_{qtype.name}"]
    src = write_gguf(tmp_path / "q.gguf", metadata(tiny, config) | {K.General.FILE_TYPE: int(file_type)}, stored)
    out = tmp_path / "out"
    model = convert_gguf(src, out)
    # 24 projections and the embedding in qtype; ffn_down F16 unless qtype's blocks divide 172.
    matrices = {qtype.name: 25, "F16": 4} if qtype != QType.BF16 else {"BF16": 29}
    assert model.tensor_types == matrices | {"F32": 9}

    file_tensors = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    written = load_file(str(out / "model.safetensors"))
    assert len(written) == len(file_tensors) == len(state)
    names = llama_cpp_names(config)
    for gguf_name, in_file in file_tensors.items():
        name = names[gguf_name]
        value, original = written[name], state[name]
        # What gguf itself makes of the bytes in the file, in the file's (permuted) row order.
        expected = torch.from_numpy(dequantize(in_file.data, in_file.tensor_type).reshape(value.shape).copy())
        if gguf_name.endswith("attn_q.weight"):
            value = llama_cpp_permute(value, config.num_attention_heads)
        elif gguf_name.endswith("attn_k.weight"):
            value = llama_cpp_permute(value, config.num_key_value_heads)
        assert torch.equal(value, expected), gguf_name
        # And close to the original weights, in Hugging Face order.
        bound = RELATIVE_ERROR[in_file.tensor_type] * original.abs().max().item()
        assert (written[name] - original).abs().max().item() <= bound, (gguf_name, in_file.tensor_type.name)
    assert json.loads((out / gguf_convert.SOURCE_FILE).read_text())["tensor_types"] == model.tensor_types
    load_checkpoint(out)  # a float32 checkpoint the loader accepts


# -- 3. The tokenizer rebuilt from the vocabulary ------------------------------------------------

def test_converted_tokenizer_matches_the_original(tiny: Tiny, f32_gguf: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    convert_gguf(f32_gguf, tmp_path / "out")
    rebuilt = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert rebuilt.get_vocab_size() == len(tiny.tokens)
    for text in (*TEXTS, "hello</s>world<s>again", "<unk>"):
        expected = tiny.tokenizer.encode(text).ids
        assert rebuilt.encode(text).ids == expected, text
        assert rebuilt.decode(expected, skip_special_tokens=True) == tiny.tokenizer.decode(expected), text


@pytest.mark.parametrize("flag", [True, False, None], ids=["add-bos", "no-bos", "flag-absent"])
def test_bos_prepended_exactly_when_asked(tiny: Tiny, flag: bool | None) -> None:
    meta = metadata(tiny, tiny.config)
    if flag is None:
        del meta[K.Tokenizer.ADD_BOS]  # llama.cpp's default for a BPE vocabulary is to add it
    else:
        meta[K.Tokenizer.ADD_BOS] = flag
    tokenizer = build_tokenizer(meta)
    body = tiny.tokenizer.encode(TEXTS[0], add_special_tokens=False).ids
    assert body[0] != 1
    wanted = body if flag is False else [1, *body]
    assert tokenizer.encode(TEXTS[0]).ids == wanted
    assert tokenizer.encode(TEXTS[0], add_special_tokens=False).ids == body


def test_control_tokens_stay_whole(tiny: Tiny) -> None:
    text = "one</s>two<s>three"
    ids = build_tokenizer(metadata(tiny, tiny.config)).encode(text, add_special_tokens=False).ids
    assert ids.count(2) == 1 and ids.count(1) == 1
    assert ids == tiny.tokenizer.encode(text, add_special_tokens=False).ids
    # The token type is what does it: marked normal, "</s>" is split into bytes like any text.
    meta = metadata(tiny, tiny.config)
    meta[K.Tokenizer.TOKEN_TYPE] = [NORMAL if i == 2 else t for i, t in enumerate(tiny.types)]
    split = build_tokenizer(meta).encode(text, add_special_tokens=False).ids
    assert 2 not in split and len(split) > len(ids)


# Merges appended to the tiny vocabulary (which merges no two digits and no digit with
# punctuation): whether each fires on PROBE_TEXT shows where a pre-tokenizer cuts it.
PROBE_MERGES = ("1 2", "3 4", "5 .")
PROBE_TEXT = "1234,5."


@pytest.mark.parametrize(("pre", "present", "absent"), [
    pytest.param("gpt2", {"12", "34"}, {"5."}, id="gpt2"),  # a digit run is one piece; a digit and "." two
    pytest.param("default", {"12", "34"}, {"5."}, id="default"),
    pytest.param("smollm", set(), {"12", "34", "5."}, id="smollm"),  # every digit alone
    pytest.param("llama-bpe", {"12"}, {"34", "5."}, id="llama-bpe"),  # digits in threes: "123" then "4"
])
def test_pre_tokenizer_splits(tiny: Tiny, pre: str, present: set[str], absent: set[str]) -> None:
    extra = [merge.replace(" ", "") for merge in PROBE_MERGES]
    assert not set(extra) & set(tiny.tokens)
    meta = metadata(tiny, tiny.config) | {
        K.Tokenizer.PRE: pre, K.Tokenizer.LIST: [*tiny.tokens, *extra],
        K.Tokenizer.TOKEN_TYPE: [*tiny.types, *[NORMAL] * len(extra)],
        K.Tokenizer.MERGES: [*tiny.merges, *PROBE_MERGES]}
    pieces = set(build_tokenizer(meta).encode(PROBE_TEXT, add_special_tokens=False).tokens)
    assert present <= pieces and not absent & pieces, pieces


@pytest.mark.parametrize(("key", "value", "fragments"), [
    pytest.param(K.Tokenizer.MODEL, "llama", ("GGUF tokenizer model 'llama' is not supported", "SentencePiece"),
                 id="sentencepiece"),
    pytest.param(K.Tokenizer.PRE, "qwen2", ("GGUF pre-tokenizer 'qwen2' is not supported",), id="unknown-pre"),
])
def test_tokenizer_refusals(tiny: Tiny, tmp_path: Path, key: str, value: str, fragments: tuple[str, ...]) -> None:
    meta = metadata(tiny, tiny.config) | {key: value}
    with pytest.raises(WarmgraphError) as excinfo:
        build_tokenizer(meta)
    one_line_error(excinfo, *fragments)
    # The whole conversion refuses it too, and leaves no directory behind.
    config, state = tiny.variant(tied=True)
    src = write_gguf(tmp_path / "m.gguf", meta, tensors(config, state))
    with pytest.raises(WarmgraphError) as excinfo:
        convert_gguf(src, tmp_path / "out")
    one_line_error(excinfo, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


# -- 4. Refusals ---------------------------------------------------------------------------------

Edit = Callable[[Meta, Tensors], None]


def _arch_gpt2(meta: Meta, arrays: Tensors) -> None:
    for key in [k for k in meta if k.startswith("llama.")]:
        meta["gpt2." + key.removeprefix("llama.")] = meta.pop(key)
    meta[K.General.ARCHITECTURE] = "gpt2"


def _moe(meta: Meta, arrays: Tensors) -> None:
    meta[K.LLM.EXPERT_COUNT.format(arch="llama")] = 8
    meta[K.LLM.EXPERT_USED_COUNT.format(arch="llama")] = 2


def _q8_1(meta: Meta, arrays: Tensors) -> None:
    # Q8_1 (an activation format gguf.quants cannot dequantise): 40 bytes per 32 values.
    rows, cols = arrays["blk.0.attn_v.weight"].shape
    arrays["blk.0.attn_v.weight"] = (np.zeros((rows, cols // 32 * 40), dtype=np.uint8), QType.Q8_1)


def _rope_freqs(meta: Meta, arrays: Tensors) -> None:
    arrays["rope_freqs.weight"] = np.ones(8, dtype=np.float32)  # how llama.cpp stores llama3 scaling


def _extra_layer(meta: Meta, arrays: Tensors) -> None:
    # A fifth block of tensors in a file whose metadata says four layers.
    for name in [n for n in arrays if n.startswith("blk.3.")]:
        arrays[name.replace("blk.3.", "blk.4.")] = arrays[name]


def _missing(meta: Meta, arrays: Tensors) -> None:
    del arrays["blk.3.ffn_up.weight"]


def _mis_shaped(meta: Meta, arrays: Tensors) -> None:
    arrays["blk.1.attn_k.weight"] = np.zeros((64, 64), dtype=np.float32)  # Q's shape: no GQA


def _yarn(meta: Meta, arrays: Tensors) -> None:
    meta[K.Rope.SCALING_TYPE.format(arch="llama")] = "yarn"
    meta[K.Rope.SCALING_FACTOR.format(arch="llama")] = 4.0
    meta[K.Rope.SCALING_ORIG_CTX_LEN.format(arch="llama")] = 128


def _linear_no_factor(meta: Meta, arrays: Tensors) -> None:
    meta[K.Rope.SCALING_TYPE.format(arch="llama")] = "linear"


def _no_heads(meta: Meta, arrays: Tensors) -> None:
    del meta[K.Attention.HEAD_COUNT.format(arch="llama")]


def _eps_text(meta: Meta, arrays: Tensors) -> None:
    meta[K.Attention.LAYERNORM_RMS_EPS.format(arch="llama")] = "small"


def _partial_rotary(meta: Meta, arrays: Tensors) -> None:
    meta[K.Rope.DIMENSION_COUNT.format(arch="llama")] = 8


@pytest.mark.parametrize(("edit", "fragments"), [
    pytest.param(_arch_gpt2, ("GGUF architecture 'gpt2' is not supported", "llama"), id="architecture-gpt2"),
    pytest.param(_moe, ("mixture-of-experts", "8 experts"), id="mixture-of-experts"),
    pytest.param(_q8_1, ("blk.0.attn_v.weight is stored as Q8_1", "cannot dequantise"), id="tensor-type-q8_1"),
    pytest.param(_rope_freqs, ("1 tensor(s) a dense Llama does not use (rope_freqs.weight)",), id="extra-tensor"),
    pytest.param(_extra_layer, ("9 tensor(s) a dense Llama does not use (blk.4.",), id="layer-beyond-block-count"),
    pytest.param(_missing, ("lacks 1 tensor(s)", "model.layers.3.mlp.up_proj.weight"), id="missing-tensor"),
    pytest.param(_mis_shaped, ("blk.1.attn_k.weight has shape [64, 64], expected [32, 64]",), id="mis-shaped"),
    pytest.param(_yarn, ("rope scaling 'yarn' is not supported",), id="rope-yarn"),
    pytest.param(_linear_no_factor, ("llama.rope.scaling.factor",), id="rope-linear-without-factor"),
    pytest.param(_no_heads, ("llama.attention.head_count is missing",), id="no-head-count"),
    pytest.param(_eps_text, ("llama.attention.layer_norm_rms_epsilon is 'small', not one finite number",),
                 id="eps-not-a-number"),
    pytest.param(_partial_rotary, ("rotates 8 of 16 head dimensions",), id="partial-rotary"),
])
def test_unsupported_files_refused(tiny: Tiny, tmp_path: Path, edit: Edit, fragments: tuple[str, ...]) -> None:
    config, state = tiny.variant(tied=True)
    meta, arrays = metadata(tiny, config), tensors(config, state)
    edit(meta, arrays)
    src = write_gguf(tmp_path / "m.gguf", meta, arrays)
    with pytest.raises(WarmgraphError) as excinfo:
        convert_gguf(src, tmp_path / "out")
    one_line_error(excinfo, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_linear_rope_scaling_is_kept(tiny: Tiny, tmp_path: Path) -> None:
    config, state = tiny.variant(tied=True)
    meta = metadata(tiny, config)
    _linear_no_factor(meta, {})
    meta[K.Rope.SCALING_FACTOR.format(arch="llama")] = 2.0
    model = read_gguf(write_gguf(tmp_path / "m.gguf", meta, tensors(config, state)))
    assert model.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def _unreadable(src: bytes, kind: str) -> bytes:
    return {
        "not-gguf": b'{"__metadata__": {}}' + bytes(200),  # a safetensors header, say
        "empty": b"",
        "cut-in-header": src[:40],
        "cut-in-metadata": src[: len(src) // 8],
        "cut-in-tensor-data": src[:-1000],
    }[kind]


@pytest.mark.parametrize("kind", ["not-gguf", "empty", "cut-in-header", "cut-in-metadata", "cut-in-tensor-data"])
def test_unreadable_files_refused(f32_gguf: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(_unreadable(f32_gguf.read_bytes(), kind))
    with pytest.raises(WarmgraphError) as excinfo:
        convert_gguf(path, tmp_path / "out")
    one_line_error(excinfo, f"{path} is not a readable GGUF file", "truncated or another format")
    assert not (tmp_path / "out").exists()


def test_missing_file_or_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(WarmgraphError) as excinfo:
        read_gguf(tmp_path / "absent.gguf")
    one_line_error(excinfo, f"GGUF file {tmp_path / 'absent.gguf'} does not exist")
    with pytest.raises(WarmgraphError) as excinfo:
        read_gguf(tmp_path)
    one_line_error(excinfo, f"{tmp_path} is not a file")


# -- 5. OUT_DIR: atomic, and never over something -------------------------------------------------

@pytest.mark.parametrize(("error", "raised"), [
    (OSError(errno.ENOSPC, "No space left on device"), WarmgraphError),
    (RuntimeError("disk controller on fire"), RuntimeError),
], ids=["oserror", "other-error"])
def test_failure_midway_leaves_nothing(f32_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       error: Exception, raised: type[Exception]) -> None:
    out = tmp_path / "nested" / "out"
    written: list[str] = []

    def fail(path: Path) -> str:  # sha256_file is called for the last file, once the others exist
        (tmp,) = out.parent.glob(".out.tmp.*")
        written.extend(sorted(p.name for p in tmp.iterdir()))
        raise error

    monkeypatch.setattr(gguf_convert, "sha256_file", fail)
    with pytest.raises(raised) as excinfo:
        convert_gguf(f32_gguf, out)
    if raised is WarmgraphError:
        one_line_error(excinfo, f"cannot write {out}", "No space left on device")
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(written)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no .out.tmp.* beside it


def test_out_dir_must_be_new_or_empty(f32_gguf: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    for target in (full, a_file):
        with pytest.raises(WarmgraphError) as excinfo:
            convert_gguf(f32_gguf, target)
        one_line_error(excinfo, f"{target} already exists and is not an empty directory")
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and a_file.read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    convert_gguf(f32_gguf, empty)
    assert sorted(p.name for p in empty.iterdir()) == sorted(
        ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         gguf_convert.SOURCE_FILE])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty", "full", "tiny-f32.gguf"]


# -- 6. The command ------------------------------------------------------------------------------

def test_cli_json(f32_gguf: Path, tmp_path: Path, capsys: Capsys) -> None:
    out = tmp_path / "out16"
    code, stdout, err = run(capsys, "convert-gguf", str(f32_gguf), str(out), "--dtype", "bf16", "--json")
    assert code == 0, err
    result = one_json(stdout)
    seconds = result.pop("seconds")
    assert isinstance(seconds, float) and seconds >= 0
    assert result == {"gguf": str(f32_gguf), "out_dir": str(out), "dtype": "bfloat16", "layers": 4,
                      "hidden_size": 64, "vocab_size": 512, "tensor_types": {"F32": 38}, "chat_template": True}
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert {fh.get_slice(n).get_dtype() for n in fh.keys()} == {"BF16"}  # noqa: SIM118
    _, _, config = load_checkpoint(out)
    assert config.torch_dtype == "bfloat16"


def test_cli_text(f32_gguf: Path, tmp_path: Path, capsys: Capsys) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "convert-gguf", str(f32_gguf), str(out))
    assert code == 0, err
    assert stdout.count("\n") == 1 and stdout.startswith(f"converted tiny-f32.gguf (38 F32) into {out} in ")
    assert stdout.rstrip().endswith("4 layers, hidden 64, vocab 512, float32, chat template")
    assert (out / "model.safetensors").is_file()
