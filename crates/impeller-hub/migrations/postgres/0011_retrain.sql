-- Retraining policies, one per registered model: the policy (TOML), the pipeline spec it runs
-- (TOML, its data replaced by each snapshot) with the target profiles the spec names (JSON:
-- path -> TOML), and the policy's state between checks (JSON).
CREATE TABLE retrain_policies (
    model      TEXT    PRIMARY KEY,
    policy     TEXT    NOT NULL,
    spec       TEXT    NOT NULL,
    profiles   TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    updated_by TEXT    NOT NULL,
    updated_ms BIGINT  NOT NULL
);
