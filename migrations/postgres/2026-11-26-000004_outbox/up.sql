-- Webhook delivery (PRODUCT.md §5, RELIABILITY.md §2). endpoint_state: per directory Endpoint, its
-- signing secret(s) (the previous one stays valid until previous_until, for rotation), the
-- counter behind its gap-free eventNumber, and whether it is disabled (410, or an operator).
CREATE TABLE endpoint_state (
    endpoint_id TEXT NOT NULL PRIMARY KEY,
    secret TEXT,
    previous_secret TEXT,
    previous_until BIGINT,
    event_counter BIGINT NOT NULL,
    disabled BOOLEAN NOT NULL,
    last_success_at BIGINT,
    last_failure_at BIGINT,
    failing_since BIGINT -- first failure since the last success (5 days of it disables the Endpoint)
);
-- The outbox: one row per event and Endpoint, written in the transaction that changed the Task.
-- Claimed by lease (lease_owner, lease_expires) with a fencing token bumped at every claim, so a
-- worker whose lease was lost cannot complete the event; never held in a transaction across the
-- HTTP call. state: pending, delivered, failed (dead letter after the last attempt).
CREATE TABLE outbox (
    id TEXT NOT NULL PRIMARY KEY,          -- the webhook-id, stable across retries
    endpoint_id TEXT NOT NULL,
    event_number BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,                    -- the thin payload, without patient data
    created_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires BIGINT,
    fencing BIGINT NOT NULL,
    last_error TEXT,
    delivered_at BIGINT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE UNIQUE INDEX outbox_by_endpoint_number ON outbox (endpoint_id, event_number);
