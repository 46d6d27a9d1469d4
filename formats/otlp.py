"""OTLP/HTTP trace payloads: `ExportTraceServiceRequest` in, plain spans out, and the answer back.

https://opentelemetry.io/docs/specs/otlp/#otlphttp: a body is binary protobuf
(`application/x-protobuf`) or OTLP/JSON (`application/json`), optionally gzip-compressed
(`Content-Encoding: gzip`). Parsing is `opentelemetry-proto`'s generated classes; the OTLP/JSON
traps are handled here, once:

- `traceId` / `spanId` / `parentSpanId` are hex strings in OTLP/JSON, not the base64 protobuf's
  JSON mapping gives `bytes` (a 32-char hex id is also valid base64, and would decode silently to
  the wrong 24 bytes): they are turned into base64 before `json_format.Parse`. Base64 ids (what a
  plain `json_format.MessageToJson` writes) are accepted as they are.
- 64-bit integers (`startTimeUnixNano`, `intValue`) arrive as strings or numbers; enums (`kind`,
  `status.code`) as integers or names: `json_format` reads both.
- Unknown fields are ignored (OTLP receivers must accept newer senders).

`decode_spans` flattens the resource/scope nesting into `Span`s whose attributes are plain Python
values (`AnyValue` unwrapped: kvlists become dicts, arrays lists, bytes stay bytes).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from msgspec import Struct
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

Encoding = Literal["protobuf", "json"]
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class PayloadError(ValueError):
    """The body is not an OTLP trace export this endpoint can read; `message` says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpanEvent(Struct, kw_only=True):
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


class SpanLink(Struct, kw_only=True):
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


class Span(Struct, kw_only=True):
    """One span with its resource's attributes beside it; ids as lowercase hex."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any]
    events: list[SpanEvent]
    links: list[SpanLink]
    resource: dict[str, Any]
    status_code: int = 0
    status_message: str = ""


def encoding_of(content_type: str | None) -> Encoding:
    """Which OTLP encoding a `Content-Type` names; raises `PayloadError` for any other."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        return "protobuf"
    if media == JSON:
        return "json"
    raise PayloadError(
        f"Content-Type {content_type or '(none)'!r} is not OTLP/HTTP: send {PROTOBUF} or {JSON}"
    )


def parse_request(data: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    """An `ExportTraceServiceRequest` from a (decompressed) body; raises `PayloadError`."""
    message = ExportTraceServiceRequest()
    if encoding == "protobuf":
        try:
            message.ParseFromString(data)
        except DecodeError as exc:
            raise PayloadError(f"the body is not an OTLP ExportTraceServiceRequest protobuf: {exc}") from None
        return message
    try:
        tree = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(tree, dict):
        raise PayloadError('an OTLP/JSON body is an object: {"resourceSpans": [...]}')
    _ids_to_base64(tree)
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise PayloadError(f"the body is not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    return message


_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_HEX_ID = re.compile(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}")


def _ids_to_base64(node: Any) -> None:
    """OTLP/JSON ids are hex (the spec's exception to protobuf's JSON mapping): rewrite them in
    place as base64, which `json_format` reads. Empty ids stay empty."""
    if isinstance(node, list):
        for item in node:
            _ids_to_base64(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _ID_KEYS and isinstance(value, str) and _HEX_ID.fullmatch(value):
            node[key] = base64.b64encode(binascii.unhexlify(value)).decode()
        elif isinstance(value, dict | list):
            _ids_to_base64(value)


def any_value(value: AnyValue) -> Any:
    """An OTLP `AnyValue` as a plain Python value (None when unset)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """Repeated `KeyValue`s as a dict (a repeated key: the last one wins)."""
    return {kv.key: any_value(kv.value) for kv in pairs}


def decode_spans(request: ExportTraceServiceRequest) -> list[Span]:
    """Every span of a request, in order, flattened out of its resource and scope."""
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        start_time_unix_nano=s.start_time_unix_nano,
                        end_time_unix_nano=s.end_time_unix_nano,
                        attributes=attributes(s.attributes),
                        events=[
                            SpanEvent(name=e.name, time_unix_nano=e.time_unix_nano, attributes=attributes(e.attributes))
                            for e in s.events
                        ],
                        links=[
                            SpanLink(trace_id=link.trace_id.hex(), span_id=link.span_id.hex(), attributes=attributes(link.attributes))
                            for link in s.links
                        ],
                        resource=resource,
                        status_code=s.status.code,
                        status_message=s.status.message,
                    )
                )  # fmt: skip
    return spans


def encode_response(encoding: Encoding, rejected_spans: int = 0, error_message: str = "") -> bytes:
    """The `ExportTraceServiceResponse` body in the request's encoding: `partial_success` set only
    when something was rejected or there is a warning to tell (OTLP: otherwise left unset)."""
    response = ExportTraceServiceResponse()
    if rejected_spans or error_message:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected_spans, error_message=error_message)
        )
    if encoding == "protobuf":
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()
