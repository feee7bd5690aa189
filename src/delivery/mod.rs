//! Delivery to charities and referrers (PRODUCT.md §5, RELIABILITY.md §2): Standard Webhooks v1
//! signatures ([`signature`]), the retry schedule ([`schedule`]), the checks that keep webhooks
//! away from private addresses ([`ssrf`]), and the worker that drains the outbox ([`worker`]).
//! The only module that makes outbound HTTP requests.

pub mod schedule;
pub mod signature;
pub mod ssrf;
pub mod worker;
