"""The aot backend: ``torch.export`` + an AOTInductor package per bucket, weights bound at load.

Each bucket is exported at its exact shape and compiled ahead of time into a ``.pt2``
package of native code. The package is built without the weights inside
(``aot_inductor.package_constants_in_so=False``); at load the live module's parameters and
buffers are bound to it with ``load_constants(..., user_managed=True)``, which keeps
references, not copies. So a package holds code only: a fine-tune of the same
architecture reuses it, and loading it costs milliseconds. This is the backend that
persists completely.

A plain callable (not an ``nn.Module``) is wrapped in a module to be exported; tensors it
closes over become constants with no owner to bind them from, so its package keeps its
constants inside (``weights_in_package``).
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from warmgraph.compiler.base import INDUCTOR_DEFAULTS, CompiledGraph, torch_fingerprint
from warmgraph.errors import WarmgraphError

PACKAGE = "graph.pt2"
META = "aot.json"


class AOTGraph:
    """A loaded AOTInductor package for one bucket.

    Loaded with torch's C++ package loader directly rather than ``aoti_load_package``: that
    one imports all of ``torch._inductor`` (2.6 s on a 2-core CPU, most of a warm start)
    to run a device check the cache key already makes, and re-parses the call spec on
    every call. Here the output spec is parsed once.
    """

    def __init__(self, loader: Any, package: Path, weights_in_package: bool) -> None:
        from torch.utils import _pytree as pytree

        self.loader = loader
        self.package = package
        self.weights_in_package = weights_in_package
        self._out_spec = pytree.treespec_loads(loader.get_call_spec()[1])
        self._unflatten = pytree.tree_unflatten

    def __call__(self, *args: Any) -> Any:
        import torch

        flat = [a for a in args if isinstance(a, torch.Tensor)]  # other arguments were compiled in
        return self._unflatten(self.loader.boxed_run(flat), self._out_spec)


def _as_module(fn: Callable[..., Any]) -> Any:
    import torch

    if isinstance(fn, torch.nn.Module):
        return fn

    class _Fn(torch.nn.Module):
        def forward(self, *args: Any) -> Any:
            return fn(*args)

    return _Fn()


def _resolve(module: Any, fqn: str) -> Any | None:
    try:
        return operator.attrgetter(fqn)(module)
    except AttributeError:
        return None


def _bind(loader: Any, module: Any) -> None:
    """Point the package's constants at ``module``'s live tensors (no copies)."""
    mapping = {}
    for fqn in loader.get_constant_fqns():
        tensor = _resolve(module, fqn)
        if tensor is None:
            raise WarmgraphError(
                f"the compiled graph needs weight {fqn!r}, which the module does not have; "
                "was it compiled for another model? clear the cache entry and compile again"
            )
        mapping[fqn] = tensor
    if mapping:
        # (constants, use_inactive, check_full_update, user_managed, allow_h2d_copy): user_managed
        # keeps the module's own tensors, so a weight changed in place is seen, and nothing is copied.
        loader.load_constants(mapping, False, True, True, False)


class AOTBackend:
    """AOTInductor per bucket; ``inductor_configs`` go to Inductor over ``INDUCTOR_DEFAULTS``."""

    name = "aot"
    can_persist = True
    captures = False

    def __init__(self, inductor_configs: dict[str, Any] | None = None) -> None:
        self.inductor_configs = {**INDUCTOR_DEFAULTS, **(inductor_configs or {})}
        self._workdir = Path(tempfile.mkdtemp(prefix="warmgraph-aot-"))
        # Packages compiled but not yet saved live here until the backend goes away.
        weakref.finalize(self, shutil.rmtree, self._workdir, True)
        self._count = 0

    def compile(self, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        import torch

        module = _as_module(fn)
        # A module may say which input dims stay symbolic (one graph for every size); by default
        # every shape is static, as a bucket's graph is.
        dynamic_shapes = getattr(module, "export_dynamic_shapes", None)
        exported = torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
        sig = exported.graph_signature
        owned = [*sig.parameters, *sig.buffers, *sig.lifted_tensor_constants]
        bindable = isinstance(fn, torch.nn.Module) and all(_resolve(module, n) is not None for n in owned)
        self._count += 1
        # The pid too: forked compile workers share this directory and this counter's value.
        package = self._workdir / f"{os.getpid()}-{self._count}-{PACKAGE}"
        configs = {"aot_inductor.package_constants_in_so": not bindable, **self.inductor_configs}
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package), inductor_configs=configs)
        return self._load_package(package, module, weights_in_package=not bindable)

    def _load_package(self, package: Path, module: Any, weights_in_package: bool) -> AOTGraph:
        import torch

        loader = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)
        if not weights_in_package:
            _bind(loader, module)
        return AOTGraph(loader, package, weights_in_package)

    def save(self, graph: CompiledGraph, directory: Path) -> list[str]:
        if not isinstance(graph, AOTGraph):
            raise TypeError(f"aot can only save its own graphs, not {type(graph).__name__}")
        shutil.copyfile(graph.package, Path(directory) / PACKAGE)
        (Path(directory) / META).write_text(json.dumps({"weights_in_package": graph.weights_in_package}))
        return [PACKAGE, META]

    def load(self, directory: Path, fn: Callable[..., Any], example_inputs: Sequence[Any]) -> CompiledGraph:
        meta = json.loads((Path(directory) / META).read_text())
        return self._load_package(Path(directory) / PACKAGE, _as_module(fn), bool(meta["weights_in_package"]))

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "inductor_configs": self.inductor_configs, **torch_fingerprint()}
