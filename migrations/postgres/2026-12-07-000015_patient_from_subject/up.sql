-- `patient` on these types reads the same element as `subject` and matches only its Patient
-- references, so it is answered from `subject`'s search rows (`fhir::search::indexed_as`), and
-- its own rows are no longer written or read.
DELETE FROM search_index
WHERE param = 'patient' AND resource_type IN ('ServiceRequest', 'Task', 'Condition', 'QuestionnaireResponse');
