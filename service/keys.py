"""Managing API keys: create, list, revoke, rotate; and writing down when each was last used.

Rules (a caller acts only on what it could do itself):
- a project key sees and manages its own project's keys; an all-projects key every key;
- a key grants, revokes or rotates only keys whose scopes it holds itself (admin: any), so a
  `manage` key cannot mint a `read` key, and nothing but an admin key touches an admin key;
- `admin` belongs to all-projects keys, and only an admin key creates all-projects keys;
- the last admin key cannot be revoked when no admin key is configured (nobody could get back in).

Rotation follows Stripe's "roll key" and GitHub's "regenerate token": the replacement has the same
project, scopes and name; the old secret stops working at once or after a grace period (at most
7 days, as Stripe allows) so deployed clients can switch without an outage. The replacement gets
a new key id, not a new secret under the old id: the key id is how a request finds its row, so
each secret keeps its own last-used time, and during the grace period that time tells whether
anything still uses the old secret.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from service.auth import ENV_ADMIN_KEY_ID, StoredKey, mint_key, normalise_scopes
from service.clock import utcnow
from service.domain import KeyCreated, KeyIn, KeyOut, KeyRotated, KeyRotateIn, Principal
from service.errors import Conflict, Forbidden, InvalidInput, NotFound
from service.runtime import Runtime
from service.store.serving import Event


def create_key(runtime: Runtime, principal: Principal, project: str | None, data: KeyIn) -> KeyCreated:
    """A new key for `project` (None: for every project), shown once. `project` has already been
    scoped to what the caller may touch."""
    if project is None and not principal.is_admin:
        raise Forbidden("only an admin key can create a key for all projects")
    if project is not None:
        runtime.queries.get_project(project)
    scopes = normalise_scopes(data.scopes) if data.scopes else None
    if scopes and "admin" in scopes and project is not None:
        raise InvalidInput(
            "`admin` is for all-projects keys; a project key takes ingest, read, manage", "scopes"
        )
    secret, key = mint_key(project, utcnow(), scopes, name=data.name)
    _check_grant(principal, key.scopes)
    runtime.queries.add_key(key, _event(key, "key_created", principal))
    runtime.keys.add(key)
    return KeyCreated(project, key.id, secret, list(key.scopes), key.name)


def list_keys(runtime: Runtime, principal: Principal, project: str | None) -> list[KeyOut]:
    """Keys the caller may see (of `project`, when given), oldest first. Never a secret."""
    now = utcnow()
    return [
        _out(runtime, k, now)
        for k in sorted(runtime.keys.stored(), key=lambda k: (k.created_at, k.id))
        if _visible(principal, k) and (project is None or k.project == project)
    ]


def revoke_key(runtime: Runtime, principal: Principal, key_id: str) -> KeyOut:
    """Revoke a key at once (also a rotated one still in its grace period). Revoking twice is fine."""
    key = _find(runtime, principal, key_id)
    _check_grant(principal, key.scopes)
    now = utcnow()
    if "admin" in key.scopes and not runtime.settings.admin_key:
        others = [
            k for k in runtime.keys.stored() if "admin" in k.scopes and k.active(now) and k.id != key.id
        ]
        if not others:
            raise Conflict(
                f"key {key.id} is the last admin key: create another admin key first "
                "(`ratchet keys create --all-projects --scope admin`) or set RATCHET_ADMIN_KEY"
            )
    if key.revoked_at is None:
        runtime.queries.revoke_key(key.id, now, _event(key, "key_revoked", principal, at=now))
        key = _replace(key, revoked_at=now)
        runtime.keys.add(key)
    return _out(runtime, key, now)


def rotate_key(runtime: Runtime, principal: Principal, key_id: str, data: KeyRotateIn) -> KeyRotated:
    """A replacement key (same project, scopes and name); the old one ends now or after the grace."""
    old = _find(runtime, principal, key_id)
    _check_grant(principal, old.scopes)
    now = utcnow()
    if not old.active(now):
        raise Conflict(f"key {old.id} is revoked or expired: create a new key instead")
    if old.expires_at is not None:  # only a rotation sets an end: its replacement exists already
        raise Conflict(
            f"key {old.id} was already rotated and stops at {old.expires_at:%Y-%m-%d %H:%M:%S} UTC: "
            "rotate its replacement, or revoke this one to end it now"
        )
    secret, new = mint_key(old.project, now, old.scopes, name=old.name, rotated_from=old.id)
    ends = now + timedelta(seconds=data.grace_seconds)
    event = _event(new, "key_rotated", principal, at=now, replaced=old.id, grace_seconds=data.grace_seconds)
    runtime.queries.rotate_key(old.id, new, ends, data.grace_seconds == 0, event)
    runtime.keys.add(new)
    runtime.keys.add(_replace(old, expires_at=ends, revoked_at=now if data.grace_seconds == 0 else None))
    return KeyRotated(KeyCreated(new.project, new.id, secret, list(new.scopes), new.name), old.id, ends)


def flush_key_use(runtime: Runtime) -> int:
    """Job body: write the last-use times noted in memory since the previous flush; returns how
    many keys. On a failure the times go back to memory for the next flush."""
    used = runtime.keys.take_usage()
    stamps = {key_id: datetime(1970, 1, 1) + timedelta(seconds=at) for key_id, at in used.items()}
    try:
        runtime.queries.record_key_use(stamps)
    except Exception:
        for key_id, at in used.items():
            runtime.keys.note_use(key_id, at)
        raise
    for key_id, at in stamps.items():
        key = runtime.keys.get(key_id)
        if key is not None and (key.last_used_at is None or key.last_used_at < at):
            runtime.keys.add(_replace(key, last_used_at=at))
    return len(stamps)


def _visible(principal: Principal, key: StoredKey) -> bool:
    return principal.project is None or key.project == principal.project


def _find(runtime: Runtime, principal: Principal, key_id: str) -> StoredKey:
    key = runtime.keys.get(key_id)
    if key is None or not _visible(principal, key):
        hint = (
            " (the configured RATCHET_ADMIN_KEY is changed in the settings)"
            if key_id == ENV_ADMIN_KEY_ID
            else ""
        )
        raise NotFound(f"no key {key_id!r}: see `ratchet keys list`{hint}")
    return key


def _check_grant(principal: Principal, scopes: tuple[str, ...]) -> None:
    if principal.is_admin:
        return
    missing = [s for s in scopes if s not in principal.scopes]
    if missing:
        raise Forbidden(
            f"key {principal.key_id} cannot act on a key with scopes it lacks itself ({', '.join(missing)})"
        )


def _event(key: StoredKey, kind: str, by: Principal, at: datetime | None = None, **extra: object) -> Event:
    detail = {"key_id": key.id, "scopes": list(key.scopes), "by": by.key_id, **extra}
    return Event(at or key.created_at, key.project, None, kind, detail)


def _out(runtime: Runtime, key: StoredKey, now: datetime) -> KeyOut:
    last = key.last_used_at
    in_memory = runtime.keys.last_used(key.id)
    if in_memory is not None:
        noted = datetime(1970, 1, 1) + timedelta(seconds=in_memory)
        last = noted if last is None or noted > last else last
    return KeyOut(
        key.id, key.project, list(key.scopes), key.name, key.created_at, last, key.revoked_at, key.expires_at,
        key.rotated_from, key.active(now),
    )  # fmt: skip


def _replace(key: StoredKey, **changes: object) -> StoredKey:
    return msgspec.structs.replace(key, **changes)
