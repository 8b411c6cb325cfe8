-- Fleet-wide queries by kind and time (alerts of a site over a day), not one device's stream.
CREATE INDEX messages_by_time ON messages (kind, ts_ms);
