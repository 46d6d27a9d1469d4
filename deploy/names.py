"""Served adapter names: `project@vN`, immutable, one per trained adapter version.

A name is never reloaded with other weights: vLLM serves stale prefix-cache blocks after an
in-place reload (#42125), so every version gets a fresh name. The base model's served name
(e.g. `tiny`) has no `@` and is never an adapter name.
"""

from __future__ import annotations

import re

import msgspec

# Project names follow the service's rule (lower-case letters, digits, dashes; 64 at most).
_SERVED_NAME = re.compile(r"^(?P<project>[a-z0-9][a-z0-9\-]{0,63})@v(?P<version>0|[1-9][0-9]{0,8})$")


class InvalidServedName(ValueError):
    """A string that is not `project@vN`."""


class ServedName(msgspec.Struct, frozen=True):
    """The parts of `project@vN`."""

    project: str
    version: int

    def __str__(self) -> str:
        return f"{self.project}@v{self.version}"


def served_name(project: str, version: int) -> str:
    """`project@vN`; raises `InvalidServedName` for a project or version that cannot form one."""
    name = f"{project}@v{version}"
    parse_served_name(name)
    return name


def parse_served_name(name: str) -> ServedName:
    """Split `project@vN`; raises `InvalidServedName` naming the expected form."""
    match = _SERVED_NAME.match(name)
    if match is None:
        raise InvalidServedName(
            f"{name!r} is not an adapter name: expected project@vN "
            "(project: lower-case letters, digits, dashes; N: a version number)"
        )
    return ServedName(match["project"], int(match["version"]))


def is_adapter_name(name: str) -> bool:
    """True for `project@vN`, False for anything else (such as the base model's served name)."""
    return _SERVED_NAME.match(name) is not None
