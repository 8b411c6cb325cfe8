-- Drift of each sketch a device sent against its package's reference, and the device's
-- sequential monitor state after it (JSON), so the hub resumes where it stopped.
CREATE TABLE drift_reports (
    device        TEXT    NOT NULL,
    seq           INTEGER  NOT NULL,
    start_ms      INTEGER  NOT NULL,
    end_ms        INTEGER  NOT NULL,
    model         TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    count         INTEGER  NOT NULL,
    max_psi       REAL    NOT NULL,
    max_wasserstein REAL    NOT NULL,
    page_hinkley  REAL    NOT NULL,
    state         TEXT    NOT NULL,
    features      TEXT    NOT NULL,
    monitor       TEXT    NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX drift_by_time ON drift_reports (end_ms);
