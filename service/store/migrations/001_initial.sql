-- Ratchet's first schema. Times are UTC, stored as TIMESTAMP.
-- A project is named by its alias (the model name apps call); that name is its key everywhere.
CREATE TABLE projects (
    name        VARCHAR PRIMARY KEY,
    base_model  VARCHAR NOT NULL DEFAULT '',
    created_at  TIMESTAMP NOT NULL,
    settings    JSON NOT NULL DEFAULT '{}'
);

-- Keys are shown once and stored as sha256; `id` is the public prefix used to look one up.
-- project NULL = admin key.
CREATE TABLE api_keys (
    id          VARCHAR PRIMARY KEY,
    project     VARCHAR,
    sha256      VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    revoked_at  TIMESTAMP
);

-- Log ids are unique per project (client-supplied ids are idempotent).
CREATE TABLE logs (
    project            VARCHAR NOT NULL,
    id                 VARCHAR NOT NULL,
    created_at         TIMESTAMP NOT NULL,
    received_at        TIMESTAMP NOT NULL,
    source             VARCHAR NOT NULL,
    adapter            VARCHAR,
    request            JSON NOT NULL,
    response           JSON NOT NULL,
    latency_ms         DOUBLE,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    end_user           VARCHAR,
    metadata           JSON,
    PRIMARY KEY (project, id)
);

-- One current row per (log, end user): a changed thumb replaces the old one. No foreign key:
-- feedback for a log not yet seen is kept and joins it when it arrives. end_user '' = anonymous.
CREATE TABLE feedback (
    project     VARCHAR NOT NULL,
    log_id      VARCHAR NOT NULL,
    end_user    VARCHAR NOT NULL,
    id          VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL,
    rating      TINYINT,
    score       DOUBLE,
    correction  VARCHAR,
    comment     VARCHAR,
    metadata    JSON,
    PRIMARY KEY (project, log_id, end_user)
);

CREATE TABLE adapters (
    project          VARCHAR NOT NULL,
    version          INTEGER NOT NULL,
    served_name      VARCHAR NOT NULL,
    path             VARCHAR NOT NULL,
    parent_version   INTEGER,
    method           VARCHAR NOT NULL,
    snapshot_sha256  VARCHAR,
    state            VARCHAR NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL,
    manifest         JSON NOT NULL DEFAULT '{}',
    fingerprint      JSON,
    PRIMARY KEY (project, version)
);

CREATE TABLE runs (
    id           VARCHAR PRIMARY KEY,
    project      VARCHAR NOT NULL,
    trigger      VARCHAR NOT NULL,
    state        VARCHAR NOT NULL,
    started_at   TIMESTAMP NOT NULL,
    updated_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP,
    error        VARCHAR,
    stats        JSON NOT NULL DEFAULT '{}'
);

-- Append-only audit of every transition.
CREATE TABLE events (
    "at"     TIMESTAMP NOT NULL,
    project  VARCHAR,
    run_id   VARCHAR,
    kind     VARCHAR NOT NULL,
    detail   JSON NOT NULL DEFAULT '{}'
);
