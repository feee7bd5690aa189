-- A charity's Endpoint received a new referral: the Task's `delivered` stage is owed. Written in
-- the transaction that records the delivery, and taken away in the one that records the stage,
-- so the delivery worker need not wait for the stage and a crash between the two loses nothing.
CREATE TABLE pending_stages (
    event_id TEXT NOT NULL PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    task_id TEXT NOT NULL
);
