"""The service's clock: the store keeps naive UTC datetimes, and every module reads the time here."""

from __future__ import annotations

from datetime import UTC, datetime

from service.errors import InvalidInput


def utcnow() -> datetime:
    """Now, as the naive UTC datetime the store keeps."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_utc(value: datetime | float | None, default: datetime) -> datetime:
    """`value` as a naive UTC datetime (an aware one converted, a naive one taken as UTC, a number
    as Unix seconds); `default` when it is None."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def parse_instant(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 date or date-time from a query string as a naive UTC datetime (a date alone is
    its midnight UTC, `Z` or an offset converted); None for None.

    Raises InvalidInput naming `field` for any other text."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"`{field}` is not an ISO 8601 date or date-time (e.g. 2026-11-01 or 2026-11-01T09:30:00Z)", field
        ) from None
    return to_utc(parsed, parsed)
