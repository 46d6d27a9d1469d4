-- Feedback that means what users meant (issue 13). A feedback row is the current verdict of one
-- end user on one log, built up by items that each update only the fields they carry.
-- Which fields the last applied item carried (`withdraw`: a DELETE that cleared the verdict).
ALTER TABLE feedback ADD COLUMN fields VARCHAR[];
-- The ids of the last items applied (client ids and generated ones): a re-sent id is a no-op,
-- and DELETE /v1/feedback/{id} finds the row by any of them.
ALTER TABLE feedback ADD COLUMN item_ids VARCHAR[];
-- Server receive times at which the rating and the correction last changed: what new-signal
-- counting reads (a later comment does not make an old thumb new again).
ALTER TABLE feedback ADD COLUMN rating_at TIMESTAMP;
ALTER TABLE feedback ADD COLUMN correction_at TIMESTAMP;
-- Implicit feedback: the user regenerated the answer (and the log id of the new one), edited it
-- before using it (the edited text), copied it, and the names of other app events.
ALTER TABLE feedback ADD COLUMN regenerated BOOLEAN;
ALTER TABLE feedback ADD COLUMN regenerated_log_id VARCHAR;
ALTER TABLE feedback ADD COLUMN edited VARCHAR;
ALTER TABLE feedback ADD COLUMN copied BOOLEAN;
ALTER TABLE feedback ADD COLUMN events VARCHAR[];
-- Whether the key that last changed the row may attribute feedback to an end user other than the
-- log's (snapshots cap by the log's end user otherwise).
ALTER TABLE feedback ADD COLUMN attributed BOOLEAN NOT NULL DEFAULT false;
UPDATE feedback SET
    item_ids = [id],
    rating_at = CASE WHEN rating IS NOT NULL THEN received_at END,
    correction_at = CASE WHEN correction IS NOT NULL THEN received_at END;
