-- Capture normalises each log once (formats.log.normalize) into typed columns beside the raw
-- request/response; snapshots, exports and evals read these and never parse OpenAI JSON again.
-- Rows captured before this migration are normalised by the store's backfill at start-up.
ALTER TABLE logs ADD COLUMN endpoint VARCHAR;         -- chat | completions
ALTER TABLE logs ADD COLUMN messages JSON;            -- formats.log.Message list (chat)
ALTER TABLE logs ADD COLUMN tools JSON;               -- the request's tools
ALTER TABLE logs ADD COLUMN tool_choice JSON;
ALTER TABLE logs ADD COLUMN response_format JSON;
ALTER TABLE logs ADD COLUMN answers JSON;             -- formats.log.Answer list, one per choice
ALTER TABLE logs ADD COLUMN prompt_sha256 VARCHAR;    -- identity of the prompt (+ tools) for dedup and splits
ALTER TABLE logs ADD COLUMN quarantine VARCHAR;       -- why the log can never train (NULL: it can)
-- Which answer of an n > 1 response the feedback is about.
ALTER TABLE feedback ADD COLUMN choice SMALLINT NOT NULL DEFAULT 0;
