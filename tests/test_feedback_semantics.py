"""Feedback means what users meant (issue 13), against a real server process on a real DuckDB file:
an item updates only the fields it carries, a rating can be changed or withdrawn, and an identical
re-send (or a re-sent id) is a duplicate that changes nothing, not even a timestamp."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import httpx
import pytest

from tests.fixtures.server import RatchetProcess
from tests.test_api_capture import chat_log

# Field sets an item can carry; the table test posts every ordered pair (A then B) on one log.
ITEMS: list[dict[str, Any]] = [
    {"rating": 1},
    {"rating": -1},
    {"rating": None},
    {"score": 0.7},
    {"score": None},
    {"correction": "Madrid"},
    {"correction": None},
    {"comment": "thanks, that helped"},
    {"rating": -1, "comment": "wrong city"},
    {"kind": "copied"},
    {"kind": "edited", "edited_text": "Paris, France"},
    {"kind": "regenerated"},
    {"kind": "event", "event": "shared"},
]
SHOWN = ("rating", "score", "correction", "comment", "copied", "edited", "regenerated", "events")


def expected_state(*items: dict[str, Any]) -> dict[str, Any]:
    """The verdict after `items`, by the documented rule (written independently of the server):
    each item sets the fields it carries, `null` clears one; implicit kinds set their own field."""
    state: dict[str, Any] = dict.fromkeys(SHOWN)
    for item in items:
        for name, value in item.items():
            if name == "kind":
                if value == "copied":
                    state["copied"] = True
                elif value == "regenerated":
                    state["regenerated"] = True
                elif value == "edited":
                    state["edited"] = item["edited_text"]
                elif value == "event":
                    state["events"] = sorted({*(state["events"] or ()), item["event"]})
            elif name in SHOWN:
                state[name] = value
    return state


@pytest.fixture
def project(ratchet_server: RatchetProcess) -> tuple[str, httpx.Client]:
    name = f"fb-{uuid.uuid4().hex[:8]}"
    return name, ratchet_server.client(ratchet_server.create_project(name))


def verdict(c: httpx.Client, log_id: str) -> dict[str, Any]:
    (row,) = c.get(f"/v1/logs/{log_id}").json()["feedback"]
    return row


def statuses(r: httpx.Response) -> list[str]:
    assert r.status_code == 202, r.text
    return [x["status"] for x in r.json()["results"]]


def test_every_pair_of_field_sets(project: tuple[str, httpx.Client]) -> None:
    _, c = project
    pairs = list(itertools.product(range(len(ITEMS)), repeat=2))
    ids = [f"pair-{i}-{j}" for i, j in pairs]
    assert statuses(c.post("/v1/logs", json={"logs": [chat_log(x) for x in ids]})) == ["accepted"] * len(ids)
    first = [{"log_id": x, "end_user": "u-1", **ITEMS[i]} for x, (i, _) in zip(ids, pairs, strict=True)]
    then = [{"log_id": x, "end_user": "u-1", **ITEMS[j]} for x, (_, j) in zip(ids, pairs, strict=True)]
    assert statuses(c.post("/v1/feedback", json={"feedback": first})) == ["accepted"] * len(ids)
    after_first = {x: verdict(c, x) for x in ids}
    second = statuses(c.post("/v1/feedback", json={"feedback": then}))
    for x, (i, j), status in zip(ids, pairs, second, strict=True):
        want = expected_state(ITEMS[i], ITEMS[j])
        got = verdict(c, x)
        assert {k: got[k] for k in SHOWN} == want, (ITEMS[i], ITEMS[j])
        changed = want != expected_state(ITEMS[i])
        assert status == ("accepted" if changed else "duplicate"), (ITEMS[i], ITEMS[j])
        if not changed:  # a duplicate moves nothing, not even the receive time
            assert got == after_first[x], (ITEMS[i], ITEMS[j])
    # The same batch again: every item is now a duplicate and no row moves.
    before = {x: verdict(c, x) for x in ids}
    assert set(statuses(c.post("/v1/feedback", json={"feedback": then}))) == {"duplicate"}
    assert {x: verdict(c, x) for x in ids} == before


def test_thumbs_down_then_correction_keeps_the_thumb(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    c.post("/v1/logs", json=chat_log("c-1"))
    c.post("/v1/feedback", json={"log_id": "c-1", "end_user": "u-1", "rating": -1})
    c.post("/v1/feedback", json={"log_id": "c-1", "end_user": "u-1", "correction": "Madrid"})
    c.post("/v1/feedback", json={"log_id": "c-1", "end_user": "u-1", "comment": "thanks"})
    row = verdict(c, "c-1")
    assert (row["rating"], row["correction"], row["comment"]) == (-1, "Madrid", "thanks")
    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert (stats["thumbs_down"], stats["corrections"], stats["new_rated_since_last_run"]) == (1, 1, 1)


def test_a_retried_id_is_a_duplicate_even_after_a_change(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    c.post("/v1/logs", json=chat_log("r-1"))
    item = {"id": "fb-1", "log_id": "r-1", "end_user": "u-1", "rating": 1}
    assert statuses(c.post("/v1/feedback", json=item)) == ["accepted"]
    first = verdict(c, "r-1")
    assert statuses(c.post("/v1/feedback", json=item)) == ["duplicate"]
    assert verdict(c, "r-1") == first  # not its timestamp either
    assert c.get(f"/v1/projects/{name}/stats").json()["new_rated_since_last_run"] == 1
    # The user changes the thumb; then a late retry of the first item arrives: it changes nothing.
    change = {"id": "fb-2", "log_id": "r-1", "end_user": "u-1", "rating": -1}
    assert statuses(c.post("/v1/feedback", json=change)) == ["accepted"]
    assert statuses(c.post("/v1/feedback", json=item)) == ["duplicate"]
    assert verdict(c, "r-1")["rating"] == -1
    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert (stats["thumbs_up"], stats["thumbs_down"], stats["new_rated_since_last_run"]) == (0, 1, 1)


def test_withdrawing_a_rating(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    c.post("/v1/logs", json={"logs": [chat_log("w-1"), chat_log("w-2")]})
    c.post(
        "/v1/feedback", json={"id": "fw-1", "log_id": "w-1", "end_user": "u", "rating": 1, "comment": "ok"}
    )
    c.post("/v1/feedback", json={"id": "fw-2", "log_id": "w-2", "end_user": "u", "rating": -1})
    # `"rating": null` withdraws the rating only; the comment stays.
    assert statuses(c.post("/v1/feedback", json={"log_id": "w-1", "end_user": "u", "rating": None})) == [
        "accepted"
    ]
    assert (verdict(c, "w-1")["rating"], verdict(c, "w-1")["comment"]) == (None, "ok")
    # DELETE withdraws the whole verdict; again: unchanged; an unknown id: 404.
    r = c.delete("/v1/feedback/fw-2")
    assert r.status_code == 200 and r.json() == {
        "id": "fw-2", "log_id": "w-2", "end_user": "u", "status": "withdrawn"
    }  # fmt: skip
    assert c.delete("/v1/feedback/fw-2").json()["status"] == "unchanged"
    assert c.delete("/v1/feedback/no-such").status_code == 404
    assert verdict(c, "w-2")["rating"] is None
    stats = c.get(f"/v1/projects/{name}/stats").json()
    assert (stats["thumbs_up"], stats["thumbs_down"], stats["rated_logs"]) == (0, 0, 0)
    assert stats["new_rated_since_last_run"] == 0
    # A late retry of the withdrawn item does not bring it back.
    assert statuses(
        c.post("/v1/feedback", json={"id": "fw-2", "log_id": "w-2", "end_user": "u", "rating": -1})
    ) == ["duplicate"]
    # Another project's key cannot withdraw this project's feedback.
    other = c.get("/v1/projects").json()  # sanity: the key sees only its project
    assert [p["name"] for p in other] == [name]


def test_one_bad_feedback_item_costs_only_itself(project: tuple[str, httpx.Client]) -> None:
    _, c = project
    batch: list[Any] = [
        {"log_id": "a", "rating": 1},
        {"log_id": "b", "rating": 0},
        {"log_id": "c", "score": 4},
        {"log_id": "d", "scor": 1},
        {"log_id": "has space", "rating": 1},
        {"log_id": "e", "kind": "edited"},
        "not an object",
        {"log_id": "f", "kind": "copied"},
        {"log_id": "g", "rating": -1, "correction": " \n\t "},  # a blank answer is no answer
        {"log_id": "h", "kind": "edited", "edited_text": ""},
        {"log_id": "i", "kind": "regenerated", "regenerated_log_id": "i"},  # its own replacement
    ]
    r = c.post("/v1/feedback", json={"feedback": batch})
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted"] + ["rejected"] * 6 + ["accepted"] + ["rejected"] * 3
    assert [x.get("field") for x in results[1:7] + results[8:]] == [
        "feedback[1].rating",
        "feedback[2].score",
        "feedback[3].scor",
        "feedback[4].log_id",
        "feedback[5].edited_text",
        "feedback[6]",
        "feedback[8].correction",
        "feedback[9].edited_text",
        "feedback[10].regenerated_log_id",
    ]
    assert all(x["error"].startswith(x["field"]) for x in results[1:7] + results[8:])
    assert "blank" in results[8]["error"] and "null to clear" in results[8]["error"]
    assert "the rated log itself" in results[10]["error"]
    # Nothing taken at all: a 422 whose detail holds every item's result.
    r = c.post("/v1/feedback", json={"feedback": batch[1:3]})
    assert r.status_code == 422 and [x["field"] for x in r.json()["detail"]] == [
        "feedback[0].rating",
        "feedback[1].score",
    ]


def test_one_bad_log_costs_only_itself(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    good = [chat_log(f"ok-{i}") for i in range(5)]
    bad = [
        {**chat_log("u-1"), "colour": "blue"},
        {**chat_log("u-2"), "prompt_tokens": -1},
        {**chat_log("u-3"), "created_at": "yesterday"},
        {"request": {"messages": []}, "response": {"choices": []}},
    ]
    r = c.post(
        "/v1/logs",
        json={"logs": [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3], good[4]]},
    )
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "rejected"] * 4 + ["accepted"]
    assert [x["field"] for x in results[1::2]] == [
        "logs[1].colour",
        "logs[3].prompt_tokens",
        "logs[5].created_at",
        "logs[7].request.messages",
    ]
    assert c.get(f"/v1/projects/{name}/stats").json()["logs"] == 5
    # A JSON array of items is a batch too; a body that is no object or array is a 422.
    assert statuses(c.post("/v1/logs", json=[chat_log("arr-1"), {"x": 1}])) == ["accepted", "rejected"]
    for body in (b"42", b'"text"', b"[", b'{"logs": 5}', b"[]"):
        r = c.post("/v1/logs", content=body)
        assert r.status_code == 422 and r.json()["code"] == "invalid_input", body


def test_client_ids_are_matched_exactly_and_refused_when_malformed(project: tuple[str, httpx.Client]) -> None:
    name, c = project
    assert statuses(c.post("/v1/logs", json={"logs": [chat_log("Case-1"), chat_log("case-1")]})) == [
        "accepted",
        "accepted",
    ]
    c.post("/v1/feedback", json={"log_id": "case-1", "end_user": "u", "rating": -1})
    assert c.get("/v1/logs/Case-1").json()["feedback"] == []
    assert verdict(c, "case-1")["rating"] == -1
    for bad in ("has space", "tab\there", "slash/id", "é-accent", "-leading-dash", "", "x" * 129):
        r = c.post("/v1/logs", json={**chat_log(), "id": bad})
        assert r.status_code == 422 and r.json()["field"] == "$.id", (bad, r.text)
        r = c.post("/v1/feedback", json={"log_id": bad, "rating": 1})
        assert r.status_code == 422 and r.json()["field"] == "$.log_id", (bad, r.text)
        r = c.post("/v1/feedback", json={"log_id": "case-1", "id": bad, "rating": 1})
        assert r.status_code == 422 and r.json()["field"] == "$.id", (bad, r.text)
    assert c.get(f"/v1/projects/{name}/stats").json()["logs"] == 2
