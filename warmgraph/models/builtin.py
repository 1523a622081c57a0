"""The models warmgraph can run without a MODEL_DIR, by name.

``smollm2`` (the default) is a real instruction-tuned model converted from a PyPI package;
``tiny`` is a random four-layer Llama generated in code, for tests and quick checks.
"""

from __future__ import annotations

from pathlib import Path

from warmgraph.errors import ConfigError

DEFAULT_MODEL = "smollm2"
BUILTIN_MODELS = ("smollm2", "tiny")


def builtin_model_dir(name: str, root: Path | None = None, progress: bool = True) -> Path:
    """The checkpoint directory of built-in model ``name``, created in ``<root>/models`` on first
    use (``root`` defaults to the graph cache root). ConfigError for an unknown name."""
    if name == "smollm2":
        from warmgraph.models.smollm2 import ensure_smollm2

        return ensure_smollm2(root, progress=progress)
    if name == "tiny":
        from warmgraph.models.tiny import ensure_tiny_model

        return ensure_tiny_model(root)
    raise ConfigError(f"model {name!r} is not built in; use one of {', '.join(BUILTIN_MODELS)} or pass a MODEL_DIR")
