-- Deletion and retention.
-- An adapter trained on data that was later erased says so in its lineage: a JSON list of
-- {"at", "event", "certain"} marks (never the erased person's id).
ALTER TABLE adapters ADD COLUMN erased_data JSON;
-- Files an erasure committed to deleting (snapshots, adapter directories). Written in the
-- erasure's transaction and cleared once the files are gone; a start-up after kill -9 finishes
-- what is left, so an erasure is all or nothing on disk as in the database.
CREATE TABLE pending_deletions (
    path        VARCHAR PRIMARY KEY,
    reason      VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL
);
