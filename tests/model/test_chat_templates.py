"""kaito-runtime's own chat templates (presets/chat_templates/), rendered by transformers'
apply_chat_template: the same sandboxed Jinja that vLLM's chat endpoint uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito_runtime.settings import shipped_chat_templates_dir

TINY = Path(__file__).resolve().parent.parent.parent / "models" / "tiny-llama"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY)


def render(tokenizer, messages, **kwargs) -> str:
    template = (shipped_chat_templates_dir() / "falcon-instruct.jinja").read_text()
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def test_falcon_turns_with_a_system_line_and_an_open_reply(tokenizer):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is KAITO?\n"},
        {"role": "assistant", "content": " A Kubernetes AI toolchain."},
        {"role": "user", "content": "Who runs the nodes?"},
    ]
    assert render(tokenizer, messages, add_generation_prompt=True) == (
        "Answer briefly.\nUser: What is KAITO?\nFalcon: A Kubernetes AI toolchain.\nUser: Who runs the nodes?\nFalcon:"
    )
    assert render(tokenizer, messages[1:2]) == "User: What is KAITO?"


def test_a_role_falcon_has_no_turn_for_is_refused_by_name(tokenizer):
    with pytest.raises(Exception, match="not tool"):
        render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}])
