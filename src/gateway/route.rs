//! Routing inside the gateway (PRODUCT.md §4): the in-memory directory snapshot, the facts a
//! referral gives about its patient and needs (from the same Bundle or the store, as the sender
//! may see them), and what a decision leaves behind: Tasks, warnings for unmatched needs, and
//! the stored explanation (`$routing`, `$route`, `$unmatched`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{Datelike, NaiveDate, Utc};
use serde_json::{Value, json};

use super::access;
use super::{Ctx, Gateway, Reply, bundle};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, has_errors};
use crate::fhir::{items, now_ms, parse_reference, type_spec};
use crate::routing::rules::{self, Decision, Facts, Need, Snapshot};
use crate::routing::snomed::{Hierarchy, SYSTEM};
use crate::routing::{self, Route};
use crate::store::routing::{self as decisions, DecisionRow};
use crate::store::{DbConn, StoreError, resources};

type Stamp = i64;

/// The directory as routing reads it, rebuilt when a directory resource changes. Each routing
/// reads the directory's version (one row, moved by every directory write), so every instance
/// sharing a database sees a change at its next referral.
#[derive(Default)]
pub struct DirectoryCache {
    current: RwLock<Option<(Stamp, Arc<Snapshot>)>>,
}

impl DirectoryCache {
    pub(super) fn snapshot(&self, conn: &mut DbConn) -> Result<Arc<Snapshot>, StoreError> {
        let stamp = decisions::directory_stamp(conn)?;
        if let Ok(guard) = self.current.read()
            && let Some((s, snap)) = guard.as_ref()
            && *s == stamp
        {
            return Ok(snap.clone());
        }
        let values = decisions::directory_resources(conn)?
            .iter()
            .map(resources::StoredResource::json)
            .collect::<Result<Vec<_>, _>>()?;
        let snap = Arc::new(Snapshot::from_resources(&values));
        if let Ok(mut guard) = self.current.write() {
            *guard = Some((stamp, snap.clone()));
        }
        tracing::info!(services = snap.services.len(), "directory snapshot rebuilt");
        Ok(snap)
    }
}

/// Resources of the same Bundle, by `Type/id` (references already rewritten).
pub(super) type BundleResources = HashMap<String, Value>;

/// A referenced resource: from the Bundle, or stored and visible to the sender.
fn lookup(
    conn: &mut DbConn,
    p: &Principal,
    bundled: &BundleResources,
    reference: &str,
) -> Result<Option<Value>, ApiError> {
    let Some((ty, id)) = parse_reference(reference) else { return Ok(None) };
    if let Some(v) = bundled.get(&format!("{ty}/{id}")) {
        return Ok(Some(v.clone()));
    }
    let Some(spec) = type_spec(ty) else { return Ok(None) };
    let Some(stored) = resources::get(conn, ty, id)? else { return Ok(None) };
    if !access::can_see(conn, p, spec, id)? {
        return Ok(None);
    }
    Ok(Some(stored.json()?))
}

/// One need from a CodeableConcept: its SNOMED CT coding if it has one, else its first coding.
fn need(concept: &Value, source: String) -> Option<Need> {
    let codings: Vec<&Value> = items(concept, "coding").collect();
    let coding =
        codings.iter().find(|c| c.get("system").and_then(Value::as_str) == Some(SYSTEM)).or_else(|| codings.first())?;
    Some(Need {
        source,
        system: coding.get("system").and_then(Value::as_str).unwrap_or_default().to_string(),
        code: coding.get("code").and_then(Value::as_str)?.to_string(),
        display: coding.get("display").and_then(Value::as_str).map(str::to_string),
    })
}

/// What a ServiceRequest says about its patient and needs. `root` is the ServiceRequest's
/// FHIRPath (for the needs' sources).
pub(super) fn referral_facts(
    conn: &mut DbConn,
    p: &Principal,
    sr: &Value,
    bundled: &BundleResources,
    root: &str,
) -> Result<Facts, ApiError> {
    let mut facts = Facts::default();
    for (i, concept) in items(sr, "reasonCode").enumerate() {
        facts.needs.extend(need(concept, format!("{root}.reasonCode[{i}]")));
    }
    for (i, r) in items(sr, "reasonReference").enumerate() {
        let Some(reference) = r.get("reference").and_then(Value::as_str) else { continue };
        if let Some(condition) = lookup(conn, p, bundled, reference)?
            && condition.get("resourceType").and_then(Value::as_str) == Some("Condition")
            && let Some(code) = condition.get("code")
        {
            facts.needs.extend(need(code, format!("{root}.reasonReference[{i}]")));
        }
    }
    let when = sr
        .get("authoredOn")
        .and_then(Value::as_str)
        .and_then(|d| d.get(..10))
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .unwrap_or_else(|| Utc::now().date_naive());
    let patient = match sr.pointer("/subject/reference").and_then(Value::as_str) {
        Some(reference) => lookup(conn, p, bundled, reference)?,
        None => None,
    };
    if let Some(patient) = patient {
        facts.age = patient.get("birthDate").and_then(Value::as_str).and_then(|b| age_at(b, when));
        facts.outward = home_postcode(&patient, when).and_then(|pc| rules::outward_code(&pc));
        facts.contact = items(&patient, "extension")
            .find(|e| {
                e.get("url").and_then(Value::as_str)
                    == Some("https://signpost.example/fhir/StructureDefinition/contact-preference")
            })
            .and_then(|e| e.get("valueCode").and_then(Value::as_str))
            .map(str::to_string);
        let comms: Vec<&Value> = items(&patient, "communication").collect();
        facts.language = comms
            .iter()
            .find(|c| c.get("preferred").and_then(Value::as_bool) == Some(true))
            .or_else(|| comms.first())
            .and_then(|c| c.pointer("/language/coding/0/code").and_then(Value::as_str))
            .map(rules::primary_language)
            .filter(|l| l != "en");
    }
    facts.open_referrals = decisions::open_referrals(conn)?;
    Ok(facts)
}

/// Whole years from a FHIR date (`1948`, `1948-07`, `1948-07-02`) to `when`.
fn age_at(birth: &str, when: NaiveDate) -> Option<u32> {
    let year: i32 = birth.get(..4)?.parse().ok()?;
    let month: u32 = birth.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    let day: u32 = birth.get(8..10).and_then(|d| d.parse().ok()).unwrap_or(1);
    let mut age = when.year() - year;
    if (when.month(), when.day()) < (month, day) {
        age -= 1;
    }
    u32::try_from(age).ok()
}

/// The postcode of the patient's current home address (or their only address).
fn home_postcode(patient: &Value, when: NaiveDate) -> Option<String> {
    let today = when.format("%Y-%m-%d").to_string();
    let current = |a: &&Value| {
        let ended = a
            .pointer("/period/end")
            .and_then(Value::as_str)
            .is_some_and(|end| end.get(..10).unwrap_or(end) < today.as_str());
        let usable = !matches!(a.get("use").and_then(Value::as_str), Some("old" | "temp" | "billing"));
        !ended && usable && a.get("postalCode").and_then(Value::as_str).is_some()
    };
    let addresses: Vec<&Value> = items(patient, "address").filter(current).collect();
    addresses
        .iter()
        .find(|a| a.get("use").and_then(Value::as_str) == Some("home"))
        .or_else(|| addresses.first())
        .and_then(|a| a.get("postalCode").and_then(Value::as_str))
        .map(str::to_string)
}

/// How a ServiceRequest is routed: by its explicit performers (or the sender's own Tasks), or by
/// its conditions.
pub(super) enum Plan {
    Explicit(Vec<Route>),
    ByCondition(Decision),
}

impl Plan {
    pub(super) fn routes(&self) -> Vec<Route> {
        match self {
            Plan::Explicit(routes) => routes.clone(),
            Plan::ByCondition(d) => d
                .tasks
                .iter()
                .map(|t| Route {
                    org_id: t.org_id.clone(),
                    via: format!("HealthcareService/{}", t.service_id),
                    note: Some(t.summary.clone()),
                    waitlist: t.waitlist,
                })
                .collect(),
        }
    }

    /// A warning per need no service fits; `root` is the ServiceRequest's FHIRPath.
    pub(super) fn warnings(&self, root: &str) -> Vec<Issue> {
        let Plan::ByCondition(d) = self else { return Vec::new() };
        let mut out: Vec<Issue> = d
            .unmatched()
            .map(|n| {
                let at = n.need.source.replacen("ServiceRequest", root, 1);
                Issue::warning(
                    IssueCode::NeedUnmatched,
                    format!(
                        "no service fits this need (code {}): {}; the referral is kept and listed for operators",
                        n.need.code,
                        n.outcome.as_ref().err().map(String::as_str).unwrap_or_default()
                    ),
                )
                .at(at)
            })
            .collect();
        if d.needs.is_empty() {
            out.push(
                Issue::warning(
                    IssueCode::NeedUnmatched,
                    "the referral names no coded condition and no performer: it is kept and listed for operators",
                )
                .at(root.to_string()),
            );
        }
        out
    }

    /// The explanation, with the ServiceRequest and its Tasks once they exist.
    pub(super) fn explanation(&self, sr: Option<&str>, task_ids: &[String]) -> Value {
        match self {
            Plan::ByCondition(d) => {
                let mut e = rules::explanation(d, sr, task_ids);
                prepend(&mut e, json!({ "name": "method", "valueCode": "by-condition" }));
                e
            }
            Plan::Explicit(routes) => {
                let mut params = vec![json!({ "name": "method", "valueCode": "explicit-performer" })];
                if let Some(sr) = sr {
                    params.push(json!({ "name": "serviceRequest", "valueReference": { "reference": sr } }));
                }
                for (i, r) in routes.iter().enumerate() {
                    let mut part = vec![
                        json!({ "name": "owner", "valueReference": { "reference": format!("Organization/{}", r.org_id) } }),
                        json!({ "name": "via", "valueString": r.via }),
                    ];
                    if let Some(id) = task_ids.get(i) {
                        part.push(json!({ "name": "task", "valueReference": { "reference": format!("Task/{id}") } }));
                    }
                    params.push(json!({ "name": "task", "part": part }));
                }
                json!({ "resourceType": "Parameters", "parameter": params })
            }
        }
    }

    fn unmatched(&self) -> usize {
        match self {
            Plan::ByCondition(d) => d.unmatched().count() + usize::from(d.needs.is_empty()),
            Plan::Explicit(_) => 0,
        }
    }
}

/// The stored form of a routing decision (built before the write transaction where it can be).
pub(super) fn decision_row(p: &Principal, sr_id: &str, plan: &Plan, task_ids: &[String]) -> DecisionRow {
    let unmatched = plan.unmatched();
    DecisionRow {
        service_request_id: sr_id.to_string(),
        sender_org: p.org_id.clone(),
        decided_at: now_ms(),
        unmatched: i32::try_from(unmatched).unwrap_or(i32::MAX),
        explanation: plan.explanation(Some(&format!("ServiceRequest/{sr_id}")), task_ids).to_string(),
    }
}

/// Store a routing decision with its ServiceRequest.
pub(super) fn store_decision(conn: &mut DbConn, row: &DecisionRow) -> Result<(), ApiError> {
    if row.unmatched > 0 {
        tracing::warn!(service_request = %row.service_request_id, unmatched = row.unmatched, "referral has needs no service fits");
    }
    decisions::insert(conn, row)?;
    Ok(())
}

fn prepend(parameters: &mut Value, p: Value) {
    if let Some(list) = parameters.get_mut("parameter").and_then(Value::as_array_mut) {
        list.insert(0, p);
    }
}

impl Gateway {
    /// Route a ServiceRequest by its conditions (it names no performer and no sender Task).
    pub(super) fn route_by_condition(
        &self,
        conn: &mut DbConn,
        p: &Principal,
        sr: &Value,
        bundled: &BundleResources,
        root: &str,
    ) -> Result<Plan, ApiError> {
        let facts = referral_facts(conn, p, sr, bundled, root)?;
        let snapshot = self.directory.snapshot(conn)?;
        Ok(Plan::ByCondition(rules::decide(&facts, &snapshot, Hierarchy::shared())))
    }

    /// Store the explanation of a stored ServiceRequest's routing.
    pub(super) fn record_decision(
        &self,
        conn: &mut DbConn,
        p: &Principal,
        sr_id: &str,
        plan: &Plan,
        task_ids: &[String],
    ) -> Result<(), ApiError> {
        store_decision(conn, &decision_row(p, sr_id, plan, task_ids))
    }

    /// `GET /fhir/ServiceRequest/{id}/$routing`: how the referral was routed, for its sender and
    /// operators.
    pub fn routing_explanation(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        only_service_request(ty)?;
        let mut conn = self.conn()?;
        let spec = type_spec("ServiceRequest").expect("served");
        if resources::get(&mut conn, "ServiceRequest", id)?.is_none()
            || !access::can_see(&mut conn, &ctx.principal, spec, id)?
        {
            return Err(ApiError::not_found());
        }
        if ctx.principal.role == Role::Charity {
            return Err(ApiError::forbidden(
                "the routing explanation is for the referrer and operators; the Task's note summarises it",
            ));
        }
        let row = decisions::get(&mut conn, id)?.ok_or_else(ApiError::not_found)?;
        let body: Value = serde_json::from_str(&row.explanation)
            .map_err(|_| ApiError::from(StoreError::Corrupt(format!("routing decision of ServiceRequest/{id}"))))?;
        Ok(Reply::json(200, &body))
    }

    /// `GET /fhir/ServiceRequest/$unmatched`: referrals with needs no service fits (operators).
    pub fn unmatched_needs(&self, ctx: &Ctx, ty: &str) -> Result<Reply, ApiError> {
        only_service_request(ty)?;
        if ctx.principal.role != Role::Operator {
            return Err(ApiError::forbidden("the list of unmatched needs is for operators"));
        }
        let mut conn = self.conn()?;
        let rows = decisions::unmatched(&mut conn, 100)?;
        let entries = rows
            .iter()
            .map(|r| {
                let resource: Value = serde_json::from_str(&r.explanation).map_err(|_| {
                    ApiError::from(StoreError::Corrupt(format!(
                        "routing decision of ServiceRequest/{}",
                        r.service_request_id
                    )))
                })?;
                Ok(json!({ "resource": resource }))
            })
            .collect::<Result<Vec<Value>, ApiError>>()?;
        Ok(Reply::json(200, &bundle("collection", Some(entries.len() as i64), Vec::new(), entries)))
    }

    /// `POST /fhir/ServiceRequest/$route`: the routing a ServiceRequest (or each ServiceRequest
    /// of a transaction Bundle) would get, with no side effects.
    pub fn route_dry_run(&self, ctx: &Ctx, ty: &str, body: Value) -> Result<Reply, ApiError> {
        only_service_request(ty)?;
        let root = body.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
        if root != "ServiceRequest" && root != "Bundle" {
            return Err(ApiError::new(
                400,
                Issue::error(IssueCode::NotAResource, "$route takes a ServiceRequest or a transaction Bundle"),
            ));
        }
        let mut issues = Vec::new();
        crate::fhir::validate_with_mode(&body, &root, self.validation, &mut issues);
        if has_errors(&issues) {
            return Err(ApiError::issues(400, issues));
        }
        // In a Bundle, references between entries are followed through their fullUrls.
        let mut conn = self.conn()?;
        let mut bundled = BundleResources::new();
        let mut srs: Vec<(String, Value)> = Vec::new();
        if root == "Bundle" {
            let mut ids = HashMap::new();
            let entries: Vec<&Value> = items(&body, "entry").collect();
            for (i, e) in entries.iter().enumerate() {
                if let (Some(full), Some(ty)) = (
                    e.get("fullUrl").and_then(Value::as_str),
                    e.pointer("/resource/resourceType").and_then(Value::as_str),
                ) {
                    // An Organization is matched to the directory, as a submission would be.
                    let known = match (ty, e.get("resource")) {
                        ("Organization", Some(org)) => super::transaction::match_directory_org(&mut conn, org)?,
                        _ => None,
                    };
                    let target = match known {
                        Some(id) => format!("Organization/{id}"),
                        None => format!("{ty}/proposed-{i}"),
                    };
                    ids.insert(full.to_string(), target);
                }
            }
            for (i, e) in entries.iter().enumerate() {
                let Some(mut r) = e.get("resource").cloned() else { continue };
                super::write::rewrite_references(&mut r, &ids);
                let ty = r.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
                if ty == "ServiceRequest" {
                    srs.push((format!("Bundle.entry[{i}].resource"), r.clone()));
                }
                bundled.insert(format!("{ty}/proposed-{i}"), r);
            }
        } else {
            srs.push(("ServiceRequest".into(), body.clone()));
        }
        let p = &ctx.principal;
        let mut out = Vec::new();
        for (path, sr) in &srs {
            let plan = if routing::performer_targets(sr).is_empty() {
                self.route_by_condition(&mut conn, p, sr, &bundled, path)?
            } else {
                let facts = self.performer_facts(&mut conn, sr)?;
                Plan::Explicit(routing::route(sr, &facts, &[]).map_err(|i| ApiError::issues(422, i))?)
            };
            out.push(plan.explanation(None, &[]));
        }
        match out.len() {
            1 => Ok(Reply::json(200, &out[0])),
            _ => {
                let entries = out.into_iter().map(|r| json!({ "resource": r })).collect();
                Ok(Reply::json(200, &bundle("collection", None, Vec::new(), entries)))
            }
        }
    }
}

fn only_service_request(ty: &str) -> Result<(), ApiError> {
    if ty == "ServiceRequest" {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            Issue::error(IssueCode::UnknownPath, "this operation is defined on ServiceRequest only"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_count_whole_years_at_the_referral_date() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(age_at("1948-07-02", d("2024-03-14")), Some(75));
        assert_eq!(age_at("1948-03-14", d("2024-03-14")), Some(76));
        assert_eq!(age_at("1948", d("2024-03-14")), Some(76));
        assert_eq!(age_at("2030-01-01", d("2024-03-14")), None);
        assert_eq!(age_at("x", d("2024-03-14")), None);
    }

    #[test]
    fn the_current_home_postcode_wins() {
        let d = NaiveDate::parse_from_str("2024-03-14", "%Y-%m-%d").unwrap();
        let p = json!({ "address": [
            { "use": "old", "postalCode": "BD1 1AA" },
            { "use": "home", "postalCode": "M1 1AA", "period": { "end": "2020-01-01" } },
            { "use": "work", "postalCode": "WF1 1AA" },
            { "use": "home", "postalCode": "LS6 2AB" }
        ]});
        assert_eq!(home_postcode(&p, d).as_deref(), Some("LS6 2AB"));
        assert_eq!(home_postcode(&json!({}), d), None);
    }
}
