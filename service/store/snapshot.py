"""Cut a training snapshot: `train.parquet`, `holdout.parquet` and `manifest.json` (the contract is
`formats.snapshot`: one `SnapshotRow` per (log, feedback) pair, schema version 2).

The one place where data is cleaned before training (DESIGN.md, Contracts):
1. select every (log, current feedback) pair in [since, until) that carries a signal (a rating,
   score or correction; a blank correction or edited text is none: `service.store.given_text`);
   a log capture quarantined (`logs.quarantine`: media prompt, token prompt, legacy function
   call, shape error) is counted by reason and set aside;
2. drop identical examples (same prompt, answer, rating and correction, by `prompt_sha256` and a
   hash of the answers and the chosen choice): a thousand fake users posting the same thumb count
   once;
3. cap each end user's share, keeping their newest rows (a user spamming thumbs cannot steer);
   then bound the whole: beyond `max_train_examples` training rows (plus the holdout's share),
   keep the newest rows and a random replay of older ones (`replay_fraction`), so a run's cost
   follows new data, not history, while older behaviour is still rehearsed;
4. split: by time, the newest `holdout_fraction` is the holdout (each end user capped again on
   the holdout's own size, so a user flooding just before the cut cannot fill the slice the
   offline gate judges by) and training rows whose prompt
   also appears in the holdout are dropped, so the gate never scores a prompt the model trained
   on. When that would drop most training rows because prompts repeat (an app with a few fixed
   prompts), whole prompts are held out instead, newest first (`stats.split = "prompt_groups"`);
5. stream the selected rows' text, decode it with the shared shape Structs (`formats.log`), set
   aside (quarantine) a row that cannot become an example (unreadable JSON, a feedback `choice`
   the response lacks), scrub PII from every decoded string (`service.pii`), and write Parquet row
   groups.

Steps 1-4 run in SQL on narrow columns (row ids, end users, times, hashes: never text); step 5
reads the logs' text once, in storage order, `batch_rows` at a time, so memory follows the batch
size, not the history. Everything runs in one read transaction: the rows selected are the rows
read. The directory appears all at once (temporary sibling, fsync, rename).
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow.parquet as pq

from formats.chat import Tool
from formats.log import Answer, Message
from formats.snapshot import (
    ARROW_SCHEMA,
    FILES,
    MANIFEST,
    SNAPSHOT_SCHEMA_VERSION,
    SnapshotFile,
    SnapshotManifest,
    SnapshotRow,
    SnapshotStats,
    file_sha256,
    rows_to_table,
    snapshot_sha256,
)
from service.config import FeedbackSettings, SnapshotSettings
from service.durable_files import fsync_tree
from service.pii import Scrubber, scrubber_for
from service.store.archive import Archive
from service.store.db import Database, rowid_ranges
from service.store.given_text import given_text

# Step 1, narrow: the keys of every signal-carrying (log, feedback) pair, with what dedup, the
# cap and the split need. `dup_rank` 1 is the newest of identical examples. Implicit feedback
# becomes a rating (a regenerate: down; a copy: up; app events: by their weights) or a correction
# (an edit) with its weight, unless the user gave that explicitly. A log's time is the client's
# `created_at`, but never later than the server received it: a future timestamp cannot hide a log
# from a snapshot cut now. The poisoning cap's end user is the log's, unless the feedback came
# from a key allowed to attribute (`attributed`). A blank correction or edited text (stored before
# capture refused them) is no text at all (`given_text`).
_SELECT = f"""
CREATE OR REPLACE TEMP TABLE snap_joined AS
SELECT *, row_number() OVER (
        PARTITION BY quarantine IS NULL, prompt_key, answer_key, rating, correction, pair_rowid
        ORDER BY created_at DESC, log_id, feedback_user) AS dup_rank
FROM (
    SELECT log_rowid, log_id, feedback_user, choice,
        coalesce(rating, CASE WHEN implicit > 0 THEN 1 WHEN implicit < 0 THEN -1 END) AS rating,
        score, coalesce(correction, edit) AS correction,
        CASE WHEN rating IS NOT NULL OR score IS NOT NULL OR correction IS NOT NULL THEN 1.0
             WHEN edit IS NOT NULL THEN $edited_weight
             ELSE least(abs(implicit), 1.0) END AS weight,
        CASE WHEN correction IS NULL AND edit IS NULL THEN pair_rowid END AS pair_rowid,
        signals, end_user, created_at, prompt_key, answer_key, quarantine
    FROM (
        SELECT l.rowid AS log_rowid, l.id AS log_id, f.end_user AS feedback_user, f.choice AS choice,
            f.rating AS rating, f.score AS score, {given_text("f.correction")} AS correction,
            CASE WHEN $edited_weight > 0 THEN {given_text("f.edited")} END AS edit,
            - $regenerated_weight * coalesce(f.regenerated, false)::INTEGER
              + $copied_weight * coalesce(f.copied, false)::INTEGER
              + coalesce((SELECT sum(w.weight) FROM snap_event_weights w WHERE list_contains(f.events, w.name)), 0)
              AS implicit,
            list_filter([CASE WHEN f.regenerated THEN 'regenerated' END, CASE WHEN {given_text("f.edited")} IS NOT NULL THEN 'edited' END,
                         CASE WHEN f.copied THEN 'copied' END], lambda x: x IS NOT NULL)
              || list_transform(coalesce(f.events, []), lambda e: 'event:' || e) AS signals,
            CASE WHEN f.attributed AND f.end_user <> '' THEN f.end_user
                 ELSE coalesce(nullif(l.end_user, ''), nullif(f.end_user, '')) END AS end_user,
            least(l.created_at, l.received_at) AS created_at,
            CASE WHEN l2.rowid IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM feedback f2 WHERE f2.project = l2.project AND f2.log_id = l2.id
                    AND (f2.rating = -1 OR f2.regenerated)) THEN l2.rowid END AS pair_rowid,
            hash(l.prompt_sha256) AS prompt_key,
            hash(l.answers, f.choice) AS answer_key,
            CASE WHEN l.quarantine IS NOT NULL THEN l.quarantine
                 WHEN l.answers IS NULL THEN 'not_normalized' END AS quarantine
        FROM logs l JOIN feedback f ON f.project = l.project AND f.log_id = l.id
        LEFT JOIN logs l2 ON $regenerated_pairs AND f.regenerated AND l2.project = l.project
            AND l2.id = f.regenerated_log_id AND l2.quarantine IS NULL AND l2.answers IS NOT NULL
        WHERE l.project = $project AND least(l.created_at, l.received_at) >= $since
          AND least(l.created_at, l.received_at) < $until
    )
    WHERE rating IS NOT NULL OR score IS NOT NULL OR correction IS NOT NULL OR edit IS NOT NULL OR implicit <> 0
)
"""

# Step 5, one range of log row ids: the text of the selected rows, in storage order.
_READ = """
SELECT s.is_holdout, s.log_id, s.choice, s.rating, s.score, s.correction, s.end_user, s.weight, s.signals,
       l.endpoint, l.messages, l.tools, l.tool_choice, l.response_format, l.answers, least(l.created_at, l.received_at), l.adapter, s.pair_rowid
FROM snap_split s JOIN logs l ON l.rowid = s.log_rowid
WHERE s.log_rowid >= $lo AND s.log_rowid < $hi AND l.rowid >= $lo AND l.rowid < $hi
ORDER BY s.log_rowid, s.feedback_user
"""

_decode_messages = msgspec.json.Decoder(list[Message]).decode
_decode_answers = msgspec.json.Decoder(list[Answer]).decode
_decode_tools = msgspec.json.Decoder(list[Tool]).decode
_decode_any = msgspec.json.Decoder().decode


def export_snapshot(
    db: Database,
    project: str,
    out_dir: Path,
    settings: SnapshotSettings,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    scrubber: Scrubber | None = None,
    feedback: FeedbackSettings | None = None,
    archive: Archive | None = None,
) -> SnapshotManifest:
    """Write the project's cleaned feedback on logs of [since, until) to `out_dir` (replacing it;
    a log's time is its `created_at`, capped at when the server received it); return the manifest. Implicit feedback is weighed by `feedback` (default: the defaults).
    PII is scrubbed with `scrubber`, or the settings' shared one when `settings.scrub_pii`
    (`service.pii.PiiSetupError` if it cannot be built). With `archive`, archived logs are read
    too (`logs` below is then the table and the archive as one relation)."""
    feedback = feedback or FeedbackSettings()
    if scrubber is None and settings.scrub_pii:
        scrubber = scrubber_for(settings)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = {
        "project": project,
        "since": since or datetime.min,
        "until": until or now,
        "regenerated_weight": feedback.regenerated_weight,
        "copied_weight": feedback.copied_weight,
        "edited_weight": feedback.edited_weight,
        "regenerated_pairs": feedback.regenerated_pairs,
    }
    cur = db.cursor()
    try:
        cur.execute("BEGIN TRANSACTION")
        if archive is not None:
            archive.shadow_logs(cur, project)
        cur.execute("CREATE OR REPLACE TEMP TABLE snap_event_weights (name VARCHAR, weight DOUBLE)")
        if feedback.event_weights:
            cur.executemany(
                "INSERT INTO snap_event_weights VALUES (?, ?)", list(feedback.event_weights.items())
            )
        stats = _select(cur, params, settings)
        files = _write(cur, tmp, stats, settings.batch_rows, scrubber)
        cur.execute("ROLLBACK")  # read only; drops the temporary tables
    finally:
        cur.close()
    manifest = SnapshotManifest(
        schema_version=SNAPSHOT_SCHEMA_VERSION,
        project=project,
        created_at=now,
        files=files,
        sha256=snapshot_sha256(files),
        stats=stats,
        since=since,
        until=until or now,
    )
    (tmp / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    fsync_tree(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return manifest


def _select(
    cur: duckdb.DuckDBPyConnection, params: dict[str, Any], settings: SnapshotSettings
) -> SnapshotStats:
    """Steps 1-4: leave the chosen rows in `snap_split` (ordered by log row id); return the counts."""
    cur.execute(_SELECT, params)
    by_reason = cur.execute(
        "SELECT quarantine, count(*) FROM snap_joined GROUP BY quarantine ORDER BY quarantine NULLS FIRST"
    ).fetchall()
    joined = sum(n for _, n in by_reason)
    quarantined = {reason: n for reason, n in by_reason if reason is not None}
    (deduped,) = cur.execute(
        "SELECT count(*) FROM snap_joined WHERE quarantine IS NULL AND dup_rank = 1"
    ).fetchone()
    per_user = [
        n
        for (n,) in cur.execute(
            "SELECT count(*) FROM snap_joined WHERE quarantine IS NULL AND dup_rank = 1"
            " GROUP BY coalesce(end_user, '')"
        ).fetchall()
    ]
    cap = user_cap(per_user, settings.max_user_share, settings.min_user_cap)
    capped = _cap_per_user(cur, cap)
    kept = _bound(cur, capped, settings, seed=str(params["until"]))
    split, dropped_in_holdout, holdout_cap = _split(cur, kept, settings)
    (largest,) = cur.execute(
        "SELECT coalesce(max(n) / sum(n), 0) FROM (SELECT count(*) AS n FROM snap_split GROUP BY coalesce(end_user, ''))"
    ).fetchone()
    return SnapshotStats(
        largest_user_share=float(largest),
        joined_rows=joined,
        quarantined=quarantined,
        dropped_duplicates=joined - sum(quarantined.values()) - deduped,
        user_cap=cap,
        dropped_user_cap=deduped - capped,
        holdout_user_cap=holdout_cap,
        split=split,
        dropped_prompt_in_holdout=dropped_in_holdout,
        dropped_history=capped - kept,
    )


def user_cap(per_user: list[int], max_share: float, min_cap: int) -> int:
    """The most rows each end user may keep so that none holds more than `max_share` of what is
    kept (the kept total shrinks as the cap bites: a cap on the uncapped total lets one heavy user
    keep most of a snapshot), but at least `min_cap`. `per_user`: each user's rows."""
    counts = sorted(per_user)
    if not counts:
        return min_cap

    def fits(cap: int) -> bool:
        kept = sum(min(n, cap) for n in counts)
        return cap <= max_share * kept

    lo, hi = 0, counts[-1]  # fits(0) holds; find the largest cap that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return max(min_cap, lo)


def _cap_per_user(cur: duckdb.DuckDBPyConnection, cap: int) -> int:
    """Step 3: `snap_kept` holds the deduplicated rows, each end user's newest `cap` at most, with
    `seq` numbering them oldest first. Returns how many. Rows without an end user are capped as
    one group: nothing says they come from different people."""
    cur.execute(
        """
        CREATE OR REPLACE TEMP TABLE snap_kept AS
        SELECT * EXCLUDE (dup_rank, quarantine, answer_key),
               row_number() OVER (ORDER BY created_at, log_id, feedback_user) AS seq
        FROM (
            SELECT * FROM snap_joined WHERE quarantine IS NULL AND dup_rank = 1
            QUALIFY row_number() OVER (
                PARTITION BY coalesce(end_user, '') ORDER BY created_at DESC, log_id, feedback_user) <= $cap
        )
        """,
        {"cap": cap},
    )
    cur.execute("DROP TABLE snap_joined")
    return int(cur.execute("SELECT count(*) FROM snap_kept").fetchone()[0])


def _bound(cur: duckdb.DuckDBPyConnection, kept: int, settings: SnapshotSettings, *, seed: str) -> int:
    """Step 3b: when `snap_kept` holds more rows than `max_train_examples` plus the holdout's
    share, keep its newest rows and a sample of `replay_fraction * max_train_examples` older ones
    (random, seeded by the snapshot's end so each run rehearses different old rows; the same cut
    gives the same sample), renumbering `seq`. Returns how many rows are left.

    The newest rows number at least the holdout, so the time split still holds out the newest."""
    bound = settings.max_train_examples
    if not bound:
        return kept
    total = math.ceil(bound / (1 - settings.holdout_fraction))
    if kept <= total:
        return kept
    replay = math.floor(settings.replay_fraction * bound)
    cur.execute(
        """
        CREATE OR REPLACE TEMP TABLE snap_bounded AS
        SELECT * EXCLUDE (seq), row_number() OVER (ORDER BY created_at, log_id, feedback_user) AS seq
        FROM (
            SELECT * FROM snap_kept WHERE seq > $old
            UNION ALL
            (SELECT * FROM snap_kept WHERE seq <= $old ORDER BY hash(log_id, feedback_user, $seed) LIMIT $replay)
        )
        """,
        {"old": kept - (total - replay), "replay": replay, "seed": seed},
    )
    cur.execute("DROP TABLE snap_kept")
    cur.execute("ALTER TABLE snap_bounded RENAME TO snap_kept")
    return total


def _split(cur: duckdb.DuckDBPyConnection, kept: int, settings: SnapshotSettings) -> tuple[Any, int, int]:
    """Step 4: `snap_split` holds the rows that go to a file, `is_holdout` saying which. Returns the
    kind of split, the training rows dropped because their prompt is in the holdout, and the
    holdout's per-user cap.

    The time split's holdout is the newest rows, each end user's newest `holdout cap` at most
    (`max_user_share` of the holdout, at least `min_user_cap` scaled by `holdout_fraction`): step 3
    keeps each user's newest rows, so a user flooding just before the cut would otherwise fill the
    slice the offline gate judges by. Their rows over it stay training candidates (still under
    the snapshot's cap)."""
    n_holdout = math.ceil(settings.holdout_fraction * kept) if kept else 0
    cap = max(
        math.ceil(settings.min_user_cap * settings.holdout_fraction),
        math.floor(settings.max_user_share * n_holdout),
    )
    cur.execute(
        """
        CREATE OR REPLACE TEMP TABLE snap_cut AS
        SELECT seq FROM (
            SELECT seq, end_user, row_number() OVER (PARTITION BY end_user ORDER BY seq DESC) AS nth FROM snap_kept
        ) WHERE end_user IS NULL OR nth <= $cap
        ORDER BY seq DESC LIMIT $n_holdout
        """,
        {"cap": cap, "n_holdout": n_holdout},
    )
    held = "seq IN (SELECT seq FROM snap_cut)"
    first = kept - n_holdout  # training candidates of the time split
    (dropped,) = cur.execute(
        f"SELECT count(*) FROM snap_kept WHERE NOT {held}"
        f" AND prompt_key IN (SELECT prompt_key FROM snap_kept WHERE {held})"
    ).fetchone()
    held_prompts = """
        WITH g AS (SELECT prompt_key, count(*) AS n, max(seq) AS newest FROM snap_kept GROUP BY prompt_key),
        r AS (SELECT prompt_key,
                     coalesce(sum(n) OVER (ORDER BY newest DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                       AS before,
                     row_number() OVER (ORDER BY newest DESC) AS rank, count(*) OVER () AS groups
              FROM g)
        SELECT prompt_key FROM r WHERE before < $n_holdout AND rank < groups"""
    if 2 * dropped > first:  # the time split would drop most training rows: prompts repeat
        (held_rows,) = cur.execute(
            f"SELECT count(*) FROM snap_kept WHERE prompt_key IN ({held_prompts})", {"n_holdout": n_holdout}
        ).fetchone()
        if held_rows and kept - held_rows > first - dropped:  # one prompt alone cannot be held out
            cur.execute(f"CREATE OR REPLACE TEMP TABLE snap_held AS {held_prompts}", {"n_holdout": n_holdout})
            _keep(cur, "prompt_key IN (SELECT prompt_key FROM snap_held)", "TRUE", {})
            return "prompt_groups", 0, cap
    _keep(cur, held, f"{held} OR prompt_key NOT IN (SELECT prompt_key FROM snap_kept WHERE {held})", {})
    return "time", int(dropped), cap


def _keep(cur: duckdb.DuckDBPyConnection, holdout: str, keep: str, params: dict[str, Any]) -> None:
    cur.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE snap_split AS
        SELECT log_rowid, log_id, feedback_user, choice, rating, score, correction, end_user, weight, signals,
               pair_rowid, ({holdout}) AS is_holdout
        FROM snap_kept WHERE {keep}
        ORDER BY log_rowid, feedback_user
        """,
        params,
    )


@dataclass
class _Files:
    """The two Parquet writers of a snapshot and what went into them."""

    directory: Path
    writers: dict[str, pq.ParquetWriter] = field(default_factory=dict)
    rows: Counter[str] = field(default_factory=Counter)

    def write(self, name: str, rows: list[SnapshotRow]) -> None:
        if not rows:
            return
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(self.directory / name, ARROW_SCHEMA, compression="zstd")
        self.writers[name].write_table(rows_to_table(rows))
        self.rows[name] += len(rows)

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def close(self) -> dict[str, SnapshotFile]:
        files = {}
        for name in FILES:
            if name not in self.writers:  # an empty file still has the schema
                self.writers[name] = pq.ParquetWriter(self.directory / name, ARROW_SCHEMA, compression="zstd")
            self.writers[name].close()
            files[name] = SnapshotFile(rows=self.rows[name], sha256=file_sha256(self.directory / name))
        return files


def _write(
    cur: duckdb.DuckDBPyConnection,
    directory: Path,
    stats: SnapshotStats,
    batch_rows: int,
    scrubber: Scrubber | None,
) -> dict[str, SnapshotFile]:
    """Step 5: stream the rows of `snap_split` into the two files; count quarantine and PII in `stats`."""
    files = _Files(directory)
    quarantined: Counter[str] = Counter(stats.quarantined)
    # The kept second answers of regenerates (few: each is read once, here).
    pairs = dict(
        cur.execute(
            "SELECT rowid, answers FROM logs WHERE rowid IN (SELECT pair_rowid FROM snap_split)"
        ).fetchall()
    )
    try:
        for lo, hi in rowid_ranges(cur, "snap_split", batch_rows):
            batch: dict[str, list[SnapshotRow]] = {name: [] for name in FILES}
            for record in cur.execute(_READ, {"lo": lo, "hi": hi}).fetchall():
                made = _example(record, scrubber, pairs)
                if isinstance(made, str):
                    quarantined[made] += 1
                    continue
                row, scrubbed = made
                stats.pii_scrubbed_rows += scrubbed
                batch[FILES[1] if record[0] else FILES[0]].append(row)
            for name, rows in batch.items():
                files.write(name, rows)
    except BaseException:
        files.abort()
        raise
    result = files.close()
    stats.quarantined = dict(sorted(quarantined.items()))
    stats.train_rows = result[FILES[0]].rows
    stats.holdout_rows = result[FILES[1]].rows
    return result


def _example(
    record: tuple[Any, ...], scrubber: Scrubber | None, pairs: dict[int, str]
) -> tuple[SnapshotRow, bool] | str:
    """One selected row as a training example (and whether scrubbing changed it), or the reason it
    cannot be one. A regenerated answer whose replacement was kept (`pairs`: that log's answers)
    takes the replacement's text as its correction: a preference pair."""
    (_, log_id, choice, rating, score, correction, end_user, weight, signals, endpoint, messages, tools,
     tool_choice, response_format, answers, created_at, adapter, pair_rowid) = record  # fmt: skip
    try:
        answer = next((a for a in _decode_answers(answers) if a.index == choice), None)
        if answer is None:
            return "no_such_choice"
        prompt: list[Message] | str | None = (
            _decode_messages(messages) if endpoint == "chat" and messages is not None else answer.prompt
        )
        decoded_tools = _decode_tools(tools) if tools is not None else None
        decoded_choice = _decode_any(tool_choice) if tool_choice is not None else None
        decoded_format = _decode_any(response_format) if response_format is not None else None
        if correction is None and pair_rowid in pairs:
            kept = next((a for a in _decode_answers(pairs[pair_rowid]) if a.index == 0), None)
            correction = kept.message.content if kept is not None and kept.problem is None else None
    except msgspec.MsgspecError:
        return "unreadable_json"
    if prompt is None:
        return "no_prompt_text"
    completion = answer.message
    scrubbed = False
    if scrubber is not None:
        clean_prompt = scrubber.scrub(prompt) if isinstance(prompt, str) else scrubber.scrub_messages(prompt)
        clean_completion = scrubber.scrub_message(completion)
        clean_correction = scrubber.scrub(correction) if correction else correction
        scrubbed = (
            clean_prompt != prompt or clean_completion is not completion or clean_correction != correction
        )
        prompt, completion, correction = clean_prompt, clean_completion, clean_correction
    row = SnapshotRow(
        log_id=log_id,
        prompt=prompt,
        completion=completion,
        created_at=created_at,
        tools=decoded_tools or None,
        tool_choice=decoded_choice,
        response_format=decoded_format,
        problem=answer.problem,
        choice=choice,
        rating=rating,
        score=score,
        correction=correction,
        end_user=end_user,
        adapter=adapter,
        weight=weight,
        signals=signals or None,
    )
    return row, scrubbed
