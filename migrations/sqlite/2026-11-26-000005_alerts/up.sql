-- Operator alerts (RELIABILITY.md §2): an Endpoint disabled (410 Gone, or five days of failure)
-- or an event dead-lettered after its last attempt. Written in the transaction that recorded the
-- outcome; pushed to `alerts.webhook_url` when one is set (notified_at once it answered 2xx),
-- and listed for operators at GET /fhir/Endpoint/$alerts.
CREATE TABLE alerts (
    id TEXT NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL,            -- endpoint-gone, endpoint-failing, dead-letter
    endpoint_id TEXT NOT NULL,
    event_id TEXT,                 -- the dead-lettered event's webhook-id
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    notified_at BIGINT
);
CREATE INDEX alerts_unsent ON alerts (notified_at, next_attempt_at);
