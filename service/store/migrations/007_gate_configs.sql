-- The offline gate's configuration per project, versioned: each change adds a version and the
-- newest one is in effect (`GET/PUT /v1/projects/{p}/gate`). Replaces the hand-written
-- <data_dir>/projects/<p>/eval.json, which is imported once at start when a project has no version.
CREATE TABLE gate_configs (
    project    VARCHAR NOT NULL,
    version    INTEGER NOT NULL,
    config     JSON NOT NULL,
    created_at TIMESTAMP NOT NULL,
    created_by VARCHAR,
    PRIMARY KEY (project, version)
);
