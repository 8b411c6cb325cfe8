-- The sketches alone, by device and seq (a partial index: the other messages are not in it, so
-- ingest pays for a sketch every few minutes per device, not for every message), so the drift
-- task reads each device's new sketches instead of scanning every sketch ever stored.
CREATE INDEX messages_sketches ON messages (device, seq) WHERE kind = 'sketches';
