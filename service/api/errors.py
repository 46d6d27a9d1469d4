"""The one table that turns exceptions into HTTP answers: JSON `{code, message[, field]}`."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from formats.openai_jobs import OpenAIError, OpenAIErrorBody
from formats.versioned import SchemaVersionError
from service import errors

log = logging.getLogger("ratchet.api")

# exception class -> (status, stable code)
STATUS: dict[type[errors.RatchetError], tuple[int, str]] = {
    errors.MalformedPayload: (400, "bad_payload"),  # before its base class
    errors.InvalidFile: (400, "invalid_file"),  # before its base class
    errors.InvalidInput: (422, "invalid_input"),
    errors.BodyTooLarge: (413, "too_large"),
    errors.Unauthenticated: (401, "unauthenticated"),
    errors.Forbidden: (403, "forbidden"),
    errors.NotFound: (404, "not_found"),
    errors.Conflict: (409, "conflict"),
    errors.WriterSaturated: (429, "writer_saturated"),
    errors.StoreOutOfMemory: (503, "store_out_of_memory"),  # before its base class
    errors.ArchiveUnavailable: (503, "archive_unavailable"),  # before its base class
    errors.StoreUnavailable: (503, "store_unavailable"),
    errors.AdapterLoadFailed: (502, "adapter_load_failed"),
    errors.UpstreamRejected: (400, "upstream_rejected"),
    errors.UpstreamUnavailable: (503, "upstream_unavailable"),
    errors.UpstreamTimeout: (504, "upstream_timeout"),
}
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error Ratchet answers with."""

    code: str
    message: str
    field: str | None = None
    detail: Any = None


INTERNAL = ErrorBody("internal", "internal error; the server log has the details")


def error_response(
    status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


OPENAI_SHAPED = ("/v1/files", "/v1/fine_tuning/")
"""Routes of OpenAI's own APIs (files, fine-tuning jobs), whose clients read an error as
`{"error": {"message", "type", "param", "code"}}`: the same error, in that shape."""


def answer(
    request: Request[Any, Any, Any], status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> Response[Any]:
    """`error_response`, in OpenAI's error shape on `OPENAI_SHAPED` routes."""
    if not request.url.path.startswith(OPENAI_SHAPED):
        return error_response(status, body, headers)
    kind = "invalid_request_error" if status < 500 else "server_error"
    shaped = OpenAIErrorBody(
        error=OpenAIError(
            message=body.message, type=kind, param=body.field, code=body.code, detail=body.detail
        )
    )
    return Response(shaped, status_code=status, media_type=MediaType.JSON, headers=headers)


def domain_error(exc: errors.RatchetError) -> tuple[int, ErrorBody, dict[str, str]]:
    """Status, body and headers for a domain error (also used by the ingest fast path)."""
    status, code = next((v for cls, v in STATUS.items() if isinstance(exc, cls)), (500, "internal"))
    headers = (
        {"Retry-After": str(max(1, round(exc.retry_after)))}
        if isinstance(exc, errors.WriterSaturated)
        else {}
    )
    return (
        status,
        ErrorBody(code, exc.message, getattr(exc, "field", None), getattr(exc, "detail", None)),
        headers,
    )


def decode_error(exc: msgspec.MsgspecError) -> ErrorBody:
    """The 422 body for a body msgspec could not decode into the expected Struct."""
    # msgspec names the path of the bad field: "Expected `int`, got `str` - at `$.rating`".
    message = str(exc)
    field = message.rsplit("at `", 1)[1].rstrip("`") if "at `$" in message else None
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:  # "Object contains unknown field `x`" names the object, not the field
        field = f"{field or '$'}.{unknown.group(1)}"
    return ErrorBody("invalid_input", f"invalid request body: {message}", field)


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]*)`")


def handle_domain(request: Request[Any, Any, Any], exc: errors.RatchetError) -> Response[Any]:
    return answer(request, *domain_error(exc))


def handle_decode(request: Request[Any, Any, Any], exc: msgspec.MsgspecError) -> Response[Any]:
    return answer(request, 422, decode_error(exc))


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    extra = exc.extra if isinstance(exc.extra, list) else None
    if extra and all(isinstance(e, dict) and e.get("message") == "'data'" for e in extra):
        # Litestar's KeyError for a route that takes a body and got none.
        return answer(
            request, 422, ErrorBody("invalid_input", "the request body is empty: send a JSON object", "body")
        )
    parts = [f"{e.get('message')} ({e.get('key')})" if isinstance(e, dict) else str(e) for e in extra or []]
    message = "; ".join(parts) or exc.detail
    field = next((e.get("key") for e in extra or [] if isinstance(e, dict) and e.get("key")), None)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:  # Litestar names the body ("data") or the object holding the unknown field
        field = unknown.group(1) if field in (None, "data") else f"{field}.{unknown.group(1)}"
    return answer(request, 422, ErrorBody("invalid_input", f"invalid request: {message}", field))


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    message = exc.detail
    if status == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        most = f"over {limit:,} bytes" if limit else exc.detail
        message = f"request body too large: {most}. Split the batch or raise max_body_bytes"
        if request.url.path.startswith("/v1/files"):
            message = f"file too large: {most}. Split the file or raise max_file_bytes"
    return answer(
        request,
        status,
        ErrorBody(_HTTP_CODES.get(status, "http_error" if status < 500 else "internal"), message),
    )


def handle_schema_version(_: Request[Any, Any, Any], exc: SchemaVersionError) -> Response[Any]:
    """Stored data a newer Ratchet wrote (after a downgrade): say which, rather than a bare 500."""
    return answer(_, 500, ErrorBody("unsupported_schema_version", str(exc)))


def handle_recursion(request: Request[Any, Any, Any], _: RecursionError) -> Response[Any]:
    """A decoder (msgspec, Litestar's, the OTLP and vendor readers) ran out of recursion: the body
    nests too deeply, the client's fault to fix, not a 500."""
    return answer(request, *domain_error(errors.NestedTooDeeply()))


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return answer(request, 500, INTERNAL)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    errors.RatchetError: handle_domain,
    msgspec.ValidationError: handle_decode,
    msgspec.DecodeError: handle_decode,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    SchemaVersionError: handle_schema_version,
    RecursionError: handle_recursion,
    Exception: handle_unexpected,
}
