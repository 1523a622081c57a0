"""The tiny model: a random Llama generated in code, for tests and quick checks (``--model tiny``).

Nothing binary is committed. The tokenizer is a byte-level BPE trained with the ``tokenizers``
library on an English-like corpus built here from a fixed seed, and the weights come from a
seeded ``torch.Generator``; two generations give byte-identical files. The model is random
(it produces fluent-looking nonsense at best) but it is a real Llama in every respect that
matters to graphs and kernels: grouped-query attention, llama3 RoPE scaling with all three
frequency bands in use, tied embeddings, a Hugging Face checkpoint layout.

``ensure_tiny_model`` writes it once into ``<graph cache root>/models/warmgraph-tiny-llama-v1``:
through ``atomic.build_once``, so a crash leaves nothing half-written and concurrent callers
generate it once.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from warmgraph.graph_cache.store import default_root
from warmgraph.models.atomic import build_once
from warmgraph.models.llama import LlamaConfig, LlamaForCausalLM, random_state_dict
from warmgraph.models.loader import save_checkpoint

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MODEL_NAME = "warmgraph-tiny-llama-v1"  # bump the suffix whenever the bytes below would change
SEED = 20240917
# Larger than the usual 0.02 on purpose: with 0.02 the residual stream is mostly the tied input
# embedding and greedy decoding repeats one token, which would hide cache and position bugs;
# at 0.1 the output depends on the whole context.
INIT_STD = 0.1
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama 2

TINY_CONFIG = LlamaConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    # With head_dim 16 and theta 5e5 the wavelengths run from 6 to 6e5 positions, so an original
    # context of 64 puts frequencies in all three llama3 bands (kept, blended, divided).
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64},
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    torch_dtype="float32",
)

_SUBJECTS = ("the cat", "a small dog", "my neighbour", "the old engineer", "every student", "the red fox",
             "our team", "a quiet child", "the tired pilot", "this model", "the graph", "a curious bird")
_VERBS = ("watches", "builds", "finds", "carries", "reads", "paints", "counts", "measures", "follows", "opens",
          "compiles", "caches")
_OBJECTS = ("the river", "a wooden box", "three apples", "the long letter", "a bright lamp", "the garden gate",
            "two blue cups", "the night sky", "a paper map", "the last train", "every bucket", "the warm graph")
_ADVERBS = ("slowly", "quickly", "carefully", "again", "today", "at noon", "in the morning", "before dinner",
            "after the rain", "with care")
_OPENERS = ("Yesterday,", "Then", "Later,", "In the end,", "At first,", "Meanwhile,", "Once again,", "Still,")
_QUESTIONS = ("Why does {s} keep {o}?", "Where did {s} put {o}?", "Who saw {s} near {o}?",
              "How many times does {s} visit {o}?")


def corpus(sentences: int = 600) -> list[str]:
    """A deterministic English-like training corpus (about 30 kB), one paragraph per line."""
    rng = random.Random(SEED)  # random.Random's algorithm for a seeded int is stable across Pythons
    lines, paragraph = [], []
    for i in range(sentences):
        s, v, o, a = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_ADVERBS)
        kind = i % 5
        if kind == 0:
            text = f"{s.capitalize()} {v} {o} {a}."
        elif kind == 1:
            text = f"{rng.choice(_OPENERS)} {s} {v} {o}, and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} it {a}."
        elif kind == 2:
            text = rng.choice(_QUESTIONS).format(s=s, o=o)
        elif kind == 3:
            text = f"On day {rng.randrange(1, 31)}, {s} {v} {rng.randrange(2, 100)} of {o}!"
        else:
            text = f'"{s.capitalize()} {v} {o}," said {rng.choice(_SUBJECTS)}; it cost ${rng.randrange(1, 500)}.'
        paragraph.append(text)
        if len(paragraph) == 6:
            lines.append(" ".join(paragraph))
            paragraph = []
    if paragraph:
        lines.append(" ".join(paragraph))
    return lines


def build_tokenizer(vocab_size: int = TINY_CONFIG.vocab_size) -> Tokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenizer, no prefix space, so ``decode(encode(s)) == s``
    for any text without special-token strings) that prepends ``<s>`` like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return tokenizer


# The same model shape for vLLM, whose CPU attention needs a head size of 32 or more: 4 heads of
# 32 (2 KV heads), 2 layers. Used by the vLLM tests and benchmark (``ensure_tiny_model(vllm=True)``).
VLLM_TINY_NAME = "warmgraph-tiny-llama-h32-v1"
VLLM_TINY_CONFIG = dataclasses.replace(TINY_CONFIG, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                       head_dim=32)


def build_tiny_model(config: LlamaConfig = TINY_CONFIG) -> tuple[LlamaForCausalLM, Tokenizer, LlamaConfig]:
    """The tiny model in memory (float32, eval mode). Leaves the global torch RNG untouched."""
    tokenizer = build_tokenizer()
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise AssertionError("tokenizer outgrew the model vocabulary")
    state = random_state_dict(config, torch.Generator().manual_seed(SEED), INIT_STD)
    model = LlamaForCausalLM.from_state_dict(config, state).eval().requires_grad_(False)
    return model, tokenizer, config


def tiny_model_dir(root: Path | None = None, vllm: bool = False) -> Path:
    """``<root>/models/warmgraph-tiny-llama-v1`` (``-h32-v1`` for vLLM); ``root`` defaults to the
    graph cache root."""
    name = VLLM_TINY_NAME if vllm else MODEL_NAME
    return (Path(root).expanduser() if root is not None else default_root()) / "models" / name


def ensure_tiny_model(root: Path | None = None, vllm: bool = False) -> Path:
    """The tiny model's checkpoint directory (the vLLM variant when ``vllm``), generated on first
    use; returns its path.

    Safe against crashes and concurrent callers (``atomic.build_once``). Raises WarmgraphError
    naming the path if it cannot be written.
    """
    def build(tmp: Path) -> None:
        model, tokenizer, config = build_tiny_model(VLLM_TINY_CONFIG if vllm else TINY_CONFIG)
        save_checkpoint(model, tokenizer, config, tmp)

    return build_once(tiny_model_dir(root, vllm), build)
