-- BaRS-style messaging (PRODUCT.md §2): for a referral that came in as a message, the message
-- Bundle's id, the X-Correlation-Id of the conversation and the sender's source endpoint, so
-- that its status changes go back as response messages carrying them.
CREATE TABLE messages (
    service_request_id TEXT NOT NULL PRIMARY KEY,
    bundle_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    source_endpoint TEXT NOT NULL,
    receiver_base TEXT NOT NULL,   -- Signpost's base URL as the sender used it
    received_at BIGINT NOT NULL
);
-- Extra HTTP headers of an outbox event (JSON object), e.g. X-Correlation-Id of a message.
ALTER TABLE outbox ADD COLUMN headers TEXT;
