//! What Signpost itself does when a referral changes (PRODUCT.md §6): re-routing after a
//! rejection, cancelling open Tasks when the referral is revoked or consent is withdrawn, the
//! ServiceRequest's status following its Tasks, and the `delivered` / `viewed` stages. Every
//! move here is one of Signpost's own moves in the lifecycle table, made in the caller's
//! transaction and recorded like any other write (a new version, its Provenance, its events).

use std::collections::HashSet;

use serde_json::{Value, json};

use super::access;
use super::route::referral_facts;
use super::write::check_task_move;
use super::{Gateway, provenance};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::fhir::search::{Criteria, index_values};
use crate::fhir::{instant, now_ms, reference_of, stamp_meta, type_spec};
use crate::lifecycle::{self, Actor, REASON_SYSTEM, STAGE_SYSTEM, status_of};
use crate::routing::rules::{self, Snapshot};
use crate::routing::snomed::Hierarchy;
use crate::store::resources::{self, StoredResource};
use crate::store::{DbConn, StoreError};

/// Who made a change, for its Provenance.
#[derive(Debug, Clone)]
pub struct Author {
    /// The API client's name, or `signpost`.
    pub client: String,
    /// The Organization acted for (none for Signpost itself).
    pub org: Option<String>,
    pub role: &'static str,
    /// `X-Correlation-Id` of the request that caused it.
    pub correlation_id: String,
    /// Why (for Signpost's own changes).
    pub reason: Option<String>,
}

impl Author {
    pub fn of(p: &Principal, correlation_id: &str) -> Author {
        Author {
            client: p.name.clone(),
            org: Some(p.org_id.clone()),
            role: p.role.as_str(),
            correlation_id: correlation_id.to_string(),
            reason: None,
        }
    }

    /// Signpost itself, acting because of `cause`'s request.
    pub fn signpost(correlation_id: &str, reason: &str) -> Author {
        Author {
            client: "signpost".into(),
            org: None,
            role: "signpost",
            correlation_id: correlation_id.to_string(),
            reason: Some(reason.to_string()),
        }
    }
}

/// The Task elements its owner's grants come from (the owner, and the referral it is for):
/// Signpost's own Task changes that keep them (a stage, a cancellation) keep the grants.
const GRANTED_BY: [&str; 3] = ["owner", "focus", "basedOn"];

/// Change a stored resource as Signpost: `f` edits the current body and says whether anything
/// changed. Writes the new version with its index, grants, change log, events and Provenance.
pub(super) fn system_update(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
    author: &Author,
    f: impl Fn(&mut Value) -> bool,
) -> Result<Option<StoredResource>, ApiError> {
    let spec = type_spec(ty).expect("a served type");
    for _ in 0..3 {
        let Some(current) = resources::get(conn, ty, id)? else { return Ok(None) };
        let old = current.json()?;
        let mut body = old.clone();
        let previous_index = index_values(spec, &old);
        if !f(&mut body) {
            return Ok(None);
        }
        let now = now_ms().max(current.last_updated + 1);
        let version = current.version_id + 1;
        stamp_meta(&mut body, version, now);
        let stored = StoredResource {
            resource_type: ty.to_string(),
            id: id.to_string(),
            version_id: version,
            last_updated: now,
            body: body.to_string(),
        };
        if resources::update_if_version(
            conn,
            &stored,
            current.version_id,
            &index_values(spec, &body),
            Some(resources::Replaced { body: &old, index: &previous_index }),
            &body,
        )? {
            let regrant = GRANTED_BY.iter().any(|k| body.get(*k) != old.get(*k));
            match ty {
                "Task" if regrant => access::grant_task(conn, id, &body)?,
                "ServiceRequest" => access::regrant_tasks_of(conn, id)?,
                _ => {}
            }
            provenance::record(conn, &stored, author, "UPDATE")?;
            tracing::info!(resource_type = ty, id, version, reason = author.reason.as_deref(), "updated by Signpost");
            return Ok(Some(stored));
        }
    }
    Err(ApiError::Internal(format!("{ty}/{id} kept changing under a Signpost update")))
}

/// The Tasks of a ServiceRequest (by `basedOn`).
pub(super) fn tasks_of(conn: &mut DbConn, sr_id: &str) -> Result<Vec<StoredResource>, StoreError> {
    let criteria = Criteria {
        resource_type: "Task".into(),
        params: vec![("based-on".into(), vec![format!("ServiceRequest/{sr_id}")])],
        count: 1000,
        ..Default::default()
    };
    resources::find(conn, &criteria)
}

/// Move every open Task of the referral to `cancelled` with a coded reason (Signpost's move).
pub(super) fn cancel_open_tasks(
    conn: &mut DbConn,
    sr_id: &str,
    reason: &str,
    correlation_id: &str,
) -> Result<usize, ApiError> {
    let author = Author::signpost(correlation_id, reason);
    let mut n = 0;
    for task in tasks_of(conn, sr_id)? {
        let old = task.json()?;
        if !lifecycle::OPEN.contains(&status_of(&old)) {
            continue;
        }
        let mut new = old.clone();
        new["status"] = json!("cancelled");
        new["statusReason"] = lifecycle::concept(REASON_SYSTEM, reason);
        check_task_move(Actor::Signpost, "Signpost", &old, &new)?;
        if system_update(conn, "Task", &task.id, &author, |t| {
            if !lifecycle::OPEN.contains(&status_of(t)) {
                return false;
            }
            t["status"] = json!("cancelled");
            t["statusReason"] = lifecycle::concept(REASON_SYSTEM, reason);
            true
        })?
        .is_some()
        {
            n += 1;
        }
    }
    Ok(n)
}

/// The ServiceRequest's status follows its Tasks: `completed` once all are finished and at least
/// one completed, `active` otherwise. A revoked, on-hold or entered-in-error referral is left
/// as the referrer set it.
pub(super) fn roll_up(conn: &mut DbConn, sr_id: &str, correlation_id: &str) -> Result<(), ApiError> {
    let tasks: Vec<Value> = tasks_of(conn, sr_id)?.iter().map(StoredResource::json).collect::<Result<_, _>>()?;
    if tasks.is_empty() {
        return Ok(());
    }
    let done = tasks.iter().all(|t| lifecycle::is_finished(status_of(t)));
    let any_completed = tasks.iter().any(|t| status_of(t) == "completed");
    let target = if done && any_completed { "completed" } else { "active" };
    let author = Author::signpost(correlation_id, "the referral's status follows its Tasks");
    system_update(conn, "ServiceRequest", sr_id, &author, |sr| {
        let now = status_of(sr);
        if now == target || !matches!(now, "active" | "completed") {
            return false;
        }
        sr["status"] = json!(target);
        true
    })?;
    Ok(())
}

/// Set a Task's `businessStatus` to a Signpost stage (`delivered`, `viewed`) unless the charity
/// has already recorded a later one. Notifies nobody (see `outbox::enqueue_for_task`).
pub fn mark_stage(conn: &mut DbConn, task_id: &str, stage: &str) -> Result<Option<StoredResource>, ApiError> {
    let author = Author::signpost("", &format!("the referral was {stage}"));
    let earlier: &[&str] = if stage == "viewed" { &["delivered"] } else { &[] };
    system_update(conn, "Task", task_id, &author, |t| {
        if status_of(t) != "requested" {
            return false;
        }
        let current = lifecycle::code_in(t.get("businessStatus"), STAGE_SYSTEM);
        let settable = match current {
            None => t.get("businessStatus").is_none(),
            Some(code) => earlier.contains(&code),
        };
        if !settable {
            return false;
        }
        t["businessStatus"] = lifecycle::concept(STAGE_SYSTEM, stage);
        true
    })
}

/// A `referral.created` event reached an Endpoint: when the Endpoint is the owning charity's,
/// the Task's stage becomes `delivered`. Runs inside the caller's write transaction (the one
/// that records the stages the deliveries owe).
pub fn mark_delivered(conn: &mut DbConn, endpoint_id: &str, task_id: &str) -> Result<(), ApiError> {
    let Some(endpoint) = resources::get(conn, "Endpoint", endpoint_id)? else { return Ok(()) };
    let Some(task) = resources::get(conn, "Task", task_id)? else { return Ok(()) };
    let endpoint_org = endpoint.json()?.get("managingOrganization").and_then(reference_of).map(|(_, o)| o.to_string());
    if endpoint_org.is_some() && endpoint_org == access::owner_org(conn, &task.json()?)? {
        mark_stage(conn, task_id, "delivered")?;
    }
    Ok(())
}

/// The Principal a referral's sender acts as (for lookups made on its behalf).
fn sender_principal(org: &str) -> Principal {
    Principal { client_id: String::new(), name: "signpost".into(), role: Role::Referrer, org_id: org.to_string() }
}

impl Gateway {
    /// What follows a stored update (by a client): re-routing after a rejection and the roll-up
    /// of a Task's status change; the cancel cascade of a revoked referral or a withdrawn consent.
    pub(super) fn after_update(
        &self,
        conn: &mut DbConn,
        correlation_id: &str,
        old: &Value,
        stored: &StoredResource,
    ) -> Result<(), ApiError> {
        let new = stored.json()?;
        let changed = status_of(old) != status_of(&new);
        match stored.resource_type.as_str() {
            "Task" if changed => {
                if status_of(&new) == "rejected" {
                    self.after_rejection(conn, stored, correlation_id)?;
                }
                if let Some(("ServiceRequest", sr)) = new.get("focus").and_then(reference_of) {
                    roll_up(conn, sr, correlation_id)?;
                }
            }
            "ServiceRequest" if changed => match status_of(&new) {
                "revoked" => {
                    cancel_open_tasks(conn, &stored.id, "referral-revoked", correlation_id)?;
                }
                "entered-in-error" => {
                    cancel_open_tasks(conn, &stored.id, "referral-entered-in-error", correlation_id)?;
                }
                _ => {}
            },
            "Consent" => self.after_consent_change(conn, correlation_id, old, &new)?,
            _ => {}
        }
        Ok(())
    }

    /// A Consent that counted no longer does (inactive, or its period ended): when the patient
    /// has no other consent to share with the voluntary sector, every open Task of every
    /// referral of that patient is cancelled (`consent-withdrawn`).
    fn after_consent_change(
        &self,
        conn: &mut DbConn,
        correlation_id: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        let now = chrono::Utc::now();
        if !crate::fhir::referral_rules::consent_counts(old, now)
            || crate::fhir::referral_rules::consent_counts(new, now)
        {
            return Ok(());
        }
        let Some(patient) = new.pointer("/patient/reference").and_then(Value::as_str) else { return Ok(()) };
        let consents = Criteria {
            resource_type: "Consent".into(),
            params: vec![("patient".into(), vec![patient.to_string()])],
            count: 100,
            ..Default::default()
        };
        for c in resources::find(conn, &consents)? {
            if crate::fhir::referral_rules::consent_counts(&c.json()?, now) {
                return Ok(());
            }
        }
        let referrals = Criteria {
            resource_type: "ServiceRequest".into(),
            params: vec![("subject".into(), vec![patient.to_string()])],
            count: 1000,
            ..Default::default()
        };
        for sr in resources::find(conn, &referrals)? {
            let n = cancel_open_tasks(conn, &sr.id, "consent-withdrawn", correlation_id)?;
            if n > 0 {
                tracing::info!(service_request = %sr.id, cancelled = n, "consent withdrawn: open Tasks cancelled");
            }
        }
        Ok(())
    }

    /// After a charity rejected `task`: route the needs it served to the next fitting service
    /// (a new Task; the rejected one is never reused) and mark the rejected Task `rerouted`; when
    /// no service is left, mark it `no-service-left` — its update reaches the referrer.
    pub(super) fn after_rejection(
        &self,
        conn: &mut DbConn,
        task: &StoredResource,
        correlation_id: &str,
    ) -> Result<(), ApiError> {
        let body = task.json()?;
        let Some(("ServiceRequest", sr_id)) = body.get("focus").and_then(reference_of) else { return Ok(()) };
        let sr_id = sr_id.to_string();
        let Some(sr) = resources::get(conn, "ServiceRequest", &sr_id)? else { return Ok(()) };
        let sr = sr.json()?;
        let rejected_org = access::owner_org(conn, &body)?.unwrap_or_default();
        let sender = resources::sender_of(conn, "ServiceRequest", &sr_id)?.unwrap_or_default();
        let mut new_tasks = Vec::new();
        if crate::routing::performer_targets(&sr).is_empty() && status_of(&sr) == "active" {
            let siblings: Vec<Value> =
                tasks_of(conn, &sr_id)?.iter().map(StoredResource::json).collect::<Result<_, _>>()?;
            let mut tried: HashSet<String> = HashSet::new();
            let mut live: HashSet<String> = HashSet::new();
            for t in &siblings {
                if let Some(org) = access::owner_org(conn, t)? {
                    if !matches!(status_of(t), "rejected" | "failed" | "cancelled" | "entered-in-error") {
                        live.insert(org.clone());
                    }
                    tried.insert(org);
                }
            }
            let snapshot = self.directory.snapshot(conn)?;
            let hierarchy = Hierarchy::shared();
            let serves = |org: &str, code: &str| {
                snapshot
                    .services
                    .iter()
                    .any(|s| s.org_id == org && s.conditions.iter().any(|c| hierarchy.is_a(code, c)))
            };
            let mut facts =
                referral_facts(conn, &sender_principal(&sender), &sr, &Default::default(), "ServiceRequest")?;
            // The needs the rejected charity served that no charity still working on the
            // referral serves.
            facts.needs.retain(|n| serves(&rejected_org, &n.code) && !live.iter().any(|o| serves(o, &n.code)));
            if !facts.needs.is_empty() {
                let remaining = Snapshot {
                    services: snapshot.services.iter().filter(|s| !tried.contains(&s.org_id)).cloned().collect(),
                    entries: Default::default(),
                };
                let decision = rules::decide(&facts, &remaining, hierarchy);
                let plan = super::route::Plan::ByCondition(decision);
                let mut routes = plan.routes();
                for r in &mut routes {
                    r.note = Some(format!(
                        "After Organization/{rejected_org} rejected the referral: {}",
                        r.note.as_deref().unwrap_or("rerouted by Signpost")
                    ));
                }
                let author = Author::signpost(correlation_id, "rerouted after a rejection");
                for t in super::write::create_routed_tasks(conn, &author, &sender, &sr_id, &sr, &routes, now_ms())? {
                    access::grant_task(conn, &t.id, &t.json()?)?;
                    tracing::info!(task = %t.id, rejected = %task.id, "rerouted after a rejection");
                    new_tasks.push(t.id.clone());
                }
            }
        }
        let stage = if new_tasks.is_empty() { "no-service-left" } else { "rerouted" };
        let author = Author::signpost(correlation_id, &format!("after the rejection: {stage}"));
        let rejected_version = task.version_id;
        system_update(conn, "Task", &task.id, &author, |t| {
            if t.pointer("/meta/versionId").and_then(Value::as_str) != Some(&rejected_version.to_string()) {
                return false;
            }
            t["businessStatus"] = lifecycle::concept(STAGE_SYSTEM, stage);
            if !new_tasks.is_empty() {
                let mut notes = t.get("note").and_then(Value::as_array).cloned().unwrap_or_default();
                notes.push(json!({
                    "authorString": "Signpost routing",
                    "time": instant(now_ms()),
                    "text": format!("Rerouted to {}", new_tasks.iter().map(|i| format!("Task/{i}")).collect::<Vec<_>>().join(", "))
                }));
                t["note"] = Value::Array(notes);
            }
            true
        })?;
        Ok(())
    }
}
