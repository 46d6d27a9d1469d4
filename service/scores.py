"""Langfuse-compatible scores: `POST /api/public/scores` and `DELETE /api/public/scores/{id}`.

A score is read by `formats.langfuse` into the feedback item it stands for and written by
`Capture.write_feedback`, like any `POST /v1/feedback` item: same checks, same writer, same
semantics (it updates only the fields it carries of the verdict on its log; a re-sent `id` is a
duplicate). Deleting a score withdraws the verdict its feedback belongs to (every field of it, as
`DELETE /v1/feedback/{id}` does).
"""

from __future__ import annotations

import re
import uuid

import msgspec

from formats.langfuse import ScoreBody, ScoreError, feedback_item
from service.capture import Capture, Rejected, decode_item, rejected_by
from service.clock import utcnow
from service.domain import FeedbackIn
from service.errors import InvalidInput
from service.store.queries import Queries

_MISSING = re.compile(r"missing required field `([^`]*)`")
_decode_score = msgspec.json.Decoder(ScoreBody).decode
_encode = msgspec.json.encode


class ScoreCreated(msgspec.Struct):
    """Langfuse's answer to a created score."""

    id: str


def read_score(body: bytes) -> FeedbackIn:
    """The feedback item a Langfuse score body stands for; `InvalidInput` naming the field."""
    try:
        score = _decode_score(body)
        item = feedback_item(score)
    except msgspec.ValidationError as exc:
        why = rejected_by(exc)
        missing = _MISSING.search(why.message)
        field = missing.group(1) if missing and why.field == "$" else why.field
        raise InvalidInput(f"{field}: {why.message}", field) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", "body") from None
    except ScoreError as exc:
        raise InvalidInput(str(exc), exc.field) from None
    item["id"] = score.id or f"score-{uuid.uuid4().hex}"
    checked = decode_item(_encode(item), FeedbackIn)
    if isinstance(checked, Rejected):
        raise InvalidInput(f"{checked.field}: {checked.message}", checked.field)
    return checked  # type: ignore[no-any-return]


async def write_score(capture: Capture, project: str, body: bytes, *, may_attribute: bool) -> ScoreCreated:
    """Store a score as feedback, durably; its id (the score's own, if it gave one)."""
    item = read_score(body)
    result = await capture.write_feedback(project, [item], may_attribute=may_attribute)
    (outcome,) = result.results
    if outcome.status == "rejected":
        raise InvalidInput(outcome.error or "rejected", outcome.field)
    return ScoreCreated(str(item.id))


async def delete_score(capture: Capture, queries: Queries, project: str, score_id: str) -> None:
    """Withdraw the verdict a score's feedback belongs to; `NotFound` if no such score."""
    log_id, end_user = queries.find_feedback(project, score_id)
    await capture.withdraw_feedback(project, log_id, end_user, utcnow())
