DROP INDEX outbox_endpoint_due;
