"""Chat prompts rendered with the model's own template, as the Hugging Face ecosystem does.

The template is the Jinja2 text in ``tokenizer_config.json`` (``chat_template``: a string, or a
list of named templates of which ``default`` is used). It runs in Jinja2's immutable sandbox with
``trim_blocks``/``lstrip_blocks``, a ``raise_exception`` helper and the special-token strings,
which is the environment transformers gives templates, so a template renders the same here.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from warmgraph.errors import WarmgraphError

_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")


def read_chat_template(model_dir: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """The chat template of a checkpoint directory and the special-token strings templates may
    use (``bos_token``, ``eos_token`` ...); WarmgraphError if it has no template."""
    path = Path(model_dir) / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError) as exc:
        raise WarmgraphError(f"cannot read the chat template from {path}: {exc}") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        raise WarmgraphError(f"{path.parent} has no chat template (tokenizer_config.json 'chat_template'); "
                             "send the text as a plain --prompt instead")
    return template, {k: v for k, v in config.items() if k in _SPECIAL and isinstance(v, str)}


def chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """One user turn, after a system turn when ``system`` is given (else the template's default)."""
    turns = [{"role": "system", "content": system}] if system is not None else []
    return [*turns, {"role": "user", "content": prompt}]


def _raise(message: str) -> None:
    raise WarmgraphError(f"the chat template refused the conversation: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' signature for templates' `tojson`, which differs from Jinja2's own filter
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # templates that date the system turn (Llama 3.1) call this


def render_chat(template: str, messages: list[dict[str, str]], special_tokens: dict[str, str] | None = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt text ``template`` makes of ``messages``, ending with the assistant's turn
    opener when ``add_generation_prompt``. One-line WarmgraphError for a broken template."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
    env.filters["tojson"] = _tojson
    context: dict[str, Any] = dict(special_tokens or {})
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **context)
    except WarmgraphError:
        raise
    except jinja2.TemplateError as exc:
        raise WarmgraphError(f"the chat template cannot be rendered: {exc}") from None
    except Exception as exc:  # a template is a program: 1/0, 'a' + 1 ... are its errors, not ours
        raise WarmgraphError(f"the chat template failed while rendering: {type(exc).__name__}: {exc}") from None
