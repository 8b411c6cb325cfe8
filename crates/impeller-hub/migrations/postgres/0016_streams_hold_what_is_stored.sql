-- Each device's stream state holds what is stored beyond its acknowledged prefix ([[seq, prev,
-- ts_ms], ...]) and the time of the message the prefix ends at, so that a commit checks a
-- redelivery against this one row per device (as on SQLite, where the messages no longer have
-- a (device, seq) key; here the key stays, as a second guard).
ALTER TABLE device_streams ADD COLUMN beyond TEXT NOT NULL DEFAULT '[]';
ALTER TABLE device_streams ADD COLUMN acked_ts_ms BIGINT;
INSERT INTO device_streams (device, acked, last_seen_ms)
    SELECT device, 0, MAX(received_ms) FROM messages
    WHERE device NOT IN (SELECT device FROM device_streams) GROUP BY device;
UPDATE device_streams s SET
    beyond = COALESCE((SELECT json_agg(json_build_array(m.seq, m.prev, m.ts_ms) ORDER BY m.seq)::text
                       FROM messages m WHERE m.device = s.device AND m.seq > s.acked), '[]'),
    acked_ts_ms = (SELECT m.ts_ms FROM messages m WHERE m.device = s.device AND m.seq = s.acked);
