//! Routing by condition (PRODUCT.md §4 rules 2–4): each need of a referral is matched to the
//! directory's services, filtered by coverage, age, capacity, contact fit and language, and the
//! best fit is chosen by a documented, deterministic ranking. Every candidate's fate is kept, so
//! the decision explains itself.
//!
//! Pure: [`Facts`] (what the referral says about the patient and their needs) and a
//! [`Snapshot`] of the directory go in, a [`Decision`] comes out. No I/O.
//!
//! The ranking among the services that fit one need favours no condition, charity size or
//! region: a local service (one whose coverage names the patient's postcode) before a national
//! one, then the charity with the fewest open referrals, then the service id (a stable
//! tie-break). One Task per charity: a charity that fits two needs gets one Task for both.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::DirectoryEntry;
use super::snomed::{Hierarchy, SYSTEM};
use crate::fhir::{items, reference_of};

const EXT: &str = "https://signpost.example/fhir/StructureDefinition/";

/// Whether a service takes referrals now (`service-capacity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    Open,
    Waitlist,
    Closed,
}

/// One directory service, as routing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub org_id: String,
    /// The service and its Organization are active.
    pub active: bool,
    /// SNOMED CT concepts served (`specialty`).
    pub conditions: Vec<String>,
    /// Postcode areas and districts covered; `None`: the whole of the UK.
    pub coverage: Option<Vec<String>>,
    /// Inclusive age range in years.
    pub ages: (Option<u32>, Option<u32>),
    /// Languages stated (BCP-47 primary subtags, lower case); empty: not stated.
    pub languages: Vec<String>,
    /// Contact modes offered; `None`: not stated (every mode).
    pub modes: Option<Vec<String>>,
    pub capacity: Capacity,
}

/// The directory, read once and shared until a directory resource changes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// By id.
    pub services: Vec<Service>,
    /// What the directory says about each HealthcareService and Organization (an explicit
    /// performer's facts).
    pub entries: super::DirectoryFacts,
}

impl Snapshot {
    /// Build from every directory resource (Organization, HealthcareService, Location).
    pub fn from_resources(resources: &[Value]) -> Snapshot {
        fn of<'r>(resources: &'r [Value], ty: &'static str) -> impl Iterator<Item = &'r Value> {
            resources.iter().filter(move |r| r.get("resourceType").and_then(Value::as_str) == Some(ty))
        }
        let id = |r: &Value| r.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let active = |r: &Value| r.get("active").and_then(Value::as_bool).unwrap_or(true);
        let orgs: HashMap<String, bool> = of(resources, "Organization").map(|o| (id(o), active(o))).collect();
        let locations: HashMap<String, Vec<String>> = of(resources, "Location")
            .map(|l| {
                let codes = items(l, "extension")
                    .filter(|e| e.get("url").and_then(Value::as_str) == Some(&format!("{EXT}coverage-postcode")))
                    .filter_map(|e| e.get("valueString").and_then(Value::as_str))
                    .map(normalise_postcode)
                    .collect();
                (id(l), codes)
            })
            .collect();
        let mut services: Vec<Service> = of(resources, "HealthcareService")
            .filter_map(|s| {
                let (_, org_id) = s.get("providedBy").and_then(reference_of).filter(|(t, _)| *t == "Organization")?;
                let ext = |name: &str| {
                    let url = format!("{EXT}{name}");
                    items(s, "extension").filter(move |e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
                };
                let conditions = items(s, "specialty")
                    .flat_map(|c| items(c, "coding"))
                    .filter(|c| c.get("system").and_then(Value::as_str) == Some(SYSTEM))
                    .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_string))
                    .collect();
                let coverage = s.get("coverageArea").and_then(Value::as_array).map(|areas| {
                    areas
                        .iter()
                        .filter_map(|a| reference_of(a).filter(|(t, _)| *t == "Location"))
                        .flat_map(|(_, lid)| locations.get(lid).cloned().unwrap_or_default())
                        .collect::<Vec<String>>()
                });
                let years =
                    |q: Option<&Value>| q.and_then(|q| q.get("value")).and_then(Value::as_f64).map(|v| v as u32);
                let ages = ext("service-age-range")
                    .next()
                    .and_then(|e| e.get("valueRange"))
                    .map(|r| (years(r.get("low")), years(r.get("high"))))
                    .unwrap_or((None, None));
                let modes: Vec<String> = ext("service-contact-mode")
                    .filter_map(|e| e.get("valueCode").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                let capacity =
                    match ext("service-capacity").next().and_then(|e| e.get("valueCode")).and_then(Value::as_str) {
                        Some("closed") => Capacity::Closed,
                        Some("waitlist") => Capacity::Waitlist,
                        _ => Capacity::Open,
                    };
                let languages = items(s, "communication")
                    .flat_map(|c| items(c, "coding"))
                    .filter_map(|c| c.get("code").and_then(Value::as_str))
                    .map(primary_language)
                    .collect();
                Some(Service {
                    id: id(s),
                    name: s.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    org_id: org_id.to_string(),
                    active: active(s) && orgs.get(org_id).copied().unwrap_or(false),
                    conditions,
                    coverage,
                    ages,
                    languages,
                    modes: (!modes.is_empty()).then_some(modes),
                    capacity,
                })
            })
            .collect();
        services.sort_by(|a, b| a.id.cmp(&b.id));
        let mut entries = super::DirectoryFacts::new();
        for (org_id, active) in &orgs {
            let entry = DirectoryEntry { active: *active, org_id: Some(org_id.clone()), org_active: *active };
            entries.insert(("Organization".into(), org_id.clone()), entry);
        }
        for s in of(resources, "HealthcareService") {
            let org_id = s.get("providedBy").and_then(reference_of).filter(|(t, _)| *t == "Organization").map(|r| r.1);
            let entry = DirectoryEntry {
                active: active(s),
                org_id: org_id.map(str::to_string),
                org_active: org_id.and_then(|o| orgs.get(o)).copied().unwrap_or(false),
            };
            entries.insert(("HealthcareService".into(), id(s)), entry);
        }
        Snapshot { services, entries }
    }
}

/// Upper case without spaces (`ls6 2ab` → `LS62AB`).
fn normalise_postcode(p: &str) -> String {
    p.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase()
}

/// The outward code of a full UK postcode (`LS6 2AB` → `LS6`); a bare outward code stays.
pub fn outward_code(postcode: &str) -> Option<String> {
    let p = normalise_postcode(postcode);
    let outward = if p.len() >= 5 { &p[..p.len() - 3] } else { p.as_str() };
    let valid = outward.len() >= 2
        && outward.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && outward.chars().all(|c| c.is_ascii_alphanumeric());
    valid.then(|| outward.to_string())
}

/// The postcode area of an outward code (`LS6` → `LS`).
fn area(outward: &str) -> &str {
    let end = outward.find(|c: char| c.is_ascii_digit()).unwrap_or(outward.len());
    &outward[..end]
}

/// A BCP-47 tag's primary language subtag, lower case (`en-GB` → `en`).
pub fn primary_language(tag: &str) -> String {
    tag.split('-').next().unwrap_or_default().to_ascii_lowercase()
}

/// One need of a referral: a coded condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// Where it was found, e.g. `ServiceRequest.reasonCode[0]`.
    pub source: String,
    pub system: String,
    pub code: String,
    pub display: Option<String>,
}

/// What routing needs to know about a referral.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub needs: Vec<Need>,
    /// Age in whole years at the referral date.
    pub age: Option<u32>,
    /// Outward code of the patient's current home postcode.
    pub outward: Option<String>,
    /// The patient's contact preference (`phone`, `sms`, `email`, `letter`, `any`).
    pub contact: Option<String>,
    /// The patient's preferred language when it is not English (primary subtag).
    pub language: Option<String>,
    /// Open referrals (Tasks not yet finished) per charity Organization.
    pub open_referrals: HashMap<String, i64>,
}

/// Why a candidate service was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    Inactive,
    Coverage,
    Age,
    Capacity,
    ContactFit,
    Language,
}

impl Exclusion {
    pub fn code(self) -> &'static str {
        match self {
            Exclusion::Inactive => "inactive",
            Exclusion::Coverage => "coverage",
            Exclusion::Age => "eligibility",
            Exclusion::Capacity => "capacity",
            Exclusion::ContactFit => "contact-fit",
            Exclusion::Language => "language",
        }
    }
}

/// A service considered for a need.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub service_id: String,
    pub service_name: String,
    pub org_id: String,
    /// The code of the service's that matched (the need's own, or an ancestor).
    pub matched: String,
    pub excluded: Option<(Exclusion, String)>,
    /// Its coverage names the patient's postcode.
    pub local: bool,
    pub waitlist: bool,
    pub chosen: bool,
}

/// The decision for one need.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedDecision {
    pub need: Need,
    pub candidates: Vec<Candidate>,
    /// The chosen service, or why there is none.
    pub outcome: Result<String, String>,
}

/// One Task to create: a charity and the needs it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTask {
    pub org_id: String,
    pub service_id: String,
    /// Indexes into [`Decision::needs`].
    pub needs: Vec<usize>,
    pub waitlist: bool,
    /// A short explanation for the Task's note.
    pub summary: String,
}

/// A routing decision with its reasons.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub needs: Vec<NeedDecision>,
    pub tasks: Vec<PlannedTask>,
}

impl Decision {
    /// The needs no service fits.
    pub fn unmatched(&self) -> impl Iterator<Item = &NeedDecision> {
        self.needs.iter().filter(|n| n.outcome.is_err())
    }
}

/// Decide where a referral goes. Deterministic: the same facts and directory give the same
/// decision.
pub fn decide(facts: &Facts, snapshot: &Snapshot, hierarchy: &Hierarchy) -> Decision {
    let mut decision = Decision::default();
    for need in &facts.needs {
        decision.needs.push(decide_need(need, facts, snapshot, hierarchy));
    }
    for (i, nd) in decision.needs.iter().enumerate() {
        let Ok(service_id) = &nd.outcome else { continue };
        let winner = nd.candidates.iter().find(|c| c.chosen).expect("a chosen candidate");
        let label = nd
            .need
            .display
            .clone()
            .or_else(|| hierarchy.label(&nd.need.code).map(str::to_string))
            .unwrap_or_else(|| nd.need.code.clone());
        match decision.tasks.iter_mut().find(|t| t.org_id == winner.org_id) {
            Some(t) => {
                t.needs.push(i);
                t.summary.push_str(&format!("; also for {label}"));
            }
            None => decision.tasks.push(PlannedTask {
                org_id: winner.org_id.clone(),
                service_id: service_id.clone(),
                needs: vec![i],
                waitlist: winner.waitlist,
                summary: format!(
                    "Routed by Signpost to {} for {label} (SNOMED CT {}): {} of {} services considered fit{}{}",
                    winner.service_name,
                    nd.need.code,
                    nd.candidates.iter().filter(|c| c.excluded.is_none()).count(),
                    nd.candidates.len(),
                    if winner.local { "; a local service" } else { "; a national service" },
                    if winner.waitlist { "; the service has a waiting list" } else { "" },
                ),
            }),
        }
    }
    decision
}

fn decide_need(need: &Need, facts: &Facts, snapshot: &Snapshot, hierarchy: &Hierarchy) -> NeedDecision {
    if need.system != SYSTEM {
        return NeedDecision {
            need: need.clone(),
            candidates: Vec::new(),
            outcome: Err("only SNOMED CT codes are matched to services; this code is from another system".into()),
        };
    }
    let mut candidates: Vec<Candidate> = snapshot
        .services
        .iter()
        .filter_map(|s| {
            let matched = s.conditions.iter().find(|c| hierarchy.is_a(&need.code, c))?;
            let local = match (&s.coverage, &facts.outward) {
                (Some(areas), Some(outward)) => covers(areas, outward),
                _ => false,
            };
            Some(Candidate {
                service_id: s.id.clone(),
                service_name: s.name.clone(),
                org_id: s.org_id.clone(),
                matched: matched.clone(),
                excluded: exclusion(s, facts),
                local,
                waitlist: s.capacity == Capacity::Waitlist,
                chosen: false,
            })
        })
        .collect();
    let best = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.excluded.is_none())
        .min_by_key(|(_, c)| {
            (!c.local, facts.open_referrals.get(&c.org_id).copied().unwrap_or(0), c.service_id.clone())
        })
        .map(|(i, _)| i);
    let outcome = match best {
        Some(i) => {
            candidates[i].chosen = true;
            Ok(candidates[i].service_id.clone())
        }
        None if candidates.is_empty() => Err(if hierarchy.knows(&need.code) {
            "no service in the directory serves this condition".to_string()
        } else {
            "no service in the directory serves this condition (the code is not in Signpost's SNOMED CT subset, so only an exact match could route it)".to_string()
        }),
        None => {
            let reasons: Vec<&str> =
                candidates.iter().filter_map(|c| c.excluded.as_ref().map(|(e, _)| e.code())).collect();
            Err(format!(
                "{} services serve this condition but none fits the patient ({})",
                candidates.len(),
                dedup(reasons).join(", ")
            ))
        }
    };
    NeedDecision { need: need.clone(), candidates, outcome }
}

fn dedup(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v.dedup();
    v
}

fn covers(areas: &[String], outward: &str) -> bool {
    areas.iter().any(|a| a == outward || a == area(outward))
}

/// Why the service does not fit the patient, if it does not.
fn exclusion(s: &Service, f: &Facts) -> Option<(Exclusion, String)> {
    if !s.active {
        return Some((Exclusion::Inactive, "the service or its charity is not active".into()));
    }
    if let Some(areas) = &s.coverage {
        match &f.outward {
            None => {
                return Some((Exclusion::Coverage, "a local service, and the patient's postcode is not known".into()));
            }
            Some(outward) if !covers(areas, outward) => {
                return Some((Exclusion::Coverage, "the patient lives outside the area the service covers".into()));
            }
            _ => {}
        }
    }
    if s.ages != (None, None) {
        match f.age {
            None => {
                return Some((
                    Exclusion::Age,
                    "the service has an age range and the patient's age is not known".into(),
                ));
            }
            Some(age) => {
                if s.ages.0.is_some_and(|low| age < low) || s.ages.1.is_some_and(|high| age > high) {
                    let range = match s.ages {
                        (Some(l), Some(h)) => format!("{l} to {h}"),
                        (Some(l), None) => format!("{l} and over"),
                        (None, Some(h)) => format!("up to {h}"),
                        (None, None) => String::new(),
                    };
                    return Some((Exclusion::Age, format!("the service is for ages {range}")));
                }
            }
        }
    }
    if s.capacity == Capacity::Closed {
        return Some((Exclusion::Capacity, "the service is not taking referrals now".into()));
    }
    if let (Some(modes), Some(pref)) = (&s.modes, f.contact.as_deref())
        && pref != "any"
        && !modes.iter().any(|m| m == pref)
    {
        return Some((
            Exclusion::ContactFit,
            format!("the patient prefers contact by {pref}, which the service does not offer"),
        ));
    }
    if let Some(lang) = &f.language
        && !s.languages.is_empty()
        && !s.languages.contains(lang)
    {
        return Some((Exclusion::Language, "the service does not state the patient's preferred language".into()));
    }
    None
}

/// The decision as a FHIR `Parameters` resource: per need, the candidates considered, which
/// were excluded and why, which won and why; then the Tasks (their ids once created).
pub fn explanation(decision: &Decision, service_request: Option<&str>, task_ids: &[String]) -> Value {
    let mut params: Vec<Value> = Vec::new();
    if let Some(sr) = service_request {
        params.push(json!({ "name": "serviceRequest", "valueReference": { "reference": sr } }));
    }
    params.push(json!({ "name": "ranking", "valueString": "local before national, then the charity with the fewest open referrals, then the service id" }));
    for nd in &decision.needs {
        let mut coding = json!({ "system": nd.need.system, "code": nd.need.code });
        if let Some(d) = &nd.need.display {
            coding["display"] = json!(d);
        }
        let mut part = vec![
            json!({ "name": "source", "valueString": nd.need.source }),
            json!({ "name": "code", "valueCoding": coding }),
        ];
        match &nd.outcome {
            Ok(service) => {
                part.push(json!({ "name": "outcome", "valueCode": "routed" }));
                part.push(json!({ "name": "service", "valueReference": { "reference": format!("HealthcareService/{service}") } }));
            }
            Err(why) => {
                part.push(json!({ "name": "outcome", "valueCode": "unmatched" }));
                part.push(json!({ "name": "reason", "valueString": why }));
            }
        }
        for c in &nd.candidates {
            let (status, reason) = match (&c.excluded, c.chosen) {
                (Some((e, why)), _) => (e.code(), why.clone()),
                (None, true) => (
                    "chosen",
                    format!(
                        "fits; ranked first ({}{})",
                        if c.local { "local" } else { "national" },
                        if c.waitlist { ", waiting list" } else { "" }
                    ),
                ),
                (None, false) => {
                    ("fits", format!("fits; ranked lower ({})", if c.local { "local" } else { "national" }))
                }
            };
            part.push(json!({ "name": "candidate", "part": [
                { "name": "service", "valueReference": { "reference": format!("HealthcareService/{}", c.service_id), "display": c.service_name } },
                { "name": "matched", "valueCoding": { "system": SYSTEM, "code": c.matched } },
                { "name": "status", "valueCode": status },
                { "name": "reason", "valueString": reason }
            ]}));
        }
        params.push(json!({ "name": "need", "part": part }));
    }
    for (i, t) in decision.tasks.iter().enumerate() {
        let mut part = vec![
            json!({ "name": "owner", "valueReference": { "reference": format!("Organization/{}", t.org_id) } }),
            json!({ "name": "service", "valueReference": { "reference": format!("HealthcareService/{}", t.service_id) } }),
            json!({ "name": "waitlist", "valueBoolean": t.waitlist }),
        ];
        if let Some(id) = task_ids.get(i) {
            part.push(json!({ "name": "task", "valueReference": { "reference": format!("Task/{id}") } }));
        }
        params.push(json!({ "name": "task", "part": part }));
    }
    json!({ "resourceType": "Parameters", "parameter": params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(id: &str, org: &str, conditions: &[&str]) -> Service {
        Service {
            id: id.into(),
            name: id.into(),
            org_id: org.into(),
            active: true,
            conditions: conditions.iter().map(|c| c.to_string()).collect(),
            coverage: None,
            ages: (None, None),
            languages: Vec::new(),
            modes: None,
            capacity: Capacity::Open,
        }
    }

    fn need(code: &str) -> Need {
        Need { source: "ServiceRequest.reasonCode[0]".into(), system: SYSTEM.into(), code: code.into(), display: None }
    }

    fn facts(codes: &[&str]) -> Facts {
        Facts {
            needs: codes.iter().map(|c| need(c)).collect(),
            age: Some(70),
            outward: Some("LS6".into()),
            contact: Some("any".into()),
            ..Default::default()
        }
    }

    const STROKE: &str = "230690007";
    const INFARCT: &str = "432504007";
    const DIABETES: &str = "73211009";
    const T2: &str = "44054006";

    fn h() -> &'static Hierarchy {
        Hierarchy::shared()
    }

    fn chosen(d: &Decision, i: usize) -> Option<&str> {
        d.needs[i].outcome.as_deref().ok()
    }

    fn excluded(d: &Decision, i: usize, service: &str) -> Option<Exclusion> {
        d.needs[i].candidates.iter().find(|c| c.service_id == service).and_then(|c| c.excluded.as_ref().map(|e| e.0))
    }

    #[test]
    fn table_of_cases() {
        let national = svc("stroke-national", "stroke", &[STROKE]);
        let mut local = svc("stroke-leeds", "stroke-leeds-org", &[STROKE]);
        local.coverage = Some(vec!["LS".into()]);
        let mut bradford = svc("stroke-bradford", "stroke-bd", &[STROKE]);
        bradford.coverage = Some(vec!["BD".into()]);
        let mut district = svc("stroke-ls6", "stroke-ls6-org", &[STROKE]);
        district.coverage = Some(vec!["LS7".into()]);
        let mut young = svc("stroke-young", "young", &[STROKE]);
        young.ages = (Some(0), Some(25));
        let mut closed = svc("stroke-closed", "closed", &[STROKE]);
        closed.capacity = Capacity::Closed;
        let mut email_only = svc("stroke-email", "email", &[STROKE]);
        email_only.modes = Some(vec!["email".into()]);
        let mut welsh = svc("stroke-cy", "cy", &[STROKE]);
        welsh.languages = vec!["cy".into()];
        let mut inactive = svc("stroke-inactive", "inactive", &[STROKE]);
        inactive.active = false;
        let snapshot = Snapshot {
            services: vec![national, local, bradford, district, young, closed, email_only, welsh, inactive],
            ..Default::default()
        };
        let mut f = facts(&[INFARCT]);
        f.contact = Some("phone".into());
        f.language = Some("pa".into());
        let d = decide(&f, &snapshot, h());
        // The hierarchy: a cerebral infarction reaches stroke services; local wins over national.
        assert_eq!(chosen(&d, 0), Some("stroke-leeds"));
        assert_eq!(excluded(&d, 0, "stroke-bradford"), Some(Exclusion::Coverage));
        assert_eq!(excluded(&d, 0, "stroke-ls6"), Some(Exclusion::Coverage), "a district is matched exactly");
        assert_eq!(excluded(&d, 0, "stroke-young"), Some(Exclusion::Age));
        assert_eq!(excluded(&d, 0, "stroke-closed"), Some(Exclusion::Capacity));
        assert_eq!(excluded(&d, 0, "stroke-email"), Some(Exclusion::ContactFit));
        assert_eq!(excluded(&d, 0, "stroke-cy"), Some(Exclusion::Language));
        assert_eq!(excluded(&d, 0, "stroke-inactive"), Some(Exclusion::Inactive));
        assert_eq!(excluded(&d, 0, "stroke-national"), None);
        assert_eq!(d.tasks.len(), 1);
        assert_eq!(d.tasks[0].org_id, "stroke-leeds-org");

        // Without a postcode, local services cannot be checked: the national one wins.
        f.outward = None;
        let d = decide(&f, &snapshot, h());
        assert_eq!(chosen(&d, 0), Some("stroke-national"));
        assert_eq!(excluded(&d, 0, "stroke-leeds"), Some(Exclusion::Coverage));
    }

    /// An explicit performer's facts come from the snapshot: each service's and Organization's
    /// own status, and whether the Organization it belongs to is there and active.
    #[test]
    fn the_snapshot_says_what_the_directory_says_of_each_entry() {
        let org = |id: &str, active: bool| json!({ "resourceType": "Organization", "id": id, "active": active });
        let service = |id: &str, by: Option<&str>, active: Option<bool>| {
            let mut s = json!({ "resourceType": "HealthcareService", "id": id });
            if let Some(by) = by {
                s["providedBy"] = json!({ "reference": format!("Organization/{by}") });
            }
            if let Some(a) = active {
                s["active"] = json!(a);
            }
            s
        };
        let snapshot = Snapshot::from_resources(&[
            org("open", true),
            org("closed", false),
            service("runs", Some("open"), None),
            service("paused", Some("open"), Some(false)),
            service("of-closed", Some("closed"), Some(true)),
            service("of-nobody", Some("missing"), None),
            service("unowned", None, None),
        ]);
        let entry = |ty: &str, id: &str| snapshot.entries.get(&(ty.to_string(), id.to_string())).cloned();
        let e = |active, org: Option<&str>, org_active| {
            Some(DirectoryEntry { active, org_id: org.map(str::to_string), org_active })
        };
        assert_eq!(entry("Organization", "open"), e(true, Some("open"), true));
        assert_eq!(entry("Organization", "closed"), e(false, Some("closed"), false));
        assert_eq!(entry("HealthcareService", "runs"), e(true, Some("open"), true));
        assert_eq!(entry("HealthcareService", "paused"), e(false, Some("open"), true));
        assert_eq!(entry("HealthcareService", "of-closed"), e(true, Some("closed"), false));
        assert_eq!(entry("HealthcareService", "of-nobody"), e(true, Some("missing"), false));
        assert_eq!(entry("HealthcareService", "unowned"), e(true, None, false));
        assert_eq!(entry("HealthcareService", "missing"), None);
        assert_eq!(snapshot.entries.len(), 7);
    }

    #[test]
    fn several_needs_fan_out_with_one_task_per_charity() {
        let snapshot = Snapshot {
            services: vec![
                svc("stroke", "stroke-org", &[STROKE]),
                svc("diabetes", "diabetes-org", &[DIABETES]),
                svc("both", "general-org", &[STROKE, DIABETES]),
            ],
            ..Default::default()
        };
        let mut f = facts(&[STROKE, T2]);
        // The general charity is busier: each need goes to its specialist.
        f.open_referrals.insert("general-org".into(), 5);
        let d = decide(&f, &snapshot, h());
        assert_eq!(d.tasks.iter().map(|t| t.org_id.as_str()).collect::<Vec<_>>(), vec!["stroke-org", "diabetes-org"]);
        // When the general charity wins both needs, it gets one Task for both.
        f.open_referrals.insert("general-org".into(), 0);
        f.open_referrals.insert("stroke-org".into(), 3);
        f.open_referrals.insert("diabetes-org".into(), 3);
        let d = decide(&f, &snapshot, h());
        assert_eq!(d.tasks.len(), 1);
        assert_eq!(d.tasks[0].org_id, "general-org");
        assert_eq!(d.tasks[0].needs, vec![0, 1]);
    }

    #[test]
    fn ties_break_on_fewest_open_referrals_then_service_id() {
        let snapshot = Snapshot {
            services: vec![svc("b-service", "b", &[STROKE]), svc("a-service", "a", &[STROKE])],
            ..Default::default()
        };
        let mut f = facts(&[STROKE]);
        assert_eq!(chosen(&decide(&f, &snapshot, h()), 0), Some("a-service"));
        f.open_referrals.insert("a".into(), 1);
        assert_eq!(chosen(&decide(&f, &snapshot, h()), 0), Some("b-service"));
    }

    #[test]
    fn no_match_is_explained_not_dropped() {
        let snapshot = Snapshot { services: vec![svc("stroke", "stroke-org", &[STROKE])], ..Default::default() };
        let mut f = facts(&[DIABETES, "999999999"]);
        f.needs.push(Need {
            source: "x".into(),
            system: "http://hl7.org/fhir/sid/icd-10".into(),
            code: "I63".into(),
            display: None,
        });
        let d = decide(&f, &snapshot, h());
        assert!(d.tasks.is_empty());
        assert_eq!(d.unmatched().count(), 3);
        assert!(d.needs[0].outcome.as_ref().unwrap_err().contains("no service"));
        assert!(d.needs[1].outcome.as_ref().unwrap_err().contains("subset"));
        assert!(d.needs[2].outcome.as_ref().unwrap_err().contains("only SNOMED CT"));
        // A parent does not reach a more specific service.
        let snapshot = Snapshot { services: vec![svc("t2", "t2-org", &[T2])], ..Default::default() };
        assert!(decide(&facts(&[DIABETES]), &snapshot, h()).tasks.is_empty());
    }

    #[test]
    fn waitlists_are_allowed_and_flagged() {
        let mut s = svc("wait", "wait-org", &[STROKE]);
        s.capacity = Capacity::Waitlist;
        let d = decide(&facts(&[STROKE]), &Snapshot { services: vec![s], ..Default::default() }, h());
        assert!(d.tasks[0].waitlist);
        assert!(d.tasks[0].summary.contains("waiting list"));
    }

    #[test]
    fn postcodes() {
        assert_eq!(outward_code("ls6 2ab").as_deref(), Some("LS6"));
        assert_eq!(outward_code("SW1A 1AA").as_deref(), Some("SW1A"));
        assert_eq!(outward_code("LS6").as_deref(), Some("LS6"));
        assert_eq!(outward_code("?"), None);
        assert_eq!(area("SW1A"), "SW");
        assert!(covers(&["SW".into()], "SW1A"));
        assert!(!covers(&["S".into()], "SW1A"), "an area matches whole letters only");
    }

    mod determinism {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn the_same_facts_and_directory_give_the_same_decision(
                picks in proptest::collection::vec(0usize..6, 1..4),
                load in proptest::collection::vec(0i64..4, 4),
                age in 0u32..100,
            ) {
                let codes = [STROKE, INFARCT, DIABETES, T2, "24700007", "7180009"];
                let snapshot = Snapshot { services: vec![
                    svc("a", "o1", &[STROKE]), svc("b", "o2", &[DIABETES]), svc("c", "o3", &[STROKE, DIABETES]),
                    svc("d", "o4", &["24700007"]),
                ], ..Default::default() };
                let mut f = facts(&picks.iter().map(|i| codes[*i]).collect::<Vec<_>>());
                f.age = Some(age);
                for (i, n) in load.iter().enumerate() {
                    f.open_referrals.insert(format!("o{}", i + 1), *n);
                }
                let first = decide(&f, &snapshot, h());
                let mut reversed = snapshot.clone();
                reversed.services.reverse();
                reversed.services.sort_by(|a, b| a.id.cmp(&b.id));
                prop_assert_eq!(&first, &decide(&f, &reversed, h()));
                prop_assert_eq!(explanation(&first, None, &[]), explanation(&decide(&f, &snapshot, h()), None, &[]));
            }
        }
    }
}
