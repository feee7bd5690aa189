-- Provenance of every stored version of a referral resource (PRODUCT.md §6): who (the API
-- client, or Signpost itself), on behalf of which Organization, when, which version, and the
-- X-Correlation-Id of the request behind it. Rendered as FHIR Provenance in a referral's
-- timeline (GET /fhir/ServiceRequest/{id}/$timeline).
CREATE TABLE provenance (
    id TEXT NOT NULL PRIMARY KEY,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    target_version BIGINT NOT NULL,
    recorded BIGINT NOT NULL,
    client TEXT NOT NULL,
    org TEXT,
    role TEXT NOT NULL,
    activity TEXT NOT NULL,       -- CREATE or UPDATE
    correlation_id TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX provenance_by_target ON provenance (target_type, target_id, target_version);
