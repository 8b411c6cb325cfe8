-- Dataset snapshots made from the stored samples (their Parquet files are in the hub's
-- datasets folder, named by their hash), and incidents: labelled stretches of a device's time
-- (a confirmed fault, a test), which label the rows of the datasets made after them.
CREATE TABLE datasets (
    sha256     TEXT    PRIMARY KEY,
    selection  TEXT    NOT NULL, -- JSON: the devices, channels and time range resolved
    parts      BIGINT  NOT NULL,
    rows       BIGINT  NOT NULL,
    created_by TEXT    NOT NULL,
    created_ms BIGINT  NOT NULL
);

CREATE TABLE incidents (
    id         BIGSERIAL PRIMARY KEY,
    device     TEXT    NOT NULL,
    start_ms   BIGINT  NOT NULL,
    end_ms     BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    note       TEXT    NOT NULL,
    created_by TEXT    NOT NULL,
    created_ms BIGINT  NOT NULL
);
CREATE INDEX incidents_by_device ON incidents (device, start_ms);
