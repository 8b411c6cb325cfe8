-- Provisioned devices. Only a salted hash of each device's secret is kept.
CREATE TABLE devices (
    id          TEXT    PRIMARY KEY,
    tags        TEXT    NOT NULL,
    profile     TEXT    NOT NULL,
    secret_salt TEXT    NOT NULL,
    secret_hash TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);
