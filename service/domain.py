"""Ratchet's domain types: what goes in, what is stored, what comes out.

Inbound Structs forbid unknown fields, so a typo is a 422 naming the field rather than data
silently dropped; the OpenAPI schema says the same. The embedded OpenAI `request`/`response`
bodies are kept as sent (`msgspec.Raw`) and read by the one shape module, `formats`: apps send
whatever their OpenAI calls carry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from evals.config import GenerationConfig, JudgeConfig, Role, RulesConfig
from evals.evalset import GoldenLine

Id = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$",
        description="Client-chosen id (letters, digits, `._:-`). Sending the same id again is a no-op.",
    ),
]
ProjectName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9\-]*$",
        description="Project name: lower-case letters, digits and dashes. Apps call it as the model name.",
    ),
]
EndUser = Annotated[str, Meta(max_length=256, description="Your id for the person who saw the answer.")]
Text = Annotated[str, Meta(max_length=65536)]
UnixSeconds = Annotated[
    float,
    Meta(
        ge=0,
        lt=1e11,  # a 13-digit value is milliseconds (JavaScript's Date.now()): refused, not read as year 5138
        description="Seconds since 1970-01-01 UTC, as OpenAI's `created` (not milliseconds).",
    ),
]
Timestamp = Annotated[
    datetime | UnixSeconds,
    Meta(description="When it happened: ISO 8601 (with a zone, else taken as UTC) or Unix seconds."),
]
JsonObject = dict[str, Any]


class LogIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """One inference: the OpenAI request the app sent and the response it got."""

    id: Id | None = None
    request: Annotated[
        Raw,
        Meta(description="The OpenAI request body as sent: chat (`messages`) or completions (`prompt`)."),
    ]
    response: Annotated[Raw, Meta(description="The OpenAI response body as received, with `choices`.")]
    created_at: Timestamp | None = None
    end_user: EndUser | None = None
    adapter: Annotated[str, Meta(max_length=128)] | None = None
    latency_ms: Annotated[float, Meta(ge=0)] | None = None
    # Bounded by the columns' INTEGER: a value that cannot be stored must be a 422 for its item,
    # never a failed group commit for everyone's.
    prompt_tokens: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    completion_tokens: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    metadata: JsonObject | None = None


class LogBatchIn(Struct, forbid_unknown_fields=True):
    """Several logs in one request (at most `max_batch_items`)."""

    logs: Annotated[list[LogIn], Meta(min_length=1)]


FeedbackKind = Literal["regenerated", "edited", "copied", "event"]
EventName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$",
        description="An app event's name (letters, digits, `._:-`), e.g. `shared` or `follow_up`.",
    ),
]


class FeedbackIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A user's verdict on one logged answer: explicit (a rating, a score, a correction, a comment)
    or implicit (`kind`). It updates only the fields it carries: a later comment keeps the thumb.
    `"rating": null` (likewise score, correction, comment) withdraws that field; an absent field is
    left as it is. An identical re-send, or a re-sent `id`, changes nothing (`duplicate`)."""

    log_id: Id
    id: Id | None = None
    choice: (
        Annotated[
            int,
            Meta(
                ge=0, le=32767, description="Which answer of an `n > 1` response this is about (its `index`)."
            ),
        ]
        | UnsetType
    ) = UNSET
    end_user: EndUser | None = None
    rating: Literal[1, -1] | UnsetType | None = UNSET
    score: Annotated[float, Meta(ge=0, le=1, description="Graded quality in [0, 1].")] | UnsetType | None = (
        UNSET
    )
    correction: (
        Annotated[Text, Meta(description="The answer the user says was right.")] | UnsetType | None
    ) = UNSET
    comment: Text | UnsetType | None = UNSET
    kind: (
        Annotated[
            FeedbackKind,
            Meta(
                description="Implicit feedback: `regenerated` (the user asked for another answer; "
                "`regenerated_log_id` names it), `edited` (changed the answer before using it: "
                "`edited_text`), `copied`, or an app `event` (`event` names it)."
            ),
        ]
        | UnsetType
    ) = UNSET
    edited_text: (
        Annotated[Text, Meta(description="With kind `edited`: the answer as the user edited it.")] | UnsetType
    ) = UNSET
    regenerated_log_id: (
        Annotated[Id, Meta(description="With kind `regenerated`: the log id of the new answer.")] | UnsetType
    ) = UNSET
    event: EventName | UnsetType = UNSET
    created_at: Timestamp | None = None
    metadata: JsonObject | UnsetType | None = UNSET


class FeedbackBatchIn(Struct, forbid_unknown_fields=True):
    """Several feedback items in one request."""

    feedback: Annotated[list[FeedbackIn], Meta(min_length=1)]


class ItemResult(Struct, omit_defaults=True):
    """What happened to one item of a capture request."""

    index: int
    status: Literal["accepted", "duplicate", "rejected"]
    id: str | None = None
    error: str | None = None
    field: str | None = None
    """For a rejected item: the field at fault, as `feedback[2].rating` (`feedback[2]`: the item)."""


class CaptureResult(Struct):
    """Answer to a capture request: counts and one result per item, in request order."""

    accepted: int
    duplicates: int
    rejected: int
    results: list[ItemResult]


class LogOut(Struct):
    """A stored log with the feedback attached to it so far."""

    id: str
    project: str
    created_at: datetime
    source: str
    adapter: str | None
    request: JsonObject
    response: JsonObject
    end_user: str | None
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    metadata: JsonObject | None
    feedback: list[FeedbackOut]


class FeedbackOut(Struct):
    """A stored feedback row (the current one for its log and end user)."""

    id: str
    log_id: str
    end_user: str | None
    created_at: datetime
    rating: int | None
    score: float | None
    correction: str | None
    comment: str | None
    choice: int
    regenerated: bool | None = None
    regenerated_log_id: str | None = None
    edited: str | None = None
    copied: bool | None = None
    events: list[str] | None = None
    received_at: datetime | None = None


class FeedbackWithdrawn(Struct):
    """Answer to `DELETE /v1/feedback/{id}`: the verdict the item belonged to, now cleared
    (`withdrawn`), or already empty (`unchanged`)."""

    id: str
    log_id: str
    end_user: str | None
    status: Literal["withdrawn", "unchanged"]


class ProjectIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A new project."""

    name: ProjectName
    base_model: Annotated[
        str,
        Meta(
            max_length=512,
            description="Base model the adapters are for: a name or path of the settings' vllm.models "
            "(422 naming the known ones otherwise); empty: the default, the first.",
        ),
    ] = ""


class Project(Struct):
    """A project: one adapter lineage, one model alias apps call."""

    name: str
    base_model: str
    created_at: datetime


class ModelOut(Struct, kw_only=True):
    """One model alias apps may call (OpenAI's model object). `base_model`: the `vllm.models` name
    of the base model its adapters are trained on and served by; `serving`: the version answering
    it now (its champion `project@vN`, or the base model's served name)."""

    id: str
    created: int
    base_model: str
    serving: str
    object: Literal["model"] = "model"
    owned_by: str = "ratchet"


class ModelList(Struct):
    """`GET /v1/models`: OpenAI's list of models, one per project the key may call."""

    data: list[ModelOut]
    object: Literal["list"] = "list"


class ProjectCreated(Struct):
    """A new project and its first API key, shown only this once."""

    project: Project
    api_key: str


class KeyCreated(Struct):
    """A new API key, shown only this once."""

    project: str | None
    key_id: str
    api_key: str
    scopes: list[str] = []
    name: str | None = None


class AdapterStats(Struct):
    """Live feedback for the answers one adapter version gave."""

    adapter: str | None
    logs: int
    rated: int
    thumbs_up: int
    thumbs_down: int
    thumbs_up_rate: float | None


class NewSignal(Struct, frozen=True):
    """Feedback received after `since` (None: ever), by kind. A changed thumb counts again."""

    since: datetime | None
    rated: int
    up: int
    down: int
    corrections: int

    @property
    def minority_share(self) -> float:
        """Share of the rarer thumb among the new thumbs (0 without any)."""
        thumbs = self.up + self.down
        return min(self.up, self.down) / thumbs if thumbs else 0.0


class ImplicitStats(Struct, frozen=True):
    """Implicit feedback (on logs that exist), by kind: verdicts that hold each signal."""

    regenerated: int = 0
    edited: int = 0
    copied: int = 0
    events: int = 0


class ProjectStats(Struct):
    """Counts for a project and the new signal since its last training run. Feedback counts once
    its log exists; `orphan_feedback` waits for a log that has not arrived (`stale_orphans`: for
    longer than `feedback.orphan_report_hours`)."""

    project: str
    logs: int
    feedback: int
    rated_logs: int
    thumbs_up: int
    thumbs_down: int
    corrections: int
    thumbs_up_rate: float | None
    new_rated_since_last_run: int
    new_corrections_since_last_run: int
    last_run_at: datetime | None
    by_adapter: list[AdapterStats]
    implicit: ImplicitStats = ImplicitStats()
    orphan_feedback: int = 0
    stale_orphans: int = 0


class Principal(Struct, frozen=True):
    """Who is calling: a key bound to one project, or to all (`project` None), with its scopes
    (`service.auth` says what each allows)."""

    key_id: str
    project: str | None
    scopes: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


# --- keys

ScopeName = Literal["admin", "manage", "read", "ingest"]


class KeyIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A new API key. Scopes: `ingest` (logs, feedback, gateway), `read`, `manage` (runs,
    adapters, keys, settings, deletions), `admin` (everything; all-projects keys only). A key can
    only grant scopes it holds. `project` and `all_projects` are for `POST /v1/keys`: the project
    (default: the caller's own), or, with an admin key, a key for every project."""

    scopes: (
        Annotated[
            list[ScopeName],
            Meta(
                min_length=1,
                description="What the key may do. Default: `ingest` (a project's first key has ingest, read, manage).",
            ),
        ]
        | None
    ) = None
    name: Annotated[str, Meta(max_length=128, description="A label to recognise the key by.")] | None = None
    project: ProjectName | None = None
    all_projects: bool = False


class KeyOut(Struct):
    """An API key as listed: everything but the secret, which is never stored."""

    id: str
    project: str | None
    scopes: list[str]
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None
    rotated_from: str | None
    active: bool


class KeyRotateIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """Rotate a key: a new key with the same project, scopes and name; the old one stops working
    now, or after a grace period while deployed clients switch (at most 7 days)."""

    grace_seconds: Annotated[int, Meta(ge=0, le=7 * 24 * 3600)] = 0


class KeyRotated(Struct):
    """The replacement key (shown only this once) and when the old one stops working."""

    key: KeyCreated
    replaced_key_id: str
    replaced_key_expires_at: datetime


# --- deletion


class ErasureOut(Struct):
    """What a deletion removed. `adapters_trained_on_it` were trained on a snapshot that held the
    data (their lineage is marked); `adapters_possibly_trained_on_it` were trained after the
    data arrived on a snapshot that no longer exists to check (marked as uncertain)."""

    kind: Literal["log", "end_user", "project", "retention"]
    project: str
    logs_deleted: int
    feedback_deleted: int
    snapshots_deleted: list[str]
    eval_reports_deleted: int
    adapters_trained_on_it: list[str]
    adapters_possibly_trained_on_it: list[str]
    runs_stopped: list[str] = []


# --- the offline gate's configuration (service/gate_config.py)


class GoldenSetIn(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A golden (regression) set held in the gate config: each example a prompt (or messages) with
    a reference answer and/or checks. An answer scores 1 if it matches the reference and passes
    every check."""

    examples: Annotated[
        list[GoldenLine],
        Meta(min_length=1, max_length=10_000, description="The examples, as lines of a golden JSONL file."),
    ]
    role: Annotated[Role, Meta(description="How the golden set counts in the decision.")] = "guard"
    tolerance: Annotated[
        float,
        Meta(ge=0, description="As a guard: largest tolerated drop of the pass rate (0.02 = 2 points)."),
    ] = 0.02


class GateConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the offline gate judges a project's candidates, besides the evidence from its held-out
    feedback (`feedback_gate` settings): hand-written rules, a golden set, an LLM judge, and how
    answers are generated. With no hand-written primary scorer, the feedback evidence decides."""

    rules: Annotated[
        RulesConfig | None, Meta(description="Declared checks of generated answers (regexes, length, JSON).")
    ] = None
    golden: GoldenSetIn | None = None
    judge: Annotated[
        JudgeConfig | None,
        Meta(
            description="A pairwise LLM judge on any OpenAI-compatible endpoint; with held-out feedback it "
            "decides only once calibrated on it. Its api_key is never shown again: a change that leaves it "
            "out keeps the stored one while the judge's url stays the same."
        ),
    ] = None
    generation: GenerationConfig = GenerationConfig(max_tokens=32, temperature=0.0)
    min_samples: Annotated[
        int, Meta(ge=1, description="A primary scorer needs at least this many scored examples to promote.")
    ] = 30
    level: Annotated[float, Meta(gt=0, lt=1, description="Confidence level of the bootstrap intervals.")] = (
        0.95
    )


class GateConfigOut(Struct, kw_only=True):
    """A project's gate config in effect. `version` 0: never set (the defaults)."""

    project: str
    version: int
    config: GateConfig
    judge_api_key_set: bool
    updated_at: datetime | None
    updated_by: str | None
    evidence: str
    """Which evidence the next evaluation will decide on, and why."""
