"""API keys against a real server: scopes, what an ingest key can never do, revoke, rotate, last
use, keys made before scopes existed, `/metrics` behind a key, and the `ratchet keys` CLI."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from service.auth import digest
from service.cli import main
from service.store.db import migrations
from tests.fixtures.server import RatchetProcess, wait_for
from tests.test_api_capture import chat_log


def new_project(server: RatchetProcess) -> tuple[str, httpx.Client]:
    name = f"k-{uuid.uuid4().hex[:8]}"
    return name, server.client(server.create_project(name))


def make_key(c: httpx.Client, project: str, scopes: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body = {**({"scopes": scopes} if scopes else {}), **extra}
    r = c.post(f"/v1/projects/{project}/keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_new_key_can_only_ingest_unless_given_more(ratchet_server: RatchetProcess) -> None:
    project, owner = new_project(ratchet_server)
    created = make_key(owner, project)
    assert created["scopes"] == ["ingest"]
    app = ratchet_server.client(created["api_key"])
    assert app.post("/v1/logs", json=chat_log("k-1", end_user="ann")).status_code == 202
    assert app.post("/v1/feedback", json={"log_id": "k-1", "end_user": "ann", "rating": 1}).status_code == 202
    assert app.post("/v1/logs", params={"project": project}, json=chat_log("k-2")).status_code == 202
    # It can never promote, roll back, train, or read logs (anyone's: its own users' too).
    for method, path in (
        ("POST", f"/v1/adapters/{project}@v1/promote"),
        ("POST", f"/v1/adapters/{project}@v1/rollback"),
        ("POST", f"/v1/projects/{project}/runs"),
        ("GET", "/v1/logs/k-1"),
        ("GET", f"/v1/projects/{project}/export"),
        ("GET", f"/v1/projects/{project}/stats"),
        ("POST", f"/v1/projects/{project}/keys"),
        ("DELETE", "/v1/logs/k-1"),
    ):
        r = app.request(method, path)
        assert (path, r.status_code, r.json()["code"]) == (path, 403, "forbidden")
    assert "`read` scope" in app.get("/v1/logs/k-1").json()["message"]
    assert owner.get("/v1/logs/k-1").status_code == 200  # the log is there all the same


def test_a_key_only_grants_what_it_holds(ratchet_server: RatchetProcess) -> None:
    project, owner = new_project(ratchet_server)
    manager = ratchet_server.client(make_key(owner, project, ["manage"])["api_key"])
    assert manager.post(f"/v1/projects/{project}/keys", json={"scopes": ["read"]}).status_code == 403
    assert manager.post(f"/v1/projects/{project}/keys", json={"scopes": ["manage"]}).status_code == 201
    reader = make_key(owner, project, ["read"])
    assert manager.post(f"/v1/keys/{reader['key_id']}/revoke").status_code == 403  # holds no read
    assert manager.post(f"/v1/keys/{reader['key_id']}/rotate").status_code == 403
    assert owner.post("/v1/keys", json={"all_projects": True, "scopes": ["read"]}).status_code == 403
    r = owner.post(f"/v1/projects/{project}/keys", json={"scopes": ["admin"]})
    assert (r.status_code, r.json()["field"]) == (422, "scopes")
    listed = owner.get("/v1/keys").json()
    assert {k["id"] for k in listed} >= {reader["key_id"]} and all(k["project"] == project for k in listed)
    assert all("api_key" not in k and "sha256" not in k for k in listed)
    assert all(reader["api_key"] not in str(v) for k in listed for v in k.values())


def test_revoke_and_rotate(ratchet_server: RatchetProcess) -> None:
    project, owner = new_project(ratchet_server)
    doomed = make_key(owner, project, ["ingest"], name="old widget")
    assert ratchet_server.client(doomed["api_key"]).post("/v1/logs", json=chat_log()).status_code == 202
    r = owner.post(f"/v1/keys/{doomed['key_id']}/revoke")
    assert r.status_code == 200 and r.json()["active"] is False
    r = ratchet_server.client(doomed["api_key"]).post("/v1/logs", json=chat_log())
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated") and "revoked" in r.json()["message"]

    # Rotation with a grace period: both work, then only the new one.
    old = make_key(owner, project, ["ingest", "read"], name="widget")
    r = owner.post(f"/v1/keys/{old['key_id']}/rotate", json={"grace_seconds": 2})
    assert r.status_code == 201, r.text
    new = r.json()["key"]
    assert (new["scopes"], new["name"], r.json()["replaced_key_id"]) == (
        ["read", "ingest"],
        "widget",
        old["key_id"],
    )
    for secret in (old["api_key"], new["api_key"]):
        assert ratchet_server.client(secret).get(f"/v1/projects/{project}/stats").status_code == 200
    # Rotating the old one again, in its grace, would move its end and mint a second replacement.
    again = owner.post(f"/v1/keys/{old['key_id']}/rotate", json={"grace_seconds": 604800})
    assert again.status_code == 409 and "already rotated" in again.json()["message"], again.text
    wait_for(
        lambda: ratchet_server.client(old["api_key"]).get(f"/v1/projects/{project}/stats").status_code == 401,
        10,
        "the rotated key to expire",
    )
    assert ratchet_server.client(new["api_key"]).get(f"/v1/projects/{project}/stats").status_code == 200
    # Without a grace period the old key stops at once.
    r = owner.post(f"/v1/keys/{new['key_id']}/rotate")
    assert ratchet_server.client(new["api_key"]).get(f"/v1/projects/{project}/stats").status_code == 401
    assert (
        ratchet_server.client(r.json()["key"]["api_key"]).get(f"/v1/projects/{project}/stats").status_code
        == 200
    )
    kinds = [e["kind"] for e in owner.get(f"/v1/projects/{project}/events").json()]
    assert kinds.count("key_rotated") == 2 and kinds.count("key_revoked") == 1 and "key_created" in kinds
    assert owner.post(f"/v1/keys/{new['key_id']}/rotate").status_code == 409  # already ended
    _, other = new_project(ratchet_server)
    assert other.post(f"/v1/keys/{old['key_id']}/revoke").status_code == 404  # not its key


def _last_used(c: httpx.Client, key_id: str) -> str | None:
    return next(k["last_used_at"] for k in c.get("/v1/keys").json() if k["id"] == key_id)  # type: ignore[no-any-return]


def test_last_use_is_kept_in_memory_and_written_now_and_then(start_ratchet: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "used"
    server = start_ratchet(data_dir=data_dir, env={"RATCHET_KEY_USE_FLUSH_SECONDS": "3600"})
    owner_key = server.create_project("used")
    key = make_key(server.client(owner_key), "used")
    assert _last_used(server.client(owner_key), key["key_id"]) is None
    assert server.client(key["api_key"]).post("/v1/logs", json=chat_log()).status_code == 202
    assert _last_used(server.client(owner_key), key["key_id"]) is not None  # noted in memory
    server.kill()  # nothing was written per request: the use is gone with the process
    server = start_ratchet(data_dir=data_dir, env={"RATCHET_KEY_USE_FLUSH_SECONDS": "1"})
    assert _last_used(server.client(owner_key), key["key_id"]) is None
    assert server.client(key["api_key"]).post("/v1/logs", json=chat_log()).status_code == 202
    used = _last_used(server.client(owner_key), key["key_id"])
    time.sleep(2.5)  # the flush job writes it
    server.kill()
    server = start_ratchet(data_dir=data_dir)
    assert _last_used(server.client(owner_key), key["key_id"]) == used


def test_keys_made_before_scopes_existed_keep_what_they_could_do(start_ratchet: Any, tmp_path: Path) -> None:
    """A data directory from before migration 005 (key scopes): its project key still ingests, reads and
    manages (its old powers), its admin key is still admin."""
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    con = duckdb.connect(str(data_dir / "ratchet.duckdb"))
    con.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT now())"
    )
    for version, name, sql in migrations()[:3]:
        con.execute(sql)
        con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
    project_key, admin_key = "rk_0a0a0a0a0a0a_oldprojectsecret", "rk_0b0b0b0b0b0b_oldadminsecret"
    con.execute("INSERT INTO projects (name, created_at) VALUES ('legacy', ?)", [datetime(2026, 1, 1)])
    con.execute(
        "INSERT INTO api_keys (id, project, sha256, created_at) VALUES (?, 'legacy', ?, ?), (?, NULL, ?, ?)",
        ["0a0a0a0a0a0a", digest(project_key), datetime(2026, 1, 1),
         "0b0b0b0b0b0b", digest(admin_key), datetime(2026, 1, 1)],
    )  # fmt: skip
    con.close()
    server = start_ratchet(data_dir=data_dir)
    legacy = server.client(project_key)
    assert legacy.post("/v1/logs", json=chat_log("old-1")).status_code == 202  # ingest
    assert legacy.get("/v1/logs/old-1").status_code == 200  # read
    assert (
        legacy.patch("/v1/projects/legacy/settings", json={"canary_fraction": 0.1}).status_code == 200
    )  # manage
    assert legacy.post("/v1/projects/legacy/keys", json={"scopes": ["read"]}).status_code == 201
    listed = {k["id"]: k["scopes"] for k in legacy.get("/v1/keys").json()}
    assert sorted(listed["0a0a0a0a0a0a"]) == ["ingest", "manage", "read"]
    old_admin = server.client(admin_key)
    assert old_admin.post("/v1/projects", json={"name": "newer"}).status_code == 201
    assert {k["id"]: k["scopes"] for k in old_admin.get("/v1/keys").json()}["0b0b0b0b0b0b"] == ["admin"]


def test_metrics_can_require_an_all_projects_read_key(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_METRICS_REQUIRE_KEY": "true"})
    owner = server.client(server.create_project("watched"))
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert owner.get("/metrics").status_code == 403  # a project key must not see other projects' names
    r = server.client().post(
        "/v1/keys", json={"all_projects": True, "scopes": ["read"], "name": "prometheus"}
    )
    scrape = server.client(r.json()["api_key"])
    assert scrape.get("/metrics").status_code == 200 and 'project="watched"' in scrape.get("/metrics").text
    assert scrape.post("/v1/projects", json={"name": "nope"}).status_code == 403
    assert scrape.post("/v1/logs", params={"project": "watched"}, json=chat_log()).status_code == 403


def test_the_last_admin_key_cannot_be_revoked(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_ADMIN_KEY": ""})
    generated = re.search(r"admin API key \(shown once, keep it\): (\S+)", server.log_tail()).group(1)  # type: ignore[union-attr]
    admin = server.client(generated)
    key_id = generated.split("_")[1]
    r = admin.post(f"/v1/keys/{key_id}/revoke")
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    second = admin.post("/v1/keys", json={"all_projects": True, "scopes": ["admin"]}).json()
    assert admin.post(f"/v1/keys/{key_id}/revoke").status_code == 200
    assert server.client(second["api_key"]).get("/v1/projects").status_code == 200


def test_cli_keys_create_list_rotate_revoke(
    ratchet_server: RatchetProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    project, _ = new_project(ratchet_server)
    base = ["--url", ratchet_server.url, "--key", ratchet_server.admin_key]
    assert main([*base, "keys", "create", "--project", project, "--scope", "ingest", "--name", "web"]) == 0
    out = capsys.readouterr().out
    key_id, secret = re.search(r"API key (\w+) for .*\n\(shown once, keep it\): (\S+)", out).groups()  # type: ignore[union-attr]
    assert httpx.post(f"{ratchet_server.url}/v1/logs", json=chat_log(),
                      headers={"Authorization": f"Bearer {secret}"}).status_code == 202  # fmt: skip
    assert main([*base, "keys", "list", "--project", project]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "web" in listing and secret not in listing
    assert main([*base, "keys", "rotate", key_id, "--grace", "60"]) == 0
    assert f"replaces {key_id}" in capsys.readouterr().out
    assert main([*base, "keys", "revoke", key_id]) == 0
    assert f"key {key_id} revoked" in capsys.readouterr().out
    assert main([*base, "keys", "create"]) == 1  # neither --project nor --all-projects
    assert "--all-projects" in capsys.readouterr().err
