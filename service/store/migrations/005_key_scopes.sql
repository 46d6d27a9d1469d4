-- Scoped, nameable, rotatable keys. A key holds a list of scopes: `admin` (everything, all
-- projects), `manage` (runs, adapters, keys, settings, deletions), `read` (logs, stats, runs,
-- exports), `ingest` (logs, feedback, the gateway). Keys made before scopes existed keep what
-- they could do: admin keys stay admin, project keys get ingest + read + manage.
ALTER TABLE api_keys ADD COLUMN scopes VARCHAR[];
UPDATE api_keys SET scopes = CASE WHEN project IS NULL THEN ['admin'] ELSE ['ingest', 'read', 'manage'] END;
ALTER TABLE api_keys ADD COLUMN name VARCHAR;
-- Flushed from memory now and then, not written on every request.
ALTER TABLE api_keys ADD COLUMN last_used_at TIMESTAMP;
-- A rotated key keeps working until expires_at (the grace period), then stops like a revoked one.
ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMP;
ALTER TABLE api_keys ADD COLUMN rotated_from VARCHAR;
