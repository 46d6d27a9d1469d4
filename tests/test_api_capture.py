"""The capture API against a real server process on a real DuckDB file."""

from __future__ import annotations

import gzip
import json
import uuid
from typing import Any

import httpx
import jsonschema
import pytest

from tests.fixtures.server import RatchetProcess


def chat_log(log_id: str | None = None, answer: str = "Paris", **extra: Any) -> dict[str, Any]:
    log: dict[str, Any] = {
        "request": {"model": "demo", "messages": [{"role": "user", "content": "Capital of France?"}]},
        "response": {
            "id": "x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
        },
        **extra,
    }
    if log_id:
        log["id"] = log_id
    return log


@pytest.fixture
def project(ratchet_server: RatchetProcess) -> tuple[str, httpx.Client]:
    name = f"p-{uuid.uuid4().hex[:8]}"
    key = ratchet_server.create_project(name)
    return name, ratchet_server.client(key)


def test_same_log_id_twice_is_one_row(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    first = c.post("/v1/logs", json=chat_log("same-1"))
    again = c.post("/v1/logs", json=chat_log("same-1", answer="changed"))
    assert first.status_code == again.status_code == 202
    assert first.json()["results"][0]["status"] == "accepted"
    assert again.json()["results"][0]["status"] == "duplicate"
    # The first write wins; the retry changed nothing.
    assert c.get("/v1/logs/same-1").json()["response"]["choices"][0]["message"]["content"] == "Paris"
    assert c.get(f"/v1/projects/{name}/stats").json()["logs"] == 1


def test_batch_with_duplicates_inside_and_generated_ids(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    r = c.post("/v1/logs", json={"logs": [chat_log("b-1"), chat_log("b-1"), chat_log(), chat_log()]})
    assert r.status_code == 202
    statuses = [x["status"] for x in r.json()["results"]]
    assert statuses == ["accepted", "duplicate", "accepted", "accepted"]
    generated = [x["id"] for x in r.json()["results"][2:]]
    assert len(set(generated)) == 2 and all(c.get(f"/v1/logs/{i}").status_code == 200 for i in generated)
    assert c.get(f"/v1/projects/{name}/stats").json()["logs"] == 3


def test_batch_partial_failure_reports_each_item(project: tuple[str, httpx.Client]) -> None:
    _, c = project
    bad = {"request": {"messages": []}, "response": {"choices": []}}
    r = c.post("/v1/logs", json={"logs": [chat_log("ok-1"), bad, chat_log("ok-2")]})
    assert r.status_code == 202
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["results"][1]["status"] == "rejected"
    assert "request.messages" in body["results"][1]["error"]
    assert c.get("/v1/logs/ok-2").status_code == 200


def test_changed_thumb_replaces_the_previous_one(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    c.post("/v1/logs", json=chat_log("thumb-1"))
    assert (
        c.post("/v1/feedback", json={"log_id": "thumb-1", "end_user": "ann", "rating": 1}).status_code == 202
    )
    assert (
        c.post("/v1/feedback", json={"log_id": "thumb-1", "end_user": "ann", "rating": -1}).status_code == 202
    )
    c.post("/v1/feedback", json={"log_id": "thumb-1", "end_user": "bob", "rating": 1})
    feedback = c.get("/v1/logs/thumb-1").json()["feedback"]
    assert sorted((f["end_user"], f["rating"]) for f in feedback) == [("ann", -1), ("bob", 1)]
    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert (stats["thumbs_up"], stats["thumbs_down"]) == (1, 1)


def test_feedback_before_its_log_is_kept_and_joins_later(project: tuple[str, httpx.Client]) -> None:
    _, c = project
    r = c.post("/v1/feedback", json={"log_id": "late-1", "rating": 1, "correction": "PARIS"})
    assert r.status_code == 202
    assert c.get("/v1/logs/late-1").status_code == 404
    c.post("/v1/logs", json=chat_log("late-1"))
    feedback = c.get("/v1/logs/late-1").json()["feedback"]
    assert [(f["rating"], f["correction"]) for f in feedback] == [(1, "PARIS")]


def test_a_key_sees_only_its_own_project(ratchet_server: RatchetProcess) -> None:
    a, b = (f"iso-{uuid.uuid4().hex[:6]}" for _ in range(2))
    ca, cb = (
        ratchet_server.client(ratchet_server.create_project(a)),
        ratchet_server.client(ratchet_server.create_project(b)),
    )
    assert ca.post("/v1/logs", json=chat_log("secret-1")).status_code == 202
    assert cb.get("/v1/logs/secret-1").status_code == 404
    assert cb.get("/v1/logs/secret-1", params={"project": a}).status_code == 404
    assert cb.get(f"/v1/projects/{a}/stats").status_code == 404
    assert cb.post("/v1/logs", params={"project": a}, json=chat_log("x")).status_code == 404
    assert [p["name"] for p in cb.get("/v1/projects").json()] == [b]
    # The same id in another project is another log, not a duplicate.
    assert cb.post("/v1/logs", json=chat_log("secret-1")).json()["results"][0]["status"] == "accepted"
    # Admin reaches both, naming the project.
    admin = ratchet_server.client()
    assert admin.get("/v1/logs/secret-1", params={"project": a}).json()["project"] == a


def error(r: httpx.Response) -> tuple[int, str]:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.status_code, r.json()["code"]


def test_error_codes(ratchet_server: RatchetProcess, project: tuple[str, httpx.Client]) -> None:
    name, c = project
    anon = ratchet_server.client(key="")
    assert error(anon.post("/v1/logs", json=chat_log())) == (401, "unauthenticated")
    assert error(ratchet_server.client("rk_nope_nope").get("/v1/projects")) == (401, "unauthenticated")
    r = c.post("/v1/projects", json={"name": "nope"})
    assert error(r) == (403, "forbidden") and "`ratchet keys create --all-projects --scope admin`" in r.text
    assert error(c.get("/v1/logs/missing")) == (404, "not_found")
    assert error(c.get("/v1/no-such-route")) == (404, "not_found")
    assert error(ratchet_server.client().post("/v1/projects", json={"name": name})) == (409, "conflict")
    r = c.post("/v1/logs", content=b"x" * (1024 * 1024 + 1))
    assert error(r) == (413, "too_large") and "over 1,048,576 bytes" in r.json()["message"], r.text
    r = c.post("/v1/feedback", json={"log_id": "a", "rating": 5})
    assert error(r) == (422, "invalid_input") and r.json()["field"] == "$.rating"
    r = c.post("/v1/feedback", json={"feedback": [{"log_id": "a", "rating": 0}]})
    assert "1 (thumbs up) or -1" in r.json()["detail"][0]["error"], r.text
    r = ratchet_server.client().post(
        "/v1/projects", content=b"", headers={"Content-Type": "application/json"}
    )
    assert error(r) == (422, "invalid_input") and "body is empty" in r.json()["message"]
    assert error(c.post("/v1/logs", json={"request": {}, "resp": {}})) == (422, "invalid_input")
    assert error(c.post("/v1/logs", content=b"{not json")) == (422, "invalid_input")
    assert error(c.post("/v1/feedback", json={"log_id": "a"})) == (422, "invalid_input")
    assert error(c.post("/v1/logs", json={"logs": [chat_log()] * 1001})) == (422, "invalid_input")
    assert error(ratchet_server.client().post("/v1/logs", json=chat_log())) == (422, "invalid_input")
    # A field is named as the client sent it, and a page size out of range is refused, not clamped.
    r = c.get(f"/v1/projects/{name}/export", params={"format": "csv"})
    assert error(r) == (422, "invalid_input") and r.json()["field"] == "format", r.text
    for path, limit in (("/v1/runs", 0), ("/v1/runs", 1001), (f"/v1/projects/{name}/events", 5000)):
        r = c.get(path, params={"limit": limit})
        assert (error(r), r.json()["field"]) == ((422, "invalid_input"), "limit"), (path, r.text)
    assert c.get("/v1/runs", params={"limit": 1000}).status_code == 200


def test_saturated_writer_answers_429_with_retry_after(start_ratchet: Any) -> None:
    server = start_ratchet(env={"RATCHET_WRITER__MAX_QUEUE_ROWS": "2"})
    c = server.client(server.create_project("tiny-queue"))
    r = c.post("/v1/logs", json={"logs": [chat_log() for _ in range(3)]})
    assert error(r) == (429, "writer_saturated")
    assert int(r.headers["retry-after"]) >= 1
    assert c.post("/v1/logs", json={"logs": [chat_log(), chat_log()]}).status_code == 202
    metrics = c.get("/metrics").text
    assert 'ratchet_ingest_events_total{kind="log",outcome="throttled"} 3.0' in metrics


def test_metrics_count_ingest_and_feedback(
    ratchet_server: RatchetProcess, project: tuple[str, httpx.Client]
) -> None:
    name, c = project
    c.post("/v1/logs", json=chat_log("m-1", adapter=f"{name}@v2"))
    c.post("/v1/feedback", json={"log_id": "m-1", "rating": -1})
    text = httpx.get(f"{ratchet_server.url}/metrics").text
    assert f'ratchet_feedback_total{{adapter="v2",project="{name}",rating="down"}} 1.0' in text
    assert 'ratchet_http_request_seconds_count{method="POST",route="/v1/logs",status="2xx"}' in text
    assert "ratchet_write_commit_seconds_bucket" in text


def test_health_and_readiness(ratchet_server: RatchetProcess) -> None:
    assert httpx.get(f"{ratchet_server.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{ratchet_server.url}/readyz")  # this server has no vLLM beside it
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["vllm http://127.0.0.1:8000"] == "unreachable"
    assert "/v1/logs" in httpx.get(f"{ratchet_server.url}/schema/openapi.json").json()["paths"]


def test_the_published_errors_are_the_ones_answered(ratchet_server: RatchetProcess) -> None:
    """Every operation but the probes documents its 4xx/5xx as Ratchet's error body (OpenAI's on the files and
    fine-tuning routes), not Litestar's 400 `ValidationException` it never sends; real error answers
    validate against what is documented, so a client generated from the schema reads them."""
    schema = httpx.get(f"{ratchet_server.url}/schema/openapi.json").json()
    components = schema["components"]["schemas"]
    documented = {}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "Validation Exception" not in json.dumps(responses), (method, path)
            if path not in ("/healthz", "/readyz", "/metrics"):
                documented[(method, path)] = responses["4XX"]["content"]["application/json"]["schema"]["$ref"]
    shaped = {k: v.rsplit("/", 1)[1] for k, v in documented.items()}
    assert shaped[("get", "/v1/files")] == "OpenAIErrorBody" and shaped[("get", "/v1/runs")] == "ErrorBody"
    assert documented[("post", "/v1/logs")] and "durable" in json.dumps(schema["paths"]["/v1/logs"]["post"])

    key = ratchet_server.create_project("documented")
    c = ratchet_server.client(key)
    answers = {
        ("get", "/v1/runs"): c.get("/v1/runs", params={"limit": 0}),
        ("get", "/v1/logs/{log_id}"): c.get("/v1/logs/nope"),
        ("post", "/v1/logs"): ratchet_server.client("rk_x_y").post("/v1/logs", json=chat_log()),
        ("get", "/v1/files"): c.get("/v1/files", params={"limit": 0}),
    }
    for (method, path), response in answers.items():
        assert response.status_code >= 400, response.text
        ref = documented[(method, path)]
        validator = jsonschema.Draft202012Validator(
            {"$ref": ref, "components": {"schemas": components}},
        )
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert not errors, (path, response.text, errors)


def test_a_lone_surrogate_costs_only_its_character(project: tuple[str, httpx.Client]) -> None:
    """Python's `json.dumps` writes half a surrogate pair for an emoji cut in half; msgspec refuses
    such a body whole. Each half becomes U+FFFD and the batch is stored; a whole pair, and an escaped
    backslash before `ud83d` (text, not an escape), stay as they were."""
    _, c = project
    cut = chat_log("sur-1", answer="cut \ud83d")
    low = chat_log("sur-2", answer="low \udc00 end")
    whole = chat_log("sur-3", answer="whole \U0001f600 and \\\\ud83d as text")
    body = json.dumps({"logs": [chat_log("sur-0"), cut, low, whole]})  # ensure_ascii: \\u escapes
    r = c.post("/v1/logs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 202 and r.json()["accepted"] == 4, r.text
    answers = [
        c.get(f"/v1/logs/sur-{i}").json()["response"]["choices"][0]["message"]["content"] for i in range(4)
    ]
    assert answers[1:] == ["cut \ufffd", "low \ufffd end", "whole \U0001f600 and \\\\ud83d as text"]


def test_gzip_bodies_are_read_on_both_ingest_paths(ratchet_server: RatchetProcess) -> None:
    """`Content-Encoding: gzip` as log shippers send it, on the fast path and on Litestar's route
    (an admin's `?project=`); a coding Ratchet does not read is a 400 naming it, not a JSON error."""

    key = ratchet_server.create_project("gzipped")
    c, admin = ratchet_server.client(key), ratchet_server.client()
    zipped = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    body = gzip.compress(json.dumps({"logs": [chat_log("gz-1"), chat_log("gz-2")]}).encode())
    assert c.post("/v1/logs", content=body, headers=zipped).json()["accepted"] == 2
    body = gzip.compress(json.dumps(chat_log("gz-3")).encode())
    assert admin.post("/v1/logs?project=gzipped", content=body, headers=zipped).status_code == 202
    feedback = gzip.compress(json.dumps({"log_id": "gz-1", "rating": 1}).encode())
    assert c.post("/v1/feedback", content=feedback, headers=zipped).status_code == 202
    assert c.get("/v1/logs/gz-1").json()["feedback"][0]["rating"] == 1
    assert c.get("/v1/logs/gz-3").status_code == 200
    r = c.post("/v1/logs", content=body, headers={**zipped, "Content-Encoding": "br"})
    assert (r.status_code, r.json()["code"]) == (400, "bad_payload") and "'br'" in r.json()["message"]
    r = c.post("/v1/logs", content=b"not gzip", headers=zipped)
    assert r.status_code == 400 and "not valid gzip" in r.json()["message"]
    # Small on the wire, over the limit inflated: too large (413) on both paths, as a plain body is.
    bomb = gzip.compress(b" " * (1024 * 1024 + 1))
    for r in (
        c.post("/v1/logs", content=bomb, headers=zipped),
        c.post("/v1/feedback", content=bomb, headers=zipped),
    ):
        assert (r.status_code, r.json()["code"]) == (413, "too_large") and "1,048,576 bytes" in r.json()[
            "message"
        ]


def test_created_at_may_be_unix_seconds_as_openai_writes_created(project: tuple[str, httpx.Client]) -> None:
    """A log's or a feedback item's `created_at` may be copied from OpenAI's `created` (Unix
    seconds); milliseconds (13 digits) are refused for their item rather than read as year 56,886."""
    _, c = project
    logs = [chat_log("epoch-1", created_at=1733000000), chat_log("epoch-2", created_at=1733000000123)]
    r = c.post("/v1/logs", json={"logs": logs})
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "rejected"] and results[1][
        "field"
    ] == "logs[1].created_at"
    assert c.get("/v1/logs/epoch-1").json()["created_at"].startswith("2024-11-30T20:53:20")
    feedback = {"log_id": "epoch-1", "rating": 1, "created_at": 1733000060.5}
    assert c.post("/v1/feedback", json=feedback).status_code == 202
    assert c.get("/v1/logs/epoch-1").json()["feedback"][0]["created_at"].startswith("2024-11-30T20:54:20.5")


def test_token_counts_come_from_the_responses_usage(project: tuple[str, httpx.Client]) -> None:
    """A log posted as the OpenAI response was received has its counts in `usage`: they fill the
    log's `prompt_tokens`/`completion_tokens` (as the gateway's own logs do); counts given at the
    top level win, and a count no column can hold is dropped, not a failed commit for the batch."""
    _, c = project

    def with_usage(log_id: str, usage: dict[str, Any], **extra: Any) -> dict[str, Any]:
        log = chat_log(log_id, **extra)
        log["response"]["usage"] = usage
        return log

    logs = [
        with_usage("usage-1", {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}),
        with_usage("usage-2", {"prompt_tokens": 31, "completion_tokens": 9}, prompt_tokens=30),
        with_usage("usage-3", {"prompt_tokens": 2**40, "completion_tokens": 9}),
        chat_log("usage-4"),
    ]
    r = c.post("/v1/logs", json={"logs": logs})
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 4, r.text
    stored = [c.get(f"/v1/logs/usage-{i}").json() for i in range(1, 5)]
    counts = [(log["prompt_tokens"], log["completion_tokens"]) for log in stored]
    assert counts == [(31, 9), (30, 9), (None, 9), (None, None)]
