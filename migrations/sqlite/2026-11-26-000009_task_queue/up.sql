-- Each Task's owner Organization, status and lastUpdated, kept by every Task write in its own
-- transaction, so that a charity's poll (`Task?owner=Organization/X&status=requested`, newest
-- first) reads one index range of its own Tasks instead of all of them (issue: fast polling).
CREATE TABLE task_queue (
    task_id TEXT NOT NULL PRIMARY KEY,
    owner_org TEXT NOT NULL,
    status TEXT NOT NULL,
    last_updated BIGINT NOT NULL
);
CREATE INDEX task_queue_by_time ON task_queue (owner_org, status, last_updated, task_id);
CREATE INDEX task_queue_by_id ON task_queue (owner_org, status, task_id);
CREATE INDEX task_queue_by_owner_time ON task_queue (owner_org, last_updated, task_id);
INSERT INTO task_queue (task_id, owner_org, status, last_updated)
SELECT r.id, substr(o.value, 14), s.value, r.last_updated
FROM resources r
JOIN search_index o
  ON o.resource_type = 'Task' AND o.param = 'owner' AND o.resource_id = r.id AND o.value LIKE 'Organization/%'
JOIN search_index s
  ON s.resource_type = 'Task' AND s.param = 'status' AND s.resource_id = r.id
WHERE r.resource_type = 'Task';
