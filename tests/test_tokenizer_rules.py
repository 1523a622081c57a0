"""Token ids equal what the checkpoint's own tokenizer gives in transformers (5.x): for the
byte-level BPE tokenizers warmgraph loads, tokenizer.json's post-processor alone decides whether
BOS/EOS are added; transformers ignores ``add_bos_token``/``add_eos_token`` in
tokenizer_config.json for them, and so does warmgraph (defect: the engine used to prepend BOS
whatever the tokenizer said)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

from warmgraph.models.loader import load_checkpoint

TEXT = "the cat watches the river"


def _variant(src: Path, dst: Path, post_processor: bool, flags: dict[str, bool]) -> Path:
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    if not post_processor:
        tok["post_processor"] = None
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.update(flags)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    ("post_processor", "flags", "bos", "eos"),
    [
        (True, {}, True, False),  # the post-processor adds <s>
        (False, {}, False, False),  # no post-processor: nothing added
        (True, {"add_bos_token": False}, True, False),  # the flags do not override the post-processor...
        (False, {"add_bos_token": True, "add_eos_token": True}, False, False),  # ...in either direction
    ],
    ids=["post-processor", "none", "flag_false_ignored", "flags_true_ignored"],
)
def test_ids_equal_transformers(default_ckpt: Path, tmp_path: Path, post_processor: bool, flags: dict[str, bool],
                                bos: bool, eos: bool) -> None:
    path = _variant(default_ckpt, tmp_path / "ckpt", post_processor, flags)
    _, tokenizer, config = load_checkpoint(path)
    ours = tokenizer.encode(TEXT).ids
    theirs = transformers.AutoTokenizer.from_pretrained(path)(TEXT)["input_ids"]
    assert ours == theirs
    assert (ours[0] == config.bos_token_id) is bos
    assert (ours[-1] in config.eos_token_ids) is eos
