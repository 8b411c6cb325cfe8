-- The model registry: registered models, their versions with status, lineage and metrics, the
-- packages built for each version, and aliases (champion, challenger, per-fleet names).

-- One release counter for the whole registry: every version takes the next number, above any
-- release a package was uploaded with, so a device never sees a newer version with an older
-- release.
CREATE TABLE registry_counter (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    release INTEGER NOT NULL
);
INSERT INTO registry_counter (id, release) VALUES (1, 0);

CREATE TABLE models (
    name       TEXT    PRIMARY KEY,
    created_ms INTEGER NOT NULL
);

CREATE TABLE model_versions (
    model          TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    release        INTEGER NOT NULL UNIQUE,
    status         TEXT    NOT NULL, -- pending, ready, failed
    run_key        TEXT    NOT NULL,
    model_sha256   TEXT    NOT NULL,
    dataset_sha256 TEXT    NOT NULL,
    code_version   TEXT    NOT NULL,
    parent_version INTEGER,
    metrics        TEXT    NOT NULL, -- JSON object of numbers
    spec           TEXT    NOT NULL, -- JSON: the pipeline spec the run read
    gates          TEXT    NOT NULL, -- JSON: the gate results
    reason         TEXT,
    tags           TEXT    NOT NULL, -- JSON object of strings
    created_by     TEXT    NOT NULL,
    created_ms     INTEGER NOT NULL,
    finished_ms    INTEGER,
    PRIMARY KEY (model, version)
);
CREATE INDEX model_versions_run ON model_versions (model, run_key);
CREATE INDEX model_versions_dataset ON model_versions (dataset_sha256);

CREATE TABLE version_packages (
    model          TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    target         TEXT    NOT NULL,
    package_sha256 TEXT    NOT NULL,
    PRIMARY KEY (model, version, target)
);
CREATE INDEX version_packages_sha ON version_packages (package_sha256);

CREATE TABLE model_aliases (
    model      TEXT    NOT NULL,
    alias      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (model, alias)
);
