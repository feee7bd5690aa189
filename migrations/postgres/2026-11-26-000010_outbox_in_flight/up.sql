-- An Endpoint's events in flight (pending with a live lease), counted by every claim: one index
-- range instead of every event the Endpoint ever had.
CREATE INDEX outbox_in_flight ON outbox (endpoint_id, state, lease_expires);
