-- The audit trail: append-only records, each sealed with the hash of the one before it
-- (impeller_core::audit). Records are only ever inserted; nothing updates or deletes them.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    time_ms   BIGINT NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    artifacts TEXT    NOT NULL,
    details   TEXT    NOT NULL,
    prev      TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
-- The chain's head. Every append updates this one row first, inside the transaction of the
-- action it records, so appends are serialised and commit or roll back with their action.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
