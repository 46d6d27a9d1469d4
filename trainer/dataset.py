"""Turning feedback rows into TRL's conversational datasets, and choosing a method from them.

What each kind of feedback becomes:

- thumbs up / down            -> a KTO row (prompt, completion, label True / False)
- thumbs up                   -> an SFT row (prompt, completion)
- a correction                -> an SFT row (prompt, correction), a DPO pair (correction chosen,
                                 original rejected) and a KTO row for the correction (label True);
                                 an unrated corrected answer also counts as a thumbs-down
- up and down answers to the  -> DPO pairs (liked chosen, disliked rejected), each answer used at
  same prompt                    least once, never quadratically many
- `score` alone               -> ignored (no agreed scale yet); counted in `ignored`

Rows are in TRL's formats as they are: `prompt` is a list of chat messages, answers are
`[{"role": "assistant", "content": ...}]`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from trainer.errors import NotEnoughSignalError
from trainer.snapshot import FeedbackRow


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@dataclass
class Examples:
    """Training examples of every kind built from one snapshot split, plus counts for the manifest."""

    sft: list[dict] = field(default_factory=list)
    dpo: list[dict] = field(default_factory=list)
    kto: list[dict] = field(default_factory=list)
    thumbs_up: int = 0
    thumbs_down: int = 0
    corrections: int = 0
    ignored: int = 0
    rated: int = 0
    paired_answers: int = 0

    @property
    def kto_desirable(self) -> int:
        return sum(1 for row in self.kto if row["label"])

    @property
    def kto_undesirable(self) -> int:
        return len(self.kto) - self.kto_desirable

    def counts(self) -> dict[str, int]:
        """Row counts by kind, as recorded in the adapter manifest."""
        return {
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
            "corrections": self.corrections,
            "ignored": self.ignored,
            "sft_rows": len(self.sft),
            "dpo_pairs": len(self.dpo),
            "kto_rows": len(self.kto),
            "kto_desirable": self.kto_desirable,
            "kto_undesirable": self.kto_undesirable,
        }


def build_examples(rows: list[FeedbackRow]) -> Examples:
    """All SFT, DPO and KTO examples the rows support, in a deterministic order (time, then log id)."""
    examples = Examples()
    liked: dict[str, list[FeedbackRow]] = defaultdict(list)
    disliked: dict[str, list[FeedbackRow]] = defaultdict(list)
    paired: set[str] = set()
    for row in sorted(rows, key=lambda r: (r.created_at, r.log_id)):
        prompt_key = json.dumps(row.prompt, sort_keys=True)
        correction = row.correction
        if correction is not None and correction.strip() in ("", row.completion.strip()):
            correction = None  # an empty or unchanged correction corrects nothing
        if row.rating is None and correction is None:
            examples.ignored += 1
            continue
        examples.rated += 1
        if row.rating == 1:
            examples.thumbs_up += 1
            examples.sft.append({"prompt": row.prompt, "completion": _answer(row.completion)})
            examples.kto.append({"prompt": row.prompt, "completion": _answer(row.completion), "label": True})
            liked[prompt_key].append(row)
        elif row.rating == -1 or correction is not None:
            examples.thumbs_down += row.rating == -1
            examples.kto.append({"prompt": row.prompt, "completion": _answer(row.completion), "label": False})
            disliked[prompt_key].append(row)
        if correction is not None:
            examples.corrections += 1
            examples.sft.append({"prompt": row.prompt, "completion": _answer(correction)})
            examples.kto.append({"prompt": row.prompt, "completion": _answer(correction), "label": True})
            examples.dpo.append(
                {"prompt": row.prompt, "chosen": _answer(correction), "rejected": _answer(row.completion)}
            )
            paired.add(row.log_id)

    for prompt_key, downs in disliked.items():
        ups = liked.get(prompt_key)
        if not ups:
            continue
        # Zip cyclically: every answer appears in a pair, at most max(len(ups), len(downs)) pairs.
        for i in range(max(len(ups), len(downs))):
            up, down = ups[i % len(ups)], downs[i % len(downs)]
            if up.completion.strip() == down.completion.strip():
                continue  # the same answer liked by one user and disliked by another says nothing
            examples.dpo.append(
                {"prompt": up.prompt, "chosen": _answer(up.completion), "rejected": _answer(down.completion)}
            )
            paired.update({up.log_id, down.log_id})
    examples.paired_answers = len(paired)
    return examples


@dataclass(frozen=True)
class MethodChoice:
    method: str
    why: str
    examples: int


def _count_for(method: str, examples: Examples) -> int:
    return {"sft": len(examples.sft), "dpo": len(examples.dpo), "kto": len(examples.kto)}[method]


def _check_enough(method: str, examples: Examples, min_examples: int) -> None:
    n = _count_for(method, examples)
    unit = "preference pairs" if method == "dpo" else "rows"
    if n < min_examples:
        raise NotEnoughSignalError(
            f"too little signal for {method.upper()}: {n} {unit}, need at least {min_examples} "
            f"(snapshot has {examples.thumbs_up} thumbs-up, {examples.thumbs_down} thumbs-down, "
            f"{examples.corrections} corrections); collect more feedback or lower min_examples"
        )
    if method == "kto" and (examples.kto_desirable == 0 or examples.kto_undesirable == 0):
        raise NotEnoughSignalError(
            f"KTO needs both liked and disliked answers; the snapshot has {examples.kto_desirable} liked "
            f"and {examples.kto_undesirable} disliked"
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
            f"thumbs-down, {examples.corrections} corrections, {len(examples.dpo)} pairs; need at least "
            f"{min_examples} examples for one method (min_examples)"
        )
    return MethodChoice(method, why, _count_for(method, examples))
