//! The gateway's operations, between the HTTP edge and the store: validate, route, write in
//! one transaction, and describe the reply. Synchronous (diesel); the HTTP layer runs every
//! call on the blocking pool.
//!
//! Data flows one way: parse (HTTP layer) → validate → route (pure, from directory facts read
//! in the same transaction) → one write transaction (resources, Tasks, search index, access
//! grants, idempotency record) → reply.

mod access;
pub mod directory;
mod endpoints;
pub mod flow;
pub mod messaging;
mod provenance;
mod read;
mod referral;
mod route;
mod timeline;
mod transaction;
mod write;

use serde_json::{Value, json};

use crate::auth::Principal;
use crate::config::LimitSettings;
use crate::error::ApiError;
use crate::fhir::ValidationMode;
use crate::fhir::outcome::{Issue, IssueCode, Severity, capped, operation_outcome};
use crate::fhir::{TypeSpec, http_date, now_ms, type_spec};
use crate::store::resources::StoredResource;
use crate::store::{self, DbConn, Pool, StoreError, idempotency};

pub use write::Change;

/// What the client asked for in `Prefer: return=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// The caller and the parts of the request every operation needs.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub principal: Principal,
    /// Base URL of the FHIR API as the client sees it, e.g. `http://127.0.0.1:8080/fhir`.
    pub base: String,
    pub prefer_return: Return,
    /// `Prefer: handling=strict`.
    pub strict: bool,
    pub correlation_id: String,
    /// `limits.max_issues`: the most issues one OperationOutcome lists.
    pub max_issues: usize,
    /// `If-None-Match`: the ETags of answers the client already holds (searches, the change feed).
    pub if_none_match: Option<String>,
}

/// Request facts that make a write conditional or idempotent.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `X-Request-Id` or `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Hash of method, path and body: a replay must match it.
    pub request_hash: String,
    /// `If-Match` version.
    pub if_match: Option<i64>,
    /// `If-None-Exist` query.
    pub if_none_exist: Option<String>,
    /// A transaction made from a BaRS-style message: the index of its focus ServiceRequest and
    /// where the message came from (stored with the referral, in the same transaction).
    pub message: Option<(usize, crate::store::messages::MessageOrigin)>,
}

/// A reply, independent of the HTTP framework (and storable for idempotent replays).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// JSON text of the body, if any.
    pub body: Option<String>,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Self {
        Self::json_text(status, body.to_string())
    }

    /// A reply whose JSON body is already serialised.
    pub fn json_text(status: u16, body: String) -> Self {
        Reply { status, headers: Vec::new(), body: Some(body) }
    }

    fn to_stored(&self) -> (i32, String, String) {
        let headers: serde_json::Map<String, Value> =
            self.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        (i32::from(self.status), Value::Object(headers).to_string(), self.body.clone().unwrap_or_default())
    }

    fn from_stored(r: idempotency::StoredResponse) -> Self {
        let headers = serde_json::from_str::<serde_json::Map<String, Value>>(&r.headers)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect();
        Reply { status: u16::try_from(r.status).unwrap_or(500), headers, body: (!r.body.is_empty()).then_some(r.body) }
    }
}

/// The gateway: a database pool, the request limits and the directory snapshot.
#[derive(Clone)]
pub struct Gateway {
    pub pool: Pool,
    pub limits: LimitSettings,
    pub validation: ValidationMode,
    directory: std::sync::Arc<route::DirectoryCache>,
    /// Woken after every committed write: the delivery worker listens.
    pub wake: std::sync::Arc<tokio::sync::Notify>,
    /// Webhook addresses may be `http` and loopback (tests, the sandbox).
    pub allow_loopback_webhooks: bool,
    /// A production deployment: resources tagged as sandbox data are refused.
    pub production: bool,
}

impl Gateway {
    pub fn new(pool: Pool, limits: LimitSettings, validation: ValidationMode) -> Self {
        Self {
            pool,
            limits,
            validation,
            directory: Default::default(),
            wake: Default::default(),
            allow_loopback_webhooks: false,
            production: false,
        }
    }

    fn conn(&self) -> Result<store::PooledConn, ApiError> {
        self.pool.get().map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    /// Run a write under the request's idempotency key, in one transaction: the key is
    /// claimed first, the reply recorded last. A replay gets the first reply; the same key
    /// with another request gets 409.
    fn run_write(
        &self,
        ctx: &Ctx,
        opts: &WriteOpts,
        f: impl Fn(&mut DbConn) -> Result<Reply, ApiError>,
    ) -> Result<Reply, ApiError> {
        let client = ctx.principal.client_id.as_str();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.pool.write_txn(|conn| {
                if let Some(key) = &opts.idempotency_key {
                    match idempotency::claim(conn, client, key, &opts.request_hash, now_ms()) {
                        Err(StoreError::Unique) => return Err(ApiError::KeyUsed),
                        other => other?,
                    }
                }
                let reply = f(conn)?;
                if let Some(key) = &opts.idempotency_key {
                    let (status, headers, body) = reply.to_stored();
                    idempotency::finish(conn, client, key, status, &headers, &body)?;
                }
                Ok(reply)
            });
            match result {
                Err(ApiError::KeyUsed) => {
                    let key = opts.idempotency_key.as_deref().unwrap_or_default();
                    return match idempotency::find(&mut *self.conn()?, client, key)? {
                        Some(stored) if stored.request_hash != opts.request_hash => Err(ApiError::new(
                            409,
                            Issue::error(
                                IssueCode::DuplicateRequest,
                                "this X-Request-Id was used for a different request",
                            ),
                        )),
                        Some(stored) if stored.status == 0 => Err(ApiError::new(
                            425,
                            Issue::error(IssueCode::RequestInFlight, "a request with this id is still in progress"),
                        )),
                        Some(stored) => {
                            tracing::info!("idempotent replay");
                            Ok(Reply::from_stored(stored))
                        }
                        None => Err(ApiError::Internal("idempotency key vanished".into())),
                    };
                }
                Ok(reply) => {
                    // Outbox rows may have been written: wake the delivery worker.
                    self.wake.notify_one();
                    return Ok(reply);
                }
                Err(ApiError::ConditionalRace) if attempt < 3 => continue,
                Err(ApiError::Refused { status, issues }) => {
                    tracing::info!(status, issues = issues.len(), "write refused");
                    return Err(ApiError::Refused { status, issues });
                }
                other => return other,
            }
        }
    }
}

/// The served type named in a URL, or 404.
pub fn served_type(name: &str) -> Result<&'static TypeSpec, ApiError> {
    type_spec(name).ok_or_else(|| {
        ApiError::new(404, Issue::error(IssueCode::UnsupportedType, "this resource type is not served by Signpost"))
    })
}

fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// Headers and body for a written or read resource, following `Prefer: return`. `warnings`
/// (validation warnings and information of a write) come back under
/// `Prefer: return=OperationOutcome`.
fn resource_reply(ctx: &Ctx, status: u16, r: &StoredResource, with_location: bool, warnings: &[Issue]) -> Reply {
    let mut headers =
        vec![("ETag".to_string(), etag(r.version_id)), ("Last-Modified".to_string(), http_date(r.last_updated))];
    if with_location {
        headers.push((
            "Location".to_string(),
            format!("{}/{}/{}/_history/{}", ctx.base, r.resource_type, r.id, r.version_id),
        ));
    }
    let body = match ctx.prefer_return {
        Return::Representation => Some(r.body.clone()),
        Return::Minimal => None,
        Return::OperationOutcome => {
            let mut issues = warnings.to_vec();
            issues.push(Issue {
                severity: Severity::Information,
                code: IssueCode::Accepted,
                expression: None,
                diagnostics: format!("{}/{} version {} stored", r.resource_type, r.id, r.version_id),
            });
            Some(operation_outcome(&capped(issues, ctx.max_issues)).to_string())
        }
    };
    Reply { status, headers, body }
}

/// A Bundle of stored resources.
fn bundle(kind: &str, total: Option<i64>, links: Vec<(&str, String)>, entries: Vec<Value>) -> Value {
    let mut b = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": crate::fhir::instant(now_ms()) },
        "type": kind,
    });
    if let Some(t) = total {
        b["total"] = json!(t);
    }
    if !links.is_empty() {
        b["link"] = links.into_iter().map(|(rel, url)| json!({ "relation": rel, "url": url })).collect();
    }
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}
