"""The service's clock: the store keeps naive UTC datetimes, and every module reads the time here."""

from __future__ import annotations

from datetime import UTC, datetime


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
