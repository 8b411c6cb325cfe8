-- Every message an agent sent, stored once per (device, seq).
CREATE TABLE messages (
    device      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    prev        INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX messages_by_kind ON messages (device, kind, ts_ms);

-- Per device: the acknowledged prefix (every message up to it is stored) and last contact.
CREATE TABLE device_streams (
    device       TEXT    PRIMARY KEY,
    acked        INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
