-- Each device's stream state holds what is stored beyond its acknowledged prefix ([[seq, prev,
-- ts_ms], ...]) and the time of the message the prefix ends at, so that a commit checks a
-- redelivery against this one row per device instead of a (device, seq) key on every message:
-- that key cost a random index page per device per commit, about half of what the single
-- writer did under a large fleet (docs/BENCHMARKS.md, hub ingestion).
ALTER TABLE device_streams ADD COLUMN beyond TEXT NOT NULL DEFAULT '[]';
ALTER TABLE device_streams ADD COLUMN acked_ts_ms INTEGER;
INSERT INTO device_streams (device, acked, last_seen_ms)
    SELECT device, 0, MAX(received_ms) FROM messages
    WHERE device NOT IN (SELECT device FROM device_streams) GROUP BY device;
UPDATE device_streams SET
    beyond = (SELECT json_group_array(json_array(seq, prev, ts_ms) ORDER BY seq) FROM messages
              WHERE device = device_streams.device AND seq > device_streams.acked),
    acked_ts_ms = (SELECT ts_ms FROM messages WHERE device = device_streams.device
                   AND seq = device_streams.acked);

-- The messages again, without the (device, seq) key: rows are appended, and the one index that
-- every message updates is the one the queries need (device, kind, time; seq too, so that seq
-- ranges read the index alone).
CREATE TABLE messages_appended (
    device      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    prev        INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    received_ms INTEGER NOT NULL
);
INSERT INTO messages_appended (device, seq, prev, ts_ms, kind, body, received_ms)
    SELECT device, seq, prev, ts_ms, kind, body, received_ms FROM messages ORDER BY rowid;
DROP TABLE messages;
ALTER TABLE messages_appended RENAME TO messages;
CREATE INDEX messages_by_kind ON messages (device, kind, ts_ms, seq);
CREATE INDEX messages_alerts_by_time ON messages (ts_ms, device, seq) WHERE kind = 'alerts';
CREATE INDEX messages_sketches ON messages (device, seq) WHERE kind = 'sketches';
