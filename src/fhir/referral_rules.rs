//! Business rules for referrals (PRODUCT.md §3, layer 4): what a charity needs before it can
//! act on a referral, checked after the resource is valid FHIR.
//!
//! 1. The patient has an NHS number (`https://fhir.nhs.uk/Id/nhs-number`) that passes the
//!    Modulus 11 check.
//! 2. An active Consent to share with the voluntary sector covers the patient: status
//!    `active`, category `share-with-vcs` of Signpost's consent category code system, a
//!    `permit` provision (when given) whose period (when given) includes now.
//! 3. The ServiceRequest gives at least one reason (`reasonCode` or `reasonReference`).
//! 4. The patient can be contacted: a current phone, SMS or email contact point or postal
//!    address, and one that fits the contact preference the patient stated (the
//!    `contact-preference` extension), if any.
//!
//! The rules are pure: the caller gathers the referral's Patient and the candidate Consents
//! (from the same Bundle, or from the store) and says where each sits. Diagnostics name
//! elements and codes, never values: an NHS number or phone number is patient data.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::items;
use super::outcome::{Issue, IssueCode};

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const CONSENT_CATEGORY_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/consent-category";
pub const SHARE_WITH_VCS: &str = "share-with-vcs";
pub const CONTACT_PREFERENCE_URL: &str = "https://signpost.example/fhir/StructureDefinition/contact-preference";
pub const CONTACT_PREFERENCE_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/contact-preference";

/// Where the referral's Patient is.
pub enum PatientSource<'a> {
    /// Available, with its FHIRPath root (`Patient`, `Bundle.entry[0].resource`).
    Found(&'a Value, String),
    /// Referenced, but held elsewhere (offline validation of a lone ServiceRequest): the rules
    /// that need it are reported as not checked.
    Elsewhere,
    /// Referenced and not found.
    Missing,
}

/// One referral to check.
pub struct Referral<'a> {
    pub request: &'a Value,
    /// FHIRPath root of the ServiceRequest.
    pub request_path: String,
    pub patient: PatientSource<'a>,
    /// Consents for the patient (already matched to it); `consents_elsewhere` when they
    /// could not be looked up (offline).
    pub consents: Vec<&'a Value>,
    pub consents_elsewhere: bool,
    pub now: DateTime<Utc>,
}

/// Check every rule, returning all issues.
pub fn check(r: &Referral<'_>) -> Vec<Issue> {
    let mut issues = Vec::new();
    nhs_number(r, &mut issues);
    consent(r, &mut issues);
    reason(r, &mut issues);
    contact(r, &mut issues);
    issues
}

/// The answer of a [`Records`] lookup.
pub enum Lookup<T> {
    Found(T),
    Missing,
    /// Held by the server, which this check cannot reach (offline validation).
    Elsewhere,
}

/// Stored resources a referral may refer to (the gateway reads them from the store; offline
/// validation has none).
pub trait Records {
    type Error;
    /// The Patient a reference (`Patient/123`) names, if the caller may see it.
    fn patient(&mut self, reference: &str) -> Result<Lookup<Value>, Self::Error>;
    /// The Consents whose `patient` is that reference.
    fn consents(&mut self, patient_reference: &str) -> Result<Lookup<Vec<Value>>, Self::Error>;
}

/// No store: everything referenced outside the submission is [`Lookup::Elsewhere`].
pub struct Offline;

impl Records for Offline {
    type Error = std::convert::Infallible;
    fn patient(&mut self, _: &str) -> Result<Lookup<Value>, Self::Error> {
        Ok(Lookup::Elsewhere)
    }
    fn consents(&mut self, _: &str) -> Result<Lookup<Vec<Value>>, Self::Error> {
        Ok(Lookup::Elsewhere)
    }
}

/// Check the referrals in a submission: a ServiceRequest, or each ServiceRequest entry of a
/// Bundle (its Patient and Consents found among the entries by `fullUrl`, else in `records`).
/// Other resources have no referral rules.
pub fn check_submission<R: Records>(
    resource: &Value,
    root: &str,
    records: &mut R,
    now: DateTime<Utc>,
) -> Result<Vec<Issue>, R::Error> {
    let mut issues = Vec::new();
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("ServiceRequest") => check_one(resource, root, &[], records, now, &mut issues)?,
        Some("Patient") => patient_nhs_numbers(resource, root, &mut issues),
        Some("Bundle") => {
            let entries: Vec<(String, &Value, String)> = array(resource, "entry")
                .filter_map(|(i, e)| {
                    let r = e.get("resource")?;
                    let full_url = e.get("fullUrl").and_then(Value::as_str).unwrap_or_default().to_string();
                    Some((full_url, r, format!("{root}.entry[{i}].resource")))
                })
                .collect();
            for (_, r, path) in &entries {
                if r.get("resourceType").and_then(Value::as_str) == Some("ServiceRequest") {
                    check_one(r, path, &entries, records, now, &mut issues)?;
                }
            }
        }
        _ => {}
    }
    Ok(issues)
}

fn check_one<R: Records>(
    sr: &Value,
    path: &str,
    entries: &[(String, &Value, String)],
    records: &mut R,
    now: DateTime<Utc>,
    issues: &mut Vec<Issue>,
) -> Result<(), R::Error> {
    let subject = sr.pointer("/subject/reference").and_then(Value::as_str);
    let of_type = |r: &Value, t: &str| r.get("resourceType").and_then(Value::as_str) == Some(t);
    // The Patient: contained, in the Bundle, or stored.
    let mut stored_patient = None;
    let mut stored_consents = Vec::new();
    let mut consents_elsewhere = false;
    let mut patient = PatientSource::Missing;
    if let Some(reference) = subject {
        if let Some(id) = reference.strip_prefix('#') {
            if let Some((k, p)) = array(sr, "contained").find(|(_, c)| c.get("id").and_then(Value::as_str) == Some(id))
            {
                patient = PatientSource::Found(p, format!("{path}.contained[{k}]"));
            }
        } else if let Some((_, p, at)) = entries.iter().find(|(u, r, _)| u == reference && of_type(r, "Patient")) {
            patient = PatientSource::Found(p, at.clone());
        } else if reference.starts_with("Patient/") {
            match records.patient(reference)? {
                Lookup::Found(p) => stored_patient = Some(p),
                Lookup::Missing => {}
                Lookup::Elsewhere => patient = PatientSource::Elsewhere,
            }
        }
        if reference.starts_with("Patient/") {
            match records.consents(reference)? {
                Lookup::Found(cs) => stored_consents = cs,
                Lookup::Missing => {}
                Lookup::Elsewhere => consents_elsewhere = true,
            }
        }
    }
    if let Some(p) = &stored_patient {
        patient = PatientSource::Found(p, format!("{path}.subject.resolve()"));
    }
    // Consents for the same subject in the Bundle or contained, and any the request cites.
    let cited: Vec<&str> =
        array(sr, "supportingInfo").filter_map(|(_, s)| s.get("reference").and_then(Value::as_str)).collect();
    let mut consents: Vec<&Value> = entries
        .iter()
        .filter(|(u, r, _)| {
            of_type(r, "Consent")
                && (subject.is_some() && r.pointer("/patient/reference").and_then(Value::as_str) == subject
                    || cited.contains(&u.as_str()))
        })
        .map(|(_, r, _)| *r)
        .collect();
    consents.extend(array(sr, "contained").map(|(_, c)| c).filter(|c| {
        of_type(c, "Consent")
            && c.get("id").and_then(Value::as_str).is_some_and(|id| cited.contains(&format!("#{id}").as_str()))
    }));
    consents.extend(stored_consents.iter());
    let referral = Referral { request: sr, request_path: path.to_string(), patient, consents, consents_elsewhere, now };
    issues.extend(check(&referral));
    Ok(())
}

/// Whether `value` is a valid NHS number: 10 digits whose last is the Modulus 11 check digit.
pub fn nhs_number_valid(value: &str) -> bool {
    let digits: Vec<u32> = value.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != 10 || value.len() != 10 {
        return false;
    }
    let sum: u32 = digits[..9].iter().enumerate().map(|(i, d)| d * (10 - i as u32)).sum();
    match 11 - sum % 11 {
        11 => digits[9] == 0,
        10 => false,
        check => digits[9] == check,
    }
}

/// A Patient on its own: an NHS number that fails Modulus 11 is a warning (the Patient is
/// stored; a referral for it is refused with `nhs-number-invalid`).
fn patient_nhs_numbers(patient: &Value, root: &str, issues: &mut Vec<Issue>) {
    for (k, ident) in array(patient, "identifier").filter(|(_, i)| system_is(i, NHS_NUMBER_SYSTEM)) {
        if !ident.get("value").and_then(Value::as_str).is_some_and(nhs_number_valid) {
            issues.push(
                Issue::warning(
                    IssueCode::NhsNumberInvalid,
                    "this NHS number is not 10 digits passing the Modulus 11 check: a referral for this patient will be refused",
                )
                .at(format!("{root}.identifier[{k}].value")),
            );
        }
    }
}

fn array<'v>(v: &'v Value, key: &str) -> impl Iterator<Item = (usize, &'v Value)> {
    items(v, key).enumerate()
}

fn nhs_number(r: &Referral<'_>, issues: &mut Vec<Issue>) {
    // The NHS number: on the Patient when we have it, else on the subject's identifier.
    let (holder, path): (Option<(&Value, String)>, String) = match &r.patient {
        PatientSource::Found(p, root) => (
            array(p, "identifier")
                .find(|(_, i)| system_is(i, NHS_NUMBER_SYSTEM))
                .map(|(k, i)| (i, format!("{root}.identifier[{k}]"))),
            root.clone(),
        ),
        _ => {
            let ident = r.request.pointer("/subject/identifier").filter(|i| system_is(i, NHS_NUMBER_SYSTEM));
            (
                ident.map(|i| (i, format!("{}.subject.identifier", r.request_path))),
                format!("{}.subject", r.request_path),
            )
        }
    };
    match holder {
        None if matches!(r.patient, PatientSource::Elsewhere) => issues.push(
            Issue::warning(
                IssueCode::NhsNumberMissing,
                "NHS number not checked: the Patient is held by the server (send it in a Bundle, or the number in subject.identifier, to check it offline)",
            )
            .at(path),
        ),
        None => issues.push(
            Issue::error(
                IssueCode::NhsNumberMissing,
                "the referral's patient has no NHS number (an identifier with system https://fhir.nhs.uk/Id/nhs-number)",
            )
            .at(path),
        ),
        Some((ident, at)) => {
            let valid = ident.get("value").and_then(Value::as_str).is_some_and(nhs_number_valid);
            if !valid {
                issues.push(
                    Issue::error(
                        IssueCode::NhsNumberInvalid,
                        "the NHS number is not valid: it must be 10 digits, the last being the Modulus 11 check digit",
                    )
                    .at(format!("{at}.value")),
                );
            }
        }
    }
}

fn system_is(identifier: &Value, system: &str) -> bool {
    identifier.get("system").and_then(Value::as_str) == Some(system)
}

fn has_coding(concept: &Value, system: &str, code: &str) -> bool {
    array(concept, "coding").any(|(_, c)| {
        c.get("system").and_then(Value::as_str) == Some(system) && c.get("code").and_then(Value::as_str) == Some(code)
    })
}

/// Whether `period` (if any) includes `now`.
fn current(period: Option<&Value>, now: DateTime<Utc>) -> bool {
    let Some(p) = period else { return true };
    let bound = |k: &str, end: bool| p.get(k).and_then(Value::as_str).and_then(|s| date_bound(s, end));
    bound("start", false).is_none_or(|s| s <= now) && bound("end", true).is_none_or(|e| e >= now)
}

/// The first (or, for `end`, the last) instant a FHIR date or dateTime covers.
fn date_bound(s: &str, end: bool) -> Option<DateTime<Utc>> {
    if s.len() > 10 {
        return DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&Utc));
    }
    let mut parts = s.split('-').map(|p| p.parse::<u32>().ok());
    let year = parts.next()?? as i32;
    let (month, day) = (parts.next().flatten(), parts.next().flatten());
    let first = chrono::NaiveDate::from_ymd_opt(year, month.unwrap_or(1), day.unwrap_or(1))?;
    let after = match (month, day) {
        (_, Some(_)) => first.succ_opt()?,
        (Some(m), None) => {
            if m == 12 {
                chrono::NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                chrono::NaiveDate::from_ymd_opt(year, m + 1, 1)?
            }
        }
        (None, _) => chrono::NaiveDate::from_ymd_opt(year + 1, 1, 1)?,
    };
    let day = if end { after } else { first };
    let t = day.and_hms_opt(0, 0, 0)?.and_utc();
    Some(if end { t - chrono::Duration::milliseconds(1) } else { t })
}

/// Whether a Consent lets Signpost share a referral with a charity now: share-with-vcs,
/// active, permit, in its period.
pub fn consent_counts(c: &Value, now: DateTime<Utc>) -> bool {
    consent_fault(c, now).is_none()
}

/// Why a Consent does not count, if it does not.
fn consent_fault(c: &Value, now: DateTime<Utc>) -> Option<&'static str> {
    if !array(c, "category").any(|(_, cat)| has_coding(cat, CONSENT_CATEGORY_SYSTEM, SHARE_WITH_VCS)) {
        return Some("is not a consent to share with the voluntary sector (category share-with-vcs)");
    }
    if c.get("status").and_then(Value::as_str) != Some("active") {
        return Some("is not active");
    }
    let provision = c.get("provision");
    if provision.and_then(|p| p.get("type")).and_then(Value::as_str).is_some_and(|t| t != "permit") {
        return Some("denies sharing (provision.type is not permit)");
    }
    if !current(provision.and_then(|p| p.get("period")), now) {
        return Some("is outside its period");
    }
    None
}

fn consent(r: &Referral<'_>, issues: &mut Vec<Issue>) {
    let faults: Vec<Option<&str>> = r.consents.iter().map(|c| consent_fault(c, r.now)).collect();
    if faults.contains(&None) {
        return;
    }
    let fault = faults.into_iter().flatten().next();
    if r.consents_elsewhere && r.consents.is_empty() {
        issues.push(
            Issue::warning(
                IssueCode::ConsentMissing,
                "consent not checked: the patient's Consents are held by the server (send the Consent in a Bundle to check it offline)",
            )
            .at(r.request_path.clone()),
        );
        return;
    }
    let diag = match fault {
        Some(why) => format!("the patient's Consent {why}; a referral needs an active Consent to share with the voluntary sector"),
        None => "no Consent to share with the voluntary sector covers this patient: send one in the same Bundle, or create it before the referral".to_string(),
    };
    let code = if fault.is_none() { IssueCode::ConsentMissing } else { IssueCode::ConsentNotActive };
    issues.push(Issue::error(code, diag).at(r.request_path.clone()));
}

fn reason(r: &Referral<'_>, issues: &mut Vec<Issue>) {
    let has = |k: &str| r.request.get(k).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if !has("reasonCode") && !has("reasonReference") {
        issues.push(
            Issue::error(
                IssueCode::ReasonMissing,
                "a referral needs at least one reason (reasonCode or reasonReference)",
            )
            .at(r.request_path.clone()),
        );
    }
}

/// Contact routes the patient can be reached by now: "phone", "sms", "email", "letter".
fn routes(patient: &Value, now: DateTime<Utc>) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (_, t) in array(patient, "telecom") {
        let usable = t.get("value").and_then(Value::as_str).is_some_and(|v| !v.trim().is_empty())
            && t.get("use").and_then(Value::as_str) != Some("old")
            && current(t.get("period"), now);
        if !usable {
            continue;
        }
        match t.get("system").and_then(Value::as_str) {
            Some("phone") => {
                out.push("phone");
                if t.get("use").and_then(Value::as_str) == Some("mobile") {
                    out.push("sms");
                }
            }
            Some("sms") => out.push("sms"),
            Some("email") => out.push("email"),
            _ => {}
        }
    }
    for (_, a) in array(patient, "address") {
        let has_place = a.get("postalCode").is_some() || a.get("line").is_some();
        if has_place && a.get("use").and_then(Value::as_str) != Some("old") && current(a.get("period"), now) {
            out.push("letter");
        }
    }
    out
}

/// The patient's stated contact preference, with the path of its extension.
fn preference(patient: &Value, root: &str) -> Option<(String, String)> {
    let (k, ext) = array(patient, "extension")
        .find(|(_, e)| e.get("url").and_then(Value::as_str) == Some(CONTACT_PREFERENCE_URL))?;
    let code = ext
        .get("valueCode")
        .or_else(|| ext.get("valueCoding").and_then(|c| c.get("code")))
        .or_else(|| ext.pointer("/valueCodeableConcept/coding/0/code"))
        .and_then(Value::as_str)?;
    Some((code.to_string(), format!("{root}.extension[{k}]")))
}

fn contact(r: &Referral<'_>, issues: &mut Vec<Issue>) {
    let (patient, root) = match &r.patient {
        PatientSource::Found(p, root) => (*p, root.as_str()),
        PatientSource::Elsewhere => {
            issues.push(
                Issue::warning(
                    IssueCode::ContactRouteMissing,
                    "contact route not checked: the Patient is held by the server (send it in a Bundle to check it offline)",
                )
                .at(format!("{}.subject", r.request_path)),
            );
            return;
        }
        PatientSource::Missing => {
            issues.push(
                Issue::error(
                    IssueCode::ContactRouteMissing,
                    "the referral's Patient is not available, so there is no way to contact the patient: create the Patient first or send it in the same Bundle",
                )
                .at(format!("{}.subject", r.request_path)),
            );
            return;
        }
    };
    let usable = routes(patient, r.now);
    if usable.is_empty() {
        issues.push(
            Issue::error(
                IssueCode::ContactRouteMissing,
                "the patient has no current phone number, email or postal address for the charity to use",
            )
            .at(root.to_string()),
        );
        return;
    }
    if let Some((pref, at)) = preference(patient, root) {
        let fits = match pref.as_str() {
            "phone" | "sms" | "email" | "letter" => usable.contains(&pref.as_str()),
            _ => true,
        };
        if !fits {
            let how = match pref.as_str() {
                "phone" => "a current phone number",
                "sms" => "a mobile number (telecom system sms, or phone with use mobile)",
                "email" => "a current email address",
                _ => "a current postal address",
            };
            issues.push(
                Issue::error(
                    IssueCode::ContactPreferenceUnmet,
                    format!("the patient prefers contact by {pref} but has no {how}"),
                )
                .at(at),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    fn request() -> Value {
        json!({ "resourceType": "ServiceRequest", "subject": { "reference": "Patient/p1" },
                "reasonCode": [{ "text": "isolation" }] })
    }

    fn patient() -> Value {
        json!({ "resourceType": "Patient",
                "identifier": [{ "system": NHS_NUMBER_SYSTEM, "value": "9000000009" }],
                "telecom": [{ "system": "phone", "value": "0113 496 0000", "use": "home" }] })
    }

    fn consent() -> Value {
        json!({ "resourceType": "Consent", "status": "active",
                "category": [{ "coding": [{ "system": CONSENT_CATEGORY_SYSTEM, "code": SHARE_WITH_VCS }] }],
                "provision": { "type": "permit", "period": { "start": "2026-01-01" } } })
    }

    fn run(sr: &Value, p: Option<&Value>, consents: &[&Value]) -> Vec<(IssueCode, String)> {
        let r = Referral {
            request: sr,
            request_path: "ServiceRequest".into(),
            patient: p.map(|p| PatientSource::Found(p, "Patient".into())).unwrap_or(PatientSource::Missing),
            consents: consents.to_vec(),
            consents_elsewhere: false,
            now: now(),
        };
        check(&r).into_iter().map(|i| (i.code, i.expression.unwrap_or_default())).collect()
    }

    #[test]
    fn modulus_11() {
        for good in ["9000000009", "9434765919", "4010232137"] {
            assert!(nhs_number_valid(good), "{good}");
        }
        for bad in ["9000000008", "943476591", "94347659190", "943 476 5919", "abcdefghij", "1000000010"] {
            assert!(!nhs_number_valid(bad), "{bad}");
        }
    }

    #[test]
    fn a_complete_referral_passes() {
        assert_eq!(run(&request(), Some(&patient()), &[&consent()]), vec![]);
    }

    #[test]
    fn each_rule_is_reported_at_its_element() {
        let mut p = patient();
        p["identifier"][0]["value"] = json!("9000000008");
        assert_eq!(
            run(&request(), Some(&p), &[&consent()]),
            vec![(IssueCode::NhsNumberInvalid, "Patient.identifier[0].value".into())]
        );
        p["identifier"] = json!([{ "system": "https://example.org/mrn", "value": "1" }]);
        assert_eq!(run(&request(), Some(&p), &[&consent()]), vec![(IssueCode::NhsNumberMissing, "Patient".into())]);

        assert_eq!(run(&request(), Some(&patient()), &[]), vec![(IssueCode::ConsentMissing, "ServiceRequest".into())]);
        for (k, v) in [
            ("status", json!("inactive")),
            ("provision", json!({ "type": "deny" })),
            ("provision", json!({ "period": { "end": "2025-01-01" } })),
        ] {
            let mut c = consent();
            c[k] = v;
            assert_eq!(
                run(&request(), Some(&patient()), &[&c]),
                vec![(IssueCode::ConsentNotActive, "ServiceRequest".into())],
                "{k}"
            );
        }

        let mut sr = request();
        sr.as_object_mut().unwrap().remove("reasonCode");
        assert_eq!(
            run(&sr, Some(&patient()), &[&consent()]),
            vec![(IssueCode::ReasonMissing, "ServiceRequest".into())]
        );
        sr["reasonReference"] = json!([{ "reference": "Condition/c1" }]);
        assert_eq!(run(&sr, Some(&patient()), &[&consent()]), vec![]);
    }

    #[test]
    fn contact_route_must_exist_and_fit_the_preference() {
        let mut p = patient();
        p["telecom"][0]["use"] = json!("old");
        assert_eq!(run(&request(), Some(&p), &[&consent()]), vec![(IssueCode::ContactRouteMissing, "Patient".into())]);
        let mut p = patient();
        p["extension"] = json!([{ "url": CONTACT_PREFERENCE_URL, "valueCode": "email" }]);
        assert_eq!(
            run(&request(), Some(&p), &[&consent()]),
            vec![(IssueCode::ContactPreferenceUnmet, "Patient.extension[0]".into())]
        );
        p["telecom"] = json!([{ "system": "email", "value": "a@example.org" }]);
        assert_eq!(run(&request(), Some(&p), &[&consent()]), vec![]);
        p["extension"][0]["valueCode"] = json!("letter");
        p["address"] = json!([{ "postalCode": "LS1 1AA", "period": { "end": "2020-01-01" } }]);
        assert_eq!(
            run(&request(), Some(&p), &[&consent()]),
            vec![(IssueCode::ContactPreferenceUnmet, "Patient.extension[0]".into())]
        );
        assert_eq!(
            run(&request(), None, &[&consent()])[0],
            (IssueCode::NhsNumberMissing, "ServiceRequest.subject".into())
        );
    }

    #[test]
    fn diagnostics_never_carry_patient_values() {
        let mut p = patient();
        p["identifier"][0]["value"] = json!("9000000008");
        p["extension"] = json!([{ "url": CONTACT_PREFERENCE_URL, "valueCode": "email" }]);
        let r = Referral {
            request: &request(),
            request_path: "ServiceRequest".into(),
            patient: PatientSource::Found(&p, "Patient".into()),
            consents: vec![],
            consents_elsewhere: false,
            now: now(),
        };
        for i in check(&r) {
            assert!(!i.diagnostics.contains("9000000008") && !i.diagnostics.contains("0113"), "{}", i.diagnostics);
        }
    }
}
