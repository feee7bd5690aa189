DROP INDEX outbox_in_flight;
