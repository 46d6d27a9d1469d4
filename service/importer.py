"""`ratchet import`: OpenAI chat-format JSONL into logs and feedback, resumable and idempotent.

A line is a `formats.logfile.LogLine` — exactly what `ratchet export --format jsonl` writes:
OpenAI chat `messages` ending in the assistant's answer (text or tool calls), `tools`, the log's
fields and the feedback's (`rating` +1/-1, `score`, `correction`, `comment`). A line without an
`id` gets one from its content, so importing a file twice stores it once. Progress (the byte
offset acknowledged so far) is kept beside the file, so an interrupted import resumes there.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from tqdm import tqdm

from formats.logfile import LogLine
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
    if line.rating is None and line.score is None and line.correction is None and line.comment is None:
        return log, None
    feedback = FeedbackIn(
        log_id=log_id,
        end_user=line.end_user,
        rating=line.rating,
        score=line.score,
        correction=line.correction,
        comment=line.comment,
        created_at=line.created_at,
    )
    return log, feedback


@dataclass
class ImportReport:
    lines: int = 0
    logs_accepted: int = 0
    logs_duplicate: int = 0
    feedback: int = 0
    resumed_at: int = 0


def _progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".ratchet-import")


def _batches(fh: Any, start_line: int, batch_lines: int) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
    batch: list[tuple[int, bytes]] = []
    lineno = start_line
    for raw in fh:
        lineno += 1
        if raw.strip():
            batch.append((lineno, raw))
        if len(batch) >= batch_lines:
            yield batch, fh.tell()
            batch = []
    if batch:
        yield batch, fh.tell()


def import_file(
    client: RatchetClient, project: str | None, path: Path, *, batch_lines: int = 500, restart: bool = False
) -> ImportReport:
    """Send every line of `path` to the server in batches; resume after the last acknowledged batch."""
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
    with (
        open(path, "rb") as fh,
        tqdm(
            total=stat.st_size, initial=offset, unit="B", unit_scale=True, desc=f"import {path.name}"
        ) as bar,
    ):
        fh.seek(offset)
        for batch, end in _batches(fh, start_line, batch_lines):
            parsed = [parse_line(raw, n) for n, raw in batch]
            logs = [log for log, _ in parsed]
            feedback = [fb for _, fb in parsed if fb is not None]
            result = _send(client, "/v1/logs", {"logs": logs}, params)
            report.logs_accepted += result["accepted"]
            report.logs_duplicate += result["duplicates"]
            if feedback:
                report.feedback += _send(client, "/v1/feedback", {"feedback": feedback}, params)["accepted"]
            report.lines = batch[-1][0]
            _save_progress(progress_file, signature, end, report.lines)
            bar.update(end - offset)
            offset = end
    progress_file.unlink(missing_ok=True)
    return report


def _send(client: RatchetClient, path: str, body: Any, params: dict[str, str]) -> Any:
    for attempt in range(30):
        try:
            return client.request("POST", path, content=msgspec.json.encode(body), params=params)
        except WriterSaturated as exc:
            time.sleep(min(exc.retry_after * (attempt + 1), 10))
    raise WriterSaturated("the server stayed saturated; run the import again to resume")


def _save_progress(progress_file: Path, signature: str, offset: int, line: int) -> None:
    tmp = progress_file.with_name(progress_file.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode({"signature": signature, "offset": offset, "line": line}))
    os.replace(tmp, progress_file)
