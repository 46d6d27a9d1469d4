-- Gateway requests that vLLM failed or refused, per project and adapter version (issue 15): the
-- online gate's error-rate guard counts them against the canary and the champion. A failure that
-- still left a log (a stream broken mid-answer) names it in `log_id`; the others have no log, so
-- an arm's requests are its logs plus its failures without one. No user data: times and reasons.
CREATE TABLE upstream_failures (
    project    VARCHAR NOT NULL,
    id         VARCHAR NOT NULL,
    failed_at  TIMESTAMP NOT NULL,
    adapter    VARCHAR NOT NULL,
    reason     VARCHAR NOT NULL,
    log_id     VARCHAR
);
