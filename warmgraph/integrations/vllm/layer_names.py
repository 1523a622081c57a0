"""vLLM's ``LayerName`` arguments, turned into plain strings the AOTInductor runtime can pass.

On torch >= 2.11 vLLM's custom ops (attention, KV-cache update, MoE) take a ``LayerName``: an
opaque value object Dynamo lifts as a graph input, so one compiled graph serves every layer.
The AOTInductor runtime cannot pass such objects to an extern kernel ("Unsupported input type
as_custom_obj"). ``VLLM_USE_LAYERNAME=0`` avoids them, but vLLM reads it when it is imported,
before any plugin runs, and it is part of vLLM's own cache key.

So the graph is rewritten instead: each call that receives a LayerName input is pointed at a
twin op in the ``warmgraph_vllm`` namespace with the same schema, except ``str`` where the
original has the opaque object, and the layer's name is written into the call as a constant.
The twin calls the original op with ``LayerName(name)``, in real and in fake mode alike, so
vLLM's kernels and its fake implementations do the work, mutations included.
"""

from __future__ import annotations

from typing import Any

import torch

NAMESPACE = "warmgraph_vllm"
_LIB: torch.library.Library | None = None
_TWINS: dict[str, Any] = {}


def is_layer_name(value: Any) -> bool:
    return type(value).__name__ == "LayerName" and isinstance(getattr(value, "value", None), str)


def twin(op: torch._ops.OpOverload) -> torch._ops.OpOverload:
    """The ``warmgraph_vllm`` twin of ``op`` taking ``str`` for its opaque arguments (made once)."""
    global _LIB
    qualified = f"{op.namespace}::{op._schema.name.split('::')[-1]}.{op._overloadname}"
    if qualified in _TWINS:
        return _TWINS[qualified]
    from vllm.utils.torch_utils import LayerName

    if _LIB is None:
        _LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
    schema = op._schema
    opaque = {i for i, a in enumerate(schema.arguments) if str(a.type) == "PyObject"}
    name = f"{op.namespace}__{schema.name.split('::')[-1]}__{op._overloadname}"
    text = str(schema).split("(", 1)[1]  # "args) -> returns", alias annotations and defaults kept
    for i in sorted(opaque):
        arg = schema.arguments[i]
        text = text.replace(f"PyObject {arg.name}", f"str {arg.name}", 1)
    _LIB.define(f"{name}({text}")

    def call(*args: Any, **kwargs: Any) -> Any:
        args = tuple(LayerName(a) if i in opaque and isinstance(a, str) else a for i, a in enumerate(args))
        return op(*args, **kwargs)

    _LIB.impl(name, call, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", call, lib=_LIB)
    result = getattr(getattr(torch.ops, NAMESPACE), name).default
    _TWINS[qualified] = result
    return result


def rewrite(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> list[str]:
    """Replace LayerName inputs by their strings and their ops by twins; returns the ops twinned
    (``qualified name``), so a deserializing process can make the twins before loading ``gm``."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = {p: ex.value for p, ex in zip(placeholders, example_inputs) if is_layer_name(ex)}
    twinned: set[str] = set()
    if not names:
        return []
    for node in gm.graph.nodes:
        uses = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        if node.op != "call_function" or not any(a in names for a in uses):
            continue
        op = node.target
        if isinstance(op, torch._ops.OpOverloadPacket) and op.overloads() == ["default"]:
            op = op.default  # Dynamo records the packet; its only overload is the one called
        if not isinstance(op, torch._ops.OpOverload):
            raise TypeError(f"a LayerName reaches {op!r}, which is not a custom op warmgraph can twin")
        node.target = twin(op)
        node.args = tuple(names.get(a, a) if isinstance(a, torch.fx.Node) else a for a in node.args)
        node.kwargs = {k: names.get(v, v) if isinstance(v, torch.fx.Node) else v for k, v in node.kwargs.items()}
        twinned.add(op.name())
    gm.graph.lint()
    gm.recompile()
    return sorted(twinned)


def restore_twins(ops: list[str]) -> None:
    """Make the twins of ``ops`` (qualified names such as ``vllm::unified_kv_cache_update``)."""
    for qualified in ops:
        namespace, rest = qualified.split("::", 1)
        name, _, overload = rest.partition(".")
        packet = getattr(getattr(torch.ops, namespace), name)
        twin(getattr(packet, overload or "default"))
