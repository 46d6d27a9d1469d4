"""Langfuse-compatible scores on a real server: each data type lands as the feedback it stands for,
Basic auth as Langfuse's SDKs send it, a re-sent id is a duplicate, DELETE withdraws.

Bodies follow Langfuse's `CreateScoreRequest` (camelCase); the Langfuse SDK itself is not a dev
dependency, so they are posted with httpx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.server import RatchetProcess


@pytest.fixture(scope="module")
def scored(ratchet_server: RatchetProcess) -> tuple[RatchetProcess, str]:
    key = ratchet_server.create_project("lf-app")
    logs = [
        {"id": f"gen-{i}", "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
         "response": {"choices": [{"message": {"role": "assistant", "content": f"a{i}"}, "finish_reason": "stop"}]}}
        for i in range(6)
    ]  # fmt: skip
    with ratchet_server.client(key) as c:
        assert c.post("/v1/logs", json={"logs": logs}).status_code == 202
    return ratchet_server, key


def post(server: RatchetProcess, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/api/public/scores", json=body, auth=("pk-lf-anything", key))


def feedback(server: RatchetProcess, key: str, log_id: str) -> dict[str, Any]:
    with server.client(key) as c:
        (fb,) = c.get(f"/v1/logs/{log_id}").json()["feedback"]
    return dict(fb)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"traceId": "gen-0", "name": "quality", "value": 0.75, "comment": "ok"},
            {"score": 0.75, "comment": "ok"},
        ),
        ({"traceId": "gen-1", "name": "thumb", "value": 0, "dataType": "BOOLEAN"}, {"rating": -1}),
        (
            {"observationId": "gen-2", "name": "verdict", "value": "correct", "dataType": "CATEGORICAL"},
            {"rating": 1},
        ),
        (
            {"traceId": "gen-3", "name": "tone", "value": "formal"},
            {"comment": "tone: formal", "rating": None},
        ),
        (
            {"traceId": "gen-4", "name": "note", "value": "too long", "dataType": "TEXT"},
            {"comment": "too long"},
        ),
        (
            {"traceId": "gen-5", "name": "fix", "value": "a5, shorter", "dataType": "CORRECTION"},
            {"correction": "a5, shorter"},
        ),
    ],
)
def test_each_data_type_is_the_feedback_it_stands_for(
    scored: tuple[RatchetProcess, str], body: dict[str, Any], expected: dict[str, Any]
) -> None:
    server, key = scored
    r = post(server, key, body)
    assert r.status_code == 200, r.text
    fb = feedback(server, key, body.get("observationId") or body["traceId"])
    assert fb["id"] == r.json()["id"]
    assert {k: fb[k] for k in expected} == expected


def test_resent_id_is_a_duplicate_and_delete_withdraws(scored: tuple[RatchetProcess, str]) -> None:
    server, key = scored
    body = {"id": "lf-score-1", "traceId": "gen-1", "name": "thumb", "value": 1, "dataType": "BOOLEAN"}
    assert post(server, key, body).json() == {"id": "lf-score-1"}
    assert post(server, key, body).json() == {"id": "lf-score-1"}
    assert feedback(server, key, "gen-1")["rating"] == 1
    r = httpx.delete(f"{server.url}/api/public/scores/lf-score-1", auth=("pk", key))
    assert r.status_code == 204, r.text
    assert feedback(server, key, "gen-1")["rating"] is None
    assert httpx.delete(f"{server.url}/api/public/scores/nope", auth=("pk", key)).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"traceId": "gen-0", "name": "q", "value": 4}, "value"),  # NUMERIC outside [0, 1]
        ({"traceId": "gen-0", "name": "q", "value": "maybe", "dataType": "BOOLEAN"}, "value"),
        ({"name": "q", "value": 1}, "traceId"),
        ({"traceId": "gen-0", "value": 1}, "name"),
    ],
)
def test_bad_scores_are_422_naming_the_field(
    scored: tuple[RatchetProcess, str], body: dict[str, Any], field: str
) -> None:
    server, key = scored
    r = post(server, key, body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_another_projects_key_cannot_score_or_delete(scored: tuple[RatchetProcess, str]) -> None:
    server, key = scored
    other = server.create_project("lf-other")
    post(server, key, {"id": "lf-private", "traceId": "gen-2", "name": "v", "value": "good"})
    assert httpx.delete(f"{server.url}/api/public/scores/lf-private", auth=("pk", other)).status_code == 404
    assert httpx.post(f"{server.url}/api/public/scores", json={}, auth=("pk", "wrong")).status_code == 401
