DROP TABLE messages;
ALTER TABLE outbox DROP COLUMN headers;
