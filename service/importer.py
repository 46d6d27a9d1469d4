"""`ratchet import`: OpenAI chat-format JSONL into logs and feedback, resumable and idempotent.

A line is a `formats.logfile.LogLine` — exactly what `ratchet export --format jsonl` writes:
OpenAI chat `messages` ending in the assistant's answer (text or tool calls), `tools`, the log's
fields and the feedback's (`rating` +1/-1, `score`, `correction`, `comment`). A line without an
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from tqdm import tqdm

from formats.logfile import LogLine
from service.capture import Rejected, check_log, decode_item
from service.client import RatchetClient
from service.domain import FeedbackIn, LogIn
from service.errors import InvalidInput, WriterSaturated

_decode_line = msgspec.json.Decoder(LogLine)
_encode = msgspec.json.encode


def parse_line(raw: bytes, lineno: int) -> tuple[LogIn, FeedbackIn | None]:
    """A log (and its feedback, if the line carries any); `InvalidInput` naming the line."""
    try:
        line = _decode_line.decode(raw)
    except msgspec.MsgspecError as exc:
        raise InvalidInput(f"line {lineno}: {exc}", f"line {lineno}") from exc
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
            answer.get("content") is None and not answer.get("tool_calls")
        ):
            raise InvalidInput(
                f"{where}: the last message must be the assistant's answer (text or tool calls)", where
            )
        request = {"messages": line.messages[:-1]}
        for name in ("tools", "tool_choice", "response_format"):
            if getattr(line, name) is not None:
                request[name] = getattr(line, name)
        finish = line.finish_reason or ("tool_calls" if answer.get("tool_calls") else "stop")
        choice = {"index": 0, "message": answer, "finish_reason": finish}
    log_id = line.id or f"imp-{hashlib.sha256(raw.strip()).hexdigest()[:32]}"
    response: dict[str, Any] = {"choices": [choice]}
    if line.error is not None:
        response["error"] = {"message": line.error}
    log = LogIn(
        id=log_id,
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
    if not given:
        return log, None
    feedback = FeedbackIn(log_id=log_id, end_user=line.end_user, created_at=line.created_at, **given)
    checked_fb = decode_item(_encode(feedback), FeedbackIn)
    if isinstance(checked_fb, Rejected):
        raise InvalidInput(f"{where}: {checked_fb.field}: {checked_fb.message}", where)
    return log, feedback


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


def _progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".ratchet-import")


def _lines(fh: Any, offset: int, start_line: int) -> Iterator[tuple[int, bytes, int, int]]:
    """(line number, text, offset of its start, offset after it) of each non-blank line."""
    lineno = start_line
    for raw in fh:
        lineno += 1
        end = offset + len(raw)
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
) -> ImportReport:
    """Send every line of `path` to the server in batches; resume after the last acknowledged
    batch. Bad lines are skipped and listed in the report (`stop_on_error`: raise `InvalidInput`
    naming the first one, after saving the progress up to it)."""
    progress_file = _progress_path(path)
    stat = path.stat()
    signature = f"{stat.st_size}:{stat.st_mtime_ns}"
    offset, start_line = 0, 0
    if progress_file.exists() and not restart:
        saved = msgspec.json.decode(progress_file.read_bytes())
        if saved.get("signature") == signature:
            offset, start_line = saved["offset"], saved["line"]
    report = ImportReport(resumed_at=start_line)
    params = {"project": project} if project else {}
    batch: list[tuple[int, LogIn, FeedbackIn | None]] = []

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
                log, feedback = parse_line(raw, lineno)
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
    return report


def _send_batch(
    client: RatchetClient,
    params: dict[str, str],
    batch: list[tuple[int, LogIn, FeedbackIn | None]],
    report: ImportReport,
) -> None:
    """Send one batch's logs, then its feedback; what the server rejects is reported by line."""
    result = _send(client, "/v1/logs", {"logs": [log for _, log, _ in batch]}, params)
    report.logs_accepted += result["accepted"]
    report.logs_duplicate += result["duplicates"]
    _note_rejected(result, [n for n, _, _ in batch], report)
    with_feedback = [(n, fb) for n, _, fb in batch if fb is not None]
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
