-- Ingestion keeps each device's stream in memory and writes the stream rows of the devices that
-- sent every few seconds, not in every commit (rewriting them was a quarter of the single
-- writer's work under a large fleet). `through_rowid` is the last message the rows account for;
-- whoever reads the rows applies the messages after it.
CREATE TABLE streams_written (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    through_rowid INTEGER NOT NULL
);
INSERT INTO streams_written (id, through_rowid) VALUES (1, COALESCE((SELECT MAX(rowid) FROM messages), 0));
