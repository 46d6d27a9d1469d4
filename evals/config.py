"""What an evaluation is told: one frozen Struct, built by the caller and passed to `evals.run`.

Everything here is plain data (JSON-able), so the config is frozen into the report it produced.
Programmatic scorers (a Python callable, e.g. simulated users) are passed to `run` beside it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from evals.calibration import CalibrationConfig
from evals.errors import EvalInputError

Role = Literal["primary", "guard", "diagnostic"]
"""How a scorer counts in the decision.

- ``primary``: must show the candidate is better: the CI's lower bound of the mean difference > 0.
- ``guard``: must not show a regression: the CI's lower bound >= -tolerance.
- ``diagnostic``: reported, never decides.
"""

MatchMode = Literal["exact", "casefold", "contains"]

DEFAULT_JUDGE_PROMPT = """\
You compare two answers that AI assistants gave to the same conversation. Decide which answer is \
better: correct, helpful, and following every instruction in the conversation. Ignore which \
answer comes first.

[Conversation]
{conversation}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply with one word only: A if answer A is better, B if answer B is better, TIE if they are \
equally good."""


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One declared check of a generated answer. Every field that is set must hold for a pass."""

    name: Annotated[str, _doc("Short name shown in reports, e.g. 'summary-under-50-words'.")]
    when_prompt_matches: Annotated[
        str | None,
        _doc("Apply only to prompts whose message text matches this regex (re.search); None: all prompts."),
    ] = None
    must_match: Annotated[str | None, _doc("The answer must match this regex (re.search).")] = None
    must_not_match: Annotated[str | None, _doc("The answer must not match this regex (re.search).")] = None
    max_words: Annotated[
        Annotated[int, msgspec.Meta(ge=0)] | None, _doc("At most this many whitespace-separated words.")
    ] = None
    valid_json: Annotated[bool, _doc("The answer must parse as JSON.")] = False
    json_schema: Annotated[
        dict[str, Any] | None, _doc("The answer must parse as JSON and validate against this JSON Schema.")
    ] = None

    def __post_init__(self) -> None:
        for field in ("when_prompt_matches", "must_match", "must_not_match"):
            pattern = getattr(self, field)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise EvalInputError(f"rule {self.name!r}: {field} is not a valid regex: {exc}") from exc
        if self.json_schema is not None:
            try:
                import jsonschema
            except ImportError as exc:
                raise EvalInputError(
                    f"rule {self.name!r} declares a json_schema: install the 'jsonschema' package"
                ) from exc
            try:
                jsonschema.validators.validator_for(self.json_schema).check_schema(self.json_schema)
            except jsonschema.SchemaError as exc:
                raise EvalInputError(f"rule {self.name!r}: json_schema is invalid: {exc.message}") from exc
        if not (
            self.must_match
            or self.must_not_match
            or self.max_words is not None
            or self.valid_json
            or self.json_schema is not None
        ):
            raise EvalInputError(f"rule {self.name!r} checks nothing: set must_match, max_words, ...")


class RulesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A project's declared rules (the `--rules rules.json` document), scored on holdout answers.

    Each example scores the share of its applicable rules the answer passes (1.0 = all).
    """

    rules: Annotated[list[RuleSpec], _doc("The checks; an example no rule applies to is skipped.")]
    role: Annotated[Role, _doc("How the rules count in the decision.")] = "guard"
    tolerance: Annotated[
        float, _doc("As a guard: largest tolerated drop of the mean pass share."), msgspec.Meta(ge=0)
    ] = 0.02

    @classmethod
    def load(cls, path: str | Path) -> RulesConfig:
        """Read and validate a rules JSON file; `EvalInputError` says what is wrong."""
        try:
            return msgspec.json.decode(Path(path).read_bytes(), type=cls)
        except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise EvalInputError(f"rules file {path}: {exc}") from exc


class JudgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A pairwise LLM judge on any OpenAI-compatible chat endpoint, asked in both answer orders."""

    url: Annotated[str, _doc("Base URL as the openai client takes it, e.g. 'https://api.openai.com/v1'.")]
    model: Annotated[str, _doc("Judge model name.")]
    api_key: Annotated[str | None, _doc("Bearer token; never written into reports.")] = None
    prompt: Annotated[
        str,
        _doc(
            "Judge prompt with placeholders {conversation}, {answer_a}, {answer_b}; must ask for A, B or TIE."
        ),
    ] = DEFAULT_JUDGE_PROMPT
    max_tokens: Annotated[int, _doc("Tokens the judge may answer with."), msgspec.Meta(ge=1)] = 8
    max_tokens_field: Annotated[
        Literal["max_tokens", "max_completion_tokens"],
        _doc("The request field that carries max_tokens (newer OpenAI models take max_completion_tokens)."),
    ] = "max_tokens"
    params: Annotated[
        dict[str, Any],
        _doc(
            "Optional request parameters sent with every judge request (sampling: temperature, top_p, seed, ...). "
            "A 400 answer naming one of them (or max_tokens) is retried once without it, and it is not sent again."
        ),
    ] = msgspec.field(default_factory=lambda: {"temperature": 0.0})
    calibrate: Annotated[
        bool,
        _doc(
            "When the evaluation has held-out feedback, let the judge decide only once its verdicts on held-out "
            "preference pairs agree with the users' (Cohen's kappa; see the feedback calibration). "
            "false: it decides uncalibrated."
        ),
    ] = True
    role: Annotated[Role, _doc("How the judge counts in the decision.")] = "primary"
    tolerance: Annotated[float, _doc("As a guard: largest tolerated drop."), msgspec.Meta(ge=0)] = 0.0
    max_invalid_fraction: Annotated[
        float,
        _doc("Share of unparseable verdicts tolerated (dropped); above it the eval fails. 0: none."),
        msgspec.Meta(ge=0, le=1),
    ] = 0.0
    concurrency: Annotated[int, _doc("Judge requests in flight at once."), msgspec.Meta(ge=1)] = 4
    timeout_s: Annotated[float, _doc("Per-request timeout (seconds)."), msgspec.Meta(gt=0)] = 60.0
    retries: Annotated[
        int, _doc("Retries of a request that failed to connect or got 429/5xx."), msgspec.Meta(ge=0)
    ] = 2

    def __post_init__(self) -> None:
        reserved = {
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "stream",
            "n",
        } & self.params.keys()
        if reserved:
            raise EvalInputError(
                f"judge params may not set {', '.join(sorted(reserved))}: the judge sets them"
            )
        missing = [p for p in ("{answer_a}", "{answer_b}") if p not in self.prompt]
        if missing:
            raise EvalInputError(f"judge prompt lacks the placeholder(s) {', '.join(missing)}")


class GoldenConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A per-project golden (regression) set: JSONL, one example per line.

    Line format: ``{"id": "...", "prompt": "..." | "messages": [...], "reference": "...",
    "match": "exact|casefold|contains", "checks": [RuleSpec, ...]}``; `id`, `match` and one of
    `reference`/`checks` are optional. An answer scores 1 if it matches the reference and passes
    every check, else 0.
    """

    path: Annotated[str, _doc("The JSONL file.")]
    role: Annotated[Role, _doc("How the golden set counts in the decision.")] = "guard"
    tolerance: Annotated[
        float,
        _doc("As a guard: largest tolerated drop of the pass rate (0.02 = 2 points)."),
        msgspec.Meta(ge=0),
    ] = 0.02


class GenerationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How candidate and incumbent answer the eval prompts (`/v1/chat/completions` on vLLM)."""

    max_tokens: Annotated[int, _doc("Most tokens per answer."), msgspec.Meta(ge=1)] = 64
    temperature: Annotated[
        float, _doc("0 = greedy. Use the users' setting to judge what they get."), msgspec.Meta(ge=0)
    ] = 0.0
    top_p: Annotated[float, _doc("Nucleus sampling mass."), msgspec.Meta(gt=0, le=1)] = 1.0
    concurrency: Annotated[int, _doc("vLLM requests in flight at once."), msgspec.Meta(ge=1)] = 16
    timeout_s: Annotated[float, _doc("Per-request timeout (seconds)."), msgspec.Meta(gt=0)] = 300.0


class FeedbackGateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Evidence built from the holdout's own feedback, for projects with no hand-written answer key.

    - corrections (and liked answers) as references (primary): is the candidate's answer closer
      (chrF) to what users wrote or liked than the incumbent's?
    - a learned judge (primary, once calibrated): the reward model trained beside the adapter.
    - an LLM judge, if configured, decides only once calibrated on the same feedback.
    - guards: forgetting (liked answers: by similarity, and by a calibrated judge) and degenerate
      answers (empty, cut at max_tokens, looping).

    Each scorer that lacks the data or calibration to decide is reported as a diagnostic with why.
    """

    enabled: Annotated[bool, _doc("Build evidence from the holdout's feedback; false turns it all off.")] = (
        True
    )
    corrections: Annotated[
        bool, _doc("Score answers against held-out corrections and liked answers as references (primary).")
    ] = True
    forgetting: Annotated[
        bool, _doc("Guard the held-out prompts whose logged answer users liked against getting worse.")
    ] = True
    degenerate: Annotated[bool, _doc("Guard against more empty, truncated or looping answers.")] = True
    reward_model: Annotated[
        str | None,
        _doc(
            "Reward model directory the training run wrote beside the adapter (the learned judge); null: none."
        ),
    ] = None
    reward_command: Annotated[
        list[str] | None,
        _doc('How to start the trainer for scoring, e.g. ["python", "-m", "trainer"]; null: this Python.'),
    ] = None
    reward_timeout_s: Annotated[
        float, _doc("Longest the reward model's scoring process may run (seconds)."), msgspec.Meta(gt=0)
    ] = 900.0
    forgetting_tolerance: Annotated[
        float,
        _doc("Largest tolerated drop on liked prompts (chrF/100, or the judge's [-1, 1] preference)."),
        msgspec.Meta(ge=0),
    ] = 0.05
    degenerate_tolerance: Annotated[
        float,
        _doc("Largest tolerated rise of the share of degenerate answers (0.02 = 2 points)."),
        msgspec.Meta(ge=0),
    ] = 0.02
    calibration: Annotated[
        CalibrationConfig, _doc("When a judge counts as calibrated on the holdout's thumbs.")
    ] = CalibrationConfig()


class EvalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One evaluation of a candidate adapter against the incumbent, both served by one vLLM (or
    by each of several replicas, which share the requests)."""

    vllm_url: Annotated[
        str | list[str],
        _doc(
            "vLLM server root, e.g. 'http://127.0.0.1:8000' (a trailing /v1 is fine), or a list of replicas "
            "serving the same adapters: the requests are spread over them."
        ),
    ]
    candidate: Annotated[str, _doc("Served model name of the candidate, e.g. 'project@v3'.")]
    incumbent: Annotated[str, _doc("Served model name of the incumbent (champion, or the v0 null adapter).")]
    holdout: Annotated[
        str | None, _doc("holdout.parquet of the run's snapshot: its prompts and thumbs form the eval set.")
    ] = None
    golden: GoldenConfig | None = None
    rules: RulesConfig | None = None
    judge: JudgeConfig | None = None
    preference_agreement: Annotated[
        bool, _doc("Report preference agreement from answer log-probs (a diagnostic; never promotes).")
    ] = True
    feedback: Annotated[
        FeedbackGateConfig | None,
        _doc("Evidence from the holdout's own feedback (needs `holdout`); null: none."),
    ] = None
    generation: GenerationConfig = GenerationConfig()
    vllm_api_key: Annotated[str | None, _doc("vLLM's --api-key, if set; never written into reports.")] = None
    level: Annotated[
        float, _doc("Confidence level of the two-sided bootstrap CIs."), msgspec.Meta(gt=0, lt=1)
    ] = 0.95
    resamples: Annotated[int, _doc("Bootstrap resamples."), msgspec.Meta(ge=100)] = 10_000
    min_samples: Annotated[
        int, _doc("A primary scorer needs at least this many scored examples to promote."), msgspec.Meta(ge=1)
    ] = 30
    max_examples: Annotated[
        int,
        _doc("Largest number of holdout prompts evaluated (a seeded sample beyond it)."),
        msgspec.Meta(ge=1),
    ] = 1000
    seed: Annotated[int, _doc("Seeds the bootstrap, the holdout sample and sampled generation.")] = 0

    def __post_init__(self) -> None:
        if self.holdout is None and self.golden is None:
            raise EvalInputError("nothing to evaluate: give a holdout file, a golden set, or both")
        if self.feedback is not None and self.feedback.enabled and self.holdout is None:
            raise EvalInputError("feedback evidence needs the holdout file: set holdout")

    def validated(self) -> EvalConfig:
        """This config after msgspec checks every field's constraints (direct construction skips
        them); `EvalInputError` names the offending field."""
        try:
            return msgspec.convert(msgspec.to_builtins(self), type(self))
        except msgspec.ValidationError as exc:
            raise EvalInputError(f"invalid eval config: {exc}") from exc

    def redacted(self) -> EvalConfig:
        """This config without secrets, as it is written into reports."""
        judge = msgspec.structs.replace(self.judge, api_key=None) if self.judge else None
        return msgspec.structs.replace(self, vllm_api_key=None, judge=judge)
