"""Helicone's request export (JSONL, `npx @helicone/export --format jsonl --include-body`), read
as Ratchet log lines.

Each line is one `HeliconeRequest` as Helicone's API returns it (`POST /v1/request/query-clickhouse`,
docs.helicone.ai/rest/request/post-v1requestquery-clickhouse; the `HeliconeRequest` interface in
Helicone's `valhalla/jawn` request manager). Fields read:

- `request_id` (the log id), `request_created_at`, `request_user_id` (the end user);
- `request_body`: the OpenAI request as sent (`messages`, `tools`, `tool_choice`,
  `response_format`; or a completions `prompt`); `response_body`: the OpenAI response
  (`choices[0].message` or `.text`, `finish_reason`); a response with `error` keeps its message;
- `feedback_rating` (boolean: Helicone's thumbs up / down) is the rating;
- `scores` (`Record<string, number>`): one feedback item each, a value in [0, 1] as the score,
  any other as the comment `name: value`, the name kept in the item's metadata (`helicone`);
- `request_properties` (custom properties), `request_model` / `response_model`, `provider` are
  kept in the log's metadata under `helicone`.

Other fields (costs, tokens, latency, assets) are ignored. A request without its body (exported
without `--include-body`) is a bad line naming the option.
"""

from __future__ import annotations

from typing import Any

from formats.vendor import (
    ExportRow,
    VendorError,
    chat_answer,
    chat_messages,
    decode_object,
    log_id,
    make_line,
)
from formats.vendor import request_fields as chat_request_fields


def detect(row: dict[str, Any]) -> bool:
    return "request_body" in row and ("response_body" in row or "request_id" in row)


def read_row(raw: bytes) -> ExportRow:
    """One exported request as a log line with its feedback (see the module docstring)."""
    row = decode_object(raw)
    request, response = row.get("request_body"), row.get("response_body")
    if not isinstance(request, dict):
        raise VendorError("no request body: export with `--include-body`", "request_body")
    if response is None:
        raise VendorError("no response body: export with `--include-body`", "response_body")
    if not row.get("request_id"):
        raise VendorError("missing", "request_id")
    rid = log_id(row["request_id"], "helicone")
    fields: dict[str, Any] = {
        "id": rid,
        "created_at": row.get("request_created_at"),
        "end_user": row.get("request_user_id") or None,
    }
    if isinstance(response, dict) and response.get("error") is not None and not response.get("choices"):
        error = response["error"]
        raise VendorError(
            f"the request failed upstream ({error.get('message') if isinstance(error, dict) else error}): no answer",
            "response_body.error",
        )
    if "prompt" in request and "messages" not in request:
        choices = response.get("choices") if isinstance(response, dict) else None
        if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("text"), str):
            raise VendorError("a completions response needs `choices[0].text`", "response_body.choices")
        fields |= {"prompt": request["prompt"], "completion": choices[0]["text"]}
        if choices[0].get("finish_reason") not in (None, "stop"):
            fields["finish_reason"] = choices[0]["finish_reason"]
    else:
        messages = chat_messages(request.get("messages"), "request_body.messages")
        answer, finish = chat_answer(response, "response_body")
        fields |= {"messages": [*messages, answer], "finish_reason": finish, **chat_request_fields(request)}
        if answer.get("tool_calls") and not finish:
            fields["finish_reason"] = "tool_calls"
    kept = {
        k: row[k] for k in ("request_properties", "request_model", "response_model", "provider") if row.get(k)
    }
    fields["metadata"] = {"helicone": kept} if kept else None
    rating = row.get("feedback_rating")
    if rating is not None:
        if not isinstance(rating, bool):
            raise VendorError("true (thumbs up) or false (thumbs down)", "feedback_rating")
        fields["rating"] = 1 if rating else -1
    return ExportRow(make_line(fields), tuple(_score_items(rid, row.get("scores"))))


def _score_items(rid: str, scores: Any) -> list[dict[str, Any]]:
    if not scores:
        return []
    if not isinstance(scores, dict):
        raise VendorError("an object of score names to numbers", "scores")
    items = []
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise VendorError("a score is a number", f"scores.{name}")
        item: dict[str, Any] = {"id": log_id(f"{rid}:score:{name}", "helicone-score")}
        if 0 <= value <= 1:
            item["score"] = float(value)
        else:
            item["comment"] = f"{name}: {value}"
        item["metadata"] = {"helicone": {"score": name, "value": value}}
        items.append(item)
    return items
