-- Fleet-wide queries by time are of alerts only (alerts of a site over a day, alert counts):
-- index those, not every message, so a telemetry message updates two indexes besides the
-- table instead of three (the hub's ingest under a large fleet, docs/BENCHMARKS.md).
DROP INDEX messages_by_time;
CREATE INDEX messages_alerts_by_time ON messages (ts_ms, device, seq) WHERE kind = 'alerts';
