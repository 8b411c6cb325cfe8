-- Drift of each sketch a device sent against its package's reference, and the device's
-- sequential monitor state after it (JSON), so the hub resumes where it stopped.
CREATE TABLE drift_reports (
    device        TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    start_ms      BIGINT  NOT NULL,
    end_ms        BIGINT  NOT NULL,
    model         TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    count         BIGINT  NOT NULL,
    max_psi       DOUBLE PRECISION    NOT NULL,
    max_wasserstein DOUBLE PRECISION    NOT NULL,
    page_hinkley  DOUBLE PRECISION    NOT NULL,
    state         TEXT    NOT NULL,
    features      TEXT    NOT NULL,
    monitor       TEXT    NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX drift_by_time ON drift_reports (end_ms);
