-- The offline gate's full report per run (JSON for machines, Markdown for people).
CREATE TABLE eval_reports (
    run_id     VARCHAR PRIMARY KEY,
    project    VARCHAR NOT NULL,
    candidate  VARCHAR NOT NULL,
    incumbent  VARCHAR NOT NULL,
    promote    BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    report     JSON NOT NULL,
    markdown   VARCHAR NOT NULL
);
