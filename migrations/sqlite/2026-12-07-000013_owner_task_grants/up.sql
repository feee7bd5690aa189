-- Every Organization named as a Task's owner sees the Task, whether or not the directory held it
-- when the Task was written (earlier releases granted it only to Organizations in the
-- directory). Charity polling reads the owner's `task_queue` rows without probing their grants,
-- so each of those rows needs its grant.
INSERT INTO access_grants (resource_type, resource_id, org_id, source)
SELECT 'Task', q.task_id, q.owner_org, 'task:' || q.task_id
FROM task_queue q
WHERE NOT EXISTS (
    SELECT 1 FROM access_grants g
    WHERE g.resource_type = 'Task' AND g.org_id = q.owner_org AND g.resource_id = q.task_id
);
