-- Point reads (`GET /v1/logs/{id}`: a log and its feedback) go through these single-column ART
-- indexes: DuckDB 2.0 plans no index scan on the composite primary keys, and a sequential scan
-- costs ~2.5 s at 10M logs. The planner only picks an index scan when the indexed column is the
-- scan's one filter, so `Queries.get_log` filters the project after it (a materialized CTE).
-- Cost: every checkpoint rewrites a random-key ART whole (about +0.3-0.8 s per checkpoint at
-- 1-3M logs), and building them on an existing 10M-log file takes ~4.5 minutes, once.
CREATE INDEX logs_id ON logs (id);
CREATE INDEX feedback_log_id ON feedback (log_id);
