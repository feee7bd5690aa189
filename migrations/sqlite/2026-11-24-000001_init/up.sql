-- Current version of every stored FHIR resource; the body is the JSON served to clients.
CREATE TABLE resources (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL, -- epoch milliseconds
    body TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX resources_by_last_updated ON resources (resource_type, last_updated);

-- Every version ever written, for vread and _history.
CREATE TABLE resource_versions (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
);

-- Search values extracted at write time (token and reference parameters).
CREATE TABLE search_index (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_type, param, value, resource_id)
);
CREATE INDEX search_index_by_resource ON search_index (resource_type, resource_id);

-- Which Organization may see which resource, and why (the sender, or a Task it owns).
CREATE TABLE access_grants (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (resource_type, org_id, resource_id, source)
);
CREATE INDEX access_grants_by_source ON access_grants (source);

-- X-Request-Id / Idempotency-Key per client: the unique key makes replays atomic.
CREATE TABLE idempotency_keys (
    client_id TEXT NOT NULL,
    request_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response_status INTEGER NOT NULL,
    response_headers TEXT NOT NULL,
    response_body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, request_key)
);

-- If-None-Exist: one row per (type, normalised query) so concurrent conditional creates collide.
CREATE TABLE conditional_creates (
    resource_type TEXT NOT NULL,
    query TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    PRIMARY KEY (resource_type, query)
);

-- API clients; only the SHA-256 of each key is kept.
CREATE TABLE api_clients (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
