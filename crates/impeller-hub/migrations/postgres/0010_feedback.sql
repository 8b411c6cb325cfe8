-- Technicians' verdicts on alerts: one per alert (a new verdict replaces the old). A confirmed
-- fault becomes an incident (its id kept here), so later snapshots label those rows.
CREATE TABLE alert_feedback (
    device        TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    verdict       TEXT    NOT NULL, -- confirmed or false_alarm
    work_order    TEXT    NOT NULL,
    note          TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    alert_ts_ms   BIGINT  NOT NULL,
    incident_id   BIGINT,
    created_by    TEXT    NOT NULL,
    created_ms    BIGINT  NOT NULL,
    PRIMARY KEY (device, seq)
);
