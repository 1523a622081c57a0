"""convert-gguf's refusals, OUT_DIR handling and command line, against synthetic GGUF files.

Each refusal edits one thing in the file ``gguf_writer`` writes and expects one line naming the
problem, raised before anything is dequantised and leaving nothing behind: no OUT_DIR, no
temporary directory, no parent directory it created. The conversion itself is tested in
``test_gguf_convert.py``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from cli_helpers import Capsys, one_json, run
from gguf import GGMLQuantizationType as QType
from gguf_writer import K, Meta, Tensors, Tiny, metadata, one_line_error, tensors, write_gguf
from safetensors import safe_open

from warmgraph.errors import WarmgraphError
from warmgraph.models import gguf_convert
from warmgraph.models.gguf_convert import convert_gguf, read_gguf
from warmgraph.models.loader import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


# -- 1. Refusals ---------------------------------------------------------------------------------

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


def _zero_heads(meta: Meta, arrays: Tensors) -> None:
    meta[K.Attention.HEAD_COUNT.format(arch="llama")] = 0  # once a ZeroDivisionError (hidden // heads)


def _more_tokens_than_rows(meta: Meta, arrays: Tensors) -> None:
    # A token past the 512 embedding rows: the conversion used to succeed and generate to crash
    # (IndexError) the first time the tokenizer produced it.
    meta[K.Tokenizer.LIST] = [*meta[K.Tokenizer.LIST], "Ġzzz"]
    meta[K.Tokenizer.TOKEN_TYPE] = [*meta[K.Tokenizer.TOKEN_TYPE], 1]


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
    pytest.param(_zero_heads, ("llama.attention.head_count is 0, not a positive integer",), id="zero-heads"),
    pytest.param(_more_tokens_than_rows, ("GGUF vocabulary has 513 tokens but llama.vocab_size is 512",
                                          "ids from 512 up"), id="more-tokens-than-embedding-rows"),
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
        convert_gguf(src, tmp_path / "new" / "out")
    one_line_error(excinfo, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # not even OUT_DIR's new parent


SCALE_TYPE, FACTOR = K.Rope.SCALING_TYPE.format(arch="llama"), K.Rope.SCALING_FACTOR.format(arch="llama")
LEGACY_FACTOR = "llama.rope.scale_linear"  # llama.cpp's LLM_KV_ROPE_SCALE_LINEAR, older files


# llama.cpp's reading (llama-model.cpp): the type defaults to linear, the factor comes from
# rope.scaling.factor else the legacy rope.scale_linear, and a factor of 0 (or none) means unscaled.
@pytest.mark.parametrize(("keys", "scaling"), [
    pytest.param({SCALE_TYPE: "linear", FACTOR: 2.0}, {"rope_type": "linear", "factor": 2.0}, id="linear"),
    pytest.param({FACTOR: 2.0}, {"rope_type": "linear", "factor": 2.0}, id="factor-without-type"),
    pytest.param({LEGACY_FACTOR: 4.0}, {"rope_type": "linear", "factor": 4.0}, id="legacy-scale-linear"),
    pytest.param({SCALE_TYPE: "linear", LEGACY_FACTOR: 4.0}, {"rope_type": "linear", "factor": 4.0},
                 id="linear-legacy-factor"),
    pytest.param({FACTOR: 2.0, LEGACY_FACTOR: 4.0}, {"rope_type": "linear", "factor": 2.0}, id="new-key-first"),
    pytest.param({SCALE_TYPE: "none", FACTOR: 2.0}, None, id="type-none"),
    pytest.param({FACTOR: 0.0}, None, id="factor-zero"),
    pytest.param({}, None, id="no-keys"),
])
def test_rope_scaling_read_as_llama_cpp_does(tiny: Tiny, tmp_path: Path, keys: Meta, scaling: Meta | None) -> None:
    config, state = tiny.variant(tied=True)
    meta = metadata(tiny, config) | keys
    model = read_gguf(write_gguf(tmp_path / "m.gguf", meta, tensors(config, state)))
    assert model.config.rope_scaling == scaling


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


def test_parse_errors_only(f32_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An unreadable file says so and how to fix it...
    def denied(path: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(gguf, "GGUFReader", denied)  # chmod 000 cannot stop root, who runs CI
    with pytest.raises(WarmgraphError) as excinfo:
        read_gguf(f32_gguf)
    one_line_error(excinfo, f"cannot read {f32_gguf}: permission denied")
    monkeypatch.undo()
    # ...but a bug in the reading code (an old gguf without ReaderField.contents, say) is not
    # passed off as a bad file.
    def no_contents(reader: object) -> None:
        raise AttributeError("'ReaderField' object has no attribute 'contents'")

    monkeypatch.setattr(gguf_convert, "_metadata", no_contents)
    with pytest.raises(AttributeError):
        read_gguf(f32_gguf)


def test_missing_gguf_package_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(WarmgraphError) as excinfo:
        gguf_convert._require_gguf()
    one_line_error(excinfo, "needs the 'gguf' package", "None in sys.modules", "pip install 'gguf>=0.16'")


def test_missing_file_or_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(WarmgraphError) as excinfo:
        read_gguf(tmp_path / "absent.gguf")
    one_line_error(excinfo, f"GGUF file {tmp_path / 'absent.gguf'} does not exist")
    with pytest.raises(WarmgraphError) as excinfo:
        read_gguf(tmp_path)
    one_line_error(excinfo, f"{tmp_path} is not a file")


# -- 2. OUT_DIR: atomic, and never over something -------------------------------------------------

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
        one_line_error(excinfo, f"cannot write {out}: No space left on device; choose a writable OUT_DIR")
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(written)
    # No .out.tmp.* and not the "nested" parent it created either.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-f32.gguf"]


def test_out_dir_made_meanwhile_is_not_replaced(f32_gguf: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Someone else's (empty) directory appearing during the conversion is kept, not renamed over.
    out = tmp_path / "out"

    def appear(path: Path) -> str:
        out.mkdir()
        return "0" * 64

    monkeypatch.setattr(gguf_convert, "sha256_file", appear)
    with pytest.raises(WarmgraphError) as excinfo:
        convert_gguf(f32_gguf, out)
    one_line_error(excinfo, f"cannot write {out}: File exists; choose a writable OUT_DIR")
    assert out.is_dir() and list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny-f32.gguf"]


def test_existing_out_dir_refused(f32_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Renaming onto an existing empty directory replaces it: with OUT_DIR "." that was the
    # user's working directory (or a mount point: "Device or resource busy" after the whole
    # conversion). So anything at OUT_DIR, even an empty directory or a dangling link, is refused.
    full, empty, a_file, link = (tmp_path / name for name in ("full", "empty", "a_file", "link"))
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    empty.mkdir()
    a_file.write_text("mine")
    link.symlink_to(tmp_path / "nowhere")
    monkeypatch.chdir(empty)
    for target in (full, empty, a_file, link, Path("."), Path("..")):
        with pytest.raises(WarmgraphError) as excinfo:
            convert_gguf(f32_gguf, target)
        one_line_error(excinfo, f"OUT_DIR {os.path.abspath(target)} exists; give a new directory: it is created "
                                "complete, in one rename")
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and a_file.read_text() == "mine"
    assert list(empty.iterdir()) == [] and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty", "full", "link", "tiny-f32.gguf"]


def test_parent_that_is_a_file_refused(f32_gguf: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(WarmgraphError) as excinfo:
        convert_gguf(f32_gguf, a_file / "sub" / "out")
    one_line_error(excinfo, f"cannot write {a_file / 'sub' / 'out'}: {a_file} is a file, not a directory; "
                            "choose a writable OUT_DIR")
    assert a_file.read_text() == "mine"


def test_relative_out_dir_and_new_parents(f32_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    convert_gguf(f32_gguf, Path("a") / "b" / "out")  # relative, two missing parents: created
    assert sorted(p.name for p in (tmp_path / "a" / "b" / "out").iterdir()) == sorted(
        ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         gguf_convert.SOURCE_FILE])


def test_dead_writers_leftovers_removed(f32_gguf: Path, tmp_path: Path) -> None:
    # A SIGKILLed conversion leaves its .out.tmp.<pid>.<hex> directory (maybe gigabytes); the next
    # conversion into the same OUT_DIR removes the ones whose process is gone, and only those.
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                              capture_output=True, text=True).stdout)
    leftovers = {name: tmp_path / name for name in (
        f".out.tmp.{dead}.0123abcd",  # dead writer: removed
        f".out.tmp.{os.getpid()}.feedbeef",  # a live one (this process): kept
        f".other.tmp.{dead}.0123abcd",  # another OUT_DIR's: kept
        ".out.tmp.notapid.0123abcd")}  # not a name write_directory makes: kept
    for path in leftovers.values():
        path.mkdir()
        (path / "model.safetensors").write_bytes(bytes(100))
    convert_gguf(f32_gguf, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", "tiny-f32.gguf", *(name for name in leftovers if not name.startswith(f".out.tmp.{dead}."))])


# -- 3. The command ------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "dtype", "stored"), [("bf16", "bfloat16", "BF16"), ("float16", "float16", "F16")])
def test_cli_json(f32_gguf: Path, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch, flag: str,
                  dtype: str, stored: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "convert-gguf", str(f32_gguf), "out16", "--dtype", flag, "--json")
    assert code == 0, err
    result = one_json(stdout)
    seconds = result.pop("seconds")
    assert isinstance(seconds, float) and seconds >= 0
    out = Path.cwd() / "out16"  # out_dir is reported resolved, whatever was typed
    assert result == {"gguf": str(f32_gguf), "out_dir": str(out), "dtype": dtype, "layers": 4,
                      "hidden_size": 64, "vocab_size": 512, "tensor_types": {"F32": 38}, "chat_template": True}
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        assert {fh.get_slice(n).get_dtype() for n in fh.keys()} == {stored}  # noqa: SIM118
    _, _, config = load_checkpoint(out)
    assert config.torch_dtype == dtype


def test_cli_text(f32_gguf: Path, tmp_path: Path, capsys: Capsys) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "convert-gguf", str(f32_gguf), str(out))
    assert code == 0, err
    assert stdout.count("\n") == 1 and stdout.startswith(f"converted tiny-f32.gguf (38 F32) into {out} in ")
    assert stdout.rstrip().endswith("4 layers, hidden 64, vocab 512, float32, chat template")
    assert (out / "model.safetensors").is_file()
