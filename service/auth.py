"""API keys: minted once, stored as sha256, compared in constant time.

A key reads `rk_<id>_<secret>`; `<id>` is stored in the clear to find the row, the whole key
only as its sha256. The key ring is held in memory (the service is the only writer of the
keys table), so checking a key costs no database read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from datetime import datetime

import msgspec

from service.domain import Principal
from service.errors import Unauthenticated

ENV_ADMIN_KEY_ID = "env-admin"


class StoredKey(msgspec.Struct, frozen=True):
    """An API key as the database holds it."""

    id: str
    project: str | None
    sha256: str
    created_at: datetime
    revoked_at: datetime | None = None


def mint_key(project: str | None, now: datetime) -> tuple[str, StoredKey]:
    """A new key: the secret to show once, and what to store."""
    key_id = secrets.token_hex(6)
    secret = f"rk_{key_id}_{secrets.token_urlsafe(24)}"
    return secret, StoredKey(key_id, project, digest(secret), now)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """The known keys, checked without touching the database."""

    def __init__(self, keys: list[StoredKey], admin_key: str | None) -> None:
        self._keys = {k.id: k for k in keys}
        self._admin_digest = digest(admin_key) if admin_key else None
        self._lock = threading.Lock()

    def add(self, key: StoredKey) -> None:
        with self._lock:
            self._keys[key.id] = key

    def has_admin(self) -> bool:
        return self._admin_digest is not None or any(
            k.project is None and k.revoked_at is None for k in self._keys.values()
        )

    def authenticate(self, presented: str | None) -> Principal:
        """The principal for a presented key; raises `Unauthenticated` for a missing or unknown key."""
        if not presented:
            raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`")
        presented_digest = digest(presented)
        if self._admin_digest and hmac.compare_digest(presented_digest, self._admin_digest):
            return Principal(ENV_ADMIN_KEY_ID, None)
        parts = presented.split("_")
        stored = self._keys.get(parts[1]) if len(parts) >= 3 and parts[0] == "rk" else None
        if stored is None or not hmac.compare_digest(presented_digest, stored.sha256):
            raise Unauthenticated("unknown API key: check the key, or create one with `ratchet keys create`")
        if stored.revoked_at is not None:
            raise Unauthenticated(
                f"API key {stored.id} was revoked: create a new one with `ratchet keys create`"
            )
        return Principal(stored.id, stored.project)
