-- Which archive file holds a log id (service/store/archive_index.py): the file's ids as sorted
-- 64-bit hashes (BLAKE2b, 8 bytes, little-endian), written in the transaction that lists the file,
-- so the writer's duplicate check and `GET /v1/logs/{id}` find an archived id without reading the
-- archive, and the lookup always matches the manifest. NULL (a file listed before this migration):
-- computed from the file at the next start.
ALTER TABLE archive_files ADD COLUMN id_hashes BLOB;
