INSERT INTO search_index (resource_type, resource_id, param, value)
SELECT resource_type, resource_id, 'patient', value FROM search_index
WHERE param = 'subject' AND value LIKE 'Patient/%'
  AND resource_type IN ('ServiceRequest', 'Task', 'Condition', 'QuestionnaireResponse')
ON CONFLICT DO NOTHING;
