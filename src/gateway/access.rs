//! Who may see and change what (PRODUCT.md §7): the one place where access is decided and
//! grants are written.
//!
//! The rules:
//! - Directory resources (Organization, HealthcareService, Endpoint) are readable by every
//!   client and written by operators only. Operators see everything.
//! - A referral resource is visible to the Organization that sent it (its `sender:` grant).
//! - A Task's owner sees the Task, the ServiceRequest it fulfils, and what that ServiceRequest
//!   points to — its patient, the Conditions and other resources in `reasonReference` and
//!   `supportingInfo`, its requester (and a PractitionerRole's Practitioner), the patient's
//!   Consents — but only those the ServiceRequest's sender may see itself. Grants are derived
//!   from what the sender owns, never from what a sender writes: a reference to someone else's
//!   resource grants nothing.
//! - A Task that a referrer sends (its own route) must name its own ServiceRequest as `focus`
//!   (and `basedOn`, if given), that ServiceRequest's patient as `for`, and a charity — an
//!   Organization in the directory that provides a HealthcareService — as `owner`.

use std::collections::HashMap;

use serde_json::Value;

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode};
use crate::fhir::search::Criteria;
use crate::fhir::{TypeClass, TypeSpec, items, reference_of, type_spec};
use crate::routing::{self, DirectoryEntry, DirectoryFacts};
use crate::store::resources::{self, Grant};
use crate::store::{DbConn, StoreError};

/// May this principal create resources of this type?
pub(super) fn check_create(p: &Principal, spec: &TypeSpec) -> Result<(), ApiError> {
    match (p.role, spec.class) {
        (Role::Operator, _) => Ok(()),
        (Role::Referrer, TypeClass::Referral) => Ok(()),
        (Role::Referrer, TypeClass::Directory) => Err(ApiError::forbidden("only operators change the directory")),
        (Role::Charity, _) => {
            Err(ApiError::forbidden("charities update the Tasks they own; they do not create resources"))
        }
    }
}

/// Whether the principal may see the resource.
pub(super) fn can_see(conn: &mut DbConn, p: &Principal, spec: &TypeSpec, id: &str) -> Result<bool, StoreError> {
    if spec.class == TypeClass::Directory || p.role == Role::Operator {
        return Ok(true);
    }
    resources::is_visible(conn, spec.name, id, &p.org_id)
}

/// The grant that makes a new referral resource visible to the Organization that sent it, with
/// its source (none for other resources). Written only for a resource just created: its source
/// has no grants yet.
pub(super) fn sender_grant(spec: &TypeSpec, id: &str, sender_org: &str) -> Option<(String, [Grant; 1])> {
    (spec.class == TypeClass::Referral).then(|| {
        let sender = Grant { resource_type: spec.name.into(), resource_id: id.into(), org_id: sender_org.into() };
        (format!("sender:{}/{id}", spec.name), [sender])
    })
}

/// What the directory says about `ty/id` (a HealthcareService or an Organization).
pub(super) fn directory_entry(conn: &mut DbConn, ty: &str, id: &str) -> Result<Option<DirectoryEntry>, StoreError> {
    let Some(r) = resources::get(conn, ty, id)? else { return Ok(None) };
    let body = r.json()?;
    let active = body.get("active").and_then(Value::as_bool).unwrap_or(true);
    let entry = match ty {
        "Organization" => DirectoryEntry { active, org_id: Some(id.to_string()), org_active: active },
        _ => match body.get("providedBy").and_then(reference_of).filter(|(t, _)| *t == "Organization") {
            Some((_, org_id)) => {
                let org_active = match resources::get(conn, "Organization", org_id)? {
                    Some(o) => o.json()?.get("active").and_then(Value::as_bool).unwrap_or(true),
                    None => false,
                };
                DirectoryEntry { active, org_id: Some(org_id.to_string()), org_active }
            }
            None => DirectoryEntry { active, org_id: None, org_active: false },
        },
    };
    Ok(Some(entry))
}

/// Whether `org_id` is a charity: an Organization in the directory that provides at least one
/// HealthcareService. GP practices and hospitals are in the directory too, but provide none.
pub(super) fn is_charity(conn: &mut DbConn, org_id: &str) -> Result<bool, StoreError> {
    if resources::get(conn, "Organization", org_id)?.is_none() {
        return Ok(false);
    }
    let criteria = Criteria {
        resource_type: "HealthcareService".into(),
        params: vec![("organization".into(), vec![format!("Organization/{org_id}")])],
        count: 1,
        ..Default::default()
    };
    Ok(!resources::find(conn, &criteria)?.is_empty())
}

/// The Organization that owns a Task: the one `Task.owner` names, or the one that provides the
/// HealthcareService it names.
///
/// An Organization named as owner owns the Task whatever the directory holds at the time (a
/// Task is only ever routed or sent to a charity in the directory, but the directory changes):
/// every Task whose `task_queue` row names an owner therefore carries that owner's grant, which
/// lets charity polling read the owner's rows without probing a grant for each
/// ([`crate::store::resources::search`]).
pub(super) fn owner_org(conn: &mut DbConn, task: &Value) -> Result<Option<String>, StoreError> {
    match task.get("owner").and_then(reference_of) {
        Some(("Organization", id)) => Ok(Some(id.to_string())),
        Some(("HealthcareService", id)) => Ok(directory_entry(conn, "HealthcareService", id)?.and_then(|e| e.org_id)),
        _ => Ok(None),
    }
}

/// Check a Task that a referrer (or operator) sends as its own route. `bundle_srs` holds the
/// ServiceRequests of the same transaction Bundle by id (references already rewritten); `path`
/// is the Task's FHIRPath root. Returns the issues (errors) found.
pub(super) fn check_sender_task(
    conn: &mut DbConn,
    p: &Principal,
    task: &Value,
    bundle_srs: &HashMap<String, Value>,
    path: &str,
) -> Result<Vec<Issue>, ApiError> {
    let mut issues = Vec::new();
    let unknown = |at: String| {
        Issue::error(
            IssueCode::UnknownReference,
            "the ServiceRequest does not exist or is not one you sent; a Task may only carry your own referral",
        )
        .at(at)
    };
    let mut subject: Option<String> = None;
    let mut focus_id: Option<String> = None;
    match task.get("focus").and_then(reference_of) {
        Some(("ServiceRequest", id)) => {
            let sr = match bundle_srs.get(id) {
                Some(sr) => Some(sr.clone()),
                None => match resources::get(conn, "ServiceRequest", id)? {
                    Some(stored)
                        if p.role == Role::Operator
                            || resources::sender_of(conn, "ServiceRequest", id)?.as_deref()
                                == Some(p.org_id.as_str()) =>
                    {
                        Some(stored.json()?)
                    }
                    _ => None,
                },
            };
            match sr {
                Some(sr) => {
                    subject = sr.pointer("/subject/reference").and_then(Value::as_str).map(str::to_string);
                    focus_id = Some(id.to_string());
                }
                None => issues.push(unknown(format!("{path}.focus"))),
            }
        }
        _ => issues.push(
            Issue::error(IssueCode::FocusRequired, "Task.focus must reference the ServiceRequest")
                .at(format!("{path}.focus")),
        ),
    }
    if let Some(focus) = &focus_id {
        for (i, b) in items(task, "basedOn").enumerate() {
            if reference_of(b) != Some(("ServiceRequest", focus.as_str())) {
                issues.push(
                    Issue::error(IssueCode::UnknownReference, "Task.basedOn may name only the ServiceRequest in focus")
                        .at(format!("{path}.basedOn[{i}]")),
                );
            }
        }
        if let Some(for_ref) = task.get("for") {
            let same = match (reference_of(for_ref), subject.as_deref().and_then(crate::fhir::parse_reference)) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            };
            if !same {
                issues.push(
                    Issue::error(IssueCode::UnknownReference, "Task.for must be the patient of the ServiceRequest")
                        .at(format!("{path}.for")),
                );
            }
        }
    }
    match task.get("owner").and_then(reference_of) {
        Some((ty, id)) if routing::DIRECTORY_TARGETS.contains(&ty) => {
            let mut facts = DirectoryFacts::new();
            if let Some(e) = directory_entry(conn, ty, id)? {
                facts.insert((ty.to_string(), id.to_string()), e);
            }
            match routing::resolve(&facts, ty, id, &format!("{path}.owner")) {
                Ok(org) if is_charity(conn, &org)? => {}
                Ok(_) => issues.push(
                    Issue::error(
                        IssueCode::UnknownPerformer,
                        "Task.owner must be a charity in the directory (an Organization that provides a service)",
                    )
                    .at(format!("{path}.owner")),
                ),
                Err(issue) => issues.push(issue),
            }
        }
        _ => issues.push(
            Issue::error(IssueCode::FocusRequired, "Task.owner must reference a charity Organization in the directory")
                .at(format!("{path}.owner")),
        ),
    }
    Ok(issues)
}

/// Referral types a ServiceRequest's owner may be shown when its sender may see them.
fn shareable(ty: &str) -> bool {
    type_spec(ty).is_some_and(|s| s.class == TypeClass::Referral)
}

/// Compute and store what the owner of a Task may see (see the module rules).
pub(super) fn grant_task(conn: &mut DbConn, task_id: &str, task: &Value) -> Result<(), StoreError> {
    let grants = owner_grants(conn, task_id, task, None)?;
    resources::replace_grants(conn, &format!("task:{task_id}"), &grants)
}

/// [`grant_task`] for a Task just created (it has no grants to replace).
pub(super) fn grant_new_task(conn: &mut DbConn, task_id: &str, task: &Value) -> Result<(), StoreError> {
    let grants = owner_grants(conn, task_id, task, None)?;
    resources::add_grants(conn, &format!("task:{task_id}"), &grants)
}

/// A ServiceRequest about to be stored with its Tasks: its id, sender Organization and body.
pub(super) struct Unstored<'a> {
    pub id: &'a str,
    pub sender: &'a str,
    pub body: &'a Value,
}

/// The grants of a new Task of a ServiceRequest not stored yet, computed before the write
/// transaction (the caller writes them with [`resources::add_grants`] under `task:{task_id}`).
pub(super) fn new_task_grants(
    conn: &mut DbConn,
    task_id: &str,
    task: &Value,
    sr: &Unstored<'_>,
) -> Result<Vec<Grant>, StoreError> {
    owner_grants(conn, task_id, task, Some(sr))
}

/// The grants a Task gives its owner's Organization (none without an owner Signpost knows).
fn owner_grants(
    conn: &mut DbConn,
    task_id: &str,
    task: &Value,
    unstored: Option<&Unstored<'_>>,
) -> Result<Vec<Grant>, StoreError> {
    match owner_org(conn, task)? {
        Some(org) => task_grants(conn, task_id, task, &org, unstored),
        None => Ok(Vec::new()),
    }
}

/// Recompute the grants of every Task of a ServiceRequest (after the ServiceRequest changed).
pub(super) fn regrant_tasks_of(conn: &mut DbConn, sr_id: &str) -> Result<(), StoreError> {
    let criteria = Criteria {
        resource_type: "Task".into(),
        params: vec![("focus".into(), vec![format!("ServiceRequest/{sr_id}")])],
        count: 1000,
        ..Default::default()
    };
    for t in resources::find(conn, &criteria)? {
        grant_task(conn, &t.id, &t.json()?)?;
    }
    Ok(())
}

fn task_grants(
    conn: &mut DbConn,
    task_id: &str,
    task: &Value,
    org: &str,
    unstored: Option<&Unstored<'_>>,
) -> Result<Vec<Grant>, StoreError> {
    let grant = |ty: &str, id: &str| Grant { resource_type: ty.into(), resource_id: id.into(), org_id: org.into() };
    let mut out = vec![grant("Task", task_id)];
    let mut srs: Vec<String> = Vec::new();
    for r in task.get("focus").into_iter().chain(items(task, "basedOn")) {
        if let Some(("ServiceRequest", id)) = reference_of(r)
            && !srs.iter().any(|s| s == id)
        {
            srs.push(id.to_string());
        }
    }
    for sr_id in srs {
        let (sender, sr) = match unstored.filter(|u| u.id == sr_id) {
            Some(u) => (u.sender.to_string(), std::borrow::Cow::Borrowed(u.body)),
            None => {
                let Some(sender) = resources::sender_of(conn, "ServiceRequest", &sr_id)? else { continue };
                let Some(stored) = resources::get(conn, "ServiceRequest", &sr_id)? else { continue };
                (sender, std::borrow::Cow::Owned(stored.json()?))
            }
        };
        out.push(grant("ServiceRequest", &sr_id));
        let mut targets: Vec<(String, String)> = Vec::new();
        let refs = sr
            .get("subject")
            .into_iter()
            .chain(sr.get("requester"))
            .chain(items(&sr, "reasonReference"))
            .chain(items(&sr, "supportingInfo"));
        for r in refs {
            if let Some((ty, id)) = reference_of(r)
                && shareable(ty)
            {
                targets.push((ty.to_string(), id.to_string()));
            }
        }
        // A PractitionerRole brings its Practitioner.
        let roles: Vec<String> =
            targets.iter().filter(|(t, _)| t == "PractitionerRole").map(|(_, id)| id.clone()).collect();
        for role in roles {
            if resources::is_visible(conn, "PractitionerRole", &role, &sender)?
                && let Some(r) = resources::get(conn, "PractitionerRole", &role)?
                && let Some(("Practitioner", id)) = r.json()?.get("practitioner").and_then(reference_of)
            {
                targets.push(("Practitioner".into(), id.to_string()));
            }
        }
        // The patient's Consents, as the sender sees them.
        if let Some(("Patient", pid)) = sr.get("subject").and_then(reference_of) {
            let criteria = Criteria {
                resource_type: "Consent".into(),
                params: vec![("patient".into(), vec![format!("Patient/{pid}")])],
                visible_to: Some(sender.clone()),
                count: 100,
                ..Default::default()
            };
            // Found as the sender sees them: granted without asking again.
            for c in resources::find(conn, &criteria)? {
                out.push(grant("Consent", &c.id));
            }
        }
        for (ty, id) in targets {
            if resources::is_visible(conn, &ty, &id, &sender)? {
                out.push(grant(&ty, &id));
            }
        }
    }
    Ok(out)
}
