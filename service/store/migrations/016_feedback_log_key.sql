-- Feedback ingest that does not slow down as history grows (issue 14). The primary key
-- (project, log_id, end_user) and `feedback_log_id` were two ART indexes over random text: every
-- flush's `INSERT ... ON CONFLICT DO UPDATE` probed and grew them, and every checkpoint rewrote
-- them whole (a 500-item flush took 228 ms at 1M rows, 477 ms at 2.9M). One index on a 64-bit
-- key of the log replaces both: `log_key` is `service.store.archive_index.log_keys` of
-- (project, log_id) (`ratchet_log_key`, registered by the migration runner, calls it), and the
-- writer merges a flush's patches onto the rows it reads by key (`service.store.writer`). Keys
-- can collide, so one current row per (project, log_id, end_user) is the writer's rule, not a
-- constraint; readers by key check project and log_id too. DuckDB cannot drop a primary key, so
-- the table is rebuilt with the same columns and data.
CREATE TABLE feedback_keyed (
    project            VARCHAR NOT NULL,
    log_id             VARCHAR NOT NULL,
    end_user           VARCHAR NOT NULL,
    id                 VARCHAR NOT NULL,
    created_at         TIMESTAMP NOT NULL,
    received_at        TIMESTAMP NOT NULL,
    rating             TINYINT,
    score              DOUBLE,
    correction         VARCHAR,
    comment            VARCHAR,
    metadata           JSON,
    choice             SMALLINT NOT NULL DEFAULT 0,
    fields             VARCHAR[],
    item_ids           VARCHAR[],
    rating_at          TIMESTAMP,
    correction_at      TIMESTAMP,
    regenerated        BOOLEAN,
    regenerated_log_id VARCHAR,
    edited             VARCHAR,
    copied             BOOLEAN,
    events             VARCHAR[],
    attributed         BOOLEAN NOT NULL DEFAULT false,
    log_key            UBIGINT NOT NULL
);
INSERT INTO feedback_keyed
SELECT project, log_id, end_user, id, created_at, received_at, rating, score, correction, comment, metadata,
    choice, fields, item_ids, rating_at, correction_at, regenerated, regenerated_log_id, edited, copied, events,
    attributed, ratchet_log_key(project, log_id)
FROM feedback;
DROP TABLE feedback;
ALTER TABLE feedback_keyed RENAME TO feedback;
CREATE INDEX feedback_log_key ON feedback (log_key);
