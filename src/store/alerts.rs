//! Operator alerts: an Endpoint disabled (410 Gone, or five days of failure) or an event
//! dead-lettered after its last attempt (RELIABILITY.md §2). Each is a row written in the
//! transaction that recorded the outcome, so an alert is never lost with a crash; the worker
//! pushes unsent ones to `alerts.webhook_url` (another channel than the failing webhook), and
//! operators list them at `GET /fhir/Endpoint/$alerts`.

use diesel::prelude::*;

use super::schema::alerts;
use super::{DbConn, StoreError};

/// One alert.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = alerts)]
pub struct Alert {
    pub id: String,
    pub kind: String,
    pub endpoint_id: String,
    pub event_id: Option<String>,
    pub message: String,
    pub created_at: i64,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub notified_at: Option<i64>,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// The Endpoint answered 410 Gone: disabled, its events held.
    EndpointGone,
    /// Five days of continuous failure: disabled, its events held.
    EndpointFailing,
    /// An event failed its last attempt.
    DeadLetter,
}

impl AlertKind {
    pub fn code(self) -> &'static str {
        match self {
            AlertKind::EndpointGone => "endpoint-gone",
            AlertKind::EndpointFailing => "endpoint-failing",
            AlertKind::DeadLetter => "dead-letter",
        }
    }

    fn message(self) -> &'static str {
        match self {
            AlertKind::EndpointGone => "the webhook endpoint answered 410 Gone: it is disabled and its events are held",
            AlertKind::EndpointFailing => {
                "the webhook endpoint failed for five days: it is disabled and its events are held"
            }
            AlertKind::DeadLetter => "a webhook event failed its last attempt and waits for $resend",
        }
    }
}

/// How long an unsent alert waits before the next push.
pub const RETRY_MS: i64 = 60_000;

/// Record an alert (in the caller's transaction) and log it. Only identifiers are logged.
pub fn raise(
    conn: &mut DbConn,
    kind: AlertKind,
    endpoint: &str,
    event: Option<&str>,
    now: i64,
) -> Result<Alert, StoreError> {
    let alert = Alert {
        id: format!("alert_{}", uuid::Uuid::new_v4().simple()),
        kind: kind.code().to_string(),
        endpoint_id: endpoint.to_string(),
        event_id: event.map(str::to_string),
        message: kind.message().to_string(),
        created_at: now,
        attempts: 0,
        next_attempt_at: now,
        notified_at: None,
    };
    diesel::insert_into(alerts::table).values(&alert).execute(conn)?;
    tracing::error!(alert = %alert.id, kind = kind.code(), endpoint, event, "ALERT {}", kind.message());
    Ok(alert)
}

/// The newest alerts first.
pub fn recent(conn: &mut DbConn, limit: i64) -> Result<Vec<Alert>, StoreError> {
    Ok(alerts::table.order((alerts::created_at.desc(), alerts::id.desc())).limit(limit).load(conn)?)
}

/// Alerts not yet pushed whose next push is due.
pub fn due(conn: &mut DbConn, now: i64, limit: i64) -> Result<Vec<Alert>, StoreError> {
    Ok(alerts::table
        .filter(alerts::notified_at.is_null())
        .filter(alerts::next_attempt_at.le(now))
        .order((alerts::created_at.asc(), alerts::id.asc()))
        .limit(limit)
        .load(conn)?)
}

/// Alerts not yet pushed (all of them when no channel is set).
pub fn unsent(conn: &mut DbConn) -> Result<i64, StoreError> {
    Ok(alerts::table.filter(alerts::notified_at.is_null()).count().get_result(conn)?)
}

/// Record a push: sent, or to be tried again at `next`. `false` when another worker moved it
/// meanwhile (the push is at least once; receivers dedupe on the alert id).
pub fn pushed(conn: &mut DbConn, alert: &Alert, sent: bool, now: i64) -> Result<bool, StoreError> {
    let target = alerts::table
        .filter(alerts::id.eq(&alert.id))
        .filter(alerts::attempts.eq(alert.attempts))
        .filter(alerts::notified_at.is_null());
    let n = if sent {
        diesel::update(target)
            .set((alerts::notified_at.eq(Some(now)), alerts::attempts.eq(alert.attempts + 1)))
            .execute(conn)?
    } else {
        diesel::update(target)
            .set((alerts::next_attempt_at.eq(now + RETRY_MS), alerts::attempts.eq(alert.attempts + 1)))
            .execute(conn)?
    };
    Ok(n == 1)
}
