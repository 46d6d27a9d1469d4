"""Turning snapshot rows into SFT, DPO and KTO examples, and choosing a method from them.

What each kind of feedback becomes:

- thumbs up / down            -> a KTO row (prompt, completion, label True / False)
- thumbs up                   -> an SFT row (prompt, completion)
- a correction                -> an SFT row (prompt, correction), a DPO pair (correction chosen,
                                 original rejected) and a KTO row for the correction (label True);
                                 an unrated corrected answer also counts as a thumbs-down
- up and down answers to the  -> DPO pairs (liked chosen, disliked rejected), each answer used at
  same prompt and tools          least once, never quadratically many
- `score` alone               -> ignored (no agreed scale yet); counted in `ignored`

Training data is honest: an answer with a `problem` (cut by `length`, filtered, interrupted,
ended by an upstream error) or an empty one (no text, no tool call) is never a positive target (no
SFT row, no desirable KTO row, never DPO's chosen), though it may be a rejected one; thumbs-up on
such answers are counted in `not_positive` by problem.

A row that cannot become an example is left out and counted in `excluded` by reason, never raised:
`unreadable` (did not decode), `bad_rating` (not +1/-1/null), `empty_prompt`, and
`completions_in_chat_snapshot` (a completions prompt trains in TRL's standard format only when the
snapshot holds no chat rows: one dataset is either conversational or not).

Examples keep the `formats` messages here; `trainer.tokens` renders them with the base model's chat
template, fits them into the token budget and drops (counting) what cannot be trained.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from formats.chat import Tool
from formats.log import Message
from formats.snapshot import SnapshotRow
from trainer.errors import NotEnoughSignalError

Kind = Literal["sft", "dpo", "kto"]
KINDS: tuple[Kind, ...] = ("sft", "dpo", "kto")


@dataclass(frozen=True)
class Example:
    """One training example: the prompt (chat messages, or a completions prompt's text), the
    request's tools, and its answers (`completion` for SFT/KTO, `chosen` and `rejected` for DPO).

    `trl` is set once the example is rendered and fitted (`trainer.tokens`): the row in TRL's
    dataset format, its messages prepared as the serving side prepares them.
    """

    log_id: str
    prompt: list[Message] | str
    tools: list[Tool] | None
    answers: dict[str, Message]
    label: bool | None = None
    trl: dict[str, Any] | None = None
    length: int = 0
    """Tokens of the prompt and its longest answer, once fitted."""
    answer_tokens: int = 0
    """Tokens trained on (every answer's, end of turn included), once fitted."""

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def uses_tool_calls(self) -> bool:
        """Whether rendering it needs a template that renders tool calls and tool results."""
        messages = [*(self.prompt if isinstance(self.prompt, list) else []), *self.answers.values()]
        return any(m.tool_calls or m.role == "tool" for m in messages)


@dataclass
class Examples:
    """Training examples of every kind built from one snapshot split, plus counts for the manifest."""

    sft: list[Example] = field(default_factory=list)
    dpo: list[Example] = field(default_factory=list)
    kto: list[Example] = field(default_factory=list)
    thumbs_up: int = 0
    thumbs_down: int = 0
    corrections: int = 0
    ignored: int = 0
    rated: int = 0
    paired_answers: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    """Rows left out before any example was built, by reason."""
    not_positive: Counter[str] = field(default_factory=Counter)
    """Thumbs-up answers never used as a positive target, by their problem."""
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    """Examples left out when rendering and fitting them (`trainer.tokens`), by kind and reason."""
    prompts_truncated: Counter[str] = field(default_factory=Counter)
    """Examples, by kind, that train on a prompt whose oldest turns were cut to fit."""
    system_dropped: Counter[str] = field(default_factory=Counter)
    """Examples, by kind, that fit only without their system message."""
    fitted: bool = False

    def of(self, kind: str) -> list[Example]:
        return {"sft": self.sft, "dpo": self.dpo, "kto": self.kto}[kind]

    @property
    def kto_desirable(self) -> int:
        return sum(1 for e in self.kto if e.label)

    @property
    def kto_undesirable(self) -> int:
        return len(self.kto) - self.kto_desirable

    def trainable_tokens(self, kind: str) -> int:
        """Answer tokens the examples of `kind` train on (0 before fitting)."""
        return sum(e.answer_tokens for e in self.of(kind))

    def counts(self) -> dict[str, Any]:
        """Row counts by kind and what was left out and why, as recorded in the adapter manifest."""
        counts: dict[str, Any] = {
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
            "corrections": self.corrections,
            "ignored": self.ignored,
            "sft_rows": len(self.sft),
            "dpo_pairs": len(self.dpo),
            "kto_rows": len(self.kto),
            "kto_desirable": self.kto_desirable,
            "kto_undesirable": self.kto_undesirable,
            "excluded": dict(sorted(self.excluded.items())),
            "not_positive": dict(sorted(self.not_positive.items())),
        }
        if self.fitted:
            counts["dropped"] = {k: dict(sorted(c.items())) for k, c in self.dropped.items() if c}
            counts["prompts_truncated"] = dict(self.prompts_truncated)
            counts["system_dropped"] = dict(self.system_dropped)
            counts["trainable_tokens"] = {k: self.trainable_tokens(k) for k in KINDS}
        return counts

    def left_out(self) -> str:
        """What was left out, in words ("" when nothing was): for error messages."""
        parts = [f"{reason} {n}" for reason, n in sorted(self.excluded.items())]
        parts += [f"thumbs-up on a {p} answer {n}" for p, n in sorted(self.not_positive.items())]
        for kind, reasons in self.dropped.items():
            parts += [f"{kind.upper()} {reason} {n}" for reason, n in sorted(reasons.items())]
        return ", ".join(parts)


def answer_problem(row: SnapshotRow) -> str | None:
    """Why the row's answer may never be a positive target, or None. An answer without text and
    without tool calls is `empty` even where the snapshot did not say so."""
    if row.problem is not None:
        return row.problem
    if not (row.completion.content or "").strip() and not row.completion.tool_calls:
        return "empty"
    return None


_encode = msgspec.json.encode


def _prompt_key(row: SnapshotRow) -> bytes:
    return _encode([row.prompt, row.tools])


def _same_answer(a: Message, b: Message) -> bool:
    return (a.content or "").strip() == (b.content or "").strip() and _encode(a.tool_calls) == _encode(
        b.tool_calls
    )


def _exclusion(row: SnapshotRow, has_chat: bool) -> str | None:
    if not isinstance(row.created_at, datetime) or not isinstance(row.log_id, str):
        return "unreadable"
    if row.rating not in (None, 1, -1):
        return "bad_rating"
    if isinstance(row.prompt, list):
        return None if row.prompt else "empty_prompt"
    return "completions_in_chat_snapshot" if has_chat else None


def build_examples(rows: list[SnapshotRow], *, unreadable: int = 0) -> Examples:
    """All SFT, DPO and KTO examples the rows support, in a deterministic order (time, then log id).
    `unreadable`: rows the snapshot reader already left out, counted under that reason."""
    examples = Examples()
    if unreadable:
        examples.excluded["unreadable"] = unreadable
    has_chat = any(isinstance(r.prompt, list) for r in rows)
    usable = []
    for row in rows:
        reason = _exclusion(row, has_chat)
        if reason is None:
            usable.append(row)
        else:
            examples.excluded[reason] += 1
    liked: dict[bytes, list[SnapshotRow]] = defaultdict(list)
    disliked: dict[bytes, list[SnapshotRow]] = defaultdict(list)
    paired: set[str] = set()

    def example(row: SnapshotRow, label: bool | None = None, **answers: Message) -> Example:
        return Example(log_id=row.log_id, prompt=row.prompt, tools=row.tools, answers=answers, label=label)

    for row in sorted(usable, key=lambda r: (r.created_at, r.log_id)):
        key = _prompt_key(row)
        answer = row.completion
        correction = row.correction
        if correction is not None and correction.strip() in ("", (answer.content or "").strip()):
            correction = None  # an empty or unchanged correction corrects nothing
        if row.rating is None and correction is None:
            examples.ignored += 1
            continue
        examples.rated += 1
        if row.rating == 1:
            examples.thumbs_up += 1
            problem = answer_problem(row)
            if problem is None:
                examples.sft.append(example(row, completion=answer))
                examples.kto.append(example(row, True, completion=answer))
                liked[key].append(row)
            else:
                examples.not_positive[problem] += 1
        elif row.rating == -1 or correction is not None:
            examples.thumbs_down += row.rating == -1
            examples.kto.append(example(row, False, completion=answer))
            disliked[key].append(row)
        if correction is not None:
            wanted = Message(role="assistant", content=correction)
            examples.corrections += 1
            examples.sft.append(example(row, completion=wanted))
            examples.kto.append(example(row, True, completion=wanted))
            examples.dpo.append(example(row, chosen=wanted, rejected=answer))
            paired.add(row.log_id)

    for key, downs in disliked.items():
        ups = liked.get(key)
        if not ups:
            continue
        # Zip cyclically: every answer appears in a pair, at most max(len(ups), len(downs)) pairs.
        for i in range(max(len(ups), len(downs))):
            up, down = ups[i % len(ups)], downs[i % len(downs)]
            if _same_answer(up.completion, down.completion):
                continue  # the same answer liked by one user and disliked by another says nothing
            examples.dpo.append(example(up, chosen=up.completion, rejected=down.completion))
            paired.update({up.log_id, down.log_id})
    examples.paired_answers = len(paired)
    return examples


def with_kept(examples: Examples, kept: dict[str, list[Example]], **fields: Any) -> Examples:
    """A copy of `examples` holding only `kept` (fitted) examples, plus the fitting counts."""
    return dataclasses.replace(examples, sft=kept["sft"], dpo=kept["dpo"], kto=kept["kto"], **fields)


@dataclass(frozen=True)
class MethodChoice:
    method: str
    why: str
    examples: int


def _count_for(method: str, examples: Examples) -> int:
    return len(examples.of(method))


def _also(examples: Examples) -> str:
    left_out = examples.left_out()
    return f"; left out: {left_out}" if left_out else ""


def _check_enough(method: str, examples: Examples, min_examples: int) -> None:
    n = _count_for(method, examples)
    unit = "preference pairs" if method == "dpo" else "rows"
    if n < min_examples:
        raise NotEnoughSignalError(
            f"too little signal for {method.upper()}: {n} {unit}, need at least {min_examples} "
            f"(snapshot has {examples.thumbs_up} thumbs-up, {examples.thumbs_down} thumbs-down, "
            f"{examples.corrections} corrections{_also(examples)}); collect more feedback or lower "
            "min_examples"
        )
    if method == "kto" and (examples.kto_desirable == 0 or examples.kto_undesirable == 0):
        raise NotEnoughSignalError(
            f"KTO needs both liked and disliked answers; the snapshot has {examples.kto_desirable} liked "
            f"and {examples.kto_undesirable} disliked{_also(examples)}"
        )


def choose_method(
    examples: Examples, requested: str, min_examples: int, min_pair_share: float
) -> MethodChoice:
    """The method to train and why. An explicit method is honoured; `auto` goes by the signal present:

    1. mostly corrections (at least as many as thumbs)           -> SFT on corrections and thumbs-up
    2. at least `min_pair_share` of rated answers sit in pairs   -> DPO (pairs carry most of the signal)
    3. liked and disliked answers, mostly unpaired               -> KTO (uses every thumb; DPO would not)
    4. only liked answers or corrections                         -> SFT

    Raises NotEnoughSignalError when the chosen method would train on fewer than `min_examples`.
    """
    if requested != "auto":
        _check_enough(requested, examples, min_examples)
        why = f"{requested} requested in the run spec"
        return MethodChoice(requested, why, _count_for(requested, examples))

    thumbs = examples.thumbs_up + examples.thumbs_down
    rated = examples.rated
    share = examples.paired_answers / rated if rated else 0.0
    if examples.corrections >= max(thumbs, 1) and len(examples.sft) >= min_examples:
        method = "sft"
        why = (
            f"mostly corrections ({examples.corrections} corrections vs {thumbs} thumbs): "
            f"SFT on {len(examples.sft)} corrected and liked answers"
        )
    elif share >= min_pair_share and len(examples.dpo) >= min_examples:
        method = "dpo"
        why = (
            f"{share:.0%} of {rated} rated answers are in {len(examples.dpo)} preference pairs "
            f"(>= {min_pair_share:.0%}): DPO"
        )
    elif examples.kto_desirable and examples.kto_undesirable and len(examples.kto) >= min_examples:
        method = "kto"
        why = (
            f"mostly unpaired thumbs ({examples.thumbs_up} up, {examples.thumbs_down} down; only "
            f"{share:.0%} paired): KTO uses all {len(examples.kto)} rows, DPO only {len(examples.dpo)} pairs"
        )
    elif len(examples.sft) >= min_examples:
        method = "sft"
        why = f"no usable liked/disliked contrast: SFT on {len(examples.sft)} liked or corrected answers"
    else:
        raise NotEnoughSignalError(
            f"too little signal for any method: {examples.thumbs_up} thumbs-up, {examples.thumbs_down} "
            f"thumbs-down, {examples.corrections} corrections, {len(examples.dpo)} pairs{_also(examples)}; "
            f"need at least {min_examples} examples for one method (min_examples)"
        )
    return MethodChoice(method, why, _count_for(method, examples))
