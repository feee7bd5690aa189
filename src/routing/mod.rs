//! Routing (PRODUCT.md §4). Rule 1, here: an explicit performer wins. Rules 2–4, in [`rules`]:
//! otherwise each condition is matched to the directory's services through the SNOMED CT
//! subset in [`snomed`], filtered and ranked.
//!
//! Pure: the ServiceRequest and the directory facts it names go in, the charities to create
//! Tasks for (or the reasons it cannot be routed) come out. No I/O; the caller loads the facts.

pub mod rules;
pub mod snomed;

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::fhir::outcome::{Issue, IssueCode};
use crate::fhir::parse_reference;

/// Directory resource types a performer or owner may name.
pub const DIRECTORY_TARGETS: &[&str] = &["HealthcareService", "Organization"];

/// What the directory says about one HealthcareService or Organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The entry itself is active.
    pub active: bool,
    /// The charity Organization that owns the Tasks (the Organization itself, or the
    /// HealthcareService's `providedBy`).
    pub org_id: Option<String>,
    /// That Organization is present and active.
    pub org_active: bool,
}

/// Directory facts keyed by `(type, id)`.
pub type DirectoryFacts = HashMap<(String, String), DirectoryEntry>;

/// One charity to create a Task for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub org_id: String,
    /// The performer that led here, e.g. `HealthcareService/stroke-association-support`.
    pub via: String,
    /// Why this charity (routing by condition), for the Task's note.
    pub note: Option<String>,
    /// The service has a waiting list: the Task starts with business status `waitlisted`.
    pub waitlist: bool,
}

impl Route {
    /// A route to the charity an explicit performer names.
    pub fn explicit(org_id: String, via: String) -> Route {
        Route { org_id, via, note: None, waitlist: false }
    }
}

/// The system of the `groupIdentifier` shared by the Tasks of one referral.
pub const GROUP_SYSTEM: &str = "https://signpost.example/fhir/Id/referral-group";

/// The directory references among `performer`, with their index, for loading facts.
pub fn performer_targets(sr: &Value) -> Vec<(usize, String, String)> {
    let Some(performers) = sr.get("performer").and_then(Value::as_array) else { return Vec::new() };
    performers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let (ty, id) = p.get("reference").and_then(Value::as_str).and_then(parse_reference)?;
            DIRECTORY_TARGETS.contains(&ty).then(|| (i, ty.to_string(), id.to_string()))
        })
        .collect()
}

/// Check one directory target, as a performer (`path` = where it was named).
pub fn resolve(facts: &DirectoryFacts, ty: &str, id: &str, path: &str) -> Result<String, Issue> {
    let Some(entry) = facts.get(&(ty.to_string(), id.to_string())) else {
        return Err(Issue::error(IssueCode::UnknownPerformer, format!("{ty} is not in the directory")).at(path));
    };
    match &entry.org_id {
        Some(org) if entry.active && entry.org_active => Ok(org.clone()),
        Some(_) => {
            Err(Issue::error(IssueCode::InactivePerformer, format!("the {ty} is not active in the directory")).at(path))
        }
        None => Err(Issue::error(
            IssueCode::UnknownPerformer,
            format!("the {ty} has no providing Organization in the directory"),
        )
        .at(path)),
    }
}

/// Decide which charities get a Task for this ServiceRequest. `already_routed` lists the
/// Organizations the sender routed to itself (Tasks in the same Bundle), which get no second
/// Task. One Task per charity, in performer order.
pub fn route(sr: &Value, facts: &DirectoryFacts, already_routed: &[String]) -> Result<Vec<Route>, Vec<Issue>> {
    let mut routes: Vec<Route> = Vec::new();
    let mut issues = Vec::new();
    for (i, ty, id) in performer_targets(sr) {
        match resolve(facts, &ty, &id, &format!("ServiceRequest.performer[{i}]")) {
            Ok(org) => {
                if !already_routed.contains(&org) && !routes.iter().any(|r| r.org_id == org) {
                    routes.push(Route::explicit(org, format!("{ty}/{id}")));
                }
            }
            Err(issue) => issues.push(issue),
        }
    }
    if issues.is_empty() { Ok(routes) } else { Err(issues) }
}

/// The Task Signpost creates for one route: `requested`, focused on and based on the
/// ServiceRequest, for its patient, requested by its requester (or the sending
/// Organization), owned by the charity; the Tasks of one referral share a `groupIdentifier`.
pub fn task_for(sr_id: &str, sr: &Value, route: &Route, sender_org: &str, authored_on: &str) -> Value {
    let sr_ref = format!("ServiceRequest/{sr_id}");
    let requester = sr
        .get("requester")
        .and_then(|r| r.get("reference"))
        .cloned()
        .map(|r| json!({ "reference": r }))
        .unwrap_or_else(|| json!({ "reference": format!("Organization/{sender_org}") }));
    let mut task = json!({
        "resourceType": "Task",
        "basedOn": [{ "reference": sr_ref }],
        "status": "requested",
        "intent": "order",
        "code": { "coding": [{
            "system": "http://hl7.org/fhir/CodeSystem/task-code",
            "code": "fulfill",
            "display": "Fulfill the focal request"
        }]},
        "focus": { "reference": sr_ref },
        "authoredOn": authored_on,
        "lastModified": authored_on,
        "requester": requester,
        "owner": { "reference": format!("Organization/{}", route.org_id) },
    });
    if let Some(subject) = sr.get("subject").and_then(|s| s.get("reference")) {
        task["for"] = json!({ "reference": subject });
    }
    if let Some(priority) = sr.get("priority") {
        task["priority"] = priority.clone();
    }
    task["groupIdentifier"] = json!({ "system": GROUP_SYSTEM, "value": sr_id });
    if let Some(note) = &route.note {
        task["note"] = json!([{ "authorString": "Signpost routing", "time": authored_on, "text": note }]);
    }
    if route.waitlist {
        task["businessStatus"] = json!({ "coding": [{
            "system": "https://signpost.example/fhir/CodeSystem/referral-outcome",
            "code": "waitlisted",
            "display": "Waitlisted"
        }]});
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DirectoryFacts {
        let mut f = DirectoryFacts::new();
        f.insert(
            ("HealthcareService".into(), "stroke-support".into()),
            DirectoryEntry { active: true, org_id: Some("stroke".into()), org_active: true },
        );
        f.insert(
            ("Organization".into(), "closed".into()),
            DirectoryEntry { active: false, org_id: Some("closed".into()), org_active: false },
        );
        f
    }

    #[test]
    fn explicit_healthcare_service_routes_to_its_organization() {
        let sr = json!({ "performer": [
            { "reference": "Practitioner/p1" },
            { "reference": "HealthcareService/stroke-support" }
        ]});
        let routes = route(&sr, &facts(), &[]).unwrap();
        assert_eq!(routes, vec![Route::explicit("stroke".into(), "HealthcareService/stroke-support".into())]);
        assert!(route(&sr, &facts(), &["stroke".to_string()]).unwrap().is_empty());
    }

    #[test]
    fn unknown_and_inactive_performers_are_reported_at_their_index() {
        let sr = json!({ "performer": [
            { "reference": "Organization/nowhere" },
            { "reference": "Organization/closed" }
        ]});
        let issues = route(&sr, &facts(), &[]).unwrap_err();
        assert_eq!(issues[0].code, IssueCode::UnknownPerformer);
        assert_eq!(issues[0].expression.as_deref(), Some("ServiceRequest.performer[0]"));
        assert_eq!(issues[1].code, IssueCode::InactivePerformer);
    }

    #[test]
    fn task_carries_the_referral_links() {
        let sr =
            json!({ "subject": { "reference": "Patient/p1" }, "requester": { "reference": "PractitionerRole/gp" } });
        let t =
            task_for("sr1", &sr, &Route::explicit("stroke".into(), String::new()), "gp-org", "2026-01-01T00:00:00Z");
        assert_eq!(t["focus"]["reference"], "ServiceRequest/sr1");
        assert_eq!(t["basedOn"][0]["reference"], "ServiceRequest/sr1");
        assert_eq!(t["for"]["reference"], "Patient/p1");
        assert_eq!(t["owner"]["reference"], "Organization/stroke");
        assert_eq!(t["requester"]["reference"], "PractitionerRole/gp");
        assert_eq!(t["status"], "requested");
    }
}
