-- Fine-tuning jobs queue as on OpenAI (service/fine_tuning.py): a job created while its project
-- has a run going is stored without a run (`run_id` NULL, status `queued`) and gets one when the
-- project is free, oldest first; `cancelled_at` is set when a queued job is cancelled before it
-- ever ran. `result_file`: the job's metrics (step, training and validation loss) as a CSV file
-- of purpose `fine-tune-results`, kept when the job succeeds (OpenAI's `result_files`).
-- DuckDB cannot alter a table with an index on it: the index is dropped and rebuilt.
DROP INDEX fine_tuning_jobs_project;
ALTER TABLE fine_tuning_jobs ALTER COLUMN run_id DROP NOT NULL;
ALTER TABLE fine_tuning_jobs ADD COLUMN cancelled_at TIMESTAMP;
ALTER TABLE fine_tuning_jobs ADD COLUMN result_file VARCHAR;
CREATE INDEX fine_tuning_jobs_project ON fine_tuning_jobs (project, created_at);
