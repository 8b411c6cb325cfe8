-- Each device's alert rate against its model's validation rate, as last judged: one row per
-- device, replaced at every judgement, so a restarted hub knows which devices were elevated.
CREATE TABLE alert_rates (
    device        TEXT    PRIMARY KEY,
    model         TEXT    NOT NULL,
    model_version BIGINT  NOT NULL,
    since_seq     BIGINT  NOT NULL,
    through_seq   BIGINT  NOT NULL,
    state         TEXT    NOT NULL,
    alerts        BIGINT  NOT NULL,
    scored_ms     BIGINT  NOT NULL,
    expected      DOUBLE PRECISION NOT NULL,
    per_day       DOUBLE PRECISION NOT NULL,
    p_value       DOUBLE PRECISION NOT NULL,
    window_end_ms BIGINT  NOT NULL,
    changed_ms    BIGINT  NOT NULL,
    judged_ms     BIGINT  NOT NULL
);
