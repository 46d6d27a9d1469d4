"""The eval set: held-out prompts with what users preferred, plus an optional golden set.

Built once per evaluation and frozen into the report, so a decision can be re-read later
against exactly the examples it was made on.

The holdout is a snapshot's `holdout.parquet` (`formats.snapshot`, schema_version 2): each
example keeps the request's `tools`, `tool_choice` and `response_format`, so the prompt is
replayed as users sent it. Messages are kept as a client sends them (`formats.rendering`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from evals.config import MatchMode, RuleSpec
from evals.errors import EvalInputError
from formats.chat import ChatMessage, Content, content_text
from formats.log import Message
from formats.rendering import openai_message, openai_tools
from formats.snapshot import SnapshotFormatError, SnapshotRow, iter_rows

log = logging.getLogger(__name__)


class EvalExample(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One prompt to evaluate, with the evidence attached to it.

    Holdout examples carry the answers users preferred (thumbs-up, corrections) and rejected
    (thumbs-down, answers they corrected); golden examples carry a reference and/or checks.
    """

    id: str
    source: Literal["holdout", "golden"]
    messages: list[dict[str, Any]]
    preferred: list[str] = []
    rejected: list[str] = []
    reference: str | None = None
    match: MatchMode = "exact"
    checks: list[RuleSpec] = []
    log_ids: list[str] = []
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """The prompt's identity: equal for two examples with the same messages and request
        (`prompt_key`); how scorers find the held-out feedback of the example they are handed."""
        return prompt_key(self.messages, self.tools, self.tool_choice, self.response_format)

    @property
    def prompt_text(self) -> str:
        """Every message's text, one per line: what rules' `when_prompt_matches` looks at."""
        return "\n".join(message_text(m) for m in self.messages)


class GoldenLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One line of a golden JSONL file."""

    id: str | None = None
    prompt: Annotated[str | None, msgspec.Meta(description="A one-turn user prompt.")] = None
    messages: Annotated[list[dict[str, Any]] | None, msgspec.Meta(description="Or the chat messages.")] = None
    reference: str | None = None
    match: MatchMode = "exact"
    checks: list[RuleSpec] = []


def message_text(message: dict[str, Any]) -> str:
    """A message's text as a text model reads it (`formats.chat.content_text`: text parts joined
    by newlines); "" for content that is not OpenAI content."""
    try:
        return content_text(msgspec.convert(message.get("content"), Content))
    except msgspec.ValidationError:
        return ""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_key(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    response_format: dict[str, Any] | None = None,
) -> str:
    """Canonical JSON of a prompt as it is replayed (messages and the request's tools, tool_choice
    and response_format): equal prompts, equal keys. The holdout is grouped by it."""
    request = {"tools": tools, "tool_choice": tool_choice, "response_format": response_format}
    return _canonical([messages, request])


def _check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    """Chat messages checked against the OpenAI shape (`formats.chat.ChatMessage`)."""
    if not isinstance(messages, list) or not messages:
        raise EvalInputError(f"{where}: messages is not a non-empty list of chat messages")
    try:
        msgspec.convert(messages, list[ChatMessage])
    except msgspec.ValidationError as exc:
        raise EvalInputError(f"{where}: not OpenAI chat messages: {exc}") from exc
    return messages


def _answer_text(message: Message) -> str | None:
    """The answer's text as the text scorers compare it; None for an answer without text (a tool
    call only): it can be neither preferred nor rejected by text."""
    text = message.content or ""
    return text if text.strip() else None


def _add_evidence(group: dict[str, Any], row: SnapshotRow) -> None:
    """What the row says users preferred and rejected for its prompt."""
    answer = _answer_text(row.completion)
    correction = row.correction if row.correction and row.correction.strip() else None
    if correction is not None:
        group["preferred"].append(correction)
        if answer is not None and answer != correction:
            group["rejected"].append(answer)
    elif row.rating is not None and row.rating > 0:
        if answer is not None and row.problem is None:  # a cut or empty answer is never preferred
            group["preferred"].append(answer)
    elif row.rating is not None and row.rating < 0 and answer is not None:
        group["rejected"].append(answer)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def load_holdout(path: str | Path, *, max_examples: int = 1000, seed: int = 0) -> list[EvalExample]:
    """One example per distinct prompt (messages, tools, tool_choice, response_format) of a
    snapshot's holdout.parquet.

    Preferred answers: thumbs-up completions and corrections; rejected: thumbs-down completions
    and the completions users corrected. An answer with a `problem` (cut by length, interrupted,
    ...) is never preferred, and an answer without text (a tool call only) is neither. An answer
    both preferred and rejected (users disagree) is dropped from both. Examples are ordered by
    their first log's time; beyond `max_examples` a seeded sample is kept (in the same order).

    Raises EvalInputError when the file cannot be read; a row that does not decode, and a
    completions prompt (not replayable as chat), are skipped and logged.
    """
    groups: dict[str, dict[str, Any]] = {}
    skipped: Counter[str] = Counter()
    for row in _holdout_rows(Path(path), skipped):
        if not isinstance(row.prompt, list) or not row.prompt:
            skipped["completions_or_empty_prompt"] += 1
            continue
        messages = [openai_message(m) for m in row.prompt]
        request = {
            "tools": openai_tools(row.tools),
            "tool_choice": row.tool_choice,
            "response_format": row.response_format,
        }
        group = groups.setdefault(
            prompt_key(messages, **request),
            {"messages": messages, **request, "preferred": [], "rejected": [], "log_ids": [], "first": None},
        )
        group["log_ids"].append(row.log_id)
        if group["first"] is None or row.created_at < group["first"]:
            group["first"] = row.created_at
        _add_evidence(group, row)
    if skipped:
        log.warning("holdout %s: skipped %s", path, dict(skipped))
    ordered = sorted(groups.items(), key=lambda kv: (kv[1]["first"], kv[0]))
    if len(ordered) > max_examples:
        keep = set(random.Random(f"evals-holdout:{seed}").sample(range(len(ordered)), max_examples))
        ordered = [item for i, item in enumerate(ordered) if i in keep]
    examples = []
    for key, g in ordered:
        preferred, rejected = _unique(g["preferred"]), _unique(g["rejected"])
        both = set(preferred) & set(rejected)
        examples.append(
            EvalExample(
                id="h-" + hashlib.sha256(key.encode()).hexdigest()[:12],
                source="holdout",
                messages=g["messages"],
                preferred=[a for a in preferred if a not in both],
                rejected=[a for a in rejected if a not in both],
                log_ids=_unique(g["log_ids"]),
                tools=g["tools"],
                tool_choice=g["tool_choice"],
                response_format=g["response_format"],
            )
        )
    return examples


def _holdout_rows(path: Path, skipped: Counter[str]) -> list[SnapshotRow]:
    def skip(log_id: str | None, exc: Exception) -> None:
        skipped["unreadable"] += 1
        log.warning("holdout %s: log %s skipped, it does not decode: %s", path, log_id, exc)

    try:
        return list(iter_rows(path, on_error=skip))
    except SnapshotFormatError as exc:
        raise EvalInputError(f"holdout {path}: {exc}") from exc


def load_golden(path: str | Path) -> list[EvalExample]:
    """The examples of a golden JSONL file (see `GoldenConfig`); blank lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalInputError(f"golden set {path}: {exc}") from exc
    decoder = msgspec.json.Decoder(GoldenLine)
    numbered = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            numbered.append((number, decoder.decode(text)))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise EvalInputError(f"golden set {path} line {number}: {exc}") from exc
    return golden_examples(numbered, f"golden set {path}", unit="line")


def golden_examples(
    lines: list[tuple[int, GoldenLine]], where: str, *, unit: str = "example"
) -> list[EvalExample]:
    """Golden lines (each with its number) as eval examples, checked: exactly one of `prompt` and
    `messages`, a `reference` or `checks`, OpenAI chat messages, unique ids. `EvalInputError`
    names the line (`unit` and number) at fault; an empty set is an error too."""
    examples, seen = [], set()
    for number, line in lines:
        at = f"{where} {unit} {number}"
        if (line.prompt is None) == (line.messages is None):
            raise EvalInputError(f"{at}: give exactly one of 'prompt' or 'messages'")
        if line.reference is None and not line.checks:
            raise EvalInputError(f"{at}: give a 'reference', 'checks', or both")
        messages = [{"role": "user", "content": line.prompt}] if line.prompt is not None else line.messages
        example_id = line.id or f"g-{number}"
        if example_id in seen:
            raise EvalInputError(f"{at}: duplicate id {example_id!r}")
        seen.add(example_id)
        examples.append(
            EvalExample(
                id=example_id,
                source="golden",
                messages=_check_messages(messages, at),
                reference=line.reference,
                match=line.match,
                checks=line.checks,
            )
        )
    if not examples:
        raise EvalInputError(f"{where} holds no examples")
    return examples


def fingerprint(examples: list[EvalExample]) -> str:
    """sha256 of the frozen eval set, as stored in the report."""
    return hashlib.sha256(msgspec.json.encode(examples)).hexdigest()
