-- OpenAI's fine-tuning API (service/fine_tuning.py). `files`: uploaded files, validated before
-- they are listed; the content lives at `path` (under <data_dir>/projects/<project>/files/, so a
-- project's deletion takes it). `fine_tuning_jobs`: one row per job, its run in `runs`; a job's
-- status, model and error are read from its run, so they cannot disagree.
CREATE TABLE files (
    id          VARCHAR PRIMARY KEY,
    project     VARCHAR NOT NULL,
    purpose     VARCHAR NOT NULL,
    filename    VARCHAR NOT NULL,
    bytes       BIGINT NOT NULL,
    format      VARCHAR NOT NULL,      -- openai-chat | openai-preference
    lines       BIGINT NOT NULL,       -- rows of the file (blank lines not counted)
    sha256      VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL
);
CREATE INDEX files_project ON files (project, created_at);
CREATE TABLE fine_tuning_jobs (
    id          VARCHAR PRIMARY KEY,
    project     VARCHAR NOT NULL,
    run_id      VARCHAR NOT NULL,
    request     JSON NOT NULL,         -- the job as created (formats.openai_jobs.JobCreate)
    hyperparameters JSON NOT NULL,     -- as applied, `auto` resolved (formats.openai_jobs.Hyperparameters)
    created_at  TIMESTAMP NOT NULL
);
CREATE INDEX fine_tuning_jobs_project ON fine_tuning_jobs (project, created_at);
