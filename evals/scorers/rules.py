"""Declared rule checks on generated answers: regexes, word limits, JSON and JSON Schema."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from evals.config import RulesConfig, RuleSpec
from evals.evalset import EvalExample
from evals.scorers.base import PointwiseScorer


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@cache
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def rule_applies(rule: RuleSpec, example: EvalExample) -> bool:
    """Whether `rule` concerns this example's prompt (its `when_prompt_matches`, if any)."""
    return rule.when_prompt_matches is None or bool(
        _regex(rule.when_prompt_matches).search(example.prompt_text)
    )


def rule_failure(rule: RuleSpec, answer: str) -> str | None:
    """Why `answer` breaks `rule`, or None if it passes every check the rule sets."""
    if rule.must_match is not None and not _regex(rule.must_match).search(answer):
        return f"does not match {rule.must_match!r}"
    if rule.must_not_match is not None and _regex(rule.must_not_match).search(answer):
        return f"matches {rule.must_not_match!r}"
    if rule.max_words is not None and (words := len(answer.split())) > rule.max_words:
        return f"{words} words > {rule.max_words}"
    if rule.valid_json or rule.json_schema is not None:
        try:
            value = json.loads(answer)
        except ValueError:
            return "not valid JSON"
        if rule.json_schema is not None:
            error = next(
                iter(_validator(json.dumps(rule.json_schema, sort_keys=True)).iter_errors(value)), None
            )
            if error is not None:
                return f"fails the JSON schema: {error.message}"
    return None


class RuleScorer(PointwiseScorer):
    """Share of the applicable declared rules an answer passes (1.0 = all); skips examples no
    rule applies to. Scores holdout prompts; the golden set has its own checks."""

    def __init__(self, config: RulesConfig, *, name: str = "rules") -> None:
        super().__init__(name, role=config.role, tolerance=config.tolerance)
        self.rules = config.rules

    def applies_to(self, example: EvalExample) -> bool:
        return example.source == "holdout" and any(rule_applies(r, example) for r in self.rules)

    def score_answer(self, example: EvalExample, answer: str) -> tuple[float, str] | None:
        rules = [r for r in self.rules if rule_applies(r, example)]
        if not rules:
            return None
        failed = [(r.name, why) for r in rules if (why := rule_failure(r, answer)) is not None]
        note = ", ".join(f"{name} ({why})" for name, why in failed)
        return 1.0 - len(failed) / len(rules), note
