"""The report of one evaluation: JSON for the database, Markdown for people.

It holds everything the decision was made on: the (redacted) config, the frozen eval set, both
models' answers, every per-example score, the statistics and the decision with its reasons.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from evals.calibration import Calibration
from evals.config import EvalConfig, Role
from evals.decision import Decision
from evals.evalset import EvalExample, message_text
from evals.scorers.base import AnswerPair, ExampleScore, Kind
from evals.statistics import PairedStats

REPORT_SCHEMA_VERSION = 2
"""2: a reward model's calibration (`AucCalibration`) is its AUC within a prompt, on held-out
preference pairs; 1 had the AUC over every held-out thumb, prompts pooled."""


class ScorerResult(msgspec.Struct, frozen=True, kw_only=True):
    """One scorer over the eval set: its statistics and every per-example score."""

    name: str
    kind: Kind
    role: Role
    tolerance: float
    applicable: int
    """Examples the scorer applied to; `stats.n` of them were scored, `invalid` dropped."""
    invalid: int = 0
    stats: PairedStats | None = None
    candidate_mean: float | None = None
    incumbent_mean: float | None = None
    notes: list[str] = []
    scores: list[ExampleScore] = []
    eligibility: str | None = None
    """Why the scorer may (or may not) decide: the data it had, its calibration figures."""
    calibration: Calibration | None = None
    """A judge's agreement with the holdout's own thumbs, when it was calibrated on them."""
    summary: str = ""
    """A one-line account the decision quotes (e.g. the degenerate-answer rates)."""


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    """Wall-clock seconds of each phase; `examples_per_s` = examples / (generation + scoring)."""

    generation_s: float = 0.0
    scoring_s: float = 0.0
    total_s: float = 0.0
    requests: int = 0
    examples_per_s: float = 0.0
    scorers_s: dict[str, float] = {}
    """Per scorer, seconds from the start of scoring until it was done (scorers run concurrently,
    so these overlap; the largest is `scoring_s`): where an evaluation's time goes."""


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """Candidate vs incumbent: decision, statistics and evidence. `status` "failed" never promotes."""

    schema_version: int = REPORT_SCHEMA_VERSION
    status: Literal["ok", "failed"]
    error: str | None = None
    candidate: str
    incumbent: str
    started_at: str
    config: EvalConfig
    scorers: list[str]
    eval_set_sha256: str
    eval_set: list[EvalExample]
    answers: list[AnswerPair] = []
    results: list[ScorerResult] = []
    decision: Decision
    timings: Timings = Timings()

    @property
    def promote(self) -> bool:
        return self.decision.promote

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Report:
        """Decode a stored report; raises `msgspec.ValidationError` if it is not one."""
        return msgspec.json.decode(data, type=cls)

    def result(self, name: str) -> ScorerResult:
        """The result of the scorer called `name` (KeyError if none)."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_markdown(self, examples: int = 4) -> str:
        """A readable summary: verdict, per-scorer table, reasons, and up to `examples` pairs."""
        verdict = "PROMOTE" if self.decision.promote else "DO NOT PROMOTE"
        if self.status == "failed":
            verdict = "FAILED — DO NOT PROMOTE"
        sources = {s: sum(1 for e in self.eval_set if e.source == s) for s in ("holdout", "golden")}
        cfg = self.config
        lines = [
            f"# Eval: `{self.candidate}` (candidate) vs `{self.incumbent}` (incumbent) — **{verdict}**",
            "",
            f"Eval set: {sources['holdout']} holdout prompts, {sources['golden']} golden examples "
            f"(sha256 `{self.eval_set_sha256[:12]}`). Paired bootstrap, {cfg.resamples} resamples, "
            f"seed {cfg.seed}, {cfg.level:.0%} two-sided CIs; generation temperature "
            f"{cfg.generation.temperature}, max {cfg.generation.max_tokens} tokens. Started {self.started_at}.",
            "",
        ]
        if self.error:
            lines += [f"**Evaluation failed:** {self.error}", ""]
        if self.results:
            lines += [
                "| scorer | role | n | candidate | incumbent | mean diff | CI | win rate (CI) | W/T/L |",
                "|---|---|---:|---:|---:|---:|---|---|---|",
            ]
            for r in self.results:
                lines.append(_table_row(r))
            lines.append("")
        eligibility = [r for r in self.results if r.eligibility]
        if eligibility:
            lines += ["## Evidence", ""]
            lines += [f"- **{r.name}** ({r.role}): {r.eligibility}" for r in eligibility]
            lines.append("")
        lines += ["## Decision", ""]
        for reason in self.decision.reasons:
            mark = "ℹ️" if reason.role == "diagnostic" else ("✅" if reason.ok else "❌")
            lines.append(f"- {mark} {f'**{reason.scorer}**: ' if reason.scorer else ''}{reason.message}")
        notes = [(r.name, n) for r in self.results for n in r.notes]
        if notes:
            lines += ["", "## Notes", ""] + [f"- {name}: {note}" for name, note in notes]
        pairs = self._example_pairs(examples)
        if pairs:
            lines += ["", "## Example pairs", ""]
            for scorer, score in pairs:
                lines += self._pair_lines(scorer, score)
        t = self.timings
        lines += [
            "",
            f"_{len(self.answers)} prompts answered by both models in {t.generation_s:.1f} s, scored in "
            f"{t.scoring_s:.1f} s ({t.examples_per_s:.1f} examples/s, {t.requests} vLLM requests)._",
        ]
        return "\n".join(lines) + "\n"

    def _example_pairs(self, k: int) -> list[tuple[str, ExampleScore]]:
        """Up to `k` pairs where the deciding scorers saw a difference: losses and wins
        alternately, primary scorers first, largest differences first."""
        order = {"primary": 0, "guard": 1}
        scored = [
            (order[r.role], r.name, s)
            for r in self.results
            if r.role in order
            for s in r.scores
            if s.difference
        ]
        losses = sorted((x for x in scored if x[2].difference < 0), key=lambda x: (x[0], x[2].difference))
        wins = sorted((x for x in scored if x[2].difference > 0), key=lambda x: (x[0], -x[2].difference))
        out: list[tuple[str, ExampleScore]] = []
        seen: set[str] = set()
        for i in range(max(len(losses), len(wins))):
            for bucket in (losses, wins):
                if i < len(bucket) and bucket[i][2].example_id not in seen and len(out) < k:
                    seen.add(bucket[i][2].example_id)
                    out.append((bucket[i][1], bucket[i][2]))
        return out

    def _pair_lines(self, scorer: str, score: ExampleScore) -> list[str]:
        example = next((e for e in self.eval_set if e.id == score.example_id), None)
        answers = next((a for a in self.answers if a.example_id == score.example_id), None)
        prompt = message_text(example.messages[-1]) if example else "?"
        lines = [
            f"**{score.example_id}** — {scorer}: {score.difference:+.2f}"
            + (f" ({score.detail})" if score.detail else "")
        ]
        lines.append(f"- prompt: {_quote(prompt)}")
        if answers:
            lines.append(f"- candidate: {_quote(answers.candidate)}")
            lines.append(f"- incumbent: {_quote(answers.incumbent)}")
        if example and example.reference is not None:
            lines.append(f"- reference: {_quote(example.reference)}")
        return [*lines, ""]


def _quote(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    text = text.replace("`", "'")
    return f"`{text}`" if text else "_(empty)_"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table_row(r: ScorerResult) -> str:
    s = r.stats
    if s is None:
        return f"| {r.name} | {r.role} | 0 | – | – | – | – | – | – |"
    return (
        f"| {r.name} | {r.role} | {s.n} | {_num(r.candidate_mean)} | {_num(r.incumbent_mean)} | {s.mean:+.3f} "
        f"| [{s.low:+.3f}, {s.high:+.3f}] | {s.win_rate:.2f} [{s.win_rate_low:.2f}, {s.win_rate_high:.2f}] | {s.wins}/{s.ties}/{s.losses} |"
    )
