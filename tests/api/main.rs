//! Signpost's integration suite: every test talks real HTTP to a real server on a random port
//! with a real database (SQLite; PostgreSQL when `SIGNPOST_TEST_DATABASE_URL` is set).

mod access;
mod binary;
mod changes;
mod conformance_kit;
mod db_crash;
mod delivery;
mod directory;
mod edge;
mod examples;
mod helpers;
mod idempotency;
mod lifecycle;
mod messaging;
mod openapi;
mod polling;
mod referral_rules;
mod rest;
mod routing;
mod routing_rules;
mod sandbox;
mod security;
mod strangers;
mod transactions;
mod validation;
