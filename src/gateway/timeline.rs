//! A referral's history in one call, and the outcome summary for the GP record (PRODUCT.md §6).
//!
//! `GET /fhir/ServiceRequest/{id}/$timeline`: the ServiceRequest and its Tasks, every version of
//! each with the Provenance of that version, in the order they were written. The referrer sees
//! every Task; a charity sees the referral and its own Tasks (never another charity's work on
//! the same patient); operators and other organisations are refused.
//!
//! `GET /fhir/Task/{id}/$outcome-summary`: once the Task is finished, the outcome summary for the
//! GP record ([`crate::summary`]).

use serde_json::{Value, json};

use super::access::{can_see, owner_org};
use super::flow::tasks_of;
use super::{Ctx, Gateway, Reply, bundle};
use crate::auth::Role;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode};
use crate::fhir::type_spec;
use crate::lifecycle::{self, status_of};
use crate::store::DbConn;
use crate::store::provenance as rows;
use crate::store::resources::{self, StoredResource};

fn only(ty: &str, want: &str, op: &str) -> Result<(), ApiError> {
    if ty == want {
        Ok(())
    } else {
        Err(ApiError::new(404, Issue::error(IssueCode::UnknownPath, format!("{op} is defined on {want} only"))))
    }
}

impl Gateway {
    /// `GET /fhir/ServiceRequest/{id}/$timeline`.
    pub fn timeline(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        only(ty, "ServiceRequest", "$timeline")?;
        let p = &ctx.principal;
        let mut conn = self.conn()?;
        let spec = type_spec("ServiceRequest").expect("served");
        if resources::get(&mut conn, "ServiceRequest", id)?.is_none() || !can_see(&mut conn, p, spec, id)? {
            return Err(ApiError::not_found());
        }
        if p.role == Role::Operator {
            return Err(ApiError::forbidden("a referral's timeline is for its referrer and its charities"));
        }
        let sender = resources::sender_of(&mut conn, "ServiceRequest", id)?;
        // Ordered by time; at the same instant the referral before its Tasks, each version
        // before its Provenance.
        let mut items: Vec<((i64, usize, i64, u8), Value)> = Vec::new();
        let mut resource_no = 0usize;
        let mut add = |conn: &mut DbConn, ty: &str, rid: &str| -> Result<(), ApiError> {
            let provenance = rows::of(conn, ty, rid)?;
            for v in resources::history(conn, ty, rid)? {
                let key = (v.last_updated, resource_no, v.version_id);
                items.push(((key.0, key.1, key.2, 0), version_entry(ctx, &v)?));
                for row in provenance.iter().filter(|r| r.target_version == v.version_id) {
                    items.push(((key.0, key.1, key.2, 1), json!({ "resource": super::provenance::resource(row) })));
                }
            }
            resource_no += 1;
            Ok(())
        };
        add(&mut conn, "ServiceRequest", id)?;
        for task in tasks_of(&mut conn, id)? {
            let mine = match p.role {
                Role::Referrer => sender.as_deref() == Some(p.org_id.as_str()),
                _ => owner_org(&mut conn, &task.json()?)?.as_deref() == Some(p.org_id.as_str()),
            };
            if mine {
                add(&mut conn, "Task", &task.id)?;
            }
        }
        items.sort_by_key(|(k, _)| *k);
        let entries: Vec<Value> = items.into_iter().map(|(_, e)| e).collect();
        let total = entries.len() as i64;
        Ok(Reply::json(200, &bundle("collection", Some(total), Vec::new(), entries)))
    }

    /// `GET /fhir/Task/{id}/$outcome-summary`: the referrer's (and the owning charity's) coded
    /// summary of a finished Task, as a FHIR document.
    pub fn outcome_summary(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        only(ty, "Task", "$outcome-summary")?;
        let mut conn = self.conn()?;
        let spec = type_spec("Task").expect("served");
        let Some(task) = resources::get(&mut conn, "Task", id)? else { return Err(ApiError::not_found()) };
        if !can_see(&mut conn, &ctx.principal, spec, id)? {
            return Err(ApiError::not_found());
        }
        let task_json = task.json()?;
        if !lifecycle::is_finished(status_of(&task_json)) {
            return Err(ApiError::new(
                409,
                Issue::error(
                    IssueCode::NotFinished,
                    format!("the Task is '{}': its outcome summary exists once it is finished", status_of(&task_json)),
                ),
            ));
        }
        let summary = crate::summary::outcome_document(&mut conn, &task)?;
        Ok(Reply::json(200, &summary))
    }
}

fn version_entry(ctx: &Ctx, v: &StoredResource) -> Result<Value, ApiError> {
    Ok(json!({
        "fullUrl": format!("{}/{}/{}/_history/{}", ctx.base, v.resource_type, v.id, v.version_id),
        "resource": v.json()?,
    }))
}
