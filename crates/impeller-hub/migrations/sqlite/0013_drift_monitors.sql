-- Each (device, model)'s drift monitor after its newest report, kept beside the reports so the
-- hub reads one row per device at start and at every retraining check instead of every report.
CREATE TABLE drift_monitors (
    device        TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    monitor       TEXT    NOT NULL,
    PRIMARY KEY (device, model)
);
INSERT INTO drift_monitors (device, model, model_version, seq, monitor)
    SELECT device, model, model_version, seq, monitor FROM drift_reports d
    WHERE seq = (SELECT MAX(seq) FROM drift_reports n WHERE n.device = d.device AND n.model = d.model);
