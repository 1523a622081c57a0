"""A ``tokenizers.Tokenizer`` rebuilt from the vocabulary a GGUF file carries.

llama.cpp stores a byte-level BPE tokenizer (``tokenizer.ggml.model == "gpt2"``) as its token
strings, merges, token types and a named pre-tokenizer (``tokenizer.ggml.pre``). The split rule
is not in the file, only its name, so each supported name maps to the rule the original
Hugging Face tokenizer used; an unknown name is refused rather than guessed, because a wrong
split yields plausible but different token ids.

SentencePiece vocabularies (``"llama"``: Llama 2, Mistral) carry scores instead of merges and
are not rebuilt here; they are refused with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from warmgraph.errors import WarmgraphError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# llama.cpp's token types (gguf.TokenType): 3 marks control tokens such as <|im_end|>, 4 tokens a
# user added (matched whole in text, but not special).
CONTROL, USER_DEFINED = 3, 4

# Llama 3's split: contractions, letters with one leading non-letter, digits in threes, the rest.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(name: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in ("default", "gpt2"):
        return gpt2
    if name == "smollm":  # SmolLM's own tokenizer.json: every digit alone, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    if name in ("llama-bpe", "llama3", "llama-v3"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise WarmgraphError(f"GGUF pre-tokenizer {name!r} is not supported; warmgraph rebuilds 'smollm', 'gpt2', "
                         "'default' and 'llama-bpe' (convert from the original Hugging Face directory instead)")


def _str_list(meta: Mapping[str, Any], key: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WarmgraphError(f"GGUF metadata {key} is missing or not a list of strings; the file has no usable "
                             "tokenizer")
    return value


_ID_KEYS = {"bos": "bos", "eos": "eos", "eot": "eot", "pad": "padding", "unk": "unknown"}


def _token_id(meta: Mapping[str, Any], key: str, size: int) -> int | None:
    value = meta.get(f"tokenizer.ggml.{key}_token_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise WarmgraphError(f"GGUF metadata tokenizer.ggml.{key}_token_id={value!r} is not a token id in [0, {size})")
    return value


def special_ids(meta: Mapping[str, Any], size: int) -> dict[str, int | None]:
    """``bos``, ``eos``, ``eot``, ``pad`` and ``unk`` token ids from the metadata (None if absent)."""
    return {name: _token_id(meta, key, size) for name, key in _ID_KEYS.items()}


def adds_bos(meta: Mapping[str, Any]) -> bool:
    """Whether text is encoded with BOS first: the file's flag, else llama.cpp's default (yes)."""
    return bool(meta.get("tokenizer.ggml.add_bos_token", True))


def build_tokenizer(meta: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer described by GGUF metadata ``meta`` (key -> decoded value).

    Token ids equal the GGUF ids; control tokens are special (matched whole, skipped when
    decoding with ``skip_special_tokens``), user-defined ones are matched whole; BOS is
    prepended exactly when the file says so. Raises WarmgraphError (one line) for a tokenizer
    model or pre-tokenizer it cannot rebuild, or malformed vocabulary metadata (a merge of
    tokens, or into a token, the vocabulary lacks).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise WarmgraphError(f"GGUF tokenizer model {kind!r} is not supported; warmgraph rebuilds byte-level BPE "
                             "vocabularies ('gpt2': SmolLM, Llama 3), not SentencePiece ('llama': Llama 2, Mistral)")
    tokens = _str_list(meta, "tokenizer.ggml.tokens")
    merges = _str_list(meta, "tokenizer.ggml.merges")
    types: Sequence[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise WarmgraphError(f"GGUF metadata has {len(tokens)} tokens but {len(types)} token types")
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise WarmgraphError("GGUF vocabulary repeats a token string; ids would be ambiguous")
    pairs = []
    for merge in merges:
        # Byte-level tokens hold no plain space (it is "Ġ"), so a merge is exactly two tokens.
        parts = merge.split(" ")
        if len(parts) != 2 or not all(parts):
            raise WarmgraphError(f"GGUF merge {merge!r} is not two tokens separated by one space; the file's "
                                 "tokenizer is damaged: re-create it from the original model")
        # tokenizers would refuse these with a multi-line "Error while initializing BPE".
        for token in (*parts, "".join(parts)):
            if token not in vocab:
                raise WarmgraphError(f"GGUF merge {merge!r} names {token!r}, which is not in the vocabulary; the "
                                     "file's tokenizer is inconsistent: re-create it from the original model")
        pairs.append((parts[0], parts[1]))
    ids = special_ids(meta, len(tokens))
    unk = tokens[ids["unk"]] if ids["unk"] is not None else None
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=unk, ignore_merges=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
    tokenizer.decoder = decoders.ByteLevel()
    # The ids already exist in the vocabulary, so these calls only mark them; no id moves.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind == CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    steps = [processors.ByteLevel(trim_offsets=False)]
    if adds_bos(meta) and ids["bos"] is not None:
        bos = tokens[ids["bos"]]
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                   special_tokens=[(bos, ids["bos"])]))
    tokenizer.post_processor = processors.Sequence(steps)
    if tokenizer.get_vocab_size() != len(tokens):
        raise WarmgraphError(f"GGUF vocabulary of {len(tokens)} tokens rebuilt as {tokenizer.get_vocab_size()}; "
                             "a token type marks a string outside the vocabulary")
    return tokenizer
