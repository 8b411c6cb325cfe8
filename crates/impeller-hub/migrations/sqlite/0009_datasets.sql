-- Dataset snapshots made from the stored samples (their Parquet files are in the hub's
-- datasets folder, named by their hash), and incidents: labelled stretches of a device's time
-- (a confirmed fault, a test), which label the rows of the datasets made after them.
CREATE TABLE datasets (
    sha256     TEXT    PRIMARY KEY,
    selection  TEXT    NOT NULL, -- JSON: the devices, channels and time range resolved
    parts      INTEGER NOT NULL,
    rows       INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE incidents (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device     TEXT    NOT NULL,
    start_ms   INTEGER NOT NULL,
    end_ms     INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    note       TEXT    NOT NULL,
    created_by TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX incidents_by_device ON incidents (device, start_ms);
