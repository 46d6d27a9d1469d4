"""A small HTTP client for Ratchet's API, used by the CLI (the server owns the database file)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from service import errors

_BY_CODE: dict[int, type[errors.RatchetError]] = {
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.InvalidInput,
    422: errors.InvalidInput,
    429: errors.WriterSaturated,
    503: errors.UpstreamUnavailable,
    504: errors.UpstreamTimeout,
}

# Error codes whose class the status alone does not tell (`service/api/errors.py` sets them).
_BY_ERROR_CODE: dict[str | None, type[errors.RatchetError]] = {
    "adapter_load_failed": errors.AdapterLoadFailed,
    "store_unavailable": errors.StoreUnavailable,
    "store_out_of_memory": errors.StoreOutOfMemory,
    "archive_unavailable": errors.ArchiveUnavailable,
}


class RatchetClient:
    """Calls a running Ratchet server; error answers become the matching domain exception, and
    a server that cannot be reached `ServerUnreachable`."""

    def __init__(self, url: str, key: str | None, timeout: float = 60.0) -> None:
        """Raises `InvalidInput` for a `url` that is not http(s)://host[:port]."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise errors.InvalidInput(
                f"{url!r} (--url, RATCHET_URL) is not an http(s) URL: write http://{url.rsplit('://', maxsplit=1)[-1]}",
                "url",
            )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *ids: str, **kwargs: Any) -> Any:
        """`path` with each `{}` replaced by the next of `ids` as one path segment (`path_of`)."""
        try:
            response = self.http.request(method, path_of(path, *ids), **kwargs)
        except httpx.TransportError as exc:
            raise errors.ServerUnreachable(
                f"cannot reach Ratchet at {self.http.base_url}: {exc}. Is `ratchet serve` running?"
            ) from exc
        raise_for_error(response)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, method: str, path: str, *ids: str, **kwargs: Any) -> Iterator[httpx.Response]:
        with self.http.stream(method, path_of(path, *ids), **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                raise_for_error(response)
            yield response


def path_of(template: str, *ids: str) -> str:
    """`template` with each `{}` replaced by the next id, percent-encoded as one whole path segment
    (RFC 3986 section 3.3): an id holding `/`, `?`, `#` or `%`, or one that is `.` or `..` (which
    clients and servers resolve as dot-segments, section 5.2.4), names itself and nothing else.
    `ratchet end-users erase ..` once deleted the project it was meant to erase a person of."""
    return template.format(*(_segment(i) for i in ids))


def _segment(value: str) -> str:
    if not value:
        raise errors.InvalidInput("an id in the path cannot be empty", "id")
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if set(value) <= {"."} else encoded


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    body: Any = {}
    try:
        body = response.json()
        message = body.get("message") or str(body)
    except ValueError:
        message = response.text[:500]
    cls = _BY_ERROR_CODE.get(body.get("code") if isinstance(body, dict) else None) or _BY_CODE.get(
        response.status_code, errors.RatchetError
    )
    if cls is errors.WriterSaturated:
        raise errors.WriterSaturated(message, float(response.headers.get("retry-after", "1")))
    if cls is errors.InvalidInput:
        raise errors.InvalidInput(
            f"{message} (HTTP {response.status_code})", body.get("field"), body.get("detail")
        )
    raise cls(f"{message} (HTTP {response.status_code})")
