-- One number that every write of a directory resource (Organization, HealthcareService,
-- Location) moves, in the same transaction: routing keeps its snapshot of the directory while
-- the number stays the same, so each referral reads one row instead of counting the directory.
CREATE TABLE directory_version (
    id INTEGER NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);
