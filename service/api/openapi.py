"""OpenAPI for bodies that are one item or a batch, which msgspec cannot express as a Struct union.

The handler decodes the body itself; this publishes the same shape (`oneOf`, inlined from
msgspec's own JSON Schema) so the published schema and the validation agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody

from formats.chat import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from service.domain import FeedbackBatchIn, FeedbackIn, LogBatchIn, LogIn


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace `#/$defs/X` references with their definitions (our types have no cycles)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _openai_bodies() -> dict[str, Any]:
    """The published shapes of a log's `request` and `response`: the OpenAI chat or completions
    bodies of `formats.chat` (which also validates them; unknown fields are allowed there)."""
    structs = (ChatCompletionRequest, CompletionRequest, ChatCompletion, Completion)
    schemas, defs = msgspec.json.schema_components(structs, ref_template="#/$defs/{name}")
    chat_req, completion_req, chat_resp, completion_resp = (_inline(s, defs) for s in schemas)
    return {
        "request": {"oneOf": [chat_req, completion_req], "description": "The OpenAI request body as sent."},
        "response": {"oneOf": [chat_resp, completion_resp], "description": "The OpenAI response body."},
    }


def _one_or_batch(one: type, batch: type, what: str) -> type[Operation]:
    schemas, defs = msgspec.json.schema_components((one, batch), ref_template="#/$defs/{name}")
    if one is LogIn:
        defs["LogIn"]["properties"].update(_openai_bodies())
    schema = {"oneOf": [_inline(s, defs) for s in schemas]}

    @dataclass
    class OneOrBatch(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=schema)},  # type: ignore[arg-type]
                description=f"One {what}, or a batch of them.",
                required=True,
            )

    return OneOrBatch


LogsOperation = _one_or_batch(LogIn, LogBatchIn, "log")
FeedbackOperation = _one_or_batch(FeedbackIn, FeedbackBatchIn, "feedback item")
