"""The `schema_version` every file and record that crosses a process boundary carries.

A reader checks it before anything else: a newer writer's file (new fields, a changed meaning)
is refused with `SchemaVersionError` naming the file and both versions, never read as if it
were the old format or failed later as a missing key.
"""

from __future__ import annotations

import msgspec


class SchemaVersionError(ValueError):
    """A file or record has a schema version its reader does not read."""

    def __init__(self, what: str, found: object, reads: int) -> None:
        super().__init__(
            f"{what} has schema_version {found!r}; this version of Ratchet reads {reads} or older"
        )
        self.what, self.found, self.reads = what, found, reads


class _Versioned(msgspec.Struct):
    schema_version: int | None = None


def check_version(raw: bytes | str, what: str, reads: int, *, missing: int = 1) -> int:
    """The `schema_version` of the JSON object `raw` (`missing` when it has none), read before the
    whole object so that a newer file is refused as such rather than for a field it added.
    `SchemaVersionError` naming `what` when it is above `reads` or not a positive integer;
    `msgspec.DecodeError`/`ValidationError` when `raw` is no JSON object."""
    found = msgspec.json.decode(raw, type=_Versioned).schema_version
    version = missing if found is None else found
    if not 1 <= version <= reads:
        raise SchemaVersionError(what, found, reads)
    return version
