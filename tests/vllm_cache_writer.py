"""vLLM's torch.compile cache laid out as vLLM 0.32.0 writes it, for the ``--vllm`` cache tests.

File names, JSON keys and the pprint'ed ``vllm_compile_cache.py`` are taken from
``vllm/compilation/backends.py``, ``decorators.py`` and ``compiler_interface.py``.
"""

from __future__ import annotations

import json
import os
import pprint
import time
from pathlib import Path

# A few of the raw env factors vLLM's envs.compile_factors() writes under "env".
ENV = {"VLLM_COMPILE_CACHE_SAVE_FORMAT": "binary", "VLLM_TARGET_DEVICE": "cpu", "VLLM_USE_AOT_COMPILE": True,
       "VLLM_USE_MEGA_AOT_ARTIFACT": False, "VLLM_USE_STANDALONE_COMPILE": True}
# computation_graph.py: "from __future__ ...\nimport torch\n" + split_gm.print_readable().
GRAPH = ('from __future__ import annotations\nimport torch\nclass GraphModule(torch.nn.Module):\n'
         '    def forward(self, L_input_ids_: "i64[s72]", s72: "Sym(s72)", L_embed_weight_: "bf16[512, 256]", '
         'L_norm_weight_: "bf16[256]", L_positions_: "i64[s72]", L_cos_sin_cache_: "f32[128, 64]"):\n'
         '        submod_0 = self.submod_0(L_input_ids_)\n')
COMPILE_A, COMPILE_B, AOT = "0a1b2c3d4e", "9f8e7d6c5b", "c0ffee" + "1" * 58
DAY = 86400


def write_compile(root: Path, hash10: str, *, ranks: tuple[str, ...] = ("rank_0_0",),
                  ranges: tuple[tuple[int, int], ...] = ((1, 128), (4, 4)), subgraphs: int = 2,
                  artifact: int = 1000, inductor: int = 0) -> int:
    """A ``<hash10>`` entry (prefix "backbone", inductor_standalone artifacts); returns the bytes written."""
    written = 0
    for rank in ranks:
        local = root / "torch_compile_cache" / hash10 / rank / "backbone"
        local.mkdir(parents=True)
        factors = json.dumps({"env": ENV, "config_hash": "c" * 64, "code_hash": "d" * 64, "compiler_hash": "e" * 10},
                             indent=2, sort_keys=True)
        cache = {}
        for s, e in ranges:
            for i in range(subgraphs):
                name = f"artifact_compile_range_{s}_{e}_subgraph_{i}"
                (local / name).write_bytes(b"a" * artifact)
                cache[((s, e), i, "inductor_standalone")] = {"graph_handle": (name, str(local / name)),
                                                             "cache_key": f"a{s}{e}{i}"}
        # CompilerManager.save_to_file; its keys hold Range objects, whose repr is this tuple's (checked
        # against vLLM 0.32.0's writer and reader: only the order of the keys differs).
        text = pprint.PrettyPrinter(indent=4).pformat(cache)
        for name, content in (("cache_key_factors.json", factors), ("computation_graph.py", GRAPH),
                              ("vllm_compile_cache.py", text)):
            (local / name).write_text(content)
            written += len(content)
        written += artifact * len(ranges) * subgraphs
        if inductor:  # the inductor adaptor's cache, beside the prefixes
            (local.parent / "inductor_cache" / "ab").mkdir(parents=True)
            (local.parent / "inductor_cache" / "ab" / "cabc.py").write_bytes(b"i" * inductor)
            written += inductor
    return written


def write_aot(root: Path, sha: str, *, ranks: tuple[str, ...] = ("rank_0_0",), model: int = 5000) -> int:
    """A ``torch_aot_compile/<sha256>`` entry: ``rank_*/model`` and the shared inductor_cache."""
    entry = root / "torch_compile_cache" / "torch_aot_compile" / sha
    (entry / "inductor_cache" / "fx").mkdir(parents=True)
    (entry / "inductor_cache" / "fx" / "graph").write_bytes(b"f" * 300)
    for rank in ranks:
        (entry / rank).mkdir()
        (entry / rank / "model").write_bytes(b"m" * model)
    return 300 + model * len(ranks)


def set_age(path: Path, seconds: float) -> float:
    """Every path in ``path`` last modified ``seconds`` ago (links themselves, not their targets)."""
    t = time.time() - seconds
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(top, name), (t, t), follow_symlinks=False)
    os.utime(path, (t, t), follow_symlinks=False)
    return t


def entry_dir(root: Path, h: str) -> Path:
    base = root / "torch_compile_cache"
    return base / h if len(h) == 10 else base / "torch_aot_compile" / h


def left_entries(root: Path) -> list[str]:
    """Every name left in the two entry directories, hidden ones included."""
    base = root / "torch_compile_cache"
    return sorted(p.name for d in (base, base / "torch_aot_compile") if d.is_dir() for p in d.iterdir())


def make_cache3(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A 3 days old compile entry, a 2 days old AOT entry and an hour old compile entry (two ranks)."""
    root = tmp_path / "vllm"
    sizes = {COMPILE_A: write_compile(root, COMPILE_A, artifact=4096, inductor=700), AOT: write_aot(root, AOT),
             COMPILE_B: write_compile(root, COMPILE_B, ranks=("rank_0_0", "rank_1_0"), ranges=((1, 8192),),
                                      subgraphs=3, artifact=2**20)}
    for h, age in ((COMPILE_A, 3 * DAY), (AOT, 2 * DAY), (COMPILE_B, 3600)):
        set_age(entry_dir(root, h), age)
    return root, sizes
