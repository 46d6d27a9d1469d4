"""Domain errors. Each says what went wrong and what to do next.

HTTP status codes are decided in one table (`service/api/errors.py`); the CLI maps the same
classes to one-line messages and a non-zero exit.
"""

from __future__ import annotations

from typing import Any


class RatchetError(Exception):
    """Base of every error Ratchet raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(RatchetError):
    """The project, log, run or adapter does not exist (or is not visible to this key)."""


class Conflict(RatchetError):
    """The request clashes with the current state (a name taken, a run already going)."""


class InvalidInput(RatchetError):
    """A field holds a value Ratchet cannot use."""

    def __init__(self, message: str, field: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.detail = detail


class NestedTooDeeply(InvalidInput):
    """JSON nested deeper than the decoders' recursion allows: Python's limit of 1,000 frames,
    less the server's own stack, so a few hundred levels. No OpenAI body comes near it; one that
    does is refused whole (its items cannot be told apart without reading it)."""

    def __init__(self, where: str = "body") -> None:
        super().__init__(
            f"the JSON of the {where} is nested too deeply to read (hundreds of levels of arrays or "
            "objects): flatten it",
            where,
        )


class MalformedPayload(InvalidInput):
    """A body in a foreign wire format (OTLP) that cannot be read at all: wrong content type or
    encoding, corrupt compression, not the expected message. OTLP answers these with 400."""


class BodyTooLarge(RatchetError):
    """A body over its size limit once its `Content-Encoding` is undone (Litestar refuses one over
    the limit as sent). Answered 413 like that one."""


class InvalidFile(InvalidInput):
    """An uploaded file that cannot be used as it is: `detail` lists the bad lines (line number,
    field, what to fix). OpenAI's files API answers these with 400."""


class Unauthenticated(RatchetError):
    """No API key, or one Ratchet does not know."""


class Forbidden(RatchetError):
    """The key is valid but may not do this (another project's data, admin-only routes)."""


class WriterSaturated(RatchetError):
    """The write queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(RatchetError):
    """The database cannot be written (disk full, file locked by another process, closed)."""


class StoreOutOfMemory(StoreUnavailable):
    """A query needed more memory than `database.memory_limit_mib` allows, even spilling to disk."""


class ArchiveUnavailable(StoreUnavailable):
    """An archive file the id look-up names cannot be read (removed, or its storage is away)."""


class AdapterLoadFailed(RatchetError):
    """An adapter could not be loaded on the vLLM replicas (refused by a check or by vLLM, no room,
    replicas unreachable); the champion keeps serving."""


class ServerUnreachable(RatchetError):
    """The CLI cannot reach the Ratchet server (not running, wrong `--url`)."""


class UpstreamUnavailable(RatchetError):
    """vLLM (or another model endpoint) cannot be reached or answered with a server error."""


class UpstreamRefused(UpstreamUnavailable):
    """No connection to a vLLM replica could be made (down, restarting): nothing was sent, so the
    request may go to another replica."""


class UpstreamTimeout(RatchetError):
    """vLLM did not answer in time."""


class UpstreamRejected(RatchetError):
    """vLLM refused the request as invalid (e.g. more tokens than the model allows)."""

    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
