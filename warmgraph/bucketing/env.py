"""The vllm-gaudi environment variables a plan honours, and a record of what each one did.

A Gaudi user already sets ``VLLM_BUCKETING_STRATEGY``, ``VLLM_PROMPT_*_BUCKET_*`` and
friends; warmgraph reads the same names so its plans match what the server would warm up.
``EnvReader`` remembers every variable that changed a value (``applied``) so the CLI can
say so, and can list those that were set but had no effect (``ignored``), with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from warmgraph.errors import ConfigError

_PARAMS = ("min", "step", "max", "pad_max", "pad_percent")
_BUCKET_VAR = re.compile(
    r"^VLLM_(PROMPT|DECODE)_(BS|SEQ|QUERY|CTX|BLOCK)_BUCKET_(MIN|STEP|MAX|LIMIT|PAD_MAX|PAD_PERCENT)$"
)
_OTHER_VARS = (
    "VLLM_BUCKETING_STRATEGY",
    "VLLM_EXPONENTIAL_BUCKETING",
    "VLLM_BUCKETING_FROM_FILE",
    "VLLM_CONTIGUOUS_PA",
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvReader:
    """Typed reads of vllm-gaudi variables from a mapping (``os.environ`` or a test dict)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.applied: dict[str, str] = {}
        self._same: set[str] = set()

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def str(self, name: str) -> str | None:
        value = self._raw(name)
        if value is not None:
            self.applied[name] = value
        return value

    def bool(self, name: str) -> bool | None:
        value = self._raw(name)
        if value is None:
            return None
        if value.lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{name}={value} is not a boolean; use true or false")
        self.applied[name] = value
        return value.lower() in _TRUE

    def int(self, name: str, default: int | None) -> int | None:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value} is not an integer; set it to a whole number or unset it") from None
        if number < 0:
            raise ConfigError(f"{name}={value} is negative; bucket settings must be >= 0")
        if number == default:
            self._same.add(name)
        else:
            self.applied[name] = value
        return number

    def range_cfg(self, phase: str, dim: str, defaults: list[int]) -> list[int]:
        """``[min, step, max(, pad_max, pad_percent)]`` with ``VLLM_{PHASE}_{DIM}_BUCKET_*`` applied.

        For the query dimension the deprecated ``VLLM_{PHASE}_SEQ_BUCKET_*`` names are read
        when the QUERY ones are unset, as vllm-gaudi does.
        """
        out = []
        for param, default in zip(_PARAMS, defaults):
            name = f"VLLM_{phase}_{dim}_BUCKET_{param}".upper()
            if dim == "query" and self._raw(name) is None:
                name = f"VLLM_{phase}_SEQ_BUCKET_{param}".upper()
            value = self.int(name, default)
            assert value is not None
            out.append(value)
        return out

    def peek_int(self, name: str) -> int | None:
        """The variable's value as an int without recording it (None if unset or not an int)."""
        value = self._raw(name)
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    def mark_applied(self, name: str) -> None:
        value = self._raw(name)
        if value is not None:
            self.applied[name] = value

    def ignored(self) -> dict[str, str]:
        """Bucketing variables that are set but changed nothing, each with the reason."""
        out = {}
        for name in sorted(self._env):
            if name in self.applied or self._raw(name) is None:
                continue
            if name in self._same:
                out[name] = "equals the default"
            elif _BUCKET_VAR.match(name) or name in _OTHER_VARS:
                out[name] = "not read by this strategy"
        return out
