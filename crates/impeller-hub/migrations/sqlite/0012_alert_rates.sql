-- Each device's alert rate against its model's validation rate, as last judged: one row per
-- device, replaced at every judgement, so a restarted hub knows which devices were elevated.
CREATE TABLE alert_rates (
    device        TEXT    PRIMARY KEY,
    model         TEXT    NOT NULL,
    model_version INTEGER NOT NULL,
    since_seq     INTEGER NOT NULL,
    through_seq   INTEGER NOT NULL,
    state         TEXT    NOT NULL,
    alerts        INTEGER NOT NULL,
    scored_ms     INTEGER NOT NULL,
    expected      REAL    NOT NULL,
    per_day       REAL    NOT NULL,
    p_value       REAL    NOT NULL,
    window_end_ms INTEGER NOT NULL,
    changed_ms    INTEGER NOT NULL,
    judged_ms     INTEGER NOT NULL
);
