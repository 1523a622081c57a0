"""Chat templates render as transformers renders them, and a broken template is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warmgraph.errors import WarmgraphError
from warmgraph.models.chat import chat_messages, read_chat_template, render_chat

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_messages_and_generation_prompt() -> None:
    assert chat_messages("hi") == [{"role": "user", "content": "hi"}]
    assert chat_messages("hi", "be brief")[0] == {"role": "system", "content": "be brief"}
    text = render_chat(CHATML, chat_messages("hi", "be brief"))
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert not render_chat(CHATML, chat_messages("hi"), add_generation_prompt=False).endswith("assistant\n")


def test_what_templates_in_the_wild_use() -> None:
    bos = {"bos_token": "<s>"}
    assert render_chat("{{ bos_token }}{{ messages[0]['content'] }}", chat_messages("x"), bos) == "<s>x"
    # transformers' tojson signature, loop controls, and the date helper Llama 3.1 templates call
    assert render_chat("{{ messages | tojson(ensure_ascii=False) }}", chat_messages("é")) == json.dumps(
        [{"role": "user", "content": "é"}], ensure_ascii=False)
    assert render_chat("{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}",
                       chat_messages("x")) == "1"
    assert len(render_chat("{{ strftime_now('%Y') }}", chat_messages("x"))) == 4


@pytest.mark.parametrize(("template", "needle"), [
    ("{{ raise_exception('only user turns') }}", "refused the conversation: only user turns"),
    ("{% for %}", "cannot be rendered"),
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ 'a' + 1 }}", "TypeError"),
    ("{{ messages.__class__.__mro__ }}", "cannot be rendered"),  # the sandbox refuses internals
])
def test_a_broken_template_is_one_line(template: str, needle: str) -> None:
    with pytest.raises(WarmgraphError, match=needle) as err:
        render_chat(template, chat_messages("hi"))
    assert "\n" not in str(err.value)


def test_reading_the_template(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": CHATML}],
         "bos_token": "<s>", "eos_token": "</s>", "pad_token": None}))
    template, special = read_chat_template(tmp_path)
    assert template == CHATML and special == {"bos_token": "<s>", "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(WarmgraphError, match="has no chat template"):
        read_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(WarmgraphError, match="cannot read the chat template"):
        read_chat_template(tmp_path)
