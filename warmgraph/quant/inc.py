"""INC max-abs measurement files ("DynamicRange"): written for INC, read back for scales.

Intel Neural Compressor's MEASURE mode with observer ``maxabs`` records, per patched module,
the largest magnitude of each input, each output and the weight. What we verified in INC
(``neural_compressor/torch/algorithms/fp8_quant``) and match here:

* Name: ``<dump_stats_path>_hooks_<observer>`` (``_quant_common/quant_config.py``), plus
  ``_<rank>_<world>`` with several ranks (not written here), then ``.json`` and ``.npz``
  (``_core/save_measure/save_files.py``). Its ``_mod_list.json`` is never read back by INC,
  so we do not write it.
* Top level (``_core/common.py`` ``save_file``): ``GlobalRank``, ``LocalRank``, ``Mode``
  (``"DynamicRange"`` for measurements), ``Nodes``; ``NumSamples`` first when a sample
  counter ran. JSON indented by 4.
* A node (``measure_control_to_state_dict``): ``inputs``, a list with one state per input;
  ``outputs`` only when outputs were measured; ``params`` ``{"weight": state}``. The maxabs
  observer's state is a ``(1, 1)`` tensor (``observer.py``), so a value is ``[[v]]``; the
  per-channel observer's is ``(channels, 1)``. INC's loader renames legacy ``input`` and
  ``output`` keys (``fix_fields``); so do we.
* INC's QUANTIZE mode loads the ``.npz`` (``_core/measure.py`` ``load_measurements``), a
  pickled dict of float32 arrays, not the JSON; so we write that twin too, but read only
  the JSON (loading a pickle can run code).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from warmgraph.errors import ConfigError, WarmgraphError

SUFFIX = "_hooks_maxabs"  # INC's observer name for per-tensor max-abs
MODE = "DynamicRange"
_F32_MAX = float(np.finfo(np.float32).max)

Node = dict[str, float | None]  # {"input": float, "weight": float, "output": float | None}


def measurement_path(path: str | Path) -> Path:
    """The JSON file of ``path``: a ``.json`` file as is, INC's ``..._hooks_maxabs`` measure
    file, or a ``dump_stats_path`` prefix (``<prefix>_hooks_maxabs.json``)."""
    text = str(path)
    if text.endswith(".json"):
        return Path(text)
    return Path(text + ".json") if text.endswith(SUFFIX) else Path(text + SUFFIX + ".json")


def write_measurements(path_prefix: str | Path, nodes: Mapping[str, Mapping[str, float | None]]) -> Path:
    """Write ``nodes`` (``{module: {"input", "weight", "output" or None}}``) as INC's
    ``<prefix>_hooks_maxabs.json`` and ``.npz``, each atomically; return the JSON's path.

    Values are stored as float32, as INC's observers hold them. Raises ConfigError for a
    value that is not a finite max-abs, WarmgraphError when a file cannot be written."""
    json_nodes: dict[str, Any] = {}
    for name, node in nodes.items():
        if not isinstance(name, str) or not name or not isinstance(node, Mapping):
            raise ConfigError(f"nodes[{name!r}] must be a module name mapped to {{'input', 'weight', 'output'}}")
        values = {key: _checked(name, key, node.get(key), optional=key == "output")
                  for key in ("input", "output", "weight")}
        entry: dict[str, Any] = {"inputs": [[[values["input"]]]]}
        if values["output"] is not None:
            entry["outputs"] = [[[values["output"]]]]
        entry["params"] = {"weight": [[values["weight"]]]}
        json_nodes[name] = entry
    # INC's npz holds the same nodes with each [[v]] as a float32 (1, 1) array.
    npz_nodes = {name: {**{key: [np.array(v, dtype=np.float32) for v in entry[key]]
                           for key in ("inputs", "outputs") if key in entry},
                        "params": {"weight": np.array(entry["params"]["weight"], dtype=np.float32)}}
                 for name, entry in json_nodes.items()}
    head = {"GlobalRank": None, "LocalRank": None, "Mode": MODE}
    path = measurement_path(path_prefix)
    # The npz first: the JSON, written last, is what says the pair is complete.
    _atomic(path.with_suffix(".npz"), lambda f: np.savez(f, {**head, "Nodes": npz_nodes}))
    _atomic(path, lambda f: f.write(json.dumps({**head, "Nodes": json_nodes}, indent=4).encode()))
    return path


def _checked(name: str, key: str, value: Any, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= _F32_MAX:
        raise ConfigError(f"nodes[{name!r}][{key!r}] is {value!r}; a max-abs must be a finite number >= 0 "
                          "(in float32 range)")
    return float(np.float32(value))


def _atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in ``path``'s folder and rename it over ``path``, so a
    reader never sees half a file and a failure leaves none."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # INC creates dump_stats_path's folder too
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
            tmp = f.name
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise WarmgraphError(f"{path}: cannot write the measurement file ({err.strerror or err})") from err
    finally:
        if tmp is not None and os.path.exists(tmp):  # only after a failure: a replaced file is gone
            os.unlink(tmp)


def read_measurements(path: str | Path) -> dict[str, Node]:
    """``{module: {"input", "weight", "output" or None}}`` from an INC max-abs measurement JSON
    (``path``: the file or its prefix, as ``measurement_path`` takes it).

    Raises WarmgraphError with one line naming the file and the field for a missing file,
    bad JSON, a Mode other than DynamicRange, a node without inputs or params.weight, a
    value that is not ``[[v]]`` with v a finite number >= 0, or a per-channel measurement."""
    file = measurement_path(path)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WarmgraphError(f"{file}: no such measurement file; measure with INC (mode MEASURE, observer "
                             "maxabs) or write_measurements") from None
    except json.JSONDecodeError as err:
        raise WarmgraphError(f"{file}: not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise WarmgraphError(f"{file}: cannot read the measurement file ({err})") from None
    if not isinstance(doc, dict):
        raise WarmgraphError(f"{file}: not a JSON object; an INC measurement file is {{\"Mode\": ..., \"Nodes\": ...}}")
    if doc.get("Mode") != MODE:
        found = f"Mode is {doc['Mode']!r}" if "Mode" in doc else "Mode is missing"
        raise WarmgraphError(f"{file}: {found}, not {MODE!r}; a max-abs measurement is needed (INC mode MEASURE, "
                             f"observer maxabs: <prefix>{SUFFIX}.json)")
    nodes = doc.get("Nodes")
    if not isinstance(nodes, dict):
        raise WarmgraphError(f"{file}: Nodes is missing or not an object; INC writes one entry per measured module")
    linears = {name: _node(file, name, node) for name, node in nodes.items()}
    return {name: node for name, node in linears.items() if node is not None}


def _node(file: Path, name: str, node: Any) -> Node | None:
    """A Linear node's values; None for a node without ``params`` (a matmul, KV cache or SDPA
    node of a whole-model measurement: warmgraph quantises linears only)."""
    where = f"Nodes[{name!r}]"
    if not isinstance(node, dict):
        raise WarmgraphError(f"{file}: {where} is not an object with inputs and params")
    inputs = node.get("inputs", node.get("input"))  # "input": INC's legacy key
    outputs = node.get("outputs", node.get("output"))
    params = node.get("params")
    if params is None:
        return None
    weight = params.get("weight") if isinstance(params, dict) else None
    if not inputs:
        raise WarmgraphError(f"{file}: {where} has no inputs; warmgraph reads Linear nodes (input and weight max-abs)")
    if weight is None:
        raise WarmgraphError(f"{file}: {where} has no params.weight; warmgraph reads Linear nodes (input and weight "
                             "max-abs)")
    return {"input": _one(file, f"{where}.inputs", inputs),
            "weight": _value(file, f"{where}.params.weight", weight),
            "output": _one(file, f"{where}.outputs", outputs) if outputs else None}


def _one(file: Path, where: str, states: Any) -> float:
    """The value of a list that holds one state: a Linear has one input and one output."""
    if not isinstance(states, list):
        raise WarmgraphError(f"{file}: {where} is not a list of max-abs values [[[v]]]")
    if len(states) != 1:
        raise WarmgraphError(f"{file}: {where} holds {len(states)} tensors; warmgraph reads one per Linear node")
    return _value(file, f"{where}[0]", states[0])


def _value(file: Path, where: str, state: Any) -> float:
    count = sum(len(row) if isinstance(row, list) else 1 for row in state) if isinstance(state, list) else 1
    if count > 1:  # INC's per-channel observer: a (channels, 1) state, [[v0], [v1], ...]
        raise WarmgraphError(f"{file}: {where} is a per-channel measurement ({count} values); warmgraph reads "
                             "per-tensor max-abs (INC observer maxabs, not maxabs_per_channel)")
    if not (isinstance(state, list) and len(state) == 1 and isinstance(state[0], list) and len(state[0]) == 1):
        raise WarmgraphError(f"{file}: {where} is not a max-abs value [[v]]")
    value = state[0][0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WarmgraphError(f"{file}: {where} holds {value!r}, not a number")
    if not (math.isfinite(value) and value >= 0):
        raise WarmgraphError(f"{file}: {where} is {value!r}; a max-abs must be a finite number >= 0")
    return float(value)
