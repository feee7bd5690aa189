//! The HTTP edge (actix-web): the route table, request parsing, authentication and the
//! mapping of every reply and error to FHIR JSON. Handlers are thin: extract, call one
//! gateway function on the blocking pool, map to a response.
//!
//! Everything a client sees is FHIR: unknown paths (404), wrong methods (405), media types
//! (415), malformed JSON (400), missing credentials (401) all answer with an
//! OperationOutcome, and every response echoes `X-Correlation-Id`.

mod capability;
mod openapi;
mod request;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use tracing::Instrument;

use crate::auth::{self, Principal, Role};
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, capped, operation_outcome};
use crate::gateway::{Change, Ctx, Gateway, Reply};
use crate::store::clients;

pub use request::CorrelationId;

/// How long a write waits for a free slot (`limits.max_concurrent_writes`) before 503: short, so
/// that under overload the requests that are taken keep their latency and the rest are told to
/// come back (`Retry-After`) instead of queueing.
const HEAVY_WAIT: Duration = Duration::from_millis(250);

/// FHIR JSON media type of every response.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Shared state of the HTTP workers.
pub struct AppState {
    pub gateway: Gateway,
    /// Clients recently authenticated, by key hash, with the time they were looked up: a
    /// revoked key or a changed role takes effect within [`auth::CACHE_SECS`].
    known_keys: RwLock<HashMap<String, (Principal, Instant)>>,
    /// The public FHIR base URL (`server.public_base_url` + `/fhir`).
    pub base: String,
    /// Writes and validations in progress at once (`limits.max_concurrent_writes`).
    heavy: tokio::sync::Semaphore,
}

impl AppState {
    pub fn new(gateway: Gateway, base: String) -> Self {
        let heavy = tokio::sync::Semaphore::new(gateway.limits.max_concurrent_writes);
        Self { gateway, known_keys: RwLock::new(HashMap::new()), base, heavy }
    }
}

/// What a route does; the CapabilityStatement is generated from [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Validate,
    Transaction,
    Search,
    Create,
    Read,
    Update,
    Patch,
    History,
    Vread,
    /// `ServiceRequest/$route`: a routing dry run.
    Route,
    /// `ServiceRequest/{id}/$routing`: a stored routing explanation.
    Routing,
    /// `ServiceRequest/$unmatched`: needs no service fits (operators).
    Unmatched,
    /// `$changes`: the gap-free change feed.
    Changes,
    /// `Endpoint/{id}/$secret`, `$events`, `$status`, `$resend`.
    EndpointSecret,
    EndpointEvents,
    EndpointStatus,
    EndpointResend,
    /// `Endpoint/$delivery`: the operators' delivery view.
    EndpointDelivery,
    EndpointAlerts,
    ProcessMessage,
    Timeline,
    OutcomeSummary,
}

impl Action {
    /// Operations (listed under `operation` in the CapabilityStatement, not as interactions).
    pub fn is_operation(self) -> bool {
        !matches!(
            self,
            Action::Transaction
                | Action::Search
                | Action::Create
                | Action::Read
                | Action::Update
                | Action::Patch
                | Action::History
                | Action::Vread
        )
    }
}

/// The FHIR API's route table: path, method, action, FHIR interaction code.
pub const ROUTES: &[(&str, &str, Action, &str)] = &[
    // Operations first: `/{type}/{id}` would otherwise claim `/{type}/$validate`.
    ("/$validate", "POST", Action::Validate, "$validate"),
    ("/$changes", "GET", Action::Changes, "$changes"),
    ("/$process-message", "POST", Action::ProcessMessage, "$process-message"),
    ("/{type}/$validate", "POST", Action::Validate, "$validate"),
    ("/{type}/$route", "POST", Action::Route, "$route"),
    ("/{type}/$unmatched", "GET", Action::Unmatched, "$unmatched"),
    ("/{type}/$delivery", "GET", Action::EndpointDelivery, "$delivery"),
    ("/{type}/$alerts", "GET", Action::EndpointAlerts, "$alerts"),
    ("/{type}/{id}/$routing", "GET", Action::Routing, "$routing"),
    ("/{type}/{id}/$timeline", "GET", Action::Timeline, "$timeline"),
    ("/{type}/{id}/$outcome-summary", "GET", Action::OutcomeSummary, "$outcome-summary"),
    ("/{type}/{id}/$secret", "POST", Action::EndpointSecret, "$secret"),
    ("/{type}/{id}/$events", "GET", Action::EndpointEvents, "$events"),
    ("/{type}/{id}/$status", "GET", Action::EndpointStatus, "$status"),
    ("/{type}/{id}/$resend", "POST", Action::EndpointResend, "$resend"),
    ("", "POST", Action::Transaction, "transaction"),
    ("/{type}", "GET", Action::Search, "search-type"),
    ("/{type}", "POST", Action::Create, "create"),
    ("/{type}/{id}", "GET", Action::Read, "read"),
    ("/{type}/{id}", "PUT", Action::Update, "update"),
    ("/{type}/{id}", "PATCH", Action::Patch, "patch"),
    ("/{type}/{id}/_history", "GET", Action::History, "history-instance"),
    ("/{type}/{id}/_history/{vid}", "GET", Action::Vread, "vread"),
];

/// Register every route under `/fhir`, plus health checks and the FHIR-shaped fallbacks.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi::serve));
    let mut fhir = web::scope("/fhir").service(
        web::resource("/metadata")
            .route(web::get().to(capability::metadata))
            .default_service(web::to(method_not_allowed)),
    );
    let mut paths: Vec<&str> = Vec::new();
    for r in ROUTES {
        if !paths.contains(&r.0) {
            paths.push(r.0);
        }
    }
    for path in paths {
        let mut resource = web::resource(if path.is_empty() { "" } else { path });
        for (_, method, action, _) in ROUTES.iter().filter(|r| r.0 == path) {
            let m = Method::from_bytes(method.as_bytes()).expect("route methods are valid");
            resource = resource.route(web::method(m).to(
                move |req: HttpRequest, state: web::Data<AppState>, body: web::Payload| {
                    handle(*action, req, state, body)
                },
            ));
        }
        fhir = fhir.service(resource.default_service(web::to(method_not_allowed)));
    }
    cfg.service(fhir);
    cfg.default_service(web::to(unknown_path));
}

/// Adds the correlation id and a request span, and logs each request (method, path
/// template-free, status, time; never bodies or query strings, which may carry identifiers).
pub async fn correlate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let cid = request::correlation_id(req.headers());
    req.extensions_mut().insert(CorrelationId(cid.clone()));
    let span = tracing::info_span!("request", method = %req.method(), path = %req.path(), correlation_id = %cid);
    let start = Instant::now();
    async move {
        let res = next.call(req).await?;
        // Anything the framework answered on its own (a bare 4xx/5xx without a body type) is
        // turned into an OperationOutcome: everything a client sees is FHIR.
        let bare = (res.status().is_client_error() || res.status().is_server_error())
            && !res.headers().contains_key(actix_web::http::header::CONTENT_TYPE);
        let mut res = if bare {
            let status = res.status();
            let (http_req, _) = res.into_parts();
            let outcome = error_response(&http_req, framework_error(status));
            ServiceResponse::new(http_req, outcome).map_into_right_body()
        } else {
            res.map_into_left_body()
        };
        if let Ok(v) = HeaderValue::from_str(&cid) {
            res.headers_mut().insert(HeaderName::from_static("x-correlation-id"), v);
        }
        tracing::info!(status = res.status().as_u16(), ms = start.elapsed().as_millis() as u64, "served");
        Ok(res)
    }
    .instrument(span)
    .await
}

/// The OperationOutcome for a status the framework chose itself.
fn framework_error(status: StatusCode) -> ApiError {
    let (code, diag) = match status.as_u16() {
        413 => (IssueCode::BodyTooLarge, "the request is larger than Signpost accepts"),
        414 | 431 => (IssueCode::HeaderTooLarge, "the request's URL or headers are too long"),
        408 => (IssueCode::BodyTimeout, "the request did not arrive in time"),
        s if s >= 500 => (IssueCode::Internal, "internal error; nothing was changed"),
        _ => (IssueCode::BadRequest, "the HTTP request is malformed"),
    };
    ApiError::new(status.as_u16(), Issue::error(code, diag))
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

async fn readyz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let pool = state.gateway.pool.clone();
    match web::block(move || crate::store::ping(&pool)).await {
        Ok(Ok(())) => HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ready"}"#),
        _ => error_response(&req, ApiError::Unavailable("ping failed".into())),
    }
}

/// Prometheus metrics (no patient data: counts and ages only).
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let gw = state.gateway.clone();
    match web::block(move || gw.metrics_text()).await {
        Ok(Ok(text)) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text),
        Ok(Err(e)) => error_response(&req, e),
        Err(e) => error_response(&req, ApiError::Internal(e.to_string())),
    }
}

async fn unknown_path(req: HttpRequest) -> HttpResponse {
    error_response(&req, ApiError::new(404, Issue::error(IssueCode::UnknownPath, "no such endpoint")))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    error_response(
        &req,
        ApiError::new(405, Issue::error(IssueCode::MethodNotAllowed, "this endpoint does not support the HTTP method")),
    )
}

/// Authenticate the caller from `Authorization: Bearer <key>`.
async fn authenticate(req: &HttpRequest, state: &web::Data<AppState>) -> Result<Principal, ApiError> {
    let unauthenticated =
        || ApiError::new(401, Issue::error(IssueCode::Unauthenticated, "send Authorization: Bearer <API key>"));
    let header = req.headers().get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(unauthenticated)?;
    let key = auth::bearer(header).ok_or_else(unauthenticated)?;
    let hash = auth::hash_key(key);
    let fresh = std::time::Duration::from_secs(auth::CACHE_SECS);
    if let Some((p, _)) =
        state.known_keys.read().ok().and_then(|m| m.get(&hash).filter(|(_, at)| at.elapsed() < fresh).cloned())
    {
        return Ok(p);
    }
    let pool = state.gateway.pool.clone();
    let lookup = hash.clone();
    let row = web::block(move || -> Result<_, ApiError> {
        let mut conn = pool.get().map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(clients::find_by_key_hash(&mut conn, &lookup)?)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let Some(row) = row else {
        if let Ok(mut m) = state.known_keys.write() {
            m.remove(&hash);
        }
        return Err(unauthenticated());
    };
    let role = Role::parse(&row.role).ok_or_else(unauthenticated)?;
    let principal = Principal { client_id: row.id, name: row.name, role, org_id: row.organization_id };
    if let Ok(mut m) = state.known_keys.write() {
        // Bounded: entries of revoked or idle keys are dropped once stale.
        if m.len() > 10_000 {
            m.retain(|_, (_, at)| at.elapsed() < fresh);
        }
        m.insert(hash, (principal.clone(), Instant::now()));
    }
    Ok(principal)
}

async fn handle(action: Action, req: HttpRequest, state: web::Data<AppState>, payload: web::Payload) -> HttpResponse {
    match handle_inner(action, &req, state, payload).await {
        Ok(reply) => reply_response(&req, reply),
        Err(e) => error_response(&req, e),
    }
}

async fn handle_inner(
    action: Action,
    req: &HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<Reply, ApiError> {
    request::check_format(req)?;
    let principal = authenticate(req, &state).await?;
    let ctx = Ctx {
        principal,
        base: state.base.clone(),
        prefer_return: request::prefer_return(req),
        strict: request::prefer_strict(req),
        correlation_id: request::correlation_of(req),
        max_issues: state.gateway.limits.max_issues,
        if_none_match: req.headers().get("if-none-match").and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    let ty = req.match_info().get("type").unwrap_or_default().to_string();
    let id = req.match_info().get("id").unwrap_or_default().to_string();
    let vid = req.match_info().get("vid").unwrap_or_default().to_string();
    let limits = state.gateway.limits;
    let gw = state.gateway.clone();
    let writes = matches!(
        action,
        Action::Validate
            | Action::Transaction
            | Action::ProcessMessage
            | Action::Create
            | Action::Update
            | Action::Patch
            | Action::Route
    );
    let mut permit = None;
    let (body, opts) = if writes {
        let patch = action == Action::Patch;
        request::check_content_type(req, patch)?;
        let timeout = Duration::from_secs(limits.body_timeout_secs);
        let bytes = request::read_body(req, payload, limits.max_body_bytes, timeout).await?;
        // Parsing, validation and the write are the heavy part: a bounded number run at once,
        // so that health checks, reads and other clients keep answering under a flood.
        permit = Some(match tokio::time::timeout(HEAVY_WAIT, state.heavy.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(ApiError::new(
                    503,
                    Issue::error(IssueCode::Overloaded, "Signpost is busy with other writes; retry shortly"),
                ));
            }
        });
        let opts = request::write_opts(req, &bytes)?;
        let value = crate::fhir::json::parse(
            &bytes,
            crate::fhir::json::Limits { max_depth: limits.max_depth, max_string_bytes: limits.max_string_bytes },
        )
        .map_err(|i| ApiError::new(400, i))?;
        (Some(value), opts)
    } else {
        (None, Default::default())
    };
    let query = request::query_pairs(req)?;
    let message_headers = request::message_headers(req);
    let result = web::block(move || match action {
        Action::Validate => {
            let profile = query.iter().find(|(k, _)| k == "profile").map(|(_, v)| v.clone());
            gw.validate(&ctx, (!ty.is_empty()).then_some(ty.as_str()), body.unwrap_or_default(), profile)
        }
        Action::Transaction => gw.transaction(&ctx, body.unwrap_or_default(), &opts),
        Action::ProcessMessage => gw.process_message(&ctx, body.unwrap_or_default(), &opts, &message_headers),
        Action::Create => gw.create(&ctx, &ty, body.unwrap_or_default(), &opts),
        Action::Update => gw.update(&ctx, &ty, &id, Change::Replace(body.unwrap_or_default()), &opts),
        Action::Patch => {
            let patch: json_patch::Patch = serde_json::from_value(body.unwrap_or_default()).map_err(|_| {
                ApiError::new(
                    400,
                    Issue::error(IssueCode::BadPatch, "the body is not a JSON Patch (an array of operations)"),
                )
            })?;
            gw.update(&ctx, &ty, &id, Change::Patch(patch), &opts)
        }
        Action::Search => gw.search(&ctx, &ty, &query),
        Action::Read => gw.read(&ctx, &ty, &id),
        Action::History => gw.history(&ctx, &ty, &id),
        Action::Vread => gw.vread(&ctx, &ty, &id, &vid),
        Action::Route => gw.route_dry_run(&ctx, &ty, body.unwrap_or_default()),
        Action::Routing => gw.routing_explanation(&ctx, &ty, &id),
        Action::Timeline => gw.timeline(&ctx, &ty, &id),
        Action::OutcomeSummary => gw.outcome_summary(&ctx, &ty, &id),
        Action::Unmatched => gw.unmatched_needs(&ctx, &ty),
        Action::Changes => gw.changes(&ctx, &query),
        Action::EndpointSecret => gw.endpoint_secret(&ctx, &ty, &id),
        Action::EndpointEvents => gw.endpoint_events(&ctx, &ty, &id, &query),
        Action::EndpointStatus => gw.endpoint_status(&ctx, &ty, &id),
        Action::EndpointResend => gw.endpoint_resend(&ctx, &ty, &id),
        Action::EndpointDelivery => gw.delivery_view(&ctx, &ty),
        Action::EndpointAlerts => gw.alerts_view(&ctx, &ty),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()));
    drop(permit);
    result?
}

fn reply_response(req: &HttpRequest, reply: Reply) -> HttpResponse {
    let mut res = HttpResponse::build(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK));
    for (k, v) in &reply.headers {
        res.insert_header((k.as_str(), v.as_str()));
    }
    echo_request_id(req, &mut res);
    match reply.body {
        Some(body) => res.content_type(FHIR_JSON).body(body),
        None => res.finish(),
    }
}

fn echo_request_id(req: &HttpRequest, res: &mut actix_web::HttpResponseBuilder) {
    if let Some(v) = req.headers().get("x-request-id") {
        res.insert_header(("X-Request-Id", v.clone()));
    }
}

/// The OperationOutcome response for an error (internal causes are logged here, not sent).
pub fn error_response(req: &HttpRequest, err: ApiError) -> HttpResponse {
    let cid = request::correlation_of(req);
    match &err {
        ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
        ApiError::Unavailable(cause) => tracing::warn!(%cause, "database unavailable"),
        _ => {}
    }
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    echo_request_id(req, &mut res);
    if status == StatusCode::UNAUTHORIZED {
        res.insert_header(("WWW-Authenticate", "Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE || status.as_u16() == 425 {
        res.insert_header(("Retry-After", if status.as_u16() == 503 { "2" } else { "5" }));
    }
    if status == StatusCode::REQUEST_TIMEOUT {
        res.insert_header(("Connection", "close"));
    }
    let max = req.app_data::<web::Data<AppState>>().map(|s| s.gateway.limits.max_issues).unwrap_or(100);
    res.content_type(FHIR_JSON).body(operation_outcome(&capped(err.to_issues(&cid), max)).to_string())
}

/// Build the state shared by all workers.
pub fn state(gateway: Gateway, base: String) -> web::Data<AppState> {
    web::Data::from(Arc::new(AppState::new(gateway, base)))
}
