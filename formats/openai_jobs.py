"""OpenAI's Files and fine-tuning jobs API, as Ratchet serves it: the wire shapes.

https://platform.openai.com/docs/api-reference/files and
https://platform.openai.com/docs/api-reference/fine-tuning: a file object, a job create request
(`method` supervised or dpo with their hyperparameters, or the legacy top-level
`hyperparameters`), the job object, its events and the cursor-paginated lists. Times are Unix
seconds, as OpenAI sends them. A hyperparameter is a number or `"auto"` (Ratchet's default).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
Auto = Literal["auto"]
PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class FileObject(Struct, kw_only=True):
    """An uploaded file (`object: "file"`); `status` is `processed` once validated (a file that
    fails validation is refused at upload, never stored)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(Struct, kw_only=True):
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
    object: str = "list"


class FileDeleted(Struct, kw_only=True):
    id: str
    deleted: bool = True
    object: str = "file"


class SupervisedHyperparameters(
    Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    n_epochs: PositiveInt | Auto = "auto"
    batch_size: PositiveInt | Auto = "auto"
    learning_rate_multiplier: PositiveFloat | Auto = "auto"


class DpoHyperparameters(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    n_epochs: PositiveInt | Auto = "auto"
    batch_size: PositiveInt | Auto = "auto"
    learning_rate_multiplier: PositiveFloat | Auto = "auto"
    beta: PositiveFloat | Auto = "auto"


class SupervisedMethod(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    hyperparameters: SupervisedHyperparameters = SupervisedHyperparameters()


class DpoMethod(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    hyperparameters: DpoHyperparameters = DpoHyperparameters()


class Method(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """`type` names the method; its settings sit under the key of that name."""

    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class JobCreate(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """`POST /v1/fine_tuning/jobs`. `model` is the project's name (the model alias apps call);
    training starts from the project's base model. Without `method`, supervised."""

    model: str
    training_file: str
    validation_file: str | None = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = None
    """The legacy top-level form of the supervised hyperparameters."""
    suffix: Annotated[str, Meta(max_length=64)] | None = None
    """OpenAI's bound (64 characters); Ratchet also keeps it to letters, digits, `.`, `_`, `-`
    (`service.fine_tuning.SUFFIX`): it becomes part of the model's name."""
    seed: Annotated[int, Meta(ge=0, le=2_147_483_647)] | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None


class JobError(Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(Struct, kw_only=True, omit_defaults=True):
    """The job's hyperparameters as they were applied (numbers once training chose them)."""

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    beta: float | Auto | None = None


class Job(Struct, kw_only=True):
    """A fine-tuning job (`object: "fine_tuning.job"`). `fine_tuned_model` is the name the
    gateway answers to once the job has `succeeded`: the version's (`project@vN`), or with the
    job's suffix `project:suffix@vN` (the same version), as OpenAI puts the suffix in the name.
    `status` is `queued` while the job waits for its project's run to end."""

    id: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    status: JobStatus
    hyperparameters: Hyperparameters
    method: dict[str, Any]
    seed: int
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    user_provided_suffix: str | None = None
    metadata: dict[str, str] | None = None
    result_files: list[str] = []
    organization_id: str = "ratchet"
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    object: str = "fine_tuning.job"


class JobList(Struct, kw_only=True):
    data: list[Job]
    has_more: bool
    object: str = "list"


class JobEvent(Struct, kw_only=True):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None
    object: str = "fine_tuning.job.event"


class JobEventList(Struct, kw_only=True):
    data: list[JobEvent]
    has_more: bool
    object: str = "list"


class OpenAIError(Struct, kw_only=True, omit_defaults=True):
    """`detail`: Ratchet's own addition where it has more to say (a refused file's bad lines)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    detail: Any = None


class OpenAIErrorBody(Struct, kw_only=True):
    """OpenAI's error body, which its clients read the message from."""

    error: OpenAIError
