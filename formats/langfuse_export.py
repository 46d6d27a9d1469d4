"""Langfuse's exports read as Ratchet log lines: GENERATION observations, and the scores on them.

Observations are what Langfuse's public API returns (`GET /api/public/observations`, the
`Observation` / `ObservationsView` schema of its OpenAPI spec, cloud.langfuse.com/generated/api/
openapi.yml), one per line as the UI's and API's JSONL exports write them. Fields read: `id`,
`traceId`, `type` (only `GENERATION` is a model call: any other is skipped), `input` (OpenAI chat
messages, `{"messages": [...]}`, or a prompt string), `output` (an assistant message, an OpenAI
completion, or text), `startTime`, `model` / `modelParameters` / `metadata` (kept in the log's
metadata under `langfuse`), `level` and `statusMessage` (an `ERROR` generation keeps its status
message as the answer's error), `userId` (the end user, where the export has it).

Scores come from the scores API (`GET /api/public/scores`, the `Score` schema: `id`, `traceId`,
`observationId`, `name`, `value`, `stringValue`, `dataType`, `comment`, `timestamp`), one per line
(a page `{"data": [...]}` is read item by item), passed as a second file. Each becomes a feedback
item as `formats.langfuse` maps a score posted to Ratchet (CORRECTION included: the part
Langfuse's own export leaves out): `stringValue` is the value for CATEGORICAL, TEXT and
CORRECTION scores. A score names its generation by `observationId`; a trace-level score (no
`observationId`) is the verdict on every generation of its trace.

Log ids follow `formats.langfuse.target_log_id`: an observation of Langfuse's OpenTelemetry SDKs
(hex trace and span ids) gets the id its span would have had through `POST /v1/traces`, so a
generation imported here and scores posted later name the same log.
"""

from __future__ import annotations

from typing import Any

import msgspec

from formats.langfuse import ScoreBody, ScoreError, feedback_item, target_log_id
from formats.vendor import (
    ExportRow,
    FeedbackRef,
    NotInference,
    VendorError,
    chat_answer,
    chat_messages,
    decode_object,
    log_id,
    make_line,
)


def detect(row: dict[str, Any]) -> bool:
    return "traceId" in row and "type" in row and ("input" in row or "startTime" in row)


def observation_log_id(trace_id: str | None, observation_id: str) -> str:
    return log_id(
        target_log_id(ScoreBody(name="", value=0, trace_id=trace_id, observation_id=observation_id)), "lf"
    )


def read_row(raw: bytes) -> ExportRow:
    """One observation as a log line; `NotInference` unless it is a GENERATION."""
    row = decode_object(raw)
    if row.get("type") != "GENERATION":
        raise NotInference(f"a {row.get('type')} observation")
    if not row.get("id"):
        raise VendorError("missing", "id")
    trace = row.get("traceId")
    rid = observation_log_id(trace, str(row["id"]))
    messages = chat_messages(row.get("input"), "input")
    fields: dict[str, Any] = {"id": rid, "created_at": row.get("startTime"), "end_user": row.get("userId")}
    output = row.get("output")
    if row.get("level") == "ERROR" and output in (None, "", {}):
        raise VendorError(f"the generation failed ({row.get('statusMessage')}): no answer", "output")
    answer, finish = chat_answer(output, "output")
    fields |= {"messages": [*messages, answer], "finish_reason": finish}
    if answer.get("tool_calls") and not finish:
        fields["finish_reason"] = "tool_calls"
    if isinstance(row.get("input"), dict):
        fields |= {
            k: row["input"][k] for k in ("tools", "tool_choice", "response_format") if row["input"].get(k)
        }
    if row.get("level") == "ERROR":
        fields["error"] = row.get("statusMessage") or "error"
    kept = {k: row[k] for k in ("model", "modelParameters", "metadata", "name", "traceId") if row.get(k)}
    fields["metadata"] = {"langfuse": kept} if kept else None
    return ExportRow(make_line(fields), (), (f"obs:{rid}", f"trace:{trace}"))


def read_scores(raw: bytes) -> list[FeedbackRef]:
    """The feedback items of one line of a scores export (a score, or a page of them)."""
    row = decode_object(raw)
    return [_score_ref(item) for item in (row["data"] if isinstance(row.get("data"), list) else [row])]


def _score_ref(row: Any) -> FeedbackRef:
    if not isinstance(row, dict):
        raise VendorError("a score is an object", "$")
    if row.get("stringValue") is not None and row.get("dataType") in ("CATEGORICAL", "TEXT", "CORRECTION"):
        row = {**row, "value": row["stringValue"]}
    try:
        score = msgspec.convert(row, ScoreBody)
        item = feedback_item(score)
        del item["log_id"]  # the importer names the row it joins
    except msgspec.ValidationError as exc:
        raise VendorError(str(exc), "$") from None
    except ScoreError as exc:
        raise VendorError(exc.message, exc.field) from None
    if row.get("id"):
        item["id"] = log_id(row["id"], "lf-score")
    if row.get("timestamp"):
        item["created_at"] = row["timestamp"]
    if score.observation_id:
        return FeedbackRef(f"obs:{observation_log_id(score.trace_id, score.observation_id)}", item)
    return FeedbackRef(f"trace:{score.trace_id}", item)
