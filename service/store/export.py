"""Export a project's logs with their feedback, streamed: JSONL in the import format, or Parquet.

A JSONL line is a conversation as OpenAI fine-tuning files write it, plus the log's and the
feedback's fields, so `ratchet export` output feeds `ratchet import`:

    {"messages": [...the prompt, then the answer as the last assistant message, tool calls and
     all], "tools": [...], "tool_choice": ..., "response_format": ..., "finish_reason": "length",
     "id": ..., "created_at": "2026-11-01T12:00:00Z", "adapter": ..., "end_user": ...,
     "feedback_end_user": ..., "metadata": {...}, "rating": 1, "score": ..., "correction": ..., "comment": ...,
     "regenerated": true, "regenerated_log_id": ..., "edited_text": ..., "copied": true,
     "events": ["shared"]}

Everything comes from the typed columns capture wrote (`formats.log`); only a log whose prompt held
media (`media_prompt`) takes its messages from the raw request, so the media parts are not lost.
A log with several end users' feedback gives a line per feedback row, each with the answer that
feedback names (`choice`) and the user who gave it (`feedback_end_user`, `""` when anonymous;
`end_user` is always the log's), so an import keeps each user's verdict apart; a log without
feedback gives one line with its first answer. A withdrawn verdict (`DELETE /v1/feedback/{id}`:
a row left with no value) is no feedback, and a blank correction or edited text (stored before
capture refused them) is no text (`service.store.given_text`), as in snapshots. A refusal is the
answer message's `refusal`, as OpenAI writes it. Fields without a value are left out;
`finish_reason` only when it is not `stop`. A Parquet row has the same fields, structured ones as
JSON text (`events`: a list of strings).

`LogExport` chooses the rows first (one narrow query in a read transaction: row ids and the
feedback's fields, never the logs' text), so the row count is known before the first byte; then
it reads the logs' text range by range of row ids and yields the encoded bytes, `batch_rows` rows
at a time (`rowid_ranges`): memory follows the batch, whatever the history. A log the shape
module could not read (`shape_error`) has no typed columns and is not exported (counted in
`skipped`). With a `Scrubber`, PII is redacted in every message, tool call, answer, correction
comment and edited text, exactly as in snapshots.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from formats.chat import Tool
from formats.finetuning import chat_row, preference_row
from formats.log import Answer, Message
from formats.logfile import LogLine
from service.errors import StoreOutOfMemory
from service.pii import Scrubber
from service.store.archive import Archive
from service.store.db import Database, rowid_ranges
from service.store.given_text import given_text

log = logging.getLogger("ratchet.export")

ExportFormat = Literal["jsonl", "parquet", "openai-chat", "openai-preference"]
MEDIA_TYPES: dict[str, str] = {
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
    "openai-chat": "application/x-ndjson",
    "openai-preference": "application/x-ndjson",
}
_ROWS = {"openai-chat": chat_row, "openai-preference": preference_row}
"""OpenAI fine-tuning files (`formats.finetuning`): a line that cannot be a row of the format (a
completions log, an empty answer; for preference, one without a correction) is left out, counted
in `unrepresentable`. A log a snapshot would quarantine (`logs.quarantine`: media or token prompt,
legacy function call) is left out when the rows are chosen, counted in `quarantined`: these files
are training data, and Ratchet trains on none of them."""
_FILE_NAMES = {"jsonl": "{}.jsonl", "parquet": "{}.parquet"}


def default_filename(project: str, fmt: ExportFormat) -> str:
    """The file an export is saved to unless told otherwise: one per format, so an OpenAI file
    never overwrites the project's own JSONL (`demo.jsonl`, `demo.parquet`,
    `demo.openai-chat.jsonl`, `demo.openai-preference.jsonl`)."""
    return _FILE_NAMES.get(fmt, f"{{}}.{fmt}.jsonl").format(project)


PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("messages", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("tools", pa.string()),
        ("tool_choice", pa.string()),
        ("response_format", pa.string()),
        ("finish_reason", pa.string()),
        ("error", pa.string()),
        ("adapter", pa.string()),
        ("end_user", pa.string()),
        ("feedback_end_user", pa.string()),
        ("metadata", pa.string()),
        ("rating", pa.int8()),
        ("score", pa.float64()),
        ("correction", pa.string()),
        ("comment", pa.string()),
        ("regenerated", pa.bool_()),
        ("regenerated_log_id", pa.string()),
        ("edited_text", pa.string()),
        ("copied", pa.bool_()),
        ("events", pa.list_(pa.string())),
    ]
)
_JSON_FIELDS = ("messages", "prompt", "tools", "tool_choice", "response_format", "metadata")

# One row per (log, feedback row that holds a verdict), or per log without one. A withdrawn verdict
# keeps its row with every value cleared (`service.store.writer`): it joins as no feedback at all.
# Shape_error logs (no typed columns) are left out and counted, and so are, for OpenAI files,
# quarantined ones (`quarantined`: deleted from the chosen rows). A log is unreadable when its
# `endpoint` is NULL: capture and the backfill fill `endpoint` and `answers` together
# (`rows.normalized_columns`), and testing the narrow column keeps this pass from reading every
# answer's text (4.8M logs: peak RSS 3.9 -> 2.0 GB, bench/export_memory.py). The filters cost
# nothing measurable (bench/export_verdicts.py).
_VERDICT = f"""(f.rating IS NOT NULL OR f.score IS NOT NULL OR {given_text("f.correction")} IS NOT NULL
    OR f.comment IS NOT NULL OR f.regenerated OR {given_text("f.edited")} IS NOT NULL OR f.copied
    OR len(f.events) > 0)"""
_CHOOSE = f"""
CREATE OR REPLACE TEMP TABLE export_rows AS
SELECT l.rowid AS log_rowid, l.endpoint IS NULL AS unreadable,
       l.endpoint IS NOT NULL AND l.quarantine IS NOT NULL AS quarantined,
       f.end_user AS feedback_user,
       coalesce(f.choice, 0) AS choice, f.rating, f.score, {given_text("f.correction")} AS correction, f.comment,
       f.regenerated, f.regenerated_log_id, {given_text("f.edited")} AS edited, f.copied, f.events
FROM logs l LEFT JOIN feedback f ON f.project = l.project AND f.log_id = l.id AND {_VERDICT}
WHERE l.project = $project AND l.created_at >= $since AND l.created_at < $until
ORDER BY log_rowid  -- stored in row id order, each range below reads only its own part of the table
"""
_READ = """
SELECT k.choice, k.rating, k.score, k.correction, k.comment,
       k.regenerated, k.regenerated_log_id, k.edited, k.copied, k.events, nullif(l.end_user, ''),
       k.feedback_user, l.id, l.created_at, l.adapter, l.metadata, l.endpoint, l.messages, l.tools, l.tool_choice,
       l.response_format, l.answers,
       CASE WHEN l.quarantine IN ('media_prompt', 'token_prompt') THEN l.request END,
       l.response->>'$.error.message'  -- a stream's error event, kept so an import keeps the answer's problem
FROM export_rows k JOIN logs l ON l.rowid = k.log_rowid
WHERE NOT k.unreadable AND k.log_rowid >= $lo AND k.log_rowid < $hi AND l.rowid >= $lo AND l.rowid < $hi
ORDER BY k.log_rowid, k.feedback_user NULLS FIRST
"""


class _RawMessages(msgspec.Struct):
    messages: list[dict[str, Any]]


class _RawPrompt(msgspec.Struct):
    prompt: list[Any]


_decode_messages = msgspec.json.Decoder(list[Message]).decode
_decode_answers = msgspec.json.Decoder(list[Answer]).decode
_decode_tools = msgspec.json.Decoder(list[Tool]).decode
_decode_raw_messages = msgspec.json.Decoder(_RawMessages).decode
_decode_raw_prompt = msgspec.json.Decoder(_RawPrompt).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.encode
_builtins = msgspec.to_builtins


class ExportFailed(RuntimeError):
    """Reading or encoding failed part-way through an export (the response is cut short).

    Not a ValueError: Litestar's stream wrapper takes a ValueError for the end of the stream and
    would send a truncated export as if it were whole."""


class LogExport:
    """An export of one project's logs in [since, until): the rows are chosen when it is built
    (`rows`: how many; `skipped`: the logs left out, shape_error ones and, for an OpenAI file,
    `quarantined` ones), and iterating it yields the file's
    bytes in pieces. Iterate it once; it holds a read transaction until then (or `close`).
    `StoreOutOfMemory` (building it, or reading a batch) when a step needs more than DuckDB's
    memory limit; any other failure part-way is `ExportFailed`."""

    def __init__(
        self,
        db: Database,
        project: str,
        fmt: ExportFormat,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        scrubber: Scrubber | None = None,
        batch_rows: int = 2048,
        archive: Archive | None = None,
    ) -> None:
        self.fmt = fmt
        self.scrubber = scrubber
        self.batch_rows = batch_rows
        self.unanswerable = 0
        self.unrepresentable = 0
        self._db = db
        self._cur: duckdb.DuckDBPyConnection | None = db.cursor()
        try:
            with db.store_errors():
                self._cur.execute("BEGIN TRANSACTION")
                if archive is not None:  # archived logs too: `logs` is then table + archive
                    archive.shadow_logs(self._cur, project)
                params = {"project": project, "since": since or datetime.min, "until": until or datetime.max}
                self._cur.execute(_CHOOSE, params)
                total, unreadable, quarantined = self._cur.execute(
                    "SELECT count(*), count(*) FILTER (WHERE unreadable), count(*) FILTER (WHERE quarantined)"
                    " FROM export_rows"
                ).fetchone()
                if fmt in _ROWS:
                    self._cur.execute("DELETE FROM export_rows WHERE quarantined")
                else:
                    quarantined = 0
        except BaseException:
            self.close()
            raise
        self.quarantined = int(quarantined)
        self.skipped = int(unreadable) + self.quarantined
        self.rows = int(total) - self.skipped

    def close(self) -> None:
        if self._cur is not None:
            cur, self._cur = self._cur, None
            try:
                cur.execute("ROLLBACK")
            finally:
                cur.close()

    def __iter__(self) -> Iterator[bytes]:
        try:
            with self._db.store_errors():
                yield from self._bytes()
        except (GeneratorExit, StoreOutOfMemory):
            raise
        except Exception as exc:
            log.exception("export failed part-way")
            raise ExportFailed(f"export failed part-way: {exc}") from exc
        finally:
            self.close()
        if self.skipped or self.unanswerable or self.unrepresentable:
            log.warning(
                "export left out %d log(s) the shape module could not read, %d quarantined one(s), %d row(s) "
                "whose feedback names a choice the response lacks and %d row(s) the %s format cannot hold",
                self.skipped - self.quarantined,
                self.quarantined,
                self.unanswerable,
                self.unrepresentable,
                self.fmt,
            )

    def _bytes(self) -> Iterator[bytes]:
        if self._cur is None:
            raise ExportFailed("this export was closed or already read")
        cur = self._cur
        if self.fmt == "jsonl":
            for lo, hi in rowid_ranges(cur, "export_rows", self.batch_rows):
                lines = self._lines(cur.execute(_READ, {"lo": lo, "hi": hi}).fetchall())
                if lines:
                    yield b"".join(_encode(line) + b"\n" for line in lines)
            return
        if self.fmt in _ROWS:
            to_row = _ROWS[self.fmt]
            for lo, hi in rowid_ranges(cur, "export_rows", self.batch_rows):
                rows = [
                    to_row(line) for line in self._lines(cur.execute(_READ, {"lo": lo, "hi": hi}).fetchall())
                ]
                self.unrepresentable += sum(row is None for row in rows)
                if any(rows):
                    yield b"".join(_encode(row) + b"\n" for row in rows if row is not None)
            return
        sink = _Sink()
        writer = pq.ParquetWriter(sink, PARQUET_SCHEMA, compression="zstd")
        for lo, hi in rowid_ranges(cur, "export_rows", self.batch_rows):
            lines = self._lines(cur.execute(_READ, {"lo": lo, "hi": hi}).fetchall())
            if lines:
                writer.write_table(_table(lines))
                yield sink.drain()
        writer.close()
        yield sink.drain()

    def _lines(self, records: list[tuple[Any, ...]]) -> list[LogLine]:
        lines = []
        for record in records:
            line = _line(record, self.scrubber)
            if line is None:
                self.unanswerable += 1
            else:
                lines.append(line)
        return lines


def _line(record: tuple[Any, ...], scrubber: Scrubber | None) -> LogLine | None:
    (choice, rating, score, correction, comment, regenerated, regenerated_log_id, edited, copied, events,
     end_user, feedback_user, log_id, created_at, adapter, metadata, endpoint,
     messages, tools, tool_choice, response_format, answers, raw_request, error) = record  # fmt: skip
    answer = next((a for a in _decode_answers(answers) if a.index == choice), None)
    if answer is None:
        return None
    completion = answer.message
    if endpoint == "completions":
        text_prompt: str | list[Any] | None = answer.prompt
        text = completion.content or ""
        if text_prompt is None and raw_request is not None:  # token ids, kept as sent
            text_prompt = _decode_raw_prompt(raw_request).prompt
        if scrubber is not None:
            text_prompt = scrubber.scrub(text_prompt) if isinstance(text_prompt, str) else text_prompt
            text = scrubber.scrub(text)
        messages_out, prompt_out, completion_out = None, text_prompt, text
    else:
        prompt: list[Any] = (
            _decode_raw_messages(raw_request).messages
            if raw_request is not None
            else _decode_messages(messages)
        )
        if scrubber is not None:
            prompt = [
                scrubber.scrub_message(m) if isinstance(m, Message) else _scrub_raw(scrubber, m)
                for m in prompt
            ]
            completion = scrubber.scrub_message(completion)
        messages_out = [
            *(m if isinstance(m, dict) else _builtins(m) for m in prompt),
            _answer_message(answer, completion, scrubber),
        ]
        prompt_out, completion_out = None, None
    if scrubber is not None:
        correction = scrubber.scrub(correction) if correction else correction
        comment = scrubber.scrub(comment) if comment else comment
        edited = scrubber.scrub(edited) if edited else edited
    return LogLine(
        messages=messages_out,
        prompt=prompt_out,
        completion=completion_out,
        tools=_decode_tools(tools) if tools is not None else None,
        tool_choice=_decode_any(tool_choice) if tool_choice is not None else None,
        response_format=_decode_any(response_format) if response_format is not None else None,
        finish_reason=answer.finish_reason if answer.finish_reason != "stop" else None,
        error=error if answer.problem == "upstream_error" else None,
        id=log_id,
        created_at=created_at.replace(tzinfo=UTC),  # stored naive UTC; written with its `Z`
        adapter=adapter,
        end_user=end_user,
        feedback_end_user=feedback_user,
        metadata=_decode_any(metadata) if metadata is not None else None,
        rating=rating,
        score=score,
        correction=correction,
        comment=comment,
        regenerated=regenerated or None,
        regenerated_log_id=regenerated_log_id,
        edited_text=edited,
        copied=copied or None,
        events=events or None,
    )


def _answer_message(answer: Answer, message: Message, scrubber: Scrubber | None) -> dict[str, Any]:
    """The answer (`message`: scrubbed if asked) as OpenAI writes it: a refusal in `refusal`, its
    `content` null when the refusal was all it said (capture keeps the refusal as the text too)."""
    out = _builtins(message)
    if answer.refusal is None:
        return out
    if answer.message.content == answer.refusal:  # the refusal stood in for the text
        return {**out, "content": None, "refusal": out.get("content")}
    return {**out, "refusal": scrubber.scrub(answer.refusal) if scrubber is not None else answer.refusal}


def _scrub_raw(scrubber: Scrubber, message: dict[str, Any]) -> dict[str, Any]:
    """A media prompt's message as sent, with its text scrubbed (media payloads left as they are)."""
    content = message.get("content")
    if isinstance(content, str):
        content = scrubber.scrub(content)
    elif isinstance(content, list):
        content = [
            {**part, "text": scrubber.scrub(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return {**message, "content": content}


def _table(lines: list[LogLine]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in PARQUET_SCHEMA.names}
    for line in lines:
        for name in PARQUET_SCHEMA.names:
            value = getattr(line, name)
            if name == "created_at":
                value = value.replace(tzinfo=None)
            elif name in _JSON_FIELDS and value is not None:
                value = _encode(value).decode()
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=PARQUET_SCHEMA)


class _Sink:
    """A write-only file for ParquetWriter whose bytes are taken out after each row group."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


def export_logs(
    db: Database,
    project: str,
    dest: Path,
    fmt: ExportFormat,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    scrubber: Scrubber | None = None,
    archive: Archive | None = None,
) -> int:
    """Write the export to `dest` (a temporary sibling, fsync, rename: `dest` never holds a half
    file); return the rows written."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    export = LogExport(db, project, fmt, since=since, until=until, scrubber=scrubber, archive=archive)
    with open(tmp, "wb") as fh:
        for chunk in export:
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    return export.rows - export.unanswerable - export.unrepresentable
