"""The integration's pieces that need vLLM's modules but no engine: plan, plugin switch, op twins."""

from __future__ import annotations

import pytest
import torch

from warmgraph.errors import WarmgraphError
from warmgraph.integrations.vllm.plan import dynamic_max, parse_sizes
from warmgraph.integrations.vllm.plugin import enabled


def test_sizes_parse_and_refuse() -> None:
    assert parse_sizes("4, 1,2,2") == [1, 2, 4]
    for bad in ("", "0,1", "a,b", "-3"):
        with pytest.raises(WarmgraphError, match="WARMGRAPH_VLLM_SIZES"):
            parse_sizes(bad)
    assert dynamic_max(2048) == 16384 and dynamic_max(32768) == 32768


def test_plugin_switch() -> None:
    assert enabled({}) is False and enabled({"WARMGRAPH_VLLM": "0"}) is False
    assert enabled({"WARMGRAPH_VLLM": "1"}) is True and enabled({"WARMGRAPH_VLLM": "true"}) is True
    with pytest.raises(WarmgraphError, match="not built yet"):
        enabled({"WARMGRAPH_VLLM": "piecewise"})
    with pytest.raises(WarmgraphError, match="not understood"):
        enabled({"WARMGRAPH_VLLM": "maybe"})


def test_layer_name_twin_keeps_the_schema_but_the_opaque_argument() -> None:
    import vllm.model_executor.layers.attention.attention  # noqa: F401  (registers vLLM's ops)

    from warmgraph.integrations.vllm.layer_names import NAMESPACE, twin

    original = torch.ops.vllm.unified_attention_with_output.default
    made = twin(original)
    assert made is twin(original)  # made once
    assert made.namespace == NAMESPACE
    theirs = [(a.name, str(a.type), a.alias_info is not None) for a in original._schema.arguments]
    ours = [(a.name, str(a.type), a.alias_info is not None) for a in made._schema.arguments]
    assert [t for t in theirs if t[1] != "PyObject"] == [t for t in ours if t[1] != "str"]
    assert [(n, w) for n, t, w in theirs if t == "PyObject"] == [(n, w) for n, t, w in ours if t == "str"]
    assert [(n, t) for n, t, _ in ours if t == "str"] == [("layer_name", "str")]
