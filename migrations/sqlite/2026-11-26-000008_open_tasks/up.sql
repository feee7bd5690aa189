-- Open Tasks (requested, accepted, in-progress, on-hold) per owner Organization, kept by every
-- Task write in its own transaction, so that routing's "fewest open referrals" ranking reads one
-- small table instead of counting every Task (PRODUCT.md §4).
CREATE TABLE open_tasks (
    org_id TEXT NOT NULL PRIMARY KEY,
    open BIGINT NOT NULL
);
INSERT INTO open_tasks (org_id, open)
SELECT substr(o.value, 14), COUNT(*)
FROM search_index o
JOIN search_index s
  ON s.resource_type = 'Task' AND s.param = 'status' AND s.resource_id = o.resource_id
 AND s.value IN ('requested', 'accepted', 'in-progress', 'on-hold')
WHERE o.resource_type = 'Task' AND o.param = 'owner' AND o.value LIKE 'Organization/%'
GROUP BY o.value;
