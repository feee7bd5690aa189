//! The outcome summary of a finished Task, for filing in the patient's GP record (PRODUCT.md §6):
//! a FHIR document (Bundle of type `document`, a Composition first, then the Task with its coded
//! stage, reason and outcome), after the PRSB Social Prescribing Information Standard's message
//! back to the GP and referrer. Sections: referral details (who referred, when, to which
//! service, why), outcome (status, last stage, the coded support outcome or the reason it
//! ended), what was offered (the charity's notes), key dates, and who to contact at the charity.
//! The Patient is referenced, never copied: the GP system holds it already.

use serde_json::{Value, json};

use crate::fhir::{instant, items, now_ms, reference_of};
use crate::lifecycle::{self, OUTCOME_SYSTEM, status_of};
use crate::store::resources::{self, StoredResource};
use crate::store::{DbConn, outbox};

/// LOINC "Summary of episode note", the Composition type of the outcome summary.
const SUMMARY_TYPE: (&str, &str, &str) = ("http://loinc.org", "34133-9", "Summary of episode note");
/// The Composition's section codes (Signpost's; after the PRSB headings).
pub const SECTION_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/outcome-summary-section";

/// The words of a CodeableConcept: its text, a coding's display, or a Signpost code's display.
fn text_of(concept: Option<&Value>) -> Option<String> {
    let c = concept?;
    if let Some(coding) = c.get("coding").and_then(Value::as_array) {
        for cd in coding {
            if let (Some(system), Some(code)) =
                (cd.get("system").and_then(Value::as_str), cd.get("code").and_then(Value::as_str))
                && cd.get("display").is_none()
                && let Some(display) = lifecycle::display_of(system, code)
            {
                return Some(display);
            }
        }
    }
    c.get("text")
        .and_then(Value::as_str)
        .or_else(|| c.pointer("/coding/0/display").and_then(Value::as_str))
        .or_else(|| c.pointer("/coding/0/code").and_then(Value::as_str))
        .map(str::to_string)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn section(code: &str, title: &str, lines: &[String], entries: Vec<Value>) -> Value {
    let items: String = lines.iter().map(|l| format!("<li>{}</li>", escape(l))).collect();
    let mut s = json!({
        "title": title,
        "code": { "coding": [{ "system": SECTION_SYSTEM, "code": code, "display": title }] },
        "text": { "status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><ul>{items}</ul></div>") },
    });
    if !entries.is_empty() {
        s["entry"] = Value::Array(entries);
    }
    if lines.is_empty() {
        s["text"]["div"] = json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Nothing recorded.</p></div>");
        s["emptyReason"] = json!({ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable" }] });
    }
    s
}

/// The outcome summary of a finished Task: a `document` Bundle whose Composition references the
/// Task and the charity's Organization, both entries of the document (a document's references
/// resolve inside it). The Patient is not copied, so the Composition has no subject: the Task's
/// `for` names the patient, whom the GP system holds already. The items and their sources are
/// listed in the README.
pub fn outcome_document(conn: &mut DbConn, task: &StoredResource) -> Result<Value, crate::store::StoreError> {
    let t = task.json()?;
    let sr_id = t.get("focus").and_then(reference_of).filter(|(ty, _)| *ty == "ServiceRequest").map(|(_, i)| i);
    let sr = match sr_id {
        Some(i) => resources::get(conn, "ServiceRequest", i)?.map(|r| r.json()).transpose()?,
        None => None,
    };
    let org_id = outbox::owner_org(conn, &t)?;
    let org = match &org_id {
        Some(o) => resources::get(conn, "Organization", o)?.map(|r| r.json()).transpose()?,
        None => None,
    };
    let org_name =
        org.as_ref().and_then(|o| o.get("name")).and_then(Value::as_str).unwrap_or("the charity").to_string();
    // The service the referral went to: the ServiceRequest's performer of this charity, if named.
    let mut service: Option<Value> = None;
    for perf in sr.iter().flat_map(|s| items(s, "performer")) {
        if let Some(("HealthcareService", hs)) = reference_of(perf)
            && let Some(h) = resources::get(conn, "HealthcareService", hs)?
        {
            let h = h.json()?;
            if h.get("providedBy").and_then(reference_of).map(|(_, o)| o.to_string()) == org_id {
                service = Some(h);
            }
        }
    }

    // Referral details.
    let mut referral = Vec::new();
    if let Some(sr) = &sr {
        if let Some(who) = sr.pointer("/requester/display").and_then(Value::as_str) {
            referral.push(format!("Referred by: {who}"));
        } else if let Some(r) = sr.pointer("/requester/reference").and_then(Value::as_str) {
            referral.push(format!("Referred by: {r}"));
        }
        if let Some(d) = sr.get("authoredOn").and_then(Value::as_str) {
            referral.push(format!("Referral date: {d}"));
        }
        for reason in items(sr, "reasonCode") {
            if let Some(text) = text_of(Some(reason)) {
                referral.push(format!("Reason for referral: {text}"));
            }
        }
    }
    referral.push(format!(
        "Referred to: {org_name}{}",
        service
            .as_ref()
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    ));

    // Outcome.
    let mut outcome = vec![format!("Status: {}", status_of(&t))];
    if let Some(stage) = text_of(t.get("businessStatus")) {
        outcome.push(format!("Last stage: {stage}"));
    }
    let mut outcome_entries = Vec::new();
    for o in items(&t, "output") {
        if let Some(code) = lifecycle::code_in(o.get("valueCodeableConcept"), OUTCOME_SYSTEM) {
            let text = text_of(o.get("valueCodeableConcept")).unwrap_or_else(|| code.to_string());
            outcome.push(format!("Outcome: {text}"));
        } else if let Some(text) = text_of(o.get("valueCodeableConcept"))
            .or_else(|| o.get("valueString").and_then(Value::as_str).map(str::to_string))
        {
            outcome.push(format!("Outcome: {text}"));
        }
    }
    if let Some(reason) = text_of(t.get("statusReason")) {
        outcome.push(format!("Reason: {reason}"));
    }
    // A document's references resolve inside it (R4 §3.3.1): the Task and the charity are
    // entries, named by their fullUrls.
    let task_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let org_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    outcome_entries.push(json!({ "reference": task_url }));

    // What was offered: the charity's notes (not Signpost's routing notes).
    let offered: Vec<String> = items(&t, "note")
        .filter(|n| n.get("authorString").and_then(Value::as_str) != Some("Signpost routing"))
        .filter_map(|n| n.get("text").and_then(Value::as_str).map(str::to_string))
        .collect();

    // Key dates.
    let mut dates = Vec::new();
    if let Some(d) = t.get("authoredOn").and_then(Value::as_str) {
        dates.push(format!("Sent to the charity: {d}"));
    }
    if let Some(d) = t.pointer("/executionPeriod/start").and_then(Value::as_str) {
        dates.push(format!("Support started: {d}"));
    }
    if let Some(d) = t.pointer("/executionPeriod/end").and_then(Value::as_str) {
        dates.push(format!("Support ended: {d}"));
    }
    dates.push(format!("Finished: {}", instant(task.last_updated)));

    // Who to contact: the service's (or the charity's) telecom.
    let mut contact = Vec::new();
    for holder in [service.as_ref(), org.as_ref()].into_iter().flatten() {
        for tel in items(holder, "telecom") {
            if let (Some(system), Some(value)) =
                (tel.get("system").and_then(Value::as_str), tel.get("value").and_then(Value::as_str))
            {
                contact.push(format!("{org_name} {system}: {value}"));
            }
        }
        if !contact.is_empty() {
            break;
        }
    }

    let composition_id = uuid::Uuid::new_v4().to_string();
    let author = match &org {
        Some(_) => vec![json!({ "reference": org_url, "display": org_name })],
        None => vec![json!({ "display": org_name })],
    };
    let composition = json!({
        "resourceType": "Composition",
        "id": composition_id,
        "status": "final",
        "type": { "coding": [{ "system": SUMMARY_TYPE.0, "code": SUMMARY_TYPE.1, "display": SUMMARY_TYPE.2 }] },
        "date": instant(task.last_updated),
        "author": author,
        "title": format!("Outcome of referral to {org_name}"),
        "section": [
            section("referral-details", "Referral details", &referral, Vec::new()),
            section("outcome", "Outcome", &outcome, outcome_entries),
            section("support-offered", "What was offered", &offered, Vec::new()),
            section("key-dates", "Key dates", &dates, Vec::new()),
            section("contact", "Who to contact", &contact, Vec::new()),
        ],
    });
    let mut document = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": instant(now_ms()) },
        "identifier": { "system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{}", uuid::Uuid::new_v4()) },
        "type": "document",
        "timestamp": instant(task.last_updated),
        "entry": [{ "fullUrl": format!("urn:uuid:{composition_id}"), "resource": composition }],
    });
    let entries = document["entry"].as_array_mut().expect("entries");
    entries.push(json!({ "fullUrl": task_url, "resource": t }));
    if let Some(org) = org {
        entries.push(json!({ "fullUrl": org_url, "resource": org }));
    }
    Ok(document)
}
