//! Signpost: a FHIR R4 referral gateway between GP and hospital systems and the charities that
//! support people with long-term conditions.
//!
//! | module | role |
//! |---|---|
//! | [`api`] | HTTP edge (actix-web): routes, headers, OperationOutcome responses |
//! | [`gateway`] | operations: validate, route, write in one transaction, reply |
//! | [`fhir`] | FHIR knowledge: types, search, JSON limits, structure validation, outcomes |
//! | [`routing`] | pure routing decisions: explicit performers, conditions → services |
//! | [`delivery`] | webhooks: signatures, retry schedule, SSRF checks, the outbox worker |
//! | [`lifecycle`] | the Task state machine and its coded stages, reasons and outcomes |
//! | [`summary`] | the outcome summary for the GP record |
//! | [`store`] | diesel over SQLite and PostgreSQL |
//! | [`auth`] | API keys, roles |
//! | [`config`], [`telemetry`], [`app`], [`cli`], [`sandbox`] | start-up and operations |

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod delivery;
pub mod error;
pub mod failpoint;
pub mod fhir;
pub mod gateway;
pub mod lifecycle;
pub mod routing;
pub mod sandbox;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod validate_cli;
