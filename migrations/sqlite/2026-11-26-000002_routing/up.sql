-- Routing decisions (PRODUCT.md §4): per referral, the candidates considered per need, which were
-- excluded and why, which won and why (a FHIR Parameters resource as JSON), and how many needs
-- no service fits (listed for operators).
CREATE TABLE routing_decisions (
    service_request_id TEXT NOT NULL PRIMARY KEY,
    sender_org TEXT NOT NULL,
    decided_at BIGINT NOT NULL, -- epoch milliseconds
    unmatched INTEGER NOT NULL,
    explanation TEXT NOT NULL
);
CREATE INDEX routing_decisions_by_unmatched ON routing_decisions (unmatched, decided_at);
