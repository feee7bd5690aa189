//! Writes: create (with routing), update and patch (with the Task lifecycle), and the pieces
//! the transaction Bundle shares.

use std::collections::HashMap;

use serde_json::Value;

use super::access;
use super::flow::Author;
use super::provenance;
use super::referral::{enforce_referral_rules, referral_issues};
use super::route::{Plan, decision_row, store_decision};
use super::{Ctx, Gateway, Reply, WriteOpts, resource_reply, served_type};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, has_errors};
use crate::fhir::search::index_values;
use crate::fhir::{TypeClass, TypeSpec, instant, now_ms, stamp_meta, type_spec};
use crate::lifecycle::{self, Actor};
use crate::routing::{self, DirectoryFacts};
use crate::store::resources::{self, Grant, IndexEntry, StoredResource};
use crate::store::routing::DecisionRow;
use crate::store::{DbConn, StoreError};

/// How an update changes the stored resource.
#[derive(Debug, Clone)]
pub enum Change {
    /// `PUT`: the new resource.
    Replace(Value),
    /// `PATCH`: a JSON Patch against the current version.
    Patch(json_patch::Patch),
}

/// Validation of a resource to be stored, under the configured mode; `path` is the
/// resource's FHIRPath root.
pub(super) fn validate_structure(
    mode: crate::fhir::ValidationMode,
    resource: &Value,
    path: &str,
    issues: &mut Vec<Issue>,
) {
    crate::fhir::validate_with_mode(resource, path, mode, issues);
}

/// An active Endpoint's address must be one Signpost may send to (RELIABILITY.md S3): checked
/// here at registration, and again at send time.
impl Gateway {
    /// What this deployment refuses whatever the validator says: webhook addresses it will not
    /// send to, and (in production) resources marked as sandbox data.
    pub(super) fn check_deployment_rules(&self, resource: &Value, path: &str) -> Result<(), ApiError> {
        check_endpoint_address(resource, self.allow_loopback_webhooks, path)?;
        if self.production && crate::sandbox::is_marked(resource) {
            return Err(ApiError::issues(
                422,
                vec![
                    Issue::error(
                        IssueCode::SandboxData,
                        "the resource is tagged as sandbox data, which a production deployment never stores",
                    )
                    .at(format!("{path}.meta.tag")),
                ],
            ));
        }
        Ok(())
    }
}

pub(super) fn check_endpoint_address(resource: &Value, allow_loopback: bool, path: &str) -> Result<(), ApiError> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Endpoint")
        || resource.get("status").and_then(Value::as_str) != Some("active")
    {
        return Ok(());
    }
    let address = resource.get("address").and_then(Value::as_str).unwrap_or_default();
    let refused =
        |why: String| ApiError::new(422, Issue::error(IssueCode::EndpointAddress, why).at(format!("{path}.address")));
    let target = crate::delivery::ssrf::check(address, allow_loopback).map_err(refused)?;
    if let Some(domain) = &target.domain {
        // A name that resolves to a non-public address is refused; one that does not resolve
        // (yet) is checked again at every send.
        use std::net::ToSocketAddrs;
        if let Ok(addrs) = (domain.as_str(), target.port).to_socket_addrs() {
            for a in addrs {
                crate::delivery::ssrf::check_ip(a.ip(), allow_loopback).map_err(refused)?;
            }
        }
    }
    Ok(())
}

/// The resource must be an object of the URL's type.
pub(super) fn expect_type(resource: &Value, ty: &str) -> Result<(), ApiError> {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == ty => Ok(()),
        _ => Err(ApiError::new(
            400,
            Issue::error(IssueCode::NotAResource, format!("the body must be a {ty} resource")).at(ty),
        )),
    }
}

impl Gateway {
    /// The directory facts a ServiceRequest's performers name, from the directory snapshot.
    pub(super) fn performer_facts(&self, conn: &mut DbConn, sr: &Value) -> Result<DirectoryFacts, StoreError> {
        let snapshot = self.directory.snapshot(conn)?;
        let mut facts = DirectoryFacts::new();
        for (_, ty, id) in routing::performer_targets(sr) {
            if let Some(entry) = snapshot.entries.get(&(ty.clone(), id.clone())) {
                facts.insert((ty, id), entry.clone());
            }
        }
        Ok(facts)
    }
}

/// A new resource (version 1) ready to store: its id and `meta` set, its body serialised and its
/// search values extracted, all of it work done before the write transaction.
pub(super) struct NewResource {
    pub spec: &'static TypeSpec,
    pub stored: StoredResource,
    pub body: Value,
    pub index: Vec<IndexEntry>,
}

impl NewResource {
    pub(super) fn new(spec: &'static TypeSpec, id: &str, mut body: Value, now: i64) -> Self {
        body["id"] = Value::String(id.to_string());
        stamp_meta(&mut body, 1, now);
        let stored = StoredResource {
            resource_type: spec.name.to_string(),
            id: id.to_string(),
            version_id: 1,
            last_updated: now,
            body: body.to_string(),
        };
        let index = index_values(spec, &body);
        Self { spec, stored, body, index }
    }
}

/// Store a new resource with its index, its sender's grant and its Provenance. A Task's owner
/// grants are the caller's to write, once everything the Task points to is stored.
pub(super) fn store_new(
    conn: &mut DbConn,
    author: &Author,
    new: &NewResource,
    sender_org: &str,
) -> Result<(), ApiError> {
    store_new_all(conn, author, &[new], &[], sender_org)
}

/// [`store_new`] for resources written together (a referral and its Tasks), with more grants
/// (`grants`, by source): one insert per table.
pub(super) fn store_new_all(
    conn: &mut DbConn,
    author: &Author,
    new: &[&NewResource],
    grants: &[(String, &[Grant])],
    sender_org: &str,
) -> Result<(), ApiError> {
    // The grants first: storing a Task enqueues its events for the Endpoints of those who may
    // see it.
    let senders: Vec<(String, [Grant; 1])> =
        new.iter().filter_map(|n| access::sender_grant(n.spec, &n.stored.id, sender_org)).collect();
    let sources: Vec<(&str, &[Grant])> = senders
        .iter()
        .map(|(source, g)| (source.as_str(), g.as_slice()))
        .chain(grants.iter().map(|(source, g)| (source.as_str(), *g)))
        .collect();
    resources::add_grants_all(conn, &sources)?;
    let rows: Vec<resources::New> =
        new.iter().map(|n| resources::New { stored: &n.stored, index: &n.index, body: &n.body }).collect();
    resources::insert_new_all(conn, &rows)?;
    provenance::record_all(conn, &new.iter().map(|n| &n.stored).collect::<Vec<_>>(), author, "CREATE")?;
    for n in new {
        let id = &n.stored.id;
        tracing::info!(resource_type = n.spec.name, id = %id, version = 1, client = %author.client, "created");
    }
    Ok(())
}

/// Store a new resource (version 1) with its index and its sender's grant. Sets `id` and
/// `meta`. A Task's owner grants are written by [`access::grant_task`] once everything the
/// Task points to is stored.
fn insert_resource(
    conn: &mut DbConn,
    author: &Author,
    spec: &'static TypeSpec,
    id: &str,
    body: &mut Value,
    sender_org: &str,
    now: i64,
) -> Result<StoredResource, ApiError> {
    let new = NewResource::new(spec, id, std::mem::take(body), now);
    let stored = store_new(conn, author, &new, sender_org);
    *body = new.body;
    stored.map(|()| new.stored)
}

/// The Tasks routing decided for a ServiceRequest (`sr_id`, `sr` as it is stored), each checked
/// against the Task profile like any other write, ready to store.
pub(super) fn routed_tasks(
    sr_id: &str,
    sr: &Value,
    routes: &[routing::Route],
    sender_org: &str,
    now: i64,
) -> Result<Vec<NewResource>, ApiError> {
    let task_spec = type_spec("Task").expect("Task is served");
    let mut out = Vec::new();
    for route in routes {
        let task = routing::task_for(sr_id, sr, route, sender_org, &instant(now));
        let mut issues = Vec::new();
        crate::fhir::validate_resource(&task, "Task", &mut issues);
        if has_errors(&issues) {
            let codes: Vec<&str> = issues.iter().map(|i| i.code.code()).collect();
            return Err(ApiError::Internal(format!("a routed Task fails validation: {codes:?}")));
        }
        out.push(NewResource::new(task_spec, &crate::store::new_id(), task, now));
    }
    Ok(out)
}

/// Create the Tasks routing decided for a stored ServiceRequest, together (their owners' grants
/// are the caller's to write, with [`access::grant_task`]).
pub(super) fn create_routed_tasks(
    conn: &mut DbConn,
    author: &Author,
    sender_org: &str,
    sr_id: &str,
    sr: &Value,
    routes: &[routing::Route],
    now: i64,
) -> Result<Vec<StoredResource>, ApiError> {
    let tasks = routed_tasks(sr_id, sr, routes, sender_org, now)?;
    store_new_all(conn, author, &tasks.iter().collect::<Vec<_>>(), &[], sender_org)?;
    for (task, route) in tasks.iter().zip(routes) {
        tracing::info!(task = %task.stored.id, via = %route.via, "routed");
    }
    Ok(tasks.into_iter().map(|t| t.stored).collect())
}

/// A ServiceRequest create decided before its write transaction: the referral rules' warnings,
/// the routing decision, and the ServiceRequest and its routed Tasks (with their owners'
/// grants) ready to store. What is left for the transaction is writing it.
pub(super) struct PreparedReferral {
    /// The change-log position of the snapshot it was decided on.
    seen: i64,
    warnings: Vec<Issue>,
    sr: NewResource,
    tasks: Vec<(NewResource, Vec<Grant>)>,
    vias: Vec<String>,
    decision: DecisionRow,
}

impl Gateway {
    /// Check a new ServiceRequest (`id`) against the referral rules, route it and build its
    /// Tasks, reading through `conn`.
    fn prepare_referral(
        &self,
        conn: &mut DbConn,
        p: &Principal,
        id: &str,
        body: &Value,
        now: i64,
    ) -> Result<PreparedReferral, ApiError> {
        let seen = crate::store::changes::last(conn)?;
        let mut warnings = enforce_referral_rules(conn, p, body, "ServiceRequest", self.validation)?;
        let plan = if routing::performer_targets(body).is_empty() {
            self.route_by_condition(conn, p, body, &Default::default(), "ServiceRequest")?
        } else {
            let facts = self.performer_facts(conn, body)?;
            Plan::Explicit(routing::route(body, &facts, &[]).map_err(|i| ApiError::issues(422, i))?)
        };
        warnings.extend(plan.warnings("ServiceRequest"));
        let spec = type_spec("ServiceRequest").expect("ServiceRequest is served");
        let sr = NewResource::new(spec, id, body.clone(), now);
        let routes = plan.routes();
        let unstored = access::Unstored { id, sender: &p.org_id, body: &sr.body };
        let mut tasks = Vec::new();
        for task in routed_tasks(id, &sr.body, &routes, &p.org_id, now)? {
            let grants = access::new_task_grants(conn, &task.stored.id, &task.body, &unstored)?;
            tasks.push((task, grants));
        }
        let task_ids: Vec<String> = tasks.iter().map(|(t, _)| t.stored.id.clone()).collect();
        let decision = decision_row(p, id, &plan, &task_ids);
        let vias = routes.iter().map(|r| r.via.clone()).collect();
        Ok(PreparedReferral { seen, warnings, sr, tasks, vias, decision })
    }

    /// [`Self::prepare_referral`] on a pooled connection, in one read snapshot, before the write
    /// transaction.
    fn prepare_referral_before(&self, p: &Principal, body: &Value, now: i64) -> Result<PreparedReferral, ApiError> {
        let mut conn = self.conn()?;
        crate::store::read_snapshot(&mut conn, |c| self.prepare_referral(c, p, &crate::store::new_id(), body, now))
    }
}

/// Write a prepared ServiceRequest, its Tasks, their grants and the routing decision.
fn store_referral(conn: &mut DbConn, author: &Author, sender_org: &str, r: &PreparedReferral) -> Result<(), ApiError> {
    let new: Vec<&NewResource> = std::iter::once(&r.sr).chain(r.tasks.iter().map(|(t, _)| t)).collect();
    let owners: Vec<(String, &[Grant])> =
        r.tasks.iter().map(|(t, grants)| (format!("task:{}", t.stored.id), grants.as_slice())).collect();
    store_new_all(conn, author, &new, &owners, sender_org)?;
    for ((task, _), via) in r.tasks.iter().zip(&r.vias) {
        tracing::info!(task = %task.stored.id, via = %via, "routed");
    }
    store_decision(conn, &r.decision)
}

impl Gateway {
    /// `POST /fhir/$validate` and `POST /fhir/{type}/$validate`: the OperationOutcome a
    /// submission of the resource would get from validation, without storing anything. The
    /// body is the resource, or a Parameters with a `resource` parameter (and optionally a
    /// `profile`); `profile` may also come in the query. A named profile is checked on top of
    /// what a submission gets.
    pub fn validate(
        &self,
        ctx: &Ctx,
        ty: Option<&str>,
        body: Value,
        profile: Option<String>,
    ) -> Result<Reply, ApiError> {
        let is_parameters =
            body.get("resourceType").and_then(Value::as_str) == Some("Parameters") && ty != Some("Parameters");
        let param = |name: &str| {
            body.get("parameter")
                .and_then(Value::as_array)
                .and_then(|ps| ps.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name)))
                .cloned()
        };
        let mut profile = profile;
        let resource = if is_parameters {
            if let Some(p) = param("profile") {
                profile = ["valueUri", "valueCanonical", "valueString"]
                    .iter()
                    .find_map(|k| p.get(*k).and_then(Value::as_str))
                    .map(str::to_string)
                    .or(profile);
            }
            param("resource").and_then(|p| p.get("resource").cloned()).unwrap_or(body)
        } else {
            body
        };
        if let Some(ty) = ty {
            expect_type(&resource, ty)?;
        }
        let profiles = crate::fhir::profiles::Profiles::shared();
        let extra = match &profile {
            Some(url) => vec![profiles.get(url).ok_or_else(|| {
                ApiError::new(
                    400,
                    Issue::error(
                        IssueCode::ProfileUnknown,
                        "the profile parameter names a profile Signpost does not bundle",
                    )
                    .at("profile"),
                )
            })?],
            None => vec![],
        };
        let root = resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource").to_string();
        let mut issues = Vec::new();
        crate::fhir::validate_with_profiles(&resource, &root, self.validation, &extra, &mut issues);
        if !has_errors(&issues) {
            let mut conn = self.conn()?;
            referral_issues(&mut conn, &ctx.principal, &resource, &root, self.validation, &mut issues)?;
        }
        if issues.is_empty() {
            issues.push(Issue {
                severity: crate::fhir::outcome::Severity::Information,
                code: IssueCode::Accepted,
                expression: None,
                diagnostics: "no issues found".into(),
            });
        }
        Ok(Reply::json(
            200,
            &crate::fhir::outcome::operation_outcome(&crate::fhir::outcome::capped(issues, ctx.max_issues)),
        ))
    }

    /// `POST /fhir/{type}`.
    pub fn create(&self, ctx: &Ctx, ty: &str, mut resource: Value, opts: &WriteOpts) -> Result<Reply, ApiError> {
        let spec = served_type(ty)?;
        access::check_create(&ctx.principal, spec)?;
        expect_type(&resource, spec.name)?;
        if let Some(obj) = resource.as_object_mut() {
            obj.shift_remove("id");
        }
        let mut warnings = Vec::new();
        validate_structure(self.validation, &resource, spec.name, &mut warnings);
        if has_errors(&warnings) {
            return Err(ApiError::issues(400, warnings));
        }
        self.check_deployment_rules(&resource, spec.name)?;
        let conditional = match &opts.if_none_exist {
            Some(q) => Some(conditional_identifier(q)?),
            None => None,
        };
        let p = &ctx.principal;
        // A referral's reads and routing happen before the write transaction, unless a condition
        // must be checked first or the request may be a replay (then inside it, after the
        // condition or the idempotency key: a replay gets its first answer, whatever the
        // referral rules would say now).
        let replay = match &opts.idempotency_key {
            Some(key) => crate::store::idempotency::find(&mut *self.conn()?, &p.client_id, key)?.is_some(),
            None => false,
        };
        let prepared = match (spec.name, &conditional) {
            // On PostgreSQL writers overlap: deciding inside the write transaction spares a
            // transaction of its own and the check that its snapshot is still current.
            ("ServiceRequest", None) if !replay && self.pool.has_one_writer() => {
                Some(self.prepare_referral_before(p, &resource, now_ms())?)
            }
            _ => None,
        };
        self.run_write(ctx, opts, |conn| {
            let now = now_ms();
            let id = prepared.as_ref().map_or_else(crate::store::new_id, |r| r.sr.stored.id.clone());
            if let Some(ident) = &conditional
                && let Some(existing) = conditional_create(conn, p, spec, ident, &id, None)?
            {
                return Ok(resource_reply(ctx, 200, &existing, true, &warnings));
            }
            let author = Author::of(p, &ctx.correlation_id);
            let inside;
            let referral = match &prepared {
                // Decided on a snapshot that is still current for everything it read: only
                // referrals and Tasks (other than this one, which is not stored yet) changed
                // since. Otherwise (a Consent withdrawn, a Patient or the directory changed) it
                // is decided again here, inside the transaction.
                Some(r) if !crate::store::changes::others_since(conn, r.seen, ["ServiceRequest", "Task"])? => Some(r),
                _ if spec.name == "ServiceRequest" => {
                    inside = self.prepare_referral(conn, p, &id, &resource, now)?;
                    Some(&inside)
                }
                _ => None,
            };
            if let Some(r) = referral {
                store_referral(conn, &author, &p.org_id, r)?;
                let mut all = warnings.clone();
                all.extend(r.warnings.iter().cloned());
                return Ok(resource_reply(ctx, 201, &r.sr.stored, true, &all));
            }
            let mut body = resource.clone();
            let mut warnings = warnings.clone();
            match spec.name {
                "Patient" => warnings.extend(enforce_referral_rules(conn, p, &body, spec.name, self.validation)?),
                "Task" => {
                    let issues = access::check_sender_task(conn, p, &body, &HashMap::new(), "Task")?;
                    if !issues.is_empty() {
                        return Err(ApiError::issues(422, issues));
                    }
                }
                _ => {}
            }
            let stored = insert_resource(conn, &author, spec, &id, &mut body, &p.org_id, now)?;
            if spec.name == "Task" {
                access::grant_new_task(conn, &id, &body)?;
            }
            Ok(resource_reply(ctx, 201, &stored, true, &warnings))
        })
    }

    /// `PUT` or `PATCH /fhir/{type}/{id}`.
    pub fn update(&self, ctx: &Ctx, ty: &str, id: &str, change: Change, opts: &WriteOpts) -> Result<Reply, ApiError> {
        let spec = served_type(ty)?;
        let p = &ctx.principal;
        if let Change::Replace(resource) = &change {
            expect_type(resource, spec.name)?;
            if resource.get("id").and_then(Value::as_str) != Some(id) {
                return Err(ApiError::new(
                    400,
                    Issue::error(IssueCode::IdMismatch, "the resource id must equal the id in the URL")
                        .at(format!("{}.id", spec.name)),
                ));
            }
        }
        if spec.class == TypeClass::Directory && p.role != Role::Operator {
            return Err(ApiError::forbidden("only operators change the directory"));
        }
        self.run_write(ctx, opts, |conn| {
            let current = resources::get(conn, spec.name, id)?;
            let Some(current) = current else {
                return match (&change, spec.class) {
                    (Change::Replace(resource), TypeClass::Directory) => {
                        let mut issues = Vec::new();
                        validate_structure(self.validation, resource, spec.name, &mut issues);
                        if has_errors(&issues) {
                            return Err(ApiError::issues(400, issues));
                        }
                        self.check_deployment_rules(resource, spec.name)?;
                        let mut body = resource.clone();
                        let author = Author::of(p, &ctx.correlation_id);
                        let stored = insert_resource(conn, &author, spec, id, &mut body, &p.org_id, now_ms())?;
                        Ok(resource_reply(ctx, 201, &stored, true, &issues))
                    }
                    _ => Err(ApiError::not_found()),
                };
            };
            if !access::can_see(conn, p, spec, id)? {
                return Err(ApiError::not_found());
            }
            if p.role == Role::Charity && spec.name != "Task" {
                return Err(ApiError::forbidden("charities may change only the Tasks they own"));
            }
            if let Some(expected) = opts.if_match
                && expected != current.version_id
            {
                return Err(version_conflict());
            }
            let old = current.json()?;
            let mut new = match &change {
                Change::Replace(v) => v.clone(),
                Change::Patch(patch) => {
                    let mut doc = old.clone();
                    json_patch::patch(&mut doc, patch).map_err(|e| {
                        ApiError::new(
                            422,
                            Issue::error(
                                IssueCode::BadPatch,
                                format!("the patch cannot be applied: {}", patch_error(&e)),
                            ),
                        )
                    })?;
                    if doc.get("resourceType") != old.get("resourceType") || doc.get("id") != old.get("id") {
                        return Err(ApiError::new(
                            422,
                            Issue::error(IssueCode::BadPatch, "a patch may not change resourceType or id"),
                        ));
                    }
                    doc
                }
            };
            if let Some(meta) = new.get_mut("meta").and_then(Value::as_object_mut) {
                meta.shift_remove("versionId");
                meta.shift_remove("lastUpdated");
                if meta.is_empty()
                    && let Some(o) = new.as_object_mut()
                {
                    o.shift_remove("meta");
                }
            }
            let mut issues = Vec::new();
            validate_structure(self.validation, &new, spec.name, &mut issues);
            if has_errors(&issues) {
                return Err(ApiError::issues(400, issues));
            }
            if spec.name == "Task" {
                check_task_change(p, &old, &new)?;
            }
            self.check_deployment_rules(&new, spec.name)?;
            let now = now_ms();
            let version = current.version_id + 1;
            stamp_meta(&mut new, version, now);
            let stored = StoredResource {
                resource_type: spec.name.to_string(),
                id: id.to_string(),
                version_id: version,
                last_updated: now,
                body: new.to_string(),
            };
            let (index, previous_index) = (index_values(spec, &new), index_values(spec, &old));
            let replaced = resources::Replaced { body: &old, index: &previous_index };
            if !resources::update_if_version(conn, &stored, current.version_id, &index, Some(replaced), &new)? {
                return Err(version_conflict());
            }
            match spec.name {
                "Task" => access::grant_task(conn, id, &new)?,
                "ServiceRequest" => access::regrant_tasks_of(conn, id)?,
                _ => {}
            }
            provenance::record(conn, &stored, &Author::of(p, &ctx.correlation_id), "UPDATE")?;
            tracing::info!(resource_type = spec.name, id, version, client = %p.name, "updated");
            self.after_update(conn, &ctx.correlation_id, &old, &stored)?;
            Ok(resource_reply(ctx, 200, &stored, false, &issues))
        })
    }
}

fn version_conflict() -> ApiError {
    ApiError::new(
        412,
        Issue::error(IssueCode::VersionConflict, "the resource has changed since the version in If-Match"),
    )
}

fn patch_error(e: &json_patch::PatchError) -> String {
    // The operation index and kind only: never the values.
    format!("operation {} ({})", e.operation, e.kind)
}

/// The Task rules of PRODUCT.md §6 for one change by `p`.
fn check_task_change(p: &Principal, old: &Value, new: &Value) -> Result<(), ApiError> {
    let actor = match p.role {
        Role::Charity => Actor::Owner,
        Role::Referrer => Actor::Referrer,
        Role::Operator => Actor::Operator,
    };
    check_task_move(actor, p.role.as_str(), old, new)
}

/// The Task rules of PRODUCT.md §6 for one change by `actor` (Signpost's own moves included).
pub(super) fn check_task_move(actor: Actor, who: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    // The move first: an illegal move is a 409 whatever else the change holds.
    let from = old.get("status").and_then(Value::as_str).unwrap_or("");
    let to = new.get("status").and_then(Value::as_str).unwrap_or("");
    if let Err(allowed) = lifecycle::check(from, to, actor) {
        let moves = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
        return Err(ApiError::new(
            409,
            Issue::error(
                IssueCode::IllegalTransition,
                format!("a {who} cannot move a Task from '{from}' to '{to}'; allowed moves: {moves}"),
            )
            .at("Task.status"),
        ));
    }
    if let Some(editable) = lifecycle::editable(actor) {
        let mut keys: Vec<&String> = old.as_object().into_iter().flat_map(|o| o.keys()).collect();
        keys.extend(new.as_object().into_iter().flat_map(|o| o.keys()));
        keys.sort();
        keys.dedup();
        let issues: Vec<Issue> = keys
            .into_iter()
            .filter(|k| !matches!(k.as_str(), "meta" | "id" | "resourceType"))
            .filter(|k| old.get(k.as_str()) != new.get(k.as_str()) && !editable.contains(&k.as_str()))
            .map(|k| {
                Issue::error(IssueCode::FieldNotChangeable, format!("a {who} may not change Task.{k}"))
                    .at(format!("Task.{k}"))
            })
            .collect();
        if !issues.is_empty() {
            return Err(ApiError::issues(422, issues));
        }
    }
    let problems = lifecycle::check_codes(new, from != to, &|k| old.get(k) != new.get(k));
    if !problems.is_empty() {
        let issues = problems
            .into_iter()
            .map(|pr| {
                let code = match (pr.missing, pr.path.as_str()) {
                    (true, "Task.output") => IssueCode::OutputRequired,
                    (true, _) => IssueCode::ReasonRequired,
                    (false, _) => IssueCode::UnknownLifecycleCode,
                };
                Issue::error(code, pr.message).at(pr.path)
            })
            .collect();
        return Err(ApiError::issues(422, issues));
    }
    Ok(())
}

/// A conditional create (`If-None-Exist`, a transaction's `ifNoneExist`): the existing resource
/// the caller may see with this identifier, or `None` after claiming the condition for `new_id`
/// (a unique key, so two concurrent creates collide instead of duplicating: the loser gets
/// [`ApiError::ConditionalRace`] and is retried). Several matches → 412 at `at`.
pub(super) fn conditional_create(
    conn: &mut DbConn,
    p: &Principal,
    spec: &TypeSpec,
    ident: &str,
    new_id: &str,
    at: Option<String>,
) -> Result<Option<StoredResource>, ApiError> {
    let mut criteria = crate::fhir::search::Criteria {
        resource_type: spec.name.to_string(),
        params: vec![("identifier".into(), vec![ident.to_string()])],
        count: 2,
        ..Default::default()
    };
    if spec.class == TypeClass::Referral && p.role != Role::Operator {
        criteria.visible_to = Some(p.org_id.clone());
    }
    let (total, found) = resources::search(conn, &criteria)?;
    if total > 1 {
        let issue = Issue::error(IssueCode::ConditionalMultiple, "the condition matched more than one resource");
        return Err(ApiError::new(
            412,
            match at {
                Some(at) => issue.at(at),
                None => issue,
            },
        ));
    }
    if let Some(existing) = found.into_iter().next() {
        return Ok(Some(existing));
    }
    match resources::claim_conditional(conn, spec.name, &format!("{}:identifier={ident}", p.org_id), new_id) {
        Err(StoreError::Unique) => Err(ApiError::ConditionalRace),
        other => Ok(other.map(|_| None)?),
    }
}

/// `If-None-Exist: identifier=system|value` → the token to match.
pub(super) fn conditional_identifier(query: &str) -> Result<String, ApiError> {
    let bad =
        || ApiError::new(400, Issue::error(IssueCode::BadConditional, "If-None-Exist must be identifier=system|value"));
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.trim().trim_start_matches('?')).map_err(|_| bad())?;
    match pairs.as_slice() {
        [(name, value)] if name == "identifier" && !value.is_empty() => {
            Ok(value.strip_prefix('|').unwrap_or(value).to_string())
        }
        _ => Err(bad()),
    }
}

/// Used by the transaction Bundle: every reference to a key of `map` is rewritten.
pub(super) fn rewrite_references(value: &mut Value, map: &std::collections::HashMap<String, String>) {
    match value {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if k == "reference" {
                    if let Some(target) = v.as_str().and_then(|s| map.get(s)) {
                        *v = Value::String(target.clone());
                    }
                } else {
                    rewrite_references(v, map);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rewrite_references(v, map)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::conditional_identifier;

    #[test]
    fn if_none_exist_takes_one_identifier_in_either_encoding() {
        let want = "https://fhir.nhs.uk/Id/nhs-number|9000000009";
        assert_eq!(conditional_identifier("identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009").unwrap(), want);
        assert_eq!(
            conditional_identifier("?identifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C9000000009").unwrap(),
            want
        );
        assert_eq!(conditional_identifier("identifier=|abc").unwrap(), "abc");
        for bad in ["name=DOE", "identifier=", "identifier=a&identifier=b", ""] {
            assert!(conditional_identifier(bad).is_err(), "{bad}");
        }
    }
}
