//! Transaction Bundles (`POST /fhir`, `Bundle.type = transaction`): all entries are validated,
//! `urn:uuid` references are rewritten to the ids Signpost assigns, ServiceRequests are
//! routed, and everything is written in one database transaction or not at all.
//!
//! An Organization entry is matched to the directory by identifier (the charity the EHR
//! knows by its charity number or ODS code) rather than created: charities are managed in the
//! directory, not by referrers.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::referral::enforce_referral_rules;
use super::write::{
    check_create, check_sender_task, create_routed_tasks, insert_resource, performer_facts, rewrite_references,
    validate_structure,
};
use super::{Ctx, Gateway, Reply, WriteOpts, bundle, etag};
use crate::auth::Role;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, has_errors};
use crate::fhir::search::Criteria;
use crate::fhir::{instant, now_ms, reference_of, type_spec};
use crate::routing;
use crate::store::resources;
use crate::store::{DbConn, StoreError};

/// One entry after the first pass.
struct Planned {
    index: usize,
    ty: &'static str,
    id: String,
    resource: Value,
    /// Resolved to an existing directory entry instead of being created.
    existing: bool,
}

impl Gateway {
    /// `POST /fhir` with a transaction Bundle.
    pub fn transaction(&self, ctx: &Ctx, bundle_value: Value, opts: &WriteOpts) -> Result<Reply, ApiError> {
        let bad =
            |diag: &str| ApiError::new(400, Issue::error(IssueCode::BadTransaction, diag.to_string()).at("Bundle"));
        if bundle_value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(ApiError::new(
                400,
                Issue::error(IssueCode::NotAResource, "POST /fhir takes a transaction Bundle"),
            ));
        }
        if bundle_value.get("type").and_then(Value::as_str) != Some("transaction") {
            return Err(bad("Bundle.type must be 'transaction'"));
        }
        let entries = bundle_value.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
        if entries.len() > self.limits.max_bundle_entries {
            return Err(ApiError::new(
                422,
                Issue::error(
                    IssueCode::TooManyEntries,
                    format!(
                        "the Bundle has {} entries; the limit is {}",
                        entries.len(),
                        self.limits.max_bundle_entries
                    ),
                )
                .at("Bundle.entry"),
            ));
        }
        let mut issues = Vec::new();
        validate_structure(self.validation, &bundle_value, "Bundle", &mut issues);
        if has_errors(&issues) {
            return Err(ApiError::issues(400, issues));
        }

        // First pass: methods, types, permissions and the ids each entry will get.
        let p = &ctx.principal;
        let mut planned = Vec::new();
        let mut ids: HashMap<String, String> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("Bundle.entry[{i}]");
            let Some(resource) = entry.get("resource").filter(|r| r.is_object()) else {
                issues.push(Issue::error(IssueCode::BadTransaction, "each entry needs a resource").at(path));
                continue;
            };
            let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            let Some(spec) = type_spec(ty) else {
                issues.push(
                    Issue::error(IssueCode::UnsupportedType, "Signpost does not store this resource type")
                        .at(format!("{path}.resource")),
                );
                continue;
            };
            let method = entry.pointer("/request/method").and_then(Value::as_str).unwrap_or_default();
            let url = entry.pointer("/request/url").and_then(Value::as_str).unwrap_or_default();
            let id = match method {
                "POST" => uuid::Uuid::new_v4().to_string(),
                "PUT" => match url.split_once('/') {
                    Some((t, id)) if t == ty && crate::fhir::is_valid_id(id) => id.to_string(),
                    _ => {
                        issues.push(
                            Issue::error(IssueCode::BadTransaction, "a PUT entry's request.url must be Type/id")
                                .at(format!("{path}.request.url")),
                        );
                        continue;
                    }
                },
                _ => {
                    issues.push(
                        Issue::error(IssueCode::BadTransaction, "entries must be POST or PUT")
                            .at(format!("{path}.request.method")),
                    );
                    continue;
                }
            };
            let mut existing = false;
            if spec.name == "Organization" && method == "POST" && p.role != Role::Operator {
                // Match the charity (or practice) to the directory by identifier.
                existing = true;
            } else if let Err(e) = check_create(p, spec) {
                issues.extend(e.to_issues(&ctx.correlation_id).into_iter().map(|i| i.at(format!("{path}.resource"))));
                continue;
            }
            if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
                ids.insert(full_url.to_string(), format!("{}/{id}", spec.name));
            }
            planned.push(Planned { index: i, ty: spec.name, id, resource: resource.clone(), existing });
        }
        if !issues.is_empty() {
            return Err(ApiError::issues(422, issues));
        }

        self.run_write(ctx, opts, |conn| {
            // Business rules first, on the Bundle as sent (its fullUrls link the entries).
            enforce_referral_rules(conn, p, &bundle_value, "Bundle", self.validation)?;
            let mut plan: Vec<Planned> = planned
                .iter()
                .map(|e| Planned { index: e.index, ty: e.ty, id: e.id.clone(), resource: e.resource.clone(), existing: e.existing })
                .collect();
            let mut ids = ids.clone();
            let mut issues = Vec::new();
            for e in plan.iter_mut().filter(|e| e.existing) {
                match match_directory_org(conn, &e.resource)? {
                    Some(found) => {
                        if let Some(full) = entries[e.index].get("fullUrl").and_then(Value::as_str) {
                            ids.insert(full.to_string(), format!("Organization/{found}"));
                        }
                        e.id = found;
                    }
                    None => issues.push(
                        Issue::error(
                            IssueCode::UnknownReference,
                            "this Organization is not in the directory (matched by identifier); charities are added by operators",
                        )
                        .at(format!("Bundle.entry[{}].resource.identifier", e.index)),
                    ),
                }
            }
            for e in plan.iter_mut() {
                rewrite_references(&mut e.resource, &ids);
                if let Some(obj) = e.resource.as_object_mut() {
                    obj.insert("id".into(), Value::String(e.id.clone()));
                }
            }
            // Sender-chosen routes: Tasks in the Bundle.
            let bundle_srs: HashSet<String> =
                plan.iter().filter(|e| e.ty == "ServiceRequest").map(|e| e.id.clone()).collect();
            let mut routed_by_sender: HashMap<String, Vec<String>> = HashMap::new();
            for e in plan.iter().filter(|e| e.ty == "Task") {
                let path = format!("Bundle.entry[{}].resource", e.index);
                if p.role != Role::Operator {
                    issues.extend(check_sender_task(conn, p, &e.resource, &bundle_srs, &path)?);
                }
                if let (Some(("ServiceRequest", sr)), Some(owner)) =
                    (e.resource.get("focus").and_then(reference_of), super::write::owner_org(conn, &e.resource)?)
                {
                    routed_by_sender.entry(sr.to_string()).or_default().push(owner);
                }
            }
            let mut routes = HashMap::new();
            for e in plan.iter().filter(|e| e.ty == "ServiceRequest") {
                let facts = performer_facts(conn, &e.resource)?;
                let already = routed_by_sender.get(&e.id).cloned().unwrap_or_default();
                match routing::route(&e.resource, &facts, &already) {
                    Ok(r) => {
                        routes.insert(e.id.clone(), r);
                    }
                    Err(found) => issues.extend(
                        found.into_iter().map(|i| i.under(&format!("Bundle.entry[{}].resource", e.index))),
                    ),
                }
            }
            if !issues.is_empty() {
                return Err(ApiError::issues(422, issues));
            }

            let now = now_ms();
            let mut responses = vec![Value::Null; entries.len()];
            for e in plan.iter_mut() {
                let spec = type_spec(e.ty).expect("planned types are served");
                if e.existing {
                    let r = resources::get(conn, e.ty, &e.id)?.ok_or_else(|| ApiError::Internal("directory entry vanished".into()))?;
                    responses[e.index] = entry_response(ctx, "200 OK", &r);
                    continue;
                }
                let stored = if resources::get(conn, e.ty, &e.id)?.is_some() {
                    return Err(ApiError::new(
                        409,
                        Issue::error(IssueCode::BadTransaction, "a PUT entry names an existing resource; update it with PUT /fhir/Type/id")
                            .at(format!("Bundle.entry[{}].request.url", e.index)),
                    ));
                } else {
                    insert_resource(conn, p, spec, &e.id, &mut e.resource, &p.org_id, now)?
                };
                if e.ty == "ServiceRequest" {
                    let r = routes.get(&e.id).cloned().unwrap_or_default();
                    create_routed_tasks(conn, p, &e.id, &e.resource, &r, now)?;
                }
                responses[e.index] = entry_response(ctx, "201 Created", &stored);
            }
            let body = bundle("transaction-response", None, Vec::new(), responses);
            Ok(Reply::json(200, &body))
        })
    }
}

fn entry_response(ctx: &Ctx, status: &str, r: &resources::StoredResource) -> Value {
    let mut e = json!({
        "fullUrl": format!("{}/{}/{}", ctx.base, r.resource_type, r.id),
        "response": {
            "status": status,
            "location": format!("{}/{}/_history/{}", r.resource_type, r.id, r.version_id),
            "etag": etag(r.version_id),
            "lastModified": instant(r.last_updated),
        }
    });
    if ctx.prefer_return == super::Return::Representation {
        e["resource"] = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    }
    e
}

/// The directory Organization with one of this Organization's identifiers.
fn match_directory_org(conn: &mut DbConn, org: &Value) -> Result<Option<String>, StoreError> {
    let Some(identifiers) = org.get("identifier").and_then(Value::as_array) else { return Ok(None) };
    for ident in identifiers {
        let (Some(system), Some(value)) =
            (ident.get("system").and_then(Value::as_str), ident.get("value").and_then(Value::as_str))
        else {
            continue;
        };
        let criteria = Criteria {
            resource_type: "Organization".into(),
            params: vec![("identifier".into(), vec![format!("{system}|{value}")])],
            count: 1,
            ..Default::default()
        };
        let (_, found) = resources::search(conn, &criteria)?;
        if let Some(r) = found.first() {
            return Ok(Some(r.id.clone()));
        }
    }
    Ok(None)
}
