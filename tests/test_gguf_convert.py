"""convert-gguf against synthetic GGUF files (``gguf_writer``): the conversion and the tokenizer.

F32 files must round-trip bit for bit (so the Q/K un-permute is exact), quantised ones must equal
gguf's own dequantisation, and the tokenizer rebuilt from the vocabulary must give the original's
ids. Refusals, OUT_DIR handling and the command line are in ``test_gguf_refusals.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf.quants import dequantize
from gguf_writer import (
    CHAT_TEMPLATE,
    NORMAL,
    K,
    Tiny,
    llama_cpp_names,
    llama_cpp_permute,
    metadata,
    one_line_error,
    quantised,
    tensors,
    tiny_gguf,
    write_gguf,
)
from safetensors.torch import load_file

from warmgraph.errors import WarmgraphError
from warmgraph.graph_cache.files import sha256_file
from warmgraph.models import gguf_convert
from warmgraph.models.gguf_convert import convert_gguf, iter_weights, read_gguf
from warmgraph.models.gguf_tokenizer import build_tokenizer
from warmgraph.models.llama import LlamaForCausalLM
from warmgraph.models.loader import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ("The cat watches the river slowly.", "On day 17, our team counts 42 of the garden gate!",
         "  leading spaces,\ttabs\nand newlines\n\n", "Unicode: café, naïve, 日本語, emoji 🙂",
         "$499.99 -- 12345678 'quoted' \"double\" it's we'll", "")


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
    # Merges are appended to the tiny file's own; tokenizers would fail on each with a multi-line
    # "Error while initializing BPE" exception.
    pytest.param(K.Tokenizer.MERGES, ["Ġzz q"], ("GGUF merge 'Ġzz q' names 'Ġzz', which is not in the vocabulary",),
                 id="merge-unknown-token"),
    pytest.param(K.Tokenizer.MERGES, ["<s> </s>"], ("GGUF merge '<s> </s>' names '<s></s>'",),
                 id="merge-result-unknown"),
    pytest.param(K.Tokenizer.MERGES, ["Ġt h e"], ("GGUF merge 'Ġt h e' is not two tokens separated by one space",),
                 id="merge-three-tokens"),
])
def test_tokenizer_refusals(tiny: Tiny, tmp_path: Path, key: str, value: str | list[str],
                            fragments: tuple[str, ...]) -> None:
    if key == K.Tokenizer.MERGES:
        value = [*tiny.merges, *value]
    meta = metadata(tiny, tiny.config) | {key: value}
    with pytest.raises(WarmgraphError) as excinfo:
        build_tokenizer(meta)
    one_line_error(excinfo, *fragments)
    # The whole conversion refuses it too, and leaves nothing behind: no OUT_DIR, and not the
    # parent directory it would have had to create.
    config, state = tiny.variant(tied=True)
    src = write_gguf(tmp_path / "m.gguf", meta, tensors(config, state))
    with pytest.raises(WarmgraphError) as excinfo:
        convert_gguf(src, tmp_path / "new" / "out")
    one_line_error(excinfo, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
