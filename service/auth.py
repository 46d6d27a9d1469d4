"""API keys: minted once, stored as sha256, compared in constant time, each with scopes.

A key reads `rk_<id>_<secret>`; `<id>` is stored in the clear to find the row, the whole key
only as its sha256. The key ring is held in memory (the service is the only writer of the
keys table), so checking a key costs no database read; when each key was last used is kept in
memory too and written to the database by a scheduler job, never on the request path.

Scopes (a key holds one or more):
- `ingest`: `POST /v1/logs`, `POST /v1/feedback` and the gateway. What an app, or a browser page
  where thumbs are clicked, needs; it cannot read anything back, train, promote or roll back.
- `read`: logs, stats, exports, runs, adapters, rollouts, events, settings.
- `manage`: start runs, promote and roll back, keys, settings, deleting logs and end users.
- `admin`: everything, for every project (create and delete projects, register adapters).
A key bound to no project ("all projects") with `read` is what a Prometheus scrape or a
dashboard needs. A key can only mint keys with scopes it holds itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec

from service.domain import Principal
from service.errors import Forbidden, Unauthenticated

ENV_ADMIN_KEY_ID = "env-admin"
Scope = Literal["admin", "manage", "read", "ingest"]
SCOPES: tuple[Scope, ...] = ("admin", "manage", "read", "ingest")
PROJECT_SCOPES: tuple[Scope, ...] = ("ingest", "read", "manage")
# A project's first key (from `POST /v1/projects`) is its owner's: everything in the project.
OWNER_SCOPES: tuple[Scope, ...] = PROJECT_SCOPES
# Any other new project key, unless scopes are given: the least a key can do (an app's key).
DEFAULT_SCOPES: tuple[Scope, ...] = ("ingest",)
ADMIN_SCOPES: tuple[Scope, ...] = ("admin",)


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as the database holds it (never the secret)."""

    id: str
    project: str | None
    sha256: str
    created_at: datetime
    revoked_at: datetime | None = None
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    name: str | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    rotated_from: str | None = None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def mint_key(
    project: str | None,
    now: datetime,
    scopes: Iterable[str] | None = None,
    *,
    name: str | None = None,
    rotated_from: str | None = None,
) -> tuple[str, StoredKey]:
    """A new key: the secret to show once, and what to store. Admin keys (no project) get
    `admin` unless scopes are given; project keys get `DEFAULT_SCOPES`."""
    key_id = secrets.token_hex(6)
    secret = f"rk_{key_id}_{secrets.token_urlsafe(24)}"
    chosen = tuple(scopes) if scopes is not None else (ADMIN_SCOPES if project is None else DEFAULT_SCOPES)
    stored = StoredKey(
        id=key_id, project=project, sha256=digest(secret), created_at=now, scopes=normalise_scopes(chosen),
        name=name, rotated_from=rotated_from,
    )  # fmt: skip
    return secret, stored


def normalise_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes in the canonical order, without repeats."""
    given = set(scopes)
    return tuple(s for s in SCOPES if s in given)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def authorize(principal: Principal, scope: Scope) -> None:
    """Raise `Forbidden` unless the principal holds `scope` (or `admin`)."""
    if scope in principal.scopes or "admin" in principal.scopes:
        return
    held = ", ".join(sorted(principal.scopes)) or "none"
    # `admin` is only for all-projects keys: a project key can never hold it.
    where = f"--project {principal.project}" if principal.project and scope != "admin" else "--all-projects"
    raise Forbidden(
        f"this needs a key with the `{scope}` scope; key {principal.key_id} has: {held}. "
        f"Create one with `ratchet keys create {where} --scope {scope}`"
    )


class KeyRing:
    """The known keys, checked without touching the database."""

    def __init__(self, keys: list[StoredKey], admin_key: str | None) -> None:
        self._keys = {k.id: k for k in keys}
        self._admin_digest = digest(admin_key) if admin_key else None
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}

    def add(self, key: StoredKey) -> None:
        with self._lock:
            self._keys[key.id] = key

    def get(self, key_id: str) -> StoredKey | None:
        return self._keys.get(key_id)

    def stored(self) -> list[StoredKey]:
        return list(self._keys.values())

    def drop_project(self, project: str) -> None:
        """Forget every key of a deleted project: they stop working at once."""
        with self._lock:
            self._keys = {k: v for k, v in self._keys.items() if v.project != project}

    def has_admin(self) -> bool:
        return self._admin_digest is not None or any(
            "admin" in k.scopes and k.revoked_at is None for k in self._keys.values()
        )

    def authenticate(self, presented: str | None) -> Principal:
        """The principal for a presented key; raises `Unauthenticated` for a missing, unknown,
        revoked or expired key. Notes the key as used (in memory)."""
        if not presented:
            raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`")
        presented_digest = digest(presented)
        if self._admin_digest and hmac.compare_digest(presented_digest, self._admin_digest):
            return Principal(ENV_ADMIN_KEY_ID, None, frozenset(ADMIN_SCOPES))
        parts = presented.split("_")
        stored = self._keys.get(parts[1]) if len(parts) >= 3 and parts[0] == "rk" else None
        if stored is None or not hmac.compare_digest(presented_digest, stored.sha256):
            raise Unauthenticated("unknown API key: check the key, or create one with `ratchet keys create`")
        if stored.revoked_at is not None:
            raise Unauthenticated(
                f"API key {stored.id} was revoked: create a new one with `ratchet keys create`"
            )
        now = time.time()
        if stored.expires_at is not None and now >= _epoch(stored.expires_at):
            raise Unauthenticated(
                f"API key {stored.id} expired after it was rotated: use the key that replaced it"
            )
        self._used[stored.id] = now
        return Principal(stored.id, stored.project, frozenset(stored.scopes))

    def last_used(self, key_id: str) -> float | None:
        """Epoch seconds of the key's last use since the last `take_usage`, if any."""
        return self._used.get(key_id)

    def note_use(self, key_id: str, at: float) -> None:
        """Note a use at `at` (epoch seconds) unless a later one is already noted."""
        if at > self._used.get(key_id, 0.0):
            self._used[key_id] = at

    def take_usage(self) -> dict[str, float]:
        """When each key was last used since the previous call (epoch seconds); starts afresh."""
        used, self._used = self._used, {}
        return used


def _epoch(naive_utc: datetime) -> float:
    return (naive_utc - _EPOCH).total_seconds()


_EPOCH = datetime(1970, 1, 1)
