DROP TABLE pending_stages;
