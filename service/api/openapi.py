"""What the published OpenAPI says where Litestar's own derivation would be wrong.

Bodies that are one item or a batch, which msgspec cannot express as a Struct union: the handler
decodes the body itself; this publishes the same shape (`oneOf`, inlined from msgspec's own JSON
Schema) so the published schema and the validation agree. And the errors, as they are answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
)

from formats.chat import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from formats.openai_jobs import OpenAIErrorBody
from service.api.errors import OPENAI_SHAPED, ErrorBody
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


_ERRORS = (
    "An error: `code` names it (`invalid_input`, `not_found`, `conflict`, ...), `message` says "
    "what to fix, `field` is the field at fault (a 422), `detail` the per-item results or lines."
)
_PROBES = ("/healthz", "/readyz", "/metrics")


def publish_errors(openapi: OpenAPI) -> None:
    """Document every operation's errors (the probes' aside) as they are answered: `ErrorBody`,
    in OpenAI's shape on the routes of OpenAI's own APIs (`OPENAI_SHAPED`), for any 4xx and 5xx.
    Litestar's own 400 (`ValidationException`: `status_code`, `detail`, `extra`) goes: Ratchet
    never answers it (service/api/errors.py turns validation failures into 422s), and a client
    generated from the schema would parse every error wrong."""
    _, defs = msgspec.json.schema_components(
        (ErrorBody, OpenAIErrorBody), ref_template="#/components/schemas/{name}"
    )
    assert openapi.components is not None
    schemas = openapi.components.schemas if openapi.components.schemas is not None else {}
    schemas.update(defs)
    openapi.components.schemas = schemas
    for path, item in (openapi.paths or {}).items():
        if path in _PROBES:
            continue  # /readyz's 503 is its Health body, not an error
        shape = "OpenAIErrorBody" if path.startswith(OPENAI_SHAPED) else "ErrorBody"
        error = OpenAPIResponse(
            description=_ERRORS,
            content={"application/json": OpenAPIMediaType(schema=Reference(f"#/components/schemas/{shape}"))},
        )
        for method in ("get", "put", "post", "delete", "patch"):
            operation: Operation | None = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            responses.pop("400", None)
            responses.update({"4XX": error, "5XX": error})
            operation.responses = responses
