//! BaRS-style messaging (PRODUCT.md §2): `POST /fhir/$process-message` with a `message` Bundle,
//! mapped to the same model as REST and transactions.
//!
//! - The MessageHeader comes first; its `eventCoding` is `servicerequest-request` of
//!   `https://fhir.nhs.uk/CodeSystem/message-events-bars`, its `reason` `new`, `update` or
//!   `delete` of `https://fhir.nhs.uk/CodeSystem/message-reason-bars` (absent = `new`), its
//!   `focus` the ServiceRequest.
//! - `new`: the referral's resources Signpost keeps (Patient, ServiceRequest, Consent,
//!   Condition, QuestionnaireResponse, Practitioner, PractitionerRole) go through the
//!   transaction path (validation, referral rules, routing, one Task per charity), atomically;
//!   the Patient is matched on its NHS number, a Practitioner, PractitionerRole or Consent on its
//!   first identifier (what the sender sent before is found, not stored again). References to what Signpost does not keep
//!   (Encounter, CarePlan, Observation, Flag, ...) become logical references (identifier and
//!   display); an Organization or HealthcareService that is in the directory (by identifier, or
//!   by id) is referenced there.
//! - `update`: the stored ServiceRequest with the message's identifier takes the message's
//!   status, priority, reasons, notes and instructions; `revoked` or `entered-in-error` cancels
//!   its open Tasks. `delete` (BaRS cancellation) must carry one of those two statuses.
//! - `X-Request-Id` and `X-Correlation-Id` are required; a message whose `X-Request-Id` was
//!   processed before gets 409 `duplicate` (BaRS: treat as delivered), one still in progress 425.
//! - The answer is a response message (`servicerequest-response`, `response.identifier` = the
//!   request Bundle's id, code `ok`) focused on the stored ServiceRequest, with its Tasks. Later
//!   status changes go back the same way to the sender's Endpoint when its `connectionType` is
//!   `hl7-fhir-msg`, with the conversation's `X-Correlation-Id`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::write::{Change, validate_structure};
use super::{Ctx, Gateway, Reply, WriteOpts};
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, has_errors};
use crate::fhir::{instant, now_ms};
use crate::store::messages::MessageOrigin;
use crate::store::outbox::BARS_EVENTS;
use crate::store::{idempotency, resources};

/// BaRS message reasons.
pub const BARS_REASONS: &str = "https://fhir.nhs.uk/CodeSystem/message-reason-bars";

/// The types a referral message's entries are kept as.
const KEPT: &[&str] =
    &["Patient", "ServiceRequest", "Consent", "Condition", "QuestionnaireResponse", "Practitioner", "PractitionerRole"];

const NHS_NUMBER: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// The `system|value` a kept resource is matched on, so that a resource the sender has sent
/// before (in an earlier message) is found instead of stored again: a Patient's NHS number, else
/// the first identifier of a Patient, Practitioner, PractitionerRole or Consent with a system and
/// a value that fit a search. The referral itself (ServiceRequest) and clinical resources are
/// stored as sent.
fn match_key(ty: &str, resource: &Value) -> Option<String> {
    if !matches!(ty, "Patient" | "Practitioner" | "PractitionerRole" | "Consent") {
        return None;
    }
    let pairs: Vec<(&str, &str)> = crate::fhir::items(resource, "identifier")
        .filter_map(|i| Some((i.get("system")?.as_str()?, i.get("value")?.as_str()?)))
        .filter(|(s, v)| [s, v].iter().all(|x| !x.is_empty() && !x.contains(['&', '=', ',', '|', ' '])))
        .collect();
    let nhs = pairs.iter().find(|(s, _)| *s == NHS_NUMBER);
    nhs.or_else(|| if ty == "Patient" { None } else { pairs.first() }).map(|(s, v)| format!("{s}|{v}"))
}

fn refuse(status: u16, code: IssueCode, text: impl Into<String>, at: &str) -> ApiError {
    ApiError::new(status, Issue::error(code, text).at(at))
}

/// The headers a message must carry: (`X-Request-Id`, `X-Correlation-Id`).
#[derive(Debug, Clone)]
pub struct MessageHeaders {
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
}

impl Gateway {
    /// `POST /fhir/$process-message`.
    pub fn process_message(
        &self,
        ctx: &Ctx,
        body: Value,
        opts: &WriteOpts,
        headers: &MessageHeaders,
    ) -> Result<Reply, ApiError> {
        if ctx.principal.role == crate::auth::Role::Charity {
            return Err(ApiError::forbidden("referral messages come from referrers; charities update their Tasks"));
        }
        let (Some(request_id), Some(correlation_id)) = (&headers.request_id, &headers.correlation_id) else {
            return Err(ApiError::new(
                400,
                Issue::error(
                    IssueCode::MessageHeaderMissing,
                    "a message needs the X-Request-Id and X-Correlation-Id headers",
                ),
            ));
        };
        if body.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || body.get("type").and_then(Value::as_str) != Some("message")
        {
            return Err(refuse(
                400,
                IssueCode::BadMessage,
                "$process-message takes a Bundle of type 'message'",
                "Bundle",
            ));
        }
        let mut issues = Vec::new();
        validate_structure(self.validation, &body, "Bundle", &mut issues);
        if has_errors(&issues) {
            return Err(ApiError::issues(400, issues));
        }
        // A message is processed once: a repeat is a duplicate, not a replay.
        let key = format!("message:{request_id}");
        {
            let mut conn = self.conn()?;
            if let Some(seen) = idempotency::find(&mut conn, &ctx.principal.client_id, &key)? {
                return Err(if seen.status == 0 {
                    ApiError::new(
                        425,
                        Issue::error(
                            IssueCode::RequestInFlight,
                            "a message with this X-Request-Id is still being processed",
                        ),
                    )
                } else {
                    ApiError::new(
                        409,
                        Issue::error(
                            IssueCode::DuplicateMessage,
                            "a message with this X-Request-Id was processed before",
                        ),
                    )
                });
            }
        }
        let entries = body.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
        let header = entries
            .first()
            .and_then(|e| e.get("resource"))
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("MessageHeader"))
            .ok_or_else(|| {
                refuse(400, IssueCode::BadMessage, "the first entry must be the MessageHeader", "Bundle.entry[0]")
            })?;
        let event = header.get("eventCoding");
        if event.and_then(|e| e.get("system")).and_then(Value::as_str) != Some(BARS_EVENTS)
            || event.and_then(|e| e.get("code")).and_then(Value::as_str) != Some("servicerequest-request")
        {
            return Err(refuse(
                422,
                IssueCode::BadMessage,
                format!("Signpost takes the event servicerequest-request of {BARS_EVENTS}"),
                "Bundle.entry[0].resource.eventCoding",
            ));
        }
        let reason = header
            .pointer("/reason/coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("system").and_then(Value::as_str) == Some(BARS_REASONS))
            .and_then(|c| c.get("code").and_then(Value::as_str))
            .unwrap_or("new")
            .to_string();
        // The focus: a ServiceRequest entry of the message.
        let focus = header.pointer("/focus/0/reference").and_then(Value::as_str).unwrap_or_default();
        let by_url: HashMap<String, usize> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.get("fullUrl").and_then(Value::as_str).map(|u| (u.to_string(), i)))
            .collect();
        let focus_index = by_url
            .get(focus)
            .copied()
            .filter(|i| entries[*i].pointer("/resource/resourceType").and_then(Value::as_str) == Some("ServiceRequest"))
            .ok_or_else(|| {
                refuse(
                    422,
                    IssueCode::BadMessage,
                    "MessageHeader.focus must reference the ServiceRequest entry of the message",
                    "Bundle.entry[0].resource.focus",
                )
            })?;
        let bundle_id = body.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let source = header.pointer("/source/endpoint").and_then(Value::as_str).unwrap_or_default().to_string();
        let sr = entries[focus_index]["resource"].clone();
        let mut opts = opts.clone();
        opts.idempotency_key = Some(key);
        let mut warnings: Vec<Value> = Vec::new();
        let (reply_sr, reply_status) = match reason.as_str() {
            "new" => {
                let tx = self.as_transaction(&entries, focus_index)?;
                let origin = MessageOrigin {
                    service_request_id: String::new(),
                    bundle_id: bundle_id.clone(),
                    correlation_id: correlation_id.clone(),
                    source_endpoint: source.clone(),
                    receiver_base: ctx.base.clone(),
                    received_at: now_ms(),
                };
                opts.message = Some((tx.1, origin));
                let reply = self.transaction(ctx, tx.0, &opts).map_err(|e| renumber(e, &tx.2))?;
                let response: Value = serde_json::from_str(reply.body.as_deref().unwrap_or("{}"))
                    .map_err(|_| ApiError::Internal("transaction response".into()))?;
                let location = response.pointer(&format!("/entry/{}/response/location", tx.1)).and_then(Value::as_str);
                let id = location.and_then(|l| l.split('/').nth(1)).unwrap_or_default().to_string();
                // The warnings each entry got, pointed back at the message's own entries.
                for (i, entry) in response.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    for issue in
                        entry.pointer("/response/outcome/issue").and_then(Value::as_array).into_iter().flatten()
                    {
                        let mut issue = issue.clone();
                        if let Some(exprs) = issue.get_mut("expression").and_then(Value::as_array_mut) {
                            for e in exprs.iter_mut() {
                                if let Some(text) = e.as_str() {
                                    *e = json!(renumber_expression(text, &tx.2));
                                }
                            }
                        } else if let Some(origin) = tx.2.get(i) {
                            issue["expression"] = json!([format!("Bundle.entry[{origin}].resource")]);
                        }
                        warnings.push(issue);
                    }
                }
                (id, 200)
            }
            "update" | "delete" => {
                let id = self.stored_referral(ctx, &sr, focus_index)?;
                let status = sr.get("status").and_then(Value::as_str).unwrap_or("");
                if reason == "delete" && !matches!(status, "revoked" | "entered-in-error") {
                    return Err(refuse(
                        422,
                        IssueCode::BadMessage,
                        "a cancellation (reason delete) carries ServiceRequest.status revoked or entered-in-error",
                        &format!("Bundle.entry[{focus_index}].resource.status"),
                    ));
                }
                let mut conn = self.conn()?;
                let stored = resources::get(&mut conn, "ServiceRequest", &id)?.ok_or_else(ApiError::not_found)?;
                drop(conn);
                let mut new = stored.json()?;
                for key in ["status", "priority", "reasonCode", "note", "patientInstruction", "occurrenceDateTime"] {
                    match sr.get(key) {
                        Some(v) => new[key] = v.clone(),
                        None if key != "status" => {
                            if let Some(o) = new.as_object_mut() {
                                o.shift_remove(key);
                            }
                        }
                        None => {}
                    }
                }
                self.update(ctx, "ServiceRequest", &id, Change::Replace(new), &opts)?;
                (id, 200)
            }
            other => {
                return Err(refuse(
                    422,
                    IssueCode::BadMessage,
                    format!("'{other}' is not a message reason Signpost takes (new, update, delete)"),
                    "Bundle.entry[0].resource.reason",
                ));
            }
        };
        self.response_message(ctx, &bundle_id, &source, &reply_sr, reply_status, warnings)
    }

    /// The stored referral an update or cancellation message is about: the caller's
    /// ServiceRequest with one of the message ServiceRequest's identifiers.
    fn stored_referral(&self, ctx: &Ctx, sr: &Value, focus_index: usize) -> Result<String, ApiError> {
        let mut conn = self.conn()?;
        if let Some(found) =
            resources::find_by_identifiers(&mut conn, "ServiceRequest", sr, Some(&ctx.principal.org_id))?
        {
            return Ok(found.id);
        }
        Err(ApiError::new(
            404,
            Issue::error(IssueCode::NotFound, "no referral of yours has this ServiceRequest's identifier")
                .at(format!("Bundle.entry[{focus_index}].resource.identifier")),
        ))
    }

    /// The message's entries as a transaction Bundle: (the Bundle, the focus's index in it, the
    /// message index of each transaction entry).
    fn as_transaction(&self, entries: &[Value], focus_index: usize) -> Result<(Value, usize, Vec<usize>), ApiError> {
        let mut conn = self.conn()?;
        // What each reference to an entry that is not kept becomes.
        let mut replaced: HashMap<String, Value> = HashMap::new();
        for e in entries.iter().skip(1) {
            let (Some(url), Some(r)) = (e.get("fullUrl").and_then(Value::as_str), e.get("resource")) else { continue };
            let ty = r.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            if KEPT.contains(&ty) {
                continue;
            }
            let mut target = Value::Null;
            if ty == "Organization"
                && let Some(id) = super::transaction::match_directory_org(&mut conn, r)?
            {
                target = json!({ "reference": format!("Organization/{id}") });
            }
            if matches!(ty, "Organization" | "HealthcareService")
                && target.is_null()
                && let Some(id) = r.get("id").and_then(Value::as_str)
                && resources::get(&mut conn, ty, id)?.is_some()
            {
                target = json!({ "reference": format!("{ty}/{id}") });
            }
            if target.is_null() {
                let mut logical = json!({ "type": ty });
                if let Some(ident) =
                    r.pointer("/identifier/0").or_else(|| r.get("identifier").filter(|i| i.is_object()))
                {
                    logical["identifier"] = ident.clone();
                }
                let display = r
                    .get("name")
                    .and_then(|n| {
                        n.as_str()
                            .map(str::to_string)
                            .or_else(|| n.pointer("/0/text").and_then(Value::as_str).map(str::to_string))
                    })
                    .or_else(|| r.pointer("/code/text").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| ty.to_string());
                logical["display"] = json!(display);
                target = logical;
            }
            replaced.insert(url.to_string(), target);
        }
        let mut tx_entries = Vec::new();
        let mut origin = Vec::new();
        let mut focus_tx = 0;
        for (i, e) in entries.iter().enumerate().skip(1) {
            let Some(r) = e.get("resource") else { continue };
            let ty = r.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            if !KEPT.contains(&ty) {
                continue;
            }
            let mut resource = r.clone();
            if let Some(o) = resource.as_object_mut() {
                o.shift_remove("id");
                o.shift_remove("meta");
            }
            replace_references(&mut resource, &replaced);
            let mut request = json!({ "method": "POST", "url": ty });
            if let Some(key) = match_key(ty, &resource) {
                request["ifNoneExist"] = json!(format!("identifier={key}"));
            }
            if i == focus_index {
                focus_tx = tx_entries.len();
            }
            let mut entry = json!({ "resource": resource, "request": request });
            if let Some(url) = e.get("fullUrl") {
                entry["fullUrl"] = url.clone();
            }
            tx_entries.push(entry);
            origin.push(i);
        }
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": tx_entries });
        Ok((bundle, focus_tx, origin))
    }

    /// The synchronous answer: a response message focused on the stored ServiceRequest, with it
    /// and its Tasks.
    fn response_message(
        &self,
        ctx: &Ctx,
        request_bundle: &str,
        destination: &str,
        sr_id: &str,
        status: u16,
        warnings: Vec<Value>,
    ) -> Result<Reply, ApiError> {
        let mut conn = self.conn()?;
        let sr = resources::get(&mut conn, "ServiceRequest", sr_id)?.ok_or_else(ApiError::not_found)?;
        let tasks = super::flow::tasks_of(&mut conn, sr_id)?;
        let header_id = uuid::Uuid::new_v4().to_string();
        let mut header = json!({
            "resourceType": "MessageHeader",
            "id": header_id,
            "eventCoding": { "system": BARS_EVENTS, "code": "servicerequest-response" },
            "source": { "name": "Signpost", "endpoint": ctx.base },
            "response": { "identifier": request_bundle, "code": "ok" },
            "focus": [{ "reference": format!("{}/ServiceRequest/{sr_id}", ctx.base) }],
        });
        if !destination.is_empty() {
            header["destination"] = json!([{ "endpoint": destination }]);
        }
        let mut entry = vec![
            json!({ "fullUrl": format!("urn:uuid:{header_id}"), "resource": header }),
            json!({ "fullUrl": format!("{}/ServiceRequest/{sr_id}", ctx.base), "resource": sr.json()? }),
        ];
        for t in tasks {
            entry.push(json!({ "fullUrl": format!("{}/Task/{}", ctx.base, t.id), "resource": t.json()? }));
        }
        // Warnings never refuse a message: they come back as the response's details.
        if !warnings.is_empty() {
            let outcome_id = uuid::Uuid::new_v4().to_string();
            entry[0]["resource"]["response"]["details"] = json!({ "reference": format!("urn:uuid:{outcome_id}") });
            entry.push(json!({
                "fullUrl": format!("urn:uuid:{outcome_id}"),
                "resource": { "resourceType": "OperationOutcome", "id": outcome_id, "issue": warnings },
            }));
        }
        let message = json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "meta": { "lastUpdated": instant(now_ms()) },
            "type": "message",
            "timestamp": instant(now_ms()),
            "entry": entry,
        });
        Ok(Reply::json(status, &message))
    }
}

/// Rewrite references to entries that are not kept.
fn replace_references(value: &mut Value, replaced: &HashMap<String, Value>) {
    match value {
        Value::Object(o) => {
            if let Some(target) = o.get("reference").and_then(Value::as_str).and_then(|r| replaced.get(r)) {
                let display = o.get("display").cloned();
                *value = target.clone();
                if let Some(d) = display
                    && let Some(obj) = value.as_object_mut()
                {
                    obj.insert("display".into(), d);
                }
                return;
            }
            for (_, v) in o.iter_mut() {
                replace_references(v, replaced);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| replace_references(v, replaced)),
        _ => {}
    }
}

/// Point the issues of the transaction made from a message back at the message's entries.
fn renumber(mut e: ApiError, origin: &[usize]) -> ApiError {
    e.map_expressions(|expr| renumber_expression(expr, origin));
    e
}

/// `Bundle.entry[n]...` of the transaction made from a message → the message's own entry.
fn renumber_expression(expr: &str, origin: &[usize]) -> String {
    let Some(rest) = expr.strip_prefix("Bundle.entry[") else { return expr.to_string() };
    let Some((n, tail)) = rest.split_once(']') else { return expr.to_string() };
    match n.parse::<usize>().ok().and_then(|n| origin.get(n)) {
        Some(i) => format!("Bundle.entry[{i}]{tail}"),
        None => expr.to_string(),
    }
}
