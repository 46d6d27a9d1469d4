"""`ratchet import`: JSONL files into logs and feedback, resumable and idempotent.

Formats (`FORMATS`): Ratchet's own lines (`ratchet`); OpenAI fine-tuning files, chat
(`openai-chat`) and preference (`openai-preference`), read by `formats.finetuning`; and the exports
of the tools teams are leaving: `langfuse` (GENERATION observations, `formats.langfuse_export`),
`helicone` (request export, `formats.helicone`), `langsmith` (runs, `formats.langsmith`) and
`openpipe` (dataset rows, `formats.openpipe`). Each reads a row into Ratchet's line first. `auto`
picks from the first line where that is unambiguous, else Ratchet's own. Langfuse scores and
LangSmith feedback come as a second file (`feedback_path`), read whole first and joined to the rows
by the vendor's ids; a row that is no model call (a Langfuse SPAN, a LangSmith chain run) is
skipped and counted, not a bad line.

A Ratchet line is a `formats.logfile.LogLine` — exactly what `ratchet export --format jsonl` writes:
OpenAI chat `messages` ending in the assistant's answer (text or tool calls), `tools`, the log's
fields and the feedback's (`rating` +1/-1, `score`, `correction`, `comment`, and the implicit
`regenerated`, `edited_text`, `copied`, `events`: one feedback item each), given by
`feedback_end_user` when the line names one (else by the log's `end_user`). A line without an
`id` gets one from its content, so importing a file twice stores it once (and its feedback is a
duplicate the second time: no new signal). Progress (the byte offset acknowledged so far) is kept
beside the file, so an interrupted import resumes there.

Each line is checked with the server's own rules (`service.capture`: the same decoders and shape
checks) before it is sent. A bad line is reported by its line number in the file and skipped, or,
with `stop_on_error`, the import stops there after sending and saving everything before it (fix
the line and run again: it resumes at that line).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from tqdm import tqdm

from formats import helicone, langfuse_export, langsmith, openpipe
from formats.finetuning import FineTuningError, chat_line, detect, preference_line
from formats.logfile import UTF8_BOM, LogLine
from formats.vendor import ExportRow, FeedbackRef, NotInference, VendorError, decode_object, log_id
from service.capture import Rejected, check_log, decode_item
from service.client import RatchetClient
from service.domain import FeedbackIn, LogIn
from service.errors import InvalidInput, NestedTooDeeply, WriterSaturated

_decode_line = msgspec.json.Decoder(LogLine)
_encode = msgspec.json.encode
FORMATS = (
    "auto",
    "ratchet",
    "openai-chat",
    "openai-preference",
    "langfuse",
    "helicone",
    "langsmith",
    "openpipe",
)
_READERS: dict[str, Callable[[bytes], LogLine | ExportRow]] = {
    "openai-chat": chat_line,
    "openai-preference": preference_line,
    "langfuse": langfuse_export.read_row,
    "helicone": helicone.read_row,
    "langsmith": langsmith.read_row,
    "openpipe": openpipe.read_row,
}
_VENDORS = {"langfuse": langfuse_export, "helicone": helicone, "langsmith": langsmith, "openpipe": openpipe}
FEEDBACK_READERS: dict[str, Callable[[bytes], list[FeedbackRef]]] = {
    "langfuse": langfuse_export.read_scores,
    "langsmith": langsmith.read_feedback,
}
"""Formats whose feedback comes as a second file (Langfuse scores, LangSmith feedback)."""


def detect_format(path: Path) -> str:
    """The format of a file from its first non-blank line (`formats.finetuning.detect`, then each
    vendor's `detect`), else Ratchet's own."""
    with open(path, "rb") as fh:
        first = next((raw for raw in (line.removeprefix(UTF8_BOM) for line in fh) if raw.strip()), b"")
    try:
        if found := detect(first):
            return found
        row = decode_object(first)
    except (VendorError, RecursionError):  # reading the line again names what is wrong with it
        return "ratchet"
    return next((name for name, module in _VENDORS.items() if module.detect(row)), "ratchet")


def read_line(raw: bytes, lineno: int, fmt: str = "ratchet") -> ExportRow:
    """One line of a file in `fmt` as Ratchet's line (with any further feedback items and join
    keys); `InvalidInput` naming the line, `NotInference` for a row that is no model call."""
    try:
        if fmt in _READERS:
            read = _READERS[fmt](raw)
            return read if isinstance(read, ExportRow) else ExportRow(read)
        return ExportRow(_decode_line.decode(raw))
    except (FineTuningError, VendorError) as exc:
        raise InvalidInput(f"line {lineno}: {exc}", f"line {lineno}") from exc
    except msgspec.MsgspecError as exc:
        raise InvalidInput(f"line {lineno}: {exc}", f"line {lineno}") from exc
    except RecursionError:
        raise InvalidInput(f"line {lineno}: {NestedTooDeeply('line').message}", f"line {lineno}") from None


class Joins:
    """A feedback file's items by the row key they join (`ExportRow.join_keys`), noting which
    keys some row took."""

    def __init__(self) -> None:
        self.items: dict[str, list[dict[str, Any]]] = {}
        self.taken: set[str] = set()

    def take(self, keys: tuple[str, ...]) -> list[dict[str, Any]]:
        found = [k for k in keys if k in self.items]
        self.taken.update(found)
        return [item for k in found for item in self.items[k]]

    def unmatched(self) -> int:
        return sum(len(items) for k, items in self.items.items() if k not in self.taken)


def parse_line(
    raw: bytes, lineno: int, fmt: str = "ratchet", joins: Joins | None = None
) -> tuple[LogIn, list[FeedbackIn]]:
    """A log and the feedback items the line carries (explicit fields in one, then one per implicit
    kind, as an app would have sent them, then the reader's further items and those `joins` holds
    for the row); `InvalidInput` naming the line, `NotInference` for a row that is no model call."""
    row = read_line(raw, lineno, fmt)
    line = row.line
    where = f"line {lineno}"
    request: dict[str, Any]
    if line.prompt is not None:
        if line.messages is not None or line.completion is None:
            raise InvalidInput(
                f"{where}: a completions line has `prompt` and `completion`, no `messages`", where
            )
        request = {"prompt": line.prompt}
        choice: dict[str, Any] = {
            "index": 0,
            "text": line.completion,
            "finish_reason": line.finish_reason or "stop",
        }
    else:
        if not line.messages or len(line.messages) < 2:
            raise InvalidInput(
                f"{where}: `messages` needs the prompt and the answer (or give `prompt`)", where
            )
        answer = line.messages[-1]
        if answer.get("role") != "assistant" or (
            answer.get("content") is None and not answer.get("tool_calls") and not answer.get("refusal")
        ):
            raise InvalidInput(
                f"{where}: the last message must be the assistant's answer (text, tool calls or a refusal)",
                where,
            )
        request = {"messages": line.messages[:-1]}
        for name in ("tools", "tool_choice", "response_format"):
            if getattr(line, name) is not None:
                request[name] = getattr(line, name)
        finish = line.finish_reason or ("tool_calls" if answer.get("tool_calls") else "stop")
        choice = {"index": 0, "message": answer, "finish_reason": finish}
    row_id = line.id or f"imp-{hashlib.sha256(raw.strip()).hexdigest()[:32]}"
    response: dict[str, Any] = {"choices": [choice]}
    if line.error is not None:
        response["error"] = {"message": line.error}
    log = LogIn(
        id=row_id,
        request=msgspec.Raw(_encode(request)),
        response=msgspec.Raw(_encode(response)),
        created_at=line.created_at,
        end_user=line.end_user,
        adapter=line.adapter,
        metadata=line.metadata,
    )
    checked = decode_item(_encode(log), LogIn)
    if isinstance(checked, Rejected) or (checked := check_log(checked)):
        raise InvalidInput(f"{where}: {checked.field}: {checked.message}", where)
    given = {
        name: value
        for name in ("rating", "score", "correction", "comment")
        if (value := getattr(line, name)) is not None  # absent in the file: left as it is
    }
    items: list[dict[str, Any]] = [given] if given else []
    if line.regenerated:
        regenerated = {"regenerated_log_id": line.regenerated_log_id} if line.regenerated_log_id else {}
        items.append({"kind": "regenerated", **regenerated})
    if line.edited_text is not None:
        items.append({"kind": "edited", "edited_text": line.edited_text})
    if line.copied:
        items.append({"kind": "copied"})
    items += [{"kind": "event", "event": name} for name in line.events or ()]
    items += list(row.feedback)
    # a joined item gets an id of its own per row: a trace-level score joins several generations
    joined = joins.take(row.join_keys) if joins else []
    items += [{**j, "id": _joined_id(j["id"], row_id)} if "id" in j else j for j in joined]
    # the user who gave it, when the line says (a Ratchet export does): else the log's end user
    by = line.feedback_end_user if line.feedback_end_user is not None else line.end_user
    feedback = []
    for fields in items:
        item = {"log_id": row_id, "end_user": by, "created_at": line.created_at, **fields}
        checked_fb = decode_item(_encode({k: v for k, v in item.items() if v is not None}), FeedbackIn)
        if isinstance(checked_fb, Rejected):
            raise InvalidInput(f"{where}: {checked_fb.field}: {checked_fb.message}", where)
        feedback.append(checked_fb)
    return log, feedback


def _joined_id(item_id: str, row_id: str) -> str:
    return log_id(f"{item_id}.{row_id}", "fb")


@dataclass
class ImportReport:
    lines: int = 0
    logs_accepted: int = 0
    logs_duplicate: int = 0
    feedback: int = 0
    feedback_duplicate: int = 0
    resumed_at: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    """(line number in the file, what is wrong), for every line skipped."""
    format: str = "ratchet"
    not_inference: int = 0
    """Rows skipped as no model call (Langfuse SPAN / EVENT observations, LangSmith chain runs)."""
    feedback_bad_lines: list[tuple[int, str]] = field(default_factory=list)
    """(line number in the feedback file, what is wrong), for every line of it skipped."""
    feedback_unmatched: int = 0
    """Feedback-file items that named no row of the file (not counted when the import resumed)."""

    @property
    def without_feedback(self) -> bool:
        """Logs were stored but no line carried feedback: nothing Ratchet can train on came in (a
        file exported without its feedback, or read in the wrong `--format`)."""
        return self.logs_accepted > 0 and self.feedback == 0 and self.feedback_duplicate == 0


def _progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".ratchet-import")


def _lines(fh: Any, offset: int, start_line: int) -> Iterator[tuple[int, bytes, int, int]]:
    """(line number, text, offset of its start, offset after it) of each non-blank line."""
    lineno = start_line
    for read in fh:
        lineno += 1
        end = offset + len(read)
        raw = read.removeprefix(UTF8_BOM) if offset == 0 else read
        if raw.strip():
            yield lineno, raw, offset, end
        offset = end


def import_file(
    client: RatchetClient,
    project: str | None,
    path: Path,
    *,
    batch_lines: int = 500,
    restart: bool = False,
    stop_on_error: bool = False,
    fmt: str = "auto",
    feedback_path: Path | None = None,
) -> ImportReport:
    """Send every line of `path` to the server in batches; resume after the last acknowledged
    batch. Bad lines are skipped and listed in the report (`stop_on_error`: raise `InvalidInput`
    naming the first one, after saving the progress up to it). `feedback_path`: the vendor's
    feedback file (`FEEDBACK_READERS`), joined to the rows; its bad lines are reported too."""
    progress_file = _progress_path(path)
    stat = path.stat()
    signature = f"{stat.st_size}:{stat.st_mtime_ns}"
    offset, start_line = 0, 0
    if progress_file.exists() and not restart:
        saved = msgspec.json.decode(progress_file.read_bytes())
        if saved.get("signature") == signature:
            offset, start_line = saved["offset"], saved["line"]
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}", "format")
    report = ImportReport(resumed_at=start_line, format=detect_format(path) if fmt == "auto" else fmt)
    joins = _read_feedback_file(feedback_path, report) if feedback_path else None
    params = {"project": project} if project else {}
    batch: list[tuple[int, LogIn, list[FeedbackIn]]] = []

    def flush(end: int, last_line: int) -> None:
        if batch:
            _send_batch(client, params, batch, report)
            batch.clear()
        report.lines = last_line
        _save_progress(progress_file, signature, end, last_line)

    with (
        open(path, "rb") as fh,
        tqdm(
            total=stat.st_size, initial=offset, unit="B", unit_scale=True, desc=f"import {path.name}"
        ) as bar,
    ):
        fh.seek(offset)
        last_end, last_line = offset, start_line
        for lineno, raw, start, end in _lines(fh, offset, start_line):
            try:
                log, feedback = parse_line(raw, lineno, report.format, joins)
            except NotInference:
                report.not_inference += 1
            except InvalidInput as exc:
                if stop_on_error:
                    flush(start, lineno - 1)
                    problem = exc.message.removeprefix(f"line {lineno}: ")
                    raise InvalidInput(
                        f"{path}:{lineno}: {problem} (fix the line and run the import again: it resumes there)",
                        exc.field,
                    ) from None
                report.bad_lines.append((lineno, exc.message))
            else:
                batch.append((lineno, log, feedback))
            last_end, last_line = end, lineno
            if len(batch) >= batch_lines:
                flush(end, lineno)
                bar.update(end - bar.n)
        flush(last_end, last_line)
        bar.update(last_end - bar.n)
    progress_file.unlink(missing_ok=True)
    # a resumed import did not read the rows before its start: their feedback went with them
    report.feedback_unmatched = joins.unmatched() if joins and not report.resumed_at else 0
    return report


def _read_feedback_file(path: Path, report: ImportReport) -> Joins:
    """A feedback file's items by the row key they join; bad lines noted in the report."""
    reader = FEEDBACK_READERS.get(report.format)
    if reader is None:
        raise InvalidInput(
            f"format {report.format} takes no feedback file (only {', '.join(FEEDBACK_READERS)})", "feedback"
        )
    joins = Joins()
    with open(path, "rb") as fh:
        for lineno, read in enumerate(fh, 1):
            raw = read.removeprefix(UTF8_BOM) if lineno == 1 else read
            if not raw.strip():
                continue
            try:
                refs = reader(raw)
            except VendorError as exc:
                report.feedback_bad_lines.append((lineno, str(exc)))
                continue
            for ref in refs:
                joins.items.setdefault(ref.key, []).append(ref.item)
    return joins


def _send_batch(
    client: RatchetClient,
    params: dict[str, str],
    batch: list[tuple[int, LogIn, list[FeedbackIn]]],
    report: ImportReport,
) -> None:
    """Send one batch's logs, then its feedback; what the server rejects is reported by line."""
    result = _send(client, "/v1/logs", {"logs": [log for _, log, _ in batch]}, params)
    report.logs_accepted += result["accepted"]
    report.logs_duplicate += result["duplicates"]
    _note_rejected(result, [n for n, _, _ in batch], report)
    with_feedback = [(n, fb) for n, _, items in batch for fb in items]
    if with_feedback:
        result = _send(client, "/v1/feedback", {"feedback": [fb for _, fb in with_feedback]}, params)
        report.feedback += result["accepted"]
        report.feedback_duplicate += result["duplicates"]
        _note_rejected(result, [n for n, _ in with_feedback], report)


def _note_rejected(result: Any, lines: list[int], report: ImportReport) -> None:
    for item in result["results"]:
        if item["status"] == "rejected":
            report.bad_lines.append((lines[item["index"]], item.get("error") or "rejected"))


def _send(client: RatchetClient, path: str, body: Any, params: dict[str, str]) -> Any:
    """POST, waiting out a saturated writer. A batch of which nothing was taken is a 422 whose
    `detail` holds the per-item results: handed back like a 202's."""
    for attempt in range(30):
        try:
            return client.request("POST", path, content=msgspec.json.encode(body), params=params)
        except InvalidInput as exc:
            if isinstance(exc.detail, list):
                return {"accepted": 0, "duplicates": 0, "rejected": len(exc.detail), "results": exc.detail}
            raise
        except WriterSaturated as exc:
            time.sleep(min(exc.retry_after * (attempt + 1), 10))
    raise WriterSaturated("the server stayed saturated; run the import again to resume")


def _save_progress(progress_file: Path, signature: str, offset: int, line: int) -> None:
    tmp = progress_file.with_name(progress_file.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode({"signature": signature, "offset": offset, "line": line}))
    os.replace(tmp, progress_file)
