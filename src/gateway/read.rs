//! Reads: read, vread, instance history and search, each filtered to what the caller may see.

use serde_json::{Value, json};

use super::{Ctx, Gateway, Reply, bundle, can_see, resource_reply, served_type};
use crate::auth::Role;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, operation_outcome};
use crate::fhir::search;
use crate::fhir::{TypeClass, instant};
use crate::store::resources;

impl Gateway {
    /// `GET /fhir/{type}/{id}`.
    pub fn read(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        let spec = served_type(ty)?;
        let mut conn = self.conn()?;
        let r = resources::get(&mut conn, spec.name, id)?.ok_or_else(ApiError::not_found)?;
        if !can_see(&mut conn, &ctx.principal, spec, id)? {
            return Err(ApiError::not_found());
        }
        let mut reply = resource_reply(ctx, 200, &r, false);
        reply.body = Some(r.body);
        Ok(reply)
    }

    /// `GET /fhir/{type}/{id}/_history/{vid}`.
    pub fn vread(&self, ctx: &Ctx, ty: &str, id: &str, version: &str) -> Result<Reply, ApiError> {
        let spec = served_type(ty)?;
        let version: i64 = version.parse().map_err(|_| ApiError::not_found())?;
        let mut conn = self.conn()?;
        if !can_see(&mut conn, &ctx.principal, spec, id)? {
            return Err(ApiError::not_found());
        }
        let r = resources::get_version(&mut conn, spec.name, id, version)?.ok_or_else(ApiError::not_found)?;
        let mut reply = resource_reply(ctx, 200, &r, false);
        reply.body = Some(r.body);
        Ok(reply)
    }

    /// `GET /fhir/{type}/{id}/_history`: every version, newest first.
    pub fn history(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        let spec = served_type(ty)?;
        let mut conn = self.conn()?;
        if !can_see(&mut conn, &ctx.principal, spec, id)? {
            return Err(ApiError::not_found());
        }
        let versions = resources::history(&mut conn, spec.name, id)?;
        if versions.is_empty() {
            return Err(ApiError::not_found());
        }
        let oldest = versions.last().map(|v| v.version_id).unwrap_or(1);
        let entries = versions
            .iter()
            .map(|v| {
                let resource: Value = serde_json::from_str(&v.body).unwrap_or(Value::Null);
                let (method, status) = if v.version_id == oldest { ("POST", "201 Created") } else { ("PUT", "200 OK") };
                json!({
                    "fullUrl": format!("{}/{}/{}", ctx.base, v.resource_type, v.id),
                    "resource": resource,
                    "request": {
                        "method": method,
                        "url": if method == "POST" { v.resource_type.clone() } else { format!("{}/{}", v.resource_type, v.id) }
                    },
                    "response": {
                        "status": status,
                        "etag": super::etag(v.version_id),
                        "lastModified": instant(v.last_updated)
                    }
                })
            })
            .collect();
        let total = versions.len() as i64;
        let self_link = format!("{}/{}/{}/_history", ctx.base, spec.name, id);
        Ok(Reply::json(200, &bundle("history", Some(total), vec![("self", self_link)], entries)))
    }

    /// `GET /fhir/{type}?...`: a searchset Bundle with `total` and paging links.
    pub fn search(&self, ctx: &Ctx, ty: &str, pairs: &[(String, String)]) -> Result<Reply, ApiError> {
        let spec = served_type(ty)?;
        let parsed = search::parse(spec, pairs, ctx.strict).map_err(|i| ApiError::new(400, i))?;
        let mut criteria = parsed.criteria;
        if spec.class == TypeClass::Referral && ctx.principal.role != Role::Operator {
            criteria.visible_to = Some(ctx.principal.org_id.clone());
        }
        let mut conn = self.conn()?;
        let (total, rows) = resources::search(&mut conn, &criteria)?;

        let link = |offset: i64| {
            let mut q: Vec<String> = parsed
                .applied
                .iter()
                .filter(|(k, _)| k != "_count")
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            q.push(format!("_count={}", criteria.count));
            if offset > 0 {
                q.push(format!("_offset={offset}"));
            }
            format!("{}/{}?{}", ctx.base, spec.name, q.join("&"))
        };
        let mut links = vec![("self", link(criteria.offset))];
        if criteria.count > 0 && criteria.offset + criteria.count < total {
            links.push(("next", link(criteria.offset + criteria.count)));
        }
        if criteria.offset > 0 && criteria.count > 0 {
            links.push(("previous", link((criteria.offset - criteria.count).max(0))));
        }
        let mut entries: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "fullUrl": format!("{}/{}/{}", ctx.base, r.resource_type, r.id),
                    "resource": serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
                    "search": { "mode": "match" }
                })
            })
            .collect();
        if !parsed.ignored.is_empty() {
            let names: Vec<String> =
                parsed.ignored.iter().map(|n| n.chars().filter(|c| c.is_ascii_graphic()).collect()).collect();
            entries.push(json!({
                "resource": operation_outcome(&[Issue::warning(
                    IssueCode::UnknownSearchParam,
                    format!("ignored unsupported search parameters: {}", names.join(", ")),
                )]),
                "search": { "mode": "outcome" }
            }));
        }
        Ok(Reply::json(200, &bundle("searchset", Some(total), links, entries)))
    }
}

/// Percent-encode a query component.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
