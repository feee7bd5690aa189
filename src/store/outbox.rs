//! The webhook outbox (PRODUCT.md §5): events are written in the transaction that changed the
//! Task ([`enqueue_for_task`], called by the store's two write functions), claimed by lease with a
//! fencing token, and completed only by the lease holder.

use diesel::prelude::*;
use serde_json::{Value, json};

use super::alerts::{self, AlertKind};
use super::resources::{self, StoredResource};
use super::schema::{endpoint_state, outbox, pending_stages, search_index};
use super::{DbConn, StoreError};

/// One outbox row.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: String,
    pub endpoint_id: String,
    pub event_number: i64,
    pub event_type: String,
    pub body: String,
    pub created_at: i64,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<i64>,
    pub fencing: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    /// Extra HTTP headers (a JSON object), e.g. a message's X-Correlation-Id.
    pub headers: Option<String>,
}

/// An Endpoint's delivery state.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = endpoint_state)]
pub struct EndpointState {
    pub endpoint_id: String,
    pub secret: Option<String>,
    pub previous_secret: Option<String>,
    pub previous_until: Option<i64>,
    pub event_counter: i64,
    pub disabled: bool,
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub failing_since: Option<i64>,
}

/// Continuous failure for this long disables an Endpoint (its events are held).
pub const DISABLE_AFTER_MS: i64 = 5 * 86_400_000;

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

/// Endpoints allowed at once per Endpoint (RELIABILITY.md §2.7).
pub const MAX_IN_FLIGHT: i64 = 4;

/// The Organization behind a Task's owner (an Organization, or a HealthcareService's provider).
pub fn owner_org(conn: &mut DbConn, task: &Value) -> Result<Option<String>, StoreError> {
    let Some((ty, id)) = task.get("owner").and_then(crate::fhir::reference_of) else { return Ok(None) };
    match ty {
        "Organization" => Ok(Some(id.to_string())),
        "HealthcareService" => Ok(resources::get(conn, ty, id)?
            .map(|r| r.json())
            .transpose()?
            .and_then(|s| s.get("providedBy").and_then(crate::fhir::reference_of).map(|(_, o)| o.to_string()))),
        _ => Ok(None),
    }
}

/// The `Endpoint.payloadType` coding that opts an Endpoint into full-resource payloads.
pub const FULL_RESOURCE_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/webhook-payload";

/// Whether an Endpoint asked for full-resource payloads.
fn wants_full(conn: &mut DbConn, endpoint: &str) -> Result<bool, StoreError> {
    let Some(e) = resources::get(conn, "Endpoint", endpoint)? else { return Ok(false) };
    let e = e.json()?;
    Ok(crate::fhir::items(&e, "payloadType").flat_map(|p| crate::fhir::items(p, "coding")).any(|c| {
        c.get("system").and_then(Value::as_str) == Some(FULL_RESOURCE_SYSTEM)
            && c.get("code").and_then(Value::as_str) == Some("full-resource")
    }))
}

/// The minimum necessary for an opted-in Endpoint: the Task, its ServiceRequest, and the
/// Patient's identifiers, name, birth date, contact details and contact preference.
fn full_resources(conn: &mut DbConn, task: &Value, sr: Option<&str>) -> Result<Value, StoreError> {
    let mut out = vec![task.clone()];
    if let Some(sr) = sr
        && let Some(r) = resources::get(conn, "ServiceRequest", sr)?
    {
        let sr = r.json()?;
        if let Some(("Patient", pid)) = sr.get("subject").and_then(crate::fhir::reference_of)
            && let Some(p) = resources::get(conn, "Patient", pid)?
        {
            let p = p.json()?;
            let mut minimal = json!({ "resourceType": "Patient", "id": p["id"] });
            for key in ["extension", "identifier", "name", "birthDate", "telecom", "address", "communication"] {
                if let Some(v) = p.get(key) {
                    minimal[key] = v.clone();
                }
            }
            out.push(sr);
            out.push(minimal);
        } else {
            out.push(sr);
        }
    }
    Ok(Value::Array(out))
}

/// The active Endpoints an Organization manages: the search index's `organization` rows of
/// the Organization, each probed for `status=active`. One typed statement (prepared once per
/// connection), since every Task write asks it once or twice.
fn endpoints_of(conn: &mut DbConn, org: &str) -> Result<Vec<String>, StoreError> {
    let status = diesel::alias!(search_index as endpoint_status);
    let query = search_index::table
        .filter(search_index::resource_type.eq("Endpoint"))
        .filter(search_index::param.eq("organization"))
        .filter(search_index::value.eq(format!("Organization/{org}")))
        .filter(diesel::dsl::exists(
            status
                .filter(status.field(search_index::resource_type).eq("Endpoint"))
                .filter(status.field(search_index::param).eq("status"))
                .filter(status.field(search_index::value).eq("active"))
                .filter(status.field(search_index::resource_id).eq(search_index::resource_id)),
        ))
        .select(search_index::resource_id)
        .order(search_index::resource_id);
    Ok(super::on_backend!(conn, |c| query.load(c))?)
}

/// Write the outbox rows for a new or changed Task: one per active Endpoint of the charity that
/// owns it and of the organisation that sent its referral. A new Task is `referral.created`; a
/// change of `status` or `businessStatus` is `referral.updated` (`referral.cancelled` when
/// cancelled); other changes, and Signpost's own `delivered` / `viewed` stages, notify nobody.
///
/// `body` is the stored Task parsed, `previous` its version before (`None` for version 1).
pub fn enqueue_for_task(
    conn: &mut DbConn,
    task: &StoredResource,
    body: &Value,
    previous: Option<&Value>,
) -> Result<(), StoreError> {
    let status = body.get("status").and_then(Value::as_str).unwrap_or_default();
    let event_type = if task.version_id == 1 {
        "referral.created"
    } else {
        let Some(previous) = previous else {
            return Ok(());
        };
        if previous.get("status") == body.get("status") && previous.get("businessStatus") == body.get("businessStatus")
        {
            return Ok(());
        }
        // The stages Signpost records itself (delivered, viewed) are visible on the Task but
        // notify nobody: a delivery must not cause another delivery.
        let stage = crate::lifecycle::code_in(body.get("businessStatus"), crate::lifecycle::STAGE_SYSTEM);
        if previous.get("status") == body.get("status") && matches!(stage, Some("delivered" | "viewed")) {
            return Ok(());
        }
        if status == "cancelled" { "referral.cancelled" } else { "referral.updated" }
    };
    let sr = body
        .get("focus")
        .and_then(crate::fhir::reference_of)
        .filter(|(t, _)| *t == "ServiceRequest")
        .map(|(_, id)| id.to_string());
    let mut orgs: Vec<String> = owner_org(conn, body)?.into_iter().collect();
    let mut referrer_endpoints = Vec::new();
    if let Some(sr) = &sr
        && let Some(sender) = resources::sender_of(conn, "ServiceRequest", sr)?
    {
        referrer_endpoints = endpoints_of(conn, &sender)?;
        orgs.push(sender);
    }
    let finished = task.version_id > 1 && crate::lifecycle::is_finished(status);
    orgs.sort();
    orgs.dedup();
    let mut endpoints = Vec::new();
    for org in &orgs {
        endpoints.extend(endpoints_of(conn, org)?);
    }
    endpoints.sort();
    endpoints.dedup();
    for endpoint in endpoints {
        let number = next_event_number(conn, &endpoint)?;
        let mut payload = json!({
            "type": event_type,
            "timestamp": crate::fhir::instant(task.last_updated),
            "data": {
                "task": format!("Task/{}", task.id),
                "serviceRequest": sr.as_ref().map(|s| format!("ServiceRequest/{s}")),
                "eventNumber": number,
            }
        });
        let full = wants_full(conn, &endpoint)?;
        if full {
            payload["data"]["resources"] = full_resources(conn, body, sr.as_deref())?;
        }
        // A finished Task tells the referrer where its outcome summary is (the summary itself
        // for an Endpoint that asked for full resources).
        if finished && referrer_endpoints.contains(&endpoint) {
            payload["data"]["outcomeSummary"] = if full {
                crate::summary::outcome_document(conn, task)?
            } else {
                json!(format!("Task/{}/$outcome-summary", task.id))
            };
        }
        let id = uuid::Uuid::now_v7();
        let mut headers = None;
        if is_messaging(conn, &endpoint)? {
            // A BaRS-style receiver gets a response message instead of the webhook payload.
            let (message, extra) = response_message(conn, body, task, sr.as_deref(), number, &id)?;
            payload = message;
            headers = Some(extra.to_string());
        }
        diesel::insert_into(outbox::table)
            .values(OutboxRow {
                id: format!("msg_{}", id.simple()),
                endpoint_id: endpoint,
                event_number: number,
                event_type: event_type.to_string(),
                body: payload.to_string(),
                headers,
                created_at: task.last_updated,
                state: PENDING.into(),
                attempts: 0,
                next_attempt_at: task.last_updated,
                lease_owner: None,
                lease_expires: None,
                fencing: 0,
                last_error: None,
                delivered_at: None,
            })
            .execute(conn)?;
    }
    Ok(())
}

/// An Endpoint whose `connectionType` is `hl7-fhir-msg` takes FHIR messages (BaRS style).
fn is_messaging(conn: &mut DbConn, endpoint: &str) -> Result<bool, StoreError> {
    let Some(e) = resources::get(conn, "Endpoint", endpoint)? else { return Ok(false) };
    Ok(e.json()?.pointer("/connectionType/code").and_then(Value::as_str) == Some("hl7-fhir-msg"))
}

/// The BaRS event code of a response message.
pub const BARS_EVENTS: &str = "https://fhir.nhs.uk/CodeSystem/message-events-bars";

/// A status change as a BaRS-style response message: a `message` Bundle whose MessageHeader
/// (`servicerequest-response`) answers the referral's original message Bundle (its id in
/// `response.identifier`) and focuses the Task; with the headers the message travels with
/// (`X-Request-Id` new per message, `X-Correlation-Id` the conversation's).
fn response_message(
    conn: &mut DbConn,
    task_json: &Value,
    task: &StoredResource,
    sr: Option<&str>,
    number: i64,
    id: &uuid::Uuid,
) -> Result<(Value, Value), StoreError> {
    let origin = match sr {
        Some(sr) => super::messages::of(conn, sr)?,
        None => None,
    };
    let mut header = json!({
        "resourceType": "MessageHeader",
        "id": uuid::Uuid::new_v4().to_string(),
        "eventCoding": { "system": BARS_EVENTS, "code": "servicerequest-response" },
        "source": {
            "name": "Signpost",
            "endpoint": origin.as_ref().map(|o| o.receiver_base.clone()).unwrap_or_else(|| "urn:signpost".into())
        },
        "focus": [{ "reference": format!("urn:uuid:{id}") }],
    });
    if let Some(o) = &origin {
        header["destination"] = json!([{ "endpoint": o.source_endpoint }]);
        header["response"] = json!({ "identifier": o.bundle_id, "code": "ok" });
    }
    let message = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": crate::fhir::instant(task.last_updated) },
        "type": "message",
        "timestamp": crate::fhir::instant(task.last_updated),
        "entry": [
            { "fullUrl": format!("urn:uuid:{}", header["id"].as_str().unwrap_or_default()), "resource": header },
            { "fullUrl": format!("urn:uuid:{id}"), "resource": task_json },
        ],
    });
    let correlation = origin.map(|o| o.correlation_id).unwrap_or_else(|| task.id.clone());
    let headers = json!({
        "X-Request-Id": id.to_string(),
        "X-Correlation-Id": correlation,
        "X-Signpost-Event-Number": number.to_string(),
    });
    Ok((message, headers))
}

/// The Endpoint's state row, created when first needed.
pub fn ensure_endpoint(conn: &mut DbConn, endpoint: &str) -> Result<EndpointState, StoreError> {
    if let Some(s) = endpoint_status(conn, endpoint)? {
        return Ok(s);
    }
    let row = EndpointState {
        endpoint_id: endpoint.to_string(),
        secret: None,
        previous_secret: None,
        previous_until: None,
        event_counter: 0,
        disabled: false,
        last_success_at: None,
        last_failure_at: None,
        failing_since: None,
    };
    diesel::insert_into(endpoint_state::table).values(&row).execute(conn)?;
    Ok(row)
}

/// The next `eventNumber` of an Endpoint: from 1, no gaps (in the writer's transaction).
fn next_event_number(conn: &mut DbConn, endpoint: &str) -> Result<i64, StoreError> {
    ensure_endpoint(conn, endpoint)?;
    diesel::update(endpoint_state::table.find(endpoint))
        .set(endpoint_state::event_counter.eq(endpoint_state::event_counter + 1))
        .execute(conn)?;
    Ok(endpoint_state::table.find(endpoint).select(endpoint_state::event_counter).first(conn)?)
}

/// An Endpoint's state, if it ever had an event or a secret.
pub fn endpoint_status(conn: &mut DbConn, endpoint: &str) -> Result<Option<EndpointState>, StoreError> {
    Ok(endpoint_state::table.find(endpoint).first(conn).optional()?)
}

/// Set a new secret; the previous one stays valid until `previous_until` (rotation overlap).
pub fn rotate_secret(conn: &mut DbConn, endpoint: &str, secret: &str, previous_until: i64) -> Result<(), StoreError> {
    let current = ensure_endpoint(conn, endpoint)?;
    diesel::update(endpoint_state::table.find(endpoint))
        .set((
            endpoint_state::previous_secret.eq(current.secret.clone()),
            endpoint_state::previous_until.eq(current.secret.as_ref().map(|_| previous_until)),
            endpoint_state::secret.eq(Some(secret.to_string())),
        ))
        .execute(conn)?;
    Ok(())
}

/// Disable (410, or an operator) or re-enable an Endpoint; a disabled Endpoint's events are held.
pub fn set_disabled(conn: &mut DbConn, endpoint: &str, disabled: bool) -> Result<(), StoreError> {
    ensure_endpoint(conn, endpoint)?;
    diesel::update(endpoint_state::table.find(endpoint)).set(endpoint_state::disabled.eq(disabled)).execute(conn)?;
    if !disabled {
        // A re-enabled Endpoint starts a new failure streak.
        diesel::update(endpoint_state::table.find(endpoint))
            .set(endpoint_state::failing_since.eq(None::<i64>))
            .execute(conn)?;
    }
    Ok(())
}

/// Claim up to `limit` due events by lease: each claim is a compare-and-set on the fencing token,
/// so two workers never both hold one event; an expired lease is claimable again. Events of
/// disabled Endpoints, or of Endpoints without a secret yet, wait. At most [`MAX_IN_FLIGHT`]
/// leased events per Endpoint.
///
/// The claim is one short write transaction, never held across a send. On SQLite it begins with
/// `BEGIN IMMEDIATE`, so claimers take turns. On PostgreSQL the due rows are read
/// `FOR UPDATE SKIP LOCKED` (a second worker passes over them instead of waiting) and each
/// Endpoint's state row is locked the same way before its in-flight count is read, so the
/// per-Endpoint bound holds across instances too.
pub fn claim(
    conn: &mut super::PooledConn,
    owner: &str,
    now: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    super::write_txn(conn, |conn| claim_in_txn(conn, owner, now, lease_ms, limit))
}

fn claim_in_txn(
    conn: &mut DbConn,
    owner: &str,
    now: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    let ready = endpoint_state::table.filter(ready()).select(endpoint_state::endpoint_id);
    let due = outbox::table
        .filter(due_at(now))
        .filter(outbox::endpoint_id.eq_any(ready))
        .order((outbox::next_attempt_at.asc(), outbox::id.asc()))
        .select((outbox::id, outbox::endpoint_id, outbox::fencing))
        .limit(limit * 4);
    // Only the keys: most due rows are skipped (their Endpoint is full), so their bodies are
    // read only for the rows claimed.
    let due: Vec<(String, String, i64)> = match conn {
        DbConn::Pg(pg) => due.for_update().skip_locked().load(pg)?,
        DbConn::Sqlite(_) => due.load(conn)?,
    };
    let mut claimed: Vec<OutboxRow> = Vec::new();
    // Per Endpoint: how many are in flight, or `None` when another claimer holds its state row.
    let mut in_flight: std::collections::HashMap<String, Option<i64>> = Default::default();
    for (id, endpoint_id, fencing) in due {
        if claimed.len() as i64 >= limit {
            break;
        }
        let flying = match in_flight.get(&endpoint_id) {
            Some(n) => *n,
            None => {
                let n = if lock_endpoint(conn, &endpoint_id)? {
                    Some(count_in_flight(conn, &endpoint_id, now)?)
                } else {
                    None
                };
                in_flight.insert(endpoint_id.clone(), n);
                n
            }
        };
        let Some(flying) = flying.filter(|n| *n < MAX_IN_FLIGHT) else { continue };
        if let Some(row) = take(conn, &id, fencing, owner, now, lease_ms)? {
            claimed.push(row);
            in_flight.insert(endpoint_id, Some(flying + 1));
        }
    }
    Ok(claimed)
}

/// Claim the next due event of one Endpoint, in the transaction that records the delivery of its
/// previous one: the slot that delivery frees goes on at once, without a claim of its own. As
/// [`claim`] for that Endpoint: only when it is enabled and has a secret, and holds fewer than
/// [`MAX_IN_FLIGHT`] leases; oldest due first.
pub fn claim_next_of(
    conn: &mut DbConn,
    endpoint: &str,
    owner: &str,
    now: i64,
    lease_ms: i64,
) -> Result<Option<OutboxRow>, StoreError> {
    let ready = endpoint_state::table.find(endpoint).filter(ready()).select(endpoint_state::endpoint_id);
    let ready = match conn {
        DbConn::Pg(pg) => ready.for_update().skip_locked().first::<String>(pg).optional()?,
        DbConn::Sqlite(_) => ready.first::<String>(conn).optional()?,
    };
    if ready.is_none() || count_in_flight(conn, endpoint, now)? >= MAX_IN_FLIGHT {
        return Ok(None);
    }
    let due = outbox::table
        .filter(outbox::endpoint_id.eq(endpoint))
        .filter(due_at(now))
        .order((outbox::next_attempt_at.asc(), outbox::id.asc()))
        .select((outbox::id, outbox::fencing));
    let due: Option<(String, i64)> = match conn {
        DbConn::Pg(pg) => due.for_update().skip_locked().first(pg).optional()?,
        DbConn::Sqlite(_) => due.first(conn).optional()?,
    };
    match due {
        Some((id, fencing)) => take(conn, &id, fencing, owner, now, lease_ms),
        None => Ok(None),
    }
}

/// An Endpoint whose events may be sent: enabled, with a secret.
#[diesel::dsl::auto_type]
fn ready() -> _ {
    endpoint_state::disabled.eq(false).and(endpoint_state::secret.is_not_null())
}

/// An event due at `now`: pending, its time come, and no live lease on it.
#[diesel::dsl::auto_type]
fn due_at(now: i64) -> _ {
    let pending: &'static str = PENDING;
    outbox::state
        .eq(pending)
        .and(outbox::next_attempt_at.le(now))
        .and(outbox::lease_expires.is_null().or(outbox::lease_expires.lt(now)))
}

/// How many of an Endpoint's events are leased now.
fn count_in_flight(conn: &mut DbConn, endpoint: &str, now: i64) -> Result<i64, StoreError> {
    Ok(outbox::table
        .filter(outbox::endpoint_id.eq(endpoint))
        .filter(outbox::state.eq(PENDING))
        .filter(outbox::lease_expires.ge(now))
        .count()
        .get_result(conn)?)
}

/// Lease one event if its fencing token is still `fencing` (a compare-and-set): the claimed row,
/// or `None` when another claimer got there first.
fn take(
    conn: &mut DbConn,
    id: &str,
    fencing: i64,
    owner: &str,
    now: i64,
    lease_ms: i64,
) -> Result<Option<OutboxRow>, StoreError> {
    let won = diesel::update(
        outbox::table.filter(outbox::id.eq(id)).filter(outbox::fencing.eq(fencing)).filter(outbox::state.eq(PENDING)),
    )
    .set((
        outbox::lease_owner.eq(Some(owner.to_string())),
        outbox::lease_expires.eq(Some(now + lease_ms)),
        outbox::fencing.eq(fencing + 1),
    ))
    .execute(conn)?;
    Ok(if won == 1 { Some(outbox::table.find(id).first(conn)?) } else { None })
}

/// Lock an Endpoint's state row for this claim (PostgreSQL, `SKIP LOCKED`: `false` when another
/// claimer holds it). SQLite's write lock already serialises claimers.
fn lock_endpoint(conn: &mut DbConn, endpoint: &str) -> Result<bool, StoreError> {
    match conn {
        DbConn::Pg(pg) => Ok(endpoint_state::table
            .find(endpoint)
            .select(endpoint_state::endpoint_id)
            .for_update()
            .skip_locked()
            .first::<String>(pg)
            .optional()?
            .is_some()),
        DbConn::Sqlite(_) => Ok(true),
    }
}

/// Record a successful delivery; `false` (nothing changed) if the lease was lost meanwhile.
pub fn complete(conn: &mut DbConn, row: &OutboxRow, now: i64) -> Result<bool, StoreError> {
    let done = diesel::update(fenced(row))
        .set((
            outbox::state.eq(DELIVERED),
            outbox::attempts.eq(row.attempts + 1),
            outbox::delivered_at.eq(Some(now)),
            outbox::lease_owner.eq(None::<String>),
            outbox::lease_expires.eq(None::<i64>),
            outbox::last_error.eq(None::<String>),
        ))
        .execute(conn)?
        == 1;
    if done {
        diesel::update(endpoint_state::table.find(&row.endpoint_id))
            .set((endpoint_state::last_success_at.eq(Some(now)), endpoint_state::failing_since.eq(None::<i64>)))
            .execute(conn)?;
    }
    Ok(done)
}

/// A `delivered` stage owed to a Task: its Endpoint received the Task's `referral.created`.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = pending_stages)]
pub struct OwedStage {
    pub event_id: String,
    pub endpoint_id: String,
    pub task_id: String,
}

/// After a delivery of a new referral (in its transaction): the Task's `delivered` stage is owed.
pub fn owe_stage(conn: &mut DbConn, row: &OutboxRow) -> Result<(), StoreError> {
    if row.event_type != "referral.created" {
        return Ok(());
    }
    let body: Value = serde_json::from_str(&row.body).unwrap_or_default();
    let Some(task) = body.pointer("/data/task").and_then(Value::as_str).and_then(|t| t.strip_prefix("Task/")) else {
        return Ok(());
    };
    diesel::insert_into(pending_stages::table)
        .values(OwedStage { event_id: row.id.clone(), endpoint_id: row.endpoint_id.clone(), task_id: task.into() })
        .execute(conn)?;
    Ok(())
}

/// Up to `limit` owed stages, taken away as they are read (in the transaction that records
/// them; on PostgreSQL rows another worker is taking are passed over).
pub fn take_owed_stages(conn: &mut DbConn, limit: i64) -> Result<Vec<OwedStage>, StoreError> {
    let owed = pending_stages::table.order(pending_stages::event_id.asc()).limit(limit);
    let owed: Vec<OwedStage> = match conn {
        DbConn::Pg(pg) => owed.for_update().skip_locked().load(pg)?,
        DbConn::Sqlite(_) => owed.load(conn)?,
    };
    let ids: Vec<&str> = owed.iter().map(|s| s.event_id.as_str()).collect();
    diesel::delete(pending_stages::table.filter(pending_stages::event_id.eq_any(ids))).execute(conn)?;
    Ok(owed)
}

/// Record a failed attempt: retry at `next` or, with `None`, dead-letter (`failed`) and raise an
/// alert. Five days of continuous failure disable the Endpoint (alert). One transaction; `false`
/// (nothing changed) if the lease was lost meanwhile.
pub fn fail(
    conn: &mut super::PooledConn,
    row: &OutboxRow,
    next: Option<i64>,
    error: &str,
    now: i64,
) -> Result<bool, StoreError> {
    super::write_txn(conn, |conn| record_failure(conn, row, next, error, now, false))
}

/// The Endpoint answered 410 Gone: disable it, hold this event (it is tried again when the
/// Endpoint is re-enabled) and raise an alert, in one transaction.
pub fn gone(conn: &mut super::PooledConn, row: &OutboxRow, now: i64) -> Result<bool, StoreError> {
    super::write_txn(conn, |conn| record_failure(conn, row, Some(now), "410 Gone: endpoint disabled", now, true))
}

fn record_failure(
    conn: &mut DbConn,
    row: &OutboxRow,
    next: Option<i64>,
    error: &str,
    now: i64,
    gone: bool,
) -> Result<bool, StoreError> {
    let done = diesel::update(fenced(row))
        .set((
            outbox::state.eq(if next.is_some() { PENDING } else { FAILED }),
            outbox::attempts.eq(row.attempts + 1),
            outbox::next_attempt_at.eq(next.unwrap_or(now)),
            outbox::lease_owner.eq(None::<String>),
            outbox::lease_expires.eq(None::<i64>),
            outbox::last_error.eq(Some(error.chars().take(200).collect::<String>())),
        ))
        .execute(conn)?
        == 1;
    if !done {
        return Ok(false);
    }
    let state = endpoint_status(conn, &row.endpoint_id)?;
    let since = state.as_ref().and_then(|s| s.failing_since).unwrap_or(now);
    let was_disabled = state.is_some_and(|s| s.disabled);
    let failing_too_long = now - since >= DISABLE_AFTER_MS;
    if next.is_none() {
        alerts::raise(conn, AlertKind::DeadLetter, &row.endpoint_id, Some(&row.id), now)?;
    }
    if !was_disabled && gone {
        alerts::raise(conn, AlertKind::EndpointGone, &row.endpoint_id, None, now)?;
    } else if !was_disabled && failing_too_long {
        alerts::raise(conn, AlertKind::EndpointFailing, &row.endpoint_id, None, now)?;
    }
    diesel::update(endpoint_state::table.find(&row.endpoint_id))
        .set((
            endpoint_state::last_failure_at.eq(Some(now)),
            endpoint_state::failing_since.eq(Some(since)),
            endpoint_state::disabled.eq(was_disabled || gone || failing_too_long),
        ))
        .execute(conn)?;
    Ok(true)
}

/// Give back a claimed event without counting an attempt (its Endpoint turned out to be off or
/// disabled), to be looked at again at `next` — never at once, so held events cannot keep a
/// worker busy.
pub fn release(conn: &mut DbConn, row: &OutboxRow, next: i64) -> Result<bool, StoreError> {
    Ok(diesel::update(fenced(row))
        .set((
            outbox::lease_owner.eq(None::<String>),
            outbox::lease_expires.eq(None::<i64>),
            outbox::next_attempt_at.eq(next),
        ))
        .execute(conn)?
        == 1)
}

fn fenced(
    row: &OutboxRow,
) -> diesel::dsl::Filter<
    diesel::dsl::Filter<outbox::table, diesel::dsl::Eq<outbox::id, String>>,
    diesel::dsl::Eq<outbox::fencing, i64>,
> {
    outbox::table.filter(outbox::id.eq(row.id.clone())).filter(outbox::fencing.eq(row.fencing))
}

/// An Endpoint's events after `since` (by eventNumber), oldest first.
pub fn events_since(conn: &mut DbConn, endpoint: &str, since: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
    Ok(outbox::table
        .filter(outbox::endpoint_id.eq(endpoint))
        .filter(outbox::event_number.gt(since))
        .order(outbox::event_number.asc())
        .limit(limit)
        .load(conn)?)
}

/// Put an Endpoint's dead-lettered events back in the queue (an operator's replay) and make its
/// held events due now, so a re-enabled Endpoint is flushed at once; how many were dead letters.
pub fn resend_failed(conn: &mut DbConn, endpoint: &str, now: i64) -> Result<usize, StoreError> {
    let requeued =
        diesel::update(outbox::table.filter(outbox::endpoint_id.eq(endpoint)).filter(outbox::state.eq(FAILED)))
            .set((outbox::state.eq(PENDING), outbox::attempts.eq(0), outbox::next_attempt_at.eq(now)))
            .execute(conn)?;
    diesel::update(
        outbox::table
            .filter(outbox::endpoint_id.eq(endpoint))
            .filter(outbox::state.eq(PENDING))
            .filter(outbox::next_attempt_at.gt(now)),
    )
    .set(outbox::next_attempt_at.eq(now))
    .execute(conn)?;
    Ok(requeued)
}

/// Events of one Endpoint in one state: (Endpoint id, state, how many, oldest creation time).
pub type StateCount = (String, String, i64, Option<i64>);

/// Per Endpoint and state: how many events, and the oldest one's creation time.
pub fn summary(conn: &mut DbConn) -> Result<Vec<StateCount>, StoreError> {
    Ok(outbox::table
        .group_by((outbox::endpoint_id, outbox::state))
        .select((outbox::endpoint_id, outbox::state, diesel::dsl::count_star(), diesel::dsl::min(outbox::created_at)))
        .order((outbox::endpoint_id.asc(), outbox::state.asc()))
        .load(conn)?)
}

/// Every Endpoint's delivery state.
pub fn endpoints(conn: &mut DbConn) -> Result<Vec<EndpointState>, StoreError> {
    Ok(endpoint_state::table.order(endpoint_state::endpoint_id.asc()).load(conn)?)
}

/// Events not yet delivered (pending), and the oldest one's creation time.
pub fn depth(conn: &mut DbConn) -> Result<(i64, Option<i64>), StoreError> {
    Ok(outbox::table
        .filter(outbox::state.eq(PENDING))
        .select((diesel::dsl::count_star(), diesel::dsl::min(outbox::created_at)))
        .first(conn)?)
}
