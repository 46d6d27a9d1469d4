-- The lake tier (service/store/archive.py): logs older than `archive.after_days` move out of this
-- file into Hive-partitioned Parquet files (project=<p>/day=<YYYY-MM-DD>/<n>.parquet). This table
-- is the manifest: readers read exactly the files it lists, in their own transaction, so a file
-- written but not yet listed (a move cut short) is invisible and deleted at the next start.
-- `state` 'moving': listed, its rows still being deleted from `logs` in small transactions;
-- readers take from it only the rows `logs` no longer holds, and a start-up finishes the deletes.
-- `first_key`: the file's rows carry `archive_key` first_key, first_key + 1, ... (negative, unique
-- across files): what readers use in place of `logs.rowid`.
CREATE TABLE archive_files (
    path        VARCHAR PRIMARY KEY,   -- relative to the archive root
    project     VARCHAR NOT NULL,
    day         DATE NOT NULL,
    rows        BIGINT NOT NULL,
    first_key   BIGINT NOT NULL,
    state       VARCHAR NOT NULL,      -- moving | done
    created_at  TIMESTAMP NOT NULL
);
CREATE SEQUENCE archive_file_seq START 1;
