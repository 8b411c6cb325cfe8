-- Staged rollouts: the policy (JSON; NULL = every device at once), the wave reached, and how
-- the rollout ended.
ALTER TABLE deployments ADD COLUMN rollout TEXT;
ALTER TABLE deployments ADD COLUMN wave INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN wave_started_ms INTEGER;
ALTER TABLE deployments ADD COLUMN completed_ms INTEGER;
ALTER TABLE deployments ADD COLUMN aborted_ms INTEGER;
ALTER TABLE deployments ADD COLUMN abort_reason TEXT;

-- The devices a staged rollout has taken, and in which wave (0-based). Kept after the
-- rollout ends: an aborted rollout rolls exactly these back.
CREATE TABLE rollout_members (
    deployment TEXT    NOT NULL,
    device     TEXT    NOT NULL,
    wave       INTEGER NOT NULL,
    added_ms   INTEGER NOT NULL,
    PRIMARY KEY (deployment, device)
);

-- Update reports per device and deployment (was: per device), newest seq wins; the first
-- report and the first `active` one are kept, to compare alert rates before and after.
CREATE TABLE update_reports (
    device          TEXT    NOT NULL,
    deployment      TEXT    NOT NULL,
    package_sha256  TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    reason          TEXT,
    running_release INTEGER,
    ts_ms           INTEGER NOT NULL,
    first_seq       INTEGER NOT NULL,
    first_ts_ms     INTEGER NOT NULL,
    active_seq      INTEGER,
    PRIMARY KEY (device, deployment)
);
INSERT INTO update_reports
    SELECT device, deployment, package_sha256, seq, state, reason, running_release, ts_ms, seq, ts_ms,
           CASE WHEN state = 'active' THEN seq END
    FROM device_updates;
DROP TABLE device_updates;
