-- An Endpoint's next due event, claimed in the transaction that records its previous
-- delivery: one index range of that Endpoint's pending events, oldest due first.
CREATE INDEX outbox_endpoint_due ON outbox (endpoint_id, state, next_attempt_at);
