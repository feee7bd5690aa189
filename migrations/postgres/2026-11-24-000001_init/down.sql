DROP TABLE api_clients;
DROP TABLE conditional_creates;
DROP TABLE idempotency_keys;
DROP TABLE access_grants;
DROP TABLE search_index;
DROP TABLE resource_versions;
DROP TABLE resources;
