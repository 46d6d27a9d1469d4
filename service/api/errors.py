"""The one table that turns exceptions into HTTP answers: JSON `{code, message[, field]}`."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from service import errors

log = logging.getLogger("ratchet.api")

# exception class -> (status, stable code)
STATUS: dict[type[errors.RatchetError], tuple[int, str]] = {
    errors.InvalidInput: (422, "invalid_input"),
    errors.Unauthenticated: (401, "unauthenticated"),
    errors.Forbidden: (403, "forbidden"),
    errors.NotFound: (404, "not_found"),
    errors.Conflict: (409, "conflict"),
    errors.WriterSaturated: (429, "writer_saturated"),
    errors.StoreOutOfMemory: (503, "store_out_of_memory"),  # before its base class
    errors.StoreUnavailable: (503, "store_unavailable"),
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


def handle_domain(_: Request[Any, Any, Any], exc: errors.RatchetError) -> Response[ErrorBody]:
    return error_response(*domain_error(exc))


def handle_decode(_: Request[Any, Any, Any], exc: msgspec.MsgspecError) -> Response[ErrorBody]:
    return error_response(422, decode_error(exc))


def handle_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    extra = exc.extra if isinstance(exc.extra, list) else None
    parts = [f"{e.get('message')} ({e.get('key')})" if isinstance(e, dict) else str(e) for e in extra or []]
    message = "; ".join(parts) or exc.detail
    field = next((e.get("key") for e in extra or [] if isinstance(e, dict) and e.get("key")), None)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:  # Litestar names the body ("data") or the object holding the unknown field
        field = unknown.group(1) if field in (None, "data") else f"{field}.{unknown.group(1)}"
    return error_response(422, ErrorBody("invalid_input", f"invalid request: {message}", field))


def handle_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    message = exc.detail
    if status == 413:
        message = f"request body too large: {exc.detail}. Split the batch or raise max_body_bytes"
    return error_response(
        status, ErrorBody(_HTTP_CODES.get(status, "http_error" if status < 500 else "internal"), message)
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, INTERNAL)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    errors.RatchetError: handle_domain,
    msgspec.ValidationError: handle_decode,
    msgspec.DecodeError: handle_decode,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}
