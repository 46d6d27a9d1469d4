"""The eval set: held-out prompts with what users preferred, plus an optional golden set.

Built once per evaluation and frozen into the report, so a decision can be re-read later
against exactly the examples it was made on.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pyarrow.parquet as pq

from evals.config import MatchMode, RuleSpec
from evals.errors import EvalInputError

HOLDOUT_COLUMNS = ("log_id", "prompt_messages", "completion", "rating", "correction", "created_at")


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

    @property
    def prompt_text(self) -> str:
        """Every message's text, one per line: what rules' `when_prompt_matches` looks at."""
        return "\n".join(content_text(m.get("content")) for m in self.messages)


class GoldenLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One line of a golden JSONL file."""

    id: str | None = None
    prompt: Annotated[str | None, msgspec.Meta(description="A one-turn user prompt.")] = None
    messages: Annotated[list[dict[str, Any]] | None, msgspec.Meta(description="Or the chat messages.")] = None
    reference: str | None = None
    match: MatchMode = "exact"
    checks: list[RuleSpec] = []


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _canonical(messages: list[dict[str, Any]]) -> str:
    return json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _parse_messages(raw: Any, where: str) -> list[dict[str, Any]]:
    messages = json.loads(raw) if isinstance(raw, str) else raw
    if not (
        isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages)
    ):
        raise EvalInputError(f"{where}: prompt_messages is not a non-empty list of chat messages")
    return messages


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def load_holdout(path: str | Path, *, max_examples: int = 1000, seed: int = 0) -> list[EvalExample]:
    """One example per distinct prompt of a snapshot's holdout.parquet.

    Preferred answers: thumbs-up completions and corrections; rejected: thumbs-down completions
    and the completions users corrected. An answer both preferred and rejected (users disagree)
    is dropped from both. Examples are ordered by their first log's time; beyond `max_examples`
    a seeded sample is kept (in the same order).
    """
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise EvalInputError(f"holdout {path}: cannot read Parquet: {exc}") from exc
    missing = [c for c in HOLDOUT_COLUMNS if c not in table.column_names]
    if missing:
        raise EvalInputError(f"holdout {path}: missing column(s) {', '.join(missing)}")
    groups: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(table.select(list(HOLDOUT_COLUMNS)).to_pylist()):
        where = f"holdout {path} row {i} (log {row['log_id']})"
        try:
            messages = _parse_messages(row["prompt_messages"], where)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{where}: prompt_messages is not JSON: {exc}") from exc
        group = groups.setdefault(
            _canonical(messages),
            {
                "messages": messages,
                "preferred": [],
                "rejected": [],
                "log_ids": [],
                "first": row["created_at"],
            },
        )
        group["log_ids"].append(row["log_id"])
        if row["created_at"] is not None and (group["first"] is None or row["created_at"] < group["first"]):
            group["first"] = row["created_at"]
        completion, correction, rating = row["completion"], row["correction"], row["rating"]
        if correction:
            group["preferred"].append(correction)
            if completion and completion != correction:
                group["rejected"].append(completion)
        elif rating is not None and rating > 0:
            group["preferred"].append(completion)
        elif rating is not None and rating < 0:
            group["rejected"].append(completion)
    ordered = sorted(groups.items(), key=lambda kv: (kv[1]["first"] is None, kv[1]["first"] or 0, kv[0]))
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
            )
        )
    return examples


def load_golden(path: str | Path) -> list[EvalExample]:
    """The examples of a golden JSONL file (see `GoldenConfig`); blank lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalInputError(f"golden set {path}: {exc}") from exc
    decoder = msgspec.json.Decoder(GoldenLine)
    examples, seen = [], set()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"golden set {path} line {number}"
        try:
            line = decoder.decode(text)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise EvalInputError(f"{where}: {exc}") from exc
        if (line.prompt is None) == (line.messages is None):
            raise EvalInputError(f"{where}: give exactly one of 'prompt' or 'messages'")
        if line.reference is None and not line.checks:
            raise EvalInputError(f"{where}: give a 'reference', 'checks', or both")
        messages = [{"role": "user", "content": line.prompt}] if line.prompt is not None else line.messages
        example_id = line.id or f"g-{number}"
        if example_id in seen:
            raise EvalInputError(f"{where}: duplicate id {example_id!r}")
        seen.add(example_id)
        examples.append(
            EvalExample(
                id=example_id,
                source="golden",
                messages=_parse_messages(messages, where),
                reference=line.reference,
                match=line.match,
                checks=line.checks,
            )
        )
    if not examples:
        raise EvalInputError(f"golden set {path} holds no examples")
    return examples


def fingerprint(examples: list[EvalExample]) -> str:
    """sha256 of the frozen eval set, as stored in the report."""
    return hashlib.sha256(msgspec.json.encode(examples)).hexdigest()
