-- What each project serves: the champion, the previous champion kept loaded for instant
-- rollback, and the candidate in canary with its traffic fraction.
CREATE TABLE rollouts (
    project            VARCHAR PRIMARY KEY,
    champion           VARCHAR NOT NULL,
    previous           VARCHAR,
    candidate          VARCHAR,
    fraction           DOUBLE NOT NULL DEFAULT 0,
    canary_started_at  DOUBLE,
    updated_at         TIMESTAMP NOT NULL
);
