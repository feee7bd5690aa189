//! Transaction Bundles (`POST /fhir`, `Bundle.type = transaction`): all entries are validated,
//! `urn:uuid` references are rewritten to the ids Signpost assigns, ServiceRequests are
//! routed, and everything is written in one database transaction or not at all.
//!
//! An Organization entry is matched to the directory by identifier (the charity the EHR
//! knows by its charity number or ODS code) rather than created: charities are managed in the
//! directory, not by referrers.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::access;
use super::referral::enforce_referral_rules;
use super::route::{BundleResources, Plan};
use super::write::{
    NewResource, conditional_identifier, rewrite_references, routed_tasks, store_new_all, validate_structure,
};
use super::{Ctx, Gateway, Reply, WriteOpts, bundle, etag};
use crate::auth::Role;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, Severity, has_errors, operation_outcome};
use crate::fhir::{instant, now_ms, reference_of, type_spec};
use crate::routing;
use crate::store::resources;
use crate::store::{DbConn, StoreError};

/// How one entry is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Created with a new id (POST) or, for operators, the id in `request.url` (PUT).
    Create,
    /// An Organization matched to the directory by identifier rather than created.
    DirectoryMatch,
    /// `request.ifNoneExist`: the existing resource if one matches, else created.
    Conditional(String),
}

/// One entry after the first pass.
#[derive(Clone)]
struct Planned {
    index: usize,
    ty: &'static str,
    id: String,
    resource: Value,
    kind: Kind,
    /// Resolved to an existing resource: nothing is written for it.
    existing: bool,
}

impl Gateway {
    /// `POST /fhir` with a transaction Bundle. Warnings never refuse it: they come back in each
    /// entry's `response.outcome` (those about the Bundle as a whole in the first entry's).
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
        let mut warnings = Vec::new();
        validate_structure(self.validation, &bundle_value, "Bundle", &mut warnings);
        if has_errors(&warnings) {
            return Err(ApiError::issues(400, warnings));
        }

        // First pass: methods, types, permissions and the ids each entry will get.
        let p = &ctx.principal;
        let mut planned = Vec::new();
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut issues = Vec::new();
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
            let (id, mut kind) = match method {
                "POST" => (crate::store::new_id(), Kind::Create),
                "PUT" => match url.split_once('/') {
                    Some((t, id)) if t == ty && crate::fhir::is_valid_id(id) => (id.to_string(), Kind::Create),
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
            if spec.name == "Organization" && method == "POST" && p.role != Role::Operator {
                // Match the charity (or practice) to the directory by identifier.
                kind = Kind::DirectoryMatch;
            } else if let Err(e) = access::check_create(p, spec) {
                issues.extend(e.to_issues(&ctx.correlation_id).into_iter().map(|i| i.at(format!("{path}.resource"))));
                continue;
            }
            if method == "POST"
                && let Some(query) = entry.pointer("/request/ifNoneExist").and_then(Value::as_str)
                && kind == Kind::Create
            {
                match conditional_identifier(query) {
                    Ok(ident) => kind = Kind::Conditional(ident),
                    Err(e) => {
                        issues.extend(
                            e.to_issues(&ctx.correlation_id)
                                .into_iter()
                                .map(|i| i.at(format!("{path}.request.ifNoneExist"))),
                        );
                        continue;
                    }
                }
            }
            if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
                ids.insert(full_url.to_string(), format!("{}/{id}", spec.name));
            }
            planned.push(Planned { index: i, ty: spec.name, id, resource: resource.clone(), kind, existing: false });
        }
        if has_errors(&issues) {
            return Err(ApiError::issues(422, issues));
        }

        self.run_write(ctx, opts, |conn| {
            // Business rules first, on the Bundle as sent (its fullUrls link the entries).
            let mut warnings = warnings.clone();
            warnings.extend(enforce_referral_rules(conn, p, &bundle_value, "Bundle", self.validation)?);
            let mut plan = planned.clone();
            let mut ids = ids.clone();
            let mut issues = Vec::new();
            for e in plan.iter_mut() {
                let full_url = entries[e.index].get("fullUrl").and_then(Value::as_str);
                let found = match &e.kind {
                    Kind::Create => {
                        // PUT: operators may create with their own id; nobody updates through a
                        // transaction. A resource you cannot see answers as a missing one.
                        let exists = resources::get(conn, e.ty, &e.id)?.is_some();
                        let spec = type_spec(e.ty).expect("planned types are served");
                        let visible = exists && access::can_see(conn, p, spec, &e.id)?;
                        let put = entries[e.index].pointer("/request/method").and_then(Value::as_str) == Some("PUT");
                        if put && visible {
                            return Err(ApiError::new(
                                422,
                                Issue::error(
                                    IssueCode::BadTransaction,
                                    "a PUT entry names an existing resource; update it with PUT /fhir/Type/id",
                                )
                                .at(format!("Bundle.entry[{}].request.url", e.index)),
                            ));
                        }
                        if put && (exists || p.role != Role::Operator) {
                            return Err(ApiError::new(
                                404,
                                Issue::error(IssueCode::NotFound, "no such resource, or not one you may see")
                                    .at(format!("Bundle.entry[{}].request.url", e.index)),
                            ));
                        }
                        None
                    }
                    Kind::DirectoryMatch => match match_directory_org(conn, &e.resource)? {
                        Some(found) => Some(found),
                        None => {
                            issues.push(
                                Issue::error(
                                    IssueCode::UnknownReference,
                                    "this Organization is not in the directory (matched by identifier); charities are added by operators",
                                )
                                .at(format!("Bundle.entry[{}].resource.identifier", e.index)),
                            );
                            continue;
                        }
                    },
                    Kind::Conditional(ident) => {
                        let spec = type_spec(e.ty).expect("planned types are served");
                        let at = format!("Bundle.entry[{}].request.ifNoneExist", e.index);
                        super::write::conditional_create(conn, p, spec, ident, &e.id, Some(at))?.map(|r| r.id)
                    }
                };
                if let Some(found) = found {
                    if let Some(full) = full_url {
                        ids.insert(full.to_string(), format!("{}/{found}", e.ty));
                    }
                    e.id = found;
                    e.existing = true;
                }
            }
            for e in plan.iter_mut() {
                rewrite_references(&mut e.resource, &ids);
                if let Some(obj) = e.resource.as_object_mut() {
                    obj.insert("id".into(), Value::String(e.id.clone()));
                }
            }
            // Sender-chosen routes: new Tasks in the Bundle.
            let bundle_srs: HashMap<String, Value> = plan
                .iter()
                .filter(|e| e.ty == "ServiceRequest" && !e.existing)
                .map(|e| (e.id.clone(), e.resource.clone()))
                .collect();
            let mut routed_by_sender: HashMap<String, Vec<String>> = HashMap::new();
            for e in plan.iter().filter(|e| e.ty == "Task" && !e.existing) {
                let path = format!("Bundle.entry[{}].resource", e.index);
                issues.extend(access::check_sender_task(conn, p, &e.resource, &bundle_srs, &path)?);
                if let (Some(("ServiceRequest", sr)), Some(owner)) =
                    (e.resource.get("focus").and_then(reference_of), access::owner_org(conn, &e.resource)?)
                {
                    routed_by_sender.entry(sr.to_string()).or_default().push(owner);
                }
            }
            // Each new ServiceRequest: its explicit performers or the sender's own Tasks win;
            // otherwise it is routed by its conditions.
            let bundled: BundleResources =
                plan.iter().map(|e| (format!("{}/{}", e.ty, e.id), e.resource.clone())).collect();
            let mut routes: HashMap<String, Plan> = HashMap::new();
            for e in plan.iter().filter(|e| e.ty == "ServiceRequest" && !e.existing) {
                let root = format!("Bundle.entry[{}].resource", e.index);
                let already = routed_by_sender.get(&e.id).cloned().unwrap_or_default();
                if routing::performer_targets(&e.resource).is_empty() && already.is_empty() {
                    let chosen = self.route_by_condition(conn, p, &e.resource, &bundled, &root)?;
                    warnings.extend(chosen.warnings(&root));
                    routes.insert(e.id.clone(), chosen);
                    continue;
                }
                let facts = self.performer_facts(conn, &e.resource)?;
                match routing::route(&e.resource, &facts, &already) {
                    Ok(r) => {
                        routes.insert(e.id.clone(), Plan::Explicit(r));
                    }
                    Err(found) => issues.extend(found.into_iter().map(|i| i.under(&root))),
                }
            }
            if has_errors(&issues) {
                return Err(ApiError::issues(422, issues));
            }

            let now = now_ms();
            let author = super::flow::Author::of(p, &ctx.correlation_id);
            let mut responses = vec![Value::Null; entries.len()];
            // The new entries other than Tasks are written together, then every Task (the
            // Bundle's own and those routing made) together: what a Task points to (its referral
            // and its sender) is stored first, so that its notifications reach the referrer's
            // Endpoint too.
            let mut first: Vec<(usize, NewResource)> = Vec::new();
            let mut bundle_tasks: Vec<(usize, NewResource)> = Vec::new();
            for e in plan.iter_mut() {
                if e.existing {
                    let r = resources::get(conn, e.ty, &e.id)?
                        .ok_or_else(|| ApiError::Internal("matched resource vanished".into()))?;
                    responses[e.index] = entry_response(ctx, "200 OK", &r)?;
                    continue;
                }
                let spec = type_spec(e.ty).expect("planned types are served");
                let new = NewResource::new(spec, &e.id, std::mem::take(&mut e.resource), now);
                if e.ty == "Task" { bundle_tasks.push((e.index, new)) } else { first.push((e.index, new)) }
            }
            store_new_all(conn, &author, &first.iter().map(|(_, n)| n).collect::<Vec<_>>(), &[], &p.org_id)?;
            // A message's origin is stored before the referral's Tasks, so that their events
            // already answer that message.
            if let Some((focus, origin)) = &opts.message
                && let Some((_, sr)) = first.iter().find(|(index, _)| index == focus)
            {
                let mut origin = origin.clone();
                origin.service_request_id = sr.stored.id.clone();
                crate::store::messages::insert(conn, &origin)?;
            }
            let mut routed: Vec<(NewResource, String)> = Vec::new();
            let mut decisions = Vec::new();
            for (_, sr) in first.iter().filter(|(_, n)| n.spec.name == "ServiceRequest") {
                let Some(chosen) = routes.get(&sr.stored.id) else { continue };
                let chosen_routes = chosen.routes();
                let tasks = routed_tasks(&sr.stored.id, &sr.body, &chosen_routes, &p.org_id, now)?;
                let task_ids: Vec<String> = tasks.iter().map(|t| t.stored.id.clone()).collect();
                decisions.push((sr.stored.id.clone(), chosen, task_ids));
                routed.extend(tasks.into_iter().zip(chosen_routes.into_iter().map(|r| r.via)));
            }
            let tasks: Vec<&NewResource> =
                bundle_tasks.iter().map(|(_, t)| t).chain(routed.iter().map(|(t, _)| t)).collect();
            store_new_all(conn, &author, &tasks, &[], &p.org_id)?;
            for (task, via) in &routed {
                tracing::info!(task = %task.stored.id, via = %via, "routed");
            }
            for (sr_id, chosen, task_ids) in &decisions {
                self.record_decision(conn, p, sr_id, chosen, task_ids)?;
            }
            for (index, new) in first.iter().chain(&bundle_tasks) {
                responses[*index] = entry_response(ctx, "201 Created", &new.stored)?;
            }
            // Owners' grants last: everything the Tasks point to is stored by now (the Tasks are
            // all new).
            for task in &tasks {
                access::grant_new_task(conn, &task.stored.id, &task.body)?;
            }
            attach_outcomes(&mut responses, &warnings, ctx.max_issues);
            let body = bundle("transaction-response", None, Vec::new(), responses);
            Ok(Reply::json(200, &body))
        })
    }
}

/// Put each warning in the `response.outcome` of the entry it concerns (by its expression,
/// `Bundle.entry[i]...`); warnings about the Bundle as a whole go to the first entry.
fn attach_outcomes(responses: &mut [Value], warnings: &[Issue], max_issues: usize) {
    let mut per_entry: HashMap<usize, Vec<Issue>> = HashMap::new();
    for w in warnings.iter().filter(|w| w.severity != Severity::Error && w.severity != Severity::Fatal) {
        let index = w
            .expression
            .as_deref()
            .and_then(|e| e.strip_prefix("Bundle.entry["))
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .filter(|i| *i < responses.len())
            .unwrap_or(0);
        per_entry.entry(index).or_default().push(w.clone());
    }
    for (index, issues) in per_entry {
        if let Some(response) = responses.get_mut(index).and_then(|r| r.get_mut("response")) {
            response["outcome"] = operation_outcome(&crate::fhir::outcome::capped(issues, max_issues));
        }
    }
}

fn entry_response(ctx: &Ctx, status: &str, r: &resources::StoredResource) -> Result<Value, StoreError> {
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
        e["resource"] = r.json()?;
    }
    Ok(e)
}

/// The directory Organization with one of this Organization's identifiers.
pub(super) fn match_directory_org(conn: &mut DbConn, org: &Value) -> Result<Option<String>, StoreError> {
    Ok(resources::find_by_identifiers(conn, "Organization", org, None)?.map(|r| r.id))
}
