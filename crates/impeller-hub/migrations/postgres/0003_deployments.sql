-- Operators' API tokens. Only a salted hash of each token's secret is kept.
CREATE TABLE api_tokens (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    secret_salt TEXT    NOT NULL,
    secret_hash TEXT    NOT NULL,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);

-- Signed model packages uploaded to the hub; the file is in the artifact store under its hash.
CREATE TABLE packages (
    sha256      TEXT    PRIMARY KEY,
    size        BIGINT NOT NULL,
    model       TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    release     BIGINT NOT NULL,
    target      TEXT    NOT NULL,
    signed_by   TEXT    NOT NULL,
    uploaded_ms BIGINT NOT NULL
);

-- Which package which devices should run. Stopped deployments stay for the record.
CREATE TABLE deployments (
    name             TEXT    PRIMARY KEY,
    package_sha256   TEXT    NOT NULL REFERENCES packages (sha256),
    target_condition TEXT    NOT NULL,
    priority         BIGINT NOT NULL,
    created_ms       BIGINT NOT NULL,
    stopped_ms       BIGINT
);

-- The desired state last published to each device.
CREATE TABLE desired (
    device         TEXT    PRIMARY KEY,
    deployment     TEXT    NOT NULL,
    package_sha256 TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    published_ms   BIGINT NOT NULL
);

-- Each device's latest report on an update (from its `update` events), newest seq wins.
CREATE TABLE device_updates (
    device          TEXT    PRIMARY KEY,
    seq             BIGINT NOT NULL,
    deployment      TEXT    NOT NULL,
    package_sha256  TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    reason          TEXT,
    running_release BIGINT,
    ts_ms           BIGINT NOT NULL
);
