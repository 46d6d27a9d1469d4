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
-- An erasure in progress. Rows are deleted in small transactions (a DuckDB commit that deletes
-- from a table with a VARCHAR primary key costs ~0.3 ms per row at 1M rows, and holds every other
-- commit meanwhile), so the commit point of an erasure is the one that records this job with its
-- event, adapter marks and files; the job runs to its end, and a start-up after kill -9 finishes
-- it before serving. `params` names what to delete (an end user's id stays only until the job ends).
CREATE TABLE erasure_jobs (
    id          VARCHAR PRIMARY KEY,
    project     VARCHAR NOT NULL,
    kind        VARCHAR NOT NULL,
    params      JSON NOT NULL,
    created_at  TIMESTAMP NOT NULL
);
