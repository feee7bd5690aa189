-- The change log: one row per stored resource version, numbered by a gap-free sequence in commit
-- order. Every write increments the single counter row inside its own transaction; the row lock
-- (PostgreSQL) or the database write lock (SQLite) is held until commit, so a change can only get
-- a number after every lower number has committed: a poller that reads `seq > cursor` never
-- misses a change that commits late.
CREATE TABLE change_counter (
    id INTEGER NOT NULL PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE change_log (
    seq BIGINT NOT NULL PRIMARY KEY,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    changed_at BIGINT NOT NULL -- epoch milliseconds
);
CREATE INDEX change_log_by_resource ON change_log (resource_type, resource_id);
-- Versions written before the log existed, oldest first.
INSERT INTO change_log (seq, resource_type, resource_id, version_id, changed_at)
SELECT ROW_NUMBER() OVER (ORDER BY last_updated, resource_type, id, version_id), resource_type, id, version_id, last_updated
FROM resource_versions;
INSERT INTO change_counter (id, last_seq) SELECT 1, COUNT(*) FROM change_log;
