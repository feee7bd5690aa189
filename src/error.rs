//! `ApiError`: every failure a client can see, with its HTTP status and OperationOutcome.
//!
//! Internal causes are logged (with the correlation id) and never sent to the client.

use crate::fhir::outcome::{Issue, IssueCode};
use crate::store::StoreError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was refused for the reasons in the issues; `status` is the HTTP status.
    #[error("request refused with status {status}")]
    Refused { status: u16, issues: Vec<Issue> },
    /// The idempotency key was used before (resolved by the caller into a replay or 409).
    #[error("idempotency key already used")]
    KeyUsed,
    /// Two conditional creates raced; the caller retries.
    #[error("conditional create raced")]
    ConditionalRace,
    /// The database could not be reached.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the cause is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn new(status: u16, issue: Issue) -> Self {
        ApiError::Refused { status, issues: vec![issue] }
    }

    pub fn issues(status: u16, issues: Vec<Issue>) -> Self {
        ApiError::Refused { status, issues }
    }

    pub fn not_found() -> Self {
        Self::new(404, Issue::error(IssueCode::NotFound, "no such resource, or not one you may see"))
    }

    pub fn forbidden(diag: impl Into<String>) -> Self {
        Self::new(403, Issue::error(IssueCode::Forbidden, diag))
    }

    /// Rewrite the issues' expressions (e.g. from a derived Bundle back to the one received).
    pub fn map_expressions(&mut self, f: impl Fn(&str) -> String) {
        if let ApiError::Refused { issues, .. } = self {
            for issue in issues {
                if let Some(e) = &issue.expression {
                    issue.expression = Some(f(e));
                }
            }
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Refused { status, .. } => *status,
            ApiError::KeyUsed => 409,
            ApiError::ConditionalRace => 409,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The issues for the OperationOutcome; internal causes stay out.
    pub fn to_issues(&self, correlation_id: &str) -> Vec<Issue> {
        match self {
            ApiError::Refused { issues, .. } => issues.clone(),
            ApiError::KeyUsed => vec![Issue::error(IssueCode::DuplicateRequest, "the request id was used before")],
            ApiError::ConditionalRace => {
                vec![Issue::error(IssueCode::ConditionalMultiple, "a concurrent request created the same resource")]
            }
            ApiError::Unavailable(_) => vec![Issue::error(
                IssueCode::Unavailable,
                format!("the database is unavailable; retry later (correlation id {correlation_id})"),
            )],
            ApiError::Internal(_) => vec![Issue::error(
                IssueCode::Internal,
                format!("internal error; nothing was changed (correlation id {correlation_id})"),
            )],
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Db(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ClosedConnection
                | diesel::result::DatabaseErrorKind::UnableToSendCommand,
                info,
            )) => ApiError::Unavailable(info.message().to_string()),
            // SQLite's busy timeout ran out: the database is overloaded, not broken.
            StoreError::Db(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("database is locked") =>
            {
                ApiError::Unavailable(info.message().to_string())
            }
            // A concurrent request created or changed the same resource first.
            StoreError::Unique => ApiError::new(
                409,
                Issue::error(IssueCode::Conflict, "a concurrent request wrote the same resource; read it and retry"),
            ),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_never_reach_the_client() {
        let e = ApiError::Internal("constraint resources_pkey on Patient/123 failed".into());
        assert_eq!(e.status(), 500);
        let text = format!("{:?}", e.to_issues("corr-1"));
        assert!(!text.contains("resources_pkey") && text.contains("corr-1"));
        assert_eq!(ApiError::from(StoreError::Unavailable("down".into())).status(), 503);
        assert_eq!(ApiError::from(StoreError::Unique).status(), 409);
        assert_eq!(ApiError::from(StoreError::Corrupt("Organization/x version 1".into())).status(), 500);
    }
}
