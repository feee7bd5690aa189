DROP TABLE outbox;
DROP TABLE endpoint_state;
