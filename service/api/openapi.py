"""OpenAPI for bodies that are one item or a batch, which msgspec cannot express as a Struct union.

The handler decodes the body itself; this publishes the same shape (`oneOf`, inlined from
msgspec's own JSON Schema) so the published schema and the validation agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody

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


def _one_or_batch(one: type, batch: type, what: str) -> type[Operation]:
    schemas, defs = msgspec.json.schema_components((one, batch), ref_template="#/$defs/{name}")
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
