"""HTTP `Content-Encoding` of a request body (RFC 9110 section 8.4): `gzip` or none.

OTLP exporters gzip by default, and log shippers often do; a JSON endpoint that ignored the header
read the compressed bytes as JSON ("invalid character (byte 0)").
"""

from __future__ import annotations

import zlib


class ContentCodingError(ValueError):
    """The body's coding cannot be undone within the limit; `message` says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InflatedTooLarge(ContentCodingError):
    """The body inflates to more than the limit: the request is too large (HTTP 413), not bad."""


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` (`gzip`, or none/`identity`); raises
    `ContentCodingError` for another coding or a corrupt stream, `InflatedTooLarge` for more than
    `limit` bytes inflated (read no further than that: a gzip bomb costs `limit` bytes, not its
    size)."""
    coding = (content_encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding != "gzip":
        raise ContentCodingError(f"Content-Encoding {content_encoding!r} is not supported: send gzip or none")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ContentCodingError(f"the body is not valid gzip: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise InflatedTooLarge(f"the body inflates to more than {limit:,} bytes: send smaller batches")
    return data
