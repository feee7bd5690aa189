//! Reads: read, vread, instance history and search, each filtered to what the caller may see.

use serde_json::{Value, json};

use super::access::can_see;
use super::{Ctx, Gateway, Reply, bundle, resource_reply, served_type};
use crate::auth::Role;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode, operation_outcome};
use crate::fhir::search;
use crate::fhir::{TypeClass, instant};
use crate::store::changes;
use crate::store::resources::{self, StoredResource};

impl Gateway {
    /// `GET /fhir/{type}/{id}`.
    pub fn read(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        let spec = served_type(ty)?;
        let mut conn = self.conn()?;
        let r = resources::get(&mut conn, spec.name, id)?.ok_or_else(ApiError::not_found)?;
        if !can_see(&mut conn, &ctx.principal, spec, id)? {
            return Err(ApiError::not_found());
        }
        check_stored(&r)?;
        let r = if spec.name == "Task" && ctx.principal.role == Role::Charity {
            self.first_view(&mut conn, ctx, r)?
        } else {
            r
        };
        let mut reply = resource_reply(ctx, 200, &r, false, &[]);
        reply.body = Some(r.body);
        Ok(reply)
    }

    /// The owning charity's first read of a new Task records the `viewed` stage (a new version,
    /// which this read returns, so its ETag is the one to update with).
    fn first_view(
        &self,
        conn: &mut crate::store::PooledConn,
        ctx: &Ctx,
        r: StoredResource,
    ) -> Result<StoredResource, ApiError> {
        let task = r.json()?;
        let fresh = task.get("status").and_then(Value::as_str) == Some("requested")
            && matches!(
                crate::lifecycle::code_in(task.get("businessStatus"), crate::lifecycle::STAGE_SYSTEM),
                None | Some("delivered")
            );
        if !fresh || super::access::owner_org(conn, &task)?.as_deref() != Some(ctx.principal.org_id.as_str()) {
            return Ok(r);
        }
        let viewed = crate::store::write_txn(conn, |conn| super::flow::mark_stage(conn, &r.id, "viewed"))?;
        Ok(viewed.unwrap_or(r))
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
        check_stored(&r)?;
        let mut reply = resource_reply(ctx, 200, &r, false, &[]);
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
                let resource = v.json()?;
                let (method, status) = if v.version_id == oldest { ("POST", "201 Created") } else { ("PUT", "200 OK") };
                Ok(json!({
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
                }))
            })
            .collect::<Result<Vec<Value>, crate::store::StoreError>>()?;
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
        let tag = answer_tag(ctx, changes::last(&mut conn)?, spec.name, pairs);
        if holds(ctx, &tag) {
            return Ok(not_modified(tag));
        }
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
        for (rel, offset) in page_links(criteria.offset, criteria.count, total) {
            links.push((rel, link(offset)));
        }
        // Each stored body goes into the Bundle as stored (checked to be JSON, not re-encoded):
        // a placeholder string now, the body spliced in after serialising.
        let mut entries: Vec<Value> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                check_stored(r)?;
                Ok(json!({
                    "fullUrl": format!("{}/{}/{}", ctx.base, r.resource_type, r.id),
                    "resource": format!("{RAW_MARK}{i}{RAW_MARK}"),
                    "search": { "mode": "match" }
                }))
            })
            .collect::<Result<_, ApiError>>()?;
        if !parsed.ignored.is_empty() {
            // Only names shaped like FHIR search parameters are repeated: a query can carry
            // anything, patient data included.
            let names: Vec<String> = parsed
                .ignored
                .iter()
                .map(|n| {
                    let shaped = n.len() <= 40
                        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_:.".contains(&b));
                    if shaped { n.clone() } else { "(a parameter whose name is not repeated)".to_string() }
                })
                .collect();
            entries.push(json!({
                "resource": operation_outcome(&[Issue::warning(
                    IssueCode::UnknownSearchParam,
                    format!("ignored unsupported search parameters: {}", names.join(", ")),
                )]),
                "search": { "mode": "outcome" }
            }));
        }
        let text = bundle("searchset", Some(total), links, entries).to_string();
        let raws: Vec<&str> = rows.iter().map(|r| r.body.as_str()).collect();
        Ok(tagged(Reply::json_text(200, splice_raw(&text, &raws)), tag))
    }
}

/// The placeholder character around an entry's index while a Bundle is serialised.
const RAW_MARK: char = '\u{1}';

/// Replace the serialised placeholders `"\u0001{i}\u0001"` of `text`, in order, by `raws[i]`.
/// A placeholder cannot be forged: any U+0001 in submitted data was escaped the same way, but
/// only the Bundle's own `resource` strings are looked for, in entry order.
fn splice_raw(text: &str, raws: &[&str]) -> String {
    let mut out = String::with_capacity(text.len() + raws.iter().map(|r| r.len()).sum::<usize>());
    let mut rest = text;
    for (i, raw) in raws.iter().enumerate() {
        let marker = format!("\"resource\":\"\\u0001{i}\\u0001\"");
        let Some(at) = rest.find(&marker) else { break };
        out.push_str(&rest[..at]);
        out.push_str("\"resource\":");
        out.push_str(raw);
        rest = &rest[at + marker.len()..];
    }
    out.push_str(rest);
    out
}

/// A stored body is served as stored, once it is known to be JSON (a corrupt row is an
/// internal error, never sent on).
fn check_stored(r: &resources::StoredResource) -> Result<(), ApiError> {
    serde_json::from_str::<serde::de::IgnoredAny>(&r.body)
        .map(|_| ())
        .map_err(|_| ApiError::from(crate::store::StoreError::Corrupt(format!("{}/{}", r.resource_type, r.id))))
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

impl Gateway {
    /// `GET /fhir/$changes?cursor=N&_count=M`: the changes after `cursor` that the caller may
    /// see, in commit order (a `history` Bundle; each entry's `change-sequence` extension is its
    /// cursor), and a `next` link with the cursor to ask from next time. A page reads at most
    /// [`changes::PAGE_READS`] changes, so it may be short, even empty, while `next` moves on.
    /// Gap-free: see [`crate::store::changes`].
    pub fn changes(&self, ctx: &Ctx, pairs: &[(String, String)]) -> Result<Reply, ApiError> {
        let bad = |d: &str| ApiError::new(400, Issue::error(IssueCode::BadSearchValue, d.to_string()));
        let mut cursor = 0i64;
        let mut count = 50i64;
        for (k, v) in pairs {
            match k.as_str() {
                "cursor" => {
                    cursor = v
                        .parse()
                        .ok()
                        .filter(|n: &i64| *n >= 0)
                        .ok_or_else(|| bad("cursor must be a whole number from 0"))?
                }
                "_count" => {
                    count = v
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (1..=search::MAX_COUNT).contains(n))
                        .ok_or_else(|| bad("_count must be 1 to 100"))?
                }
                "_format" => {}
                _ => return Err(bad("$changes takes cursor and _count")),
            }
        }
        let visible_to = (ctx.principal.role != Role::Operator).then_some(ctx.principal.org_id.as_str());
        let directory: Vec<&str> =
            crate::fhir::TYPES.iter().filter(|t| t.class == TypeClass::Directory).map(|t| t.name).collect();
        let mut conn = self.conn()?;
        let tag = answer_tag(ctx, changes::last(&mut conn)?, "$changes", pairs);
        if holds(ctx, &tag) {
            return Ok(not_modified(tag));
        }
        let page = changes::page(&mut conn, cursor, count, visible_to, &directory, changes::PAGE_READS)?;
        let rows = page.changes;
        let mut entries = Vec::new();
        let mut bodies: Vec<String> = Vec::with_capacity(rows.len());
        for (i, c) in rows.iter().enumerate() {
            let v = resources::get_version(&mut conn, &c.resource_type, &c.resource_id, c.version_id)?
                .ok_or_else(|| ApiError::Internal(format!("change {} names a missing version", c.seq)))?;
            check_stored(&v)?;
            let (method, status, url) = if c.version_id == 1 {
                ("POST", "201 Created", c.resource_type.clone())
            } else {
                ("PUT", "200 OK", format!("{}/{}", c.resource_type, c.resource_id))
            };
            entries.push(json!({
                "extension": [{ "url": CHANGE_SEQUENCE, "valueString": c.seq.to_string() }],
                "fullUrl": format!("{}/{}/{}", ctx.base, c.resource_type, c.resource_id),
                "resource": format!("{RAW_MARK}{i}{RAW_MARK}"),
                "request": { "method": method, "url": url },
                "response": { "status": status, "etag": super::etag(c.version_id), "lastModified": instant(c.changed_at) }
            }));
            bodies.push(v.body);
        }
        let next = page.next;
        let link = |n: i64| format!("{}/$changes?cursor={n}&_count={count}", ctx.base);
        let links = vec![("self", link(cursor)), ("next", link(next))];
        let text = bundle("history", None, links, entries).to_string();
        let raws: Vec<&str> = bodies.iter().map(String::as_str).collect();
        Ok(tagged(Reply::json_text(200, splice_raw(&text, &raws)), tag))
    }
}

/// The validator of a search's or the change feed's answer: the change counter read before the
/// answer, and what the answer depends on besides the stored data (who asks, what, through which
/// base URL, from which Signpost). Every write takes the next number of that counter, so the
/// same tag means the same answer. Because the counter is read first, a change committed while
/// the answer is read can only make the next request miss, never hide that change.
fn answer_tag(ctx: &Ctx, counter: i64, what: &str, pairs: &[(String, String)]) -> String {
    use sha2::Digest;
    let p = &ctx.principal;
    let mut h = sha2::Sha256::new();
    let role = format!("{:?}", p.role);
    let strict = if ctx.strict { "strict" } else { "lenient" };
    let parts = [env!("CARGO_PKG_VERSION"), &ctx.base, &p.client_id, &p.org_id, &role, strict, what];
    for part in parts.into_iter().chain(pairs.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()])) {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!("W/\"{counter}-{}\"", hex::encode(&h.finalize()[..8]))
}

/// Whether the client's `If-None-Match` lists `tag` (weak comparison).
fn holds(ctx: &Ctx, tag: &str) -> bool {
    fn bare(t: &str) -> &str {
        t.trim().trim_start_matches("W/")
    }
    ctx.if_none_match.as_deref().is_some_and(|list| list.split(',').any(|t| bare(t) == bare(tag)))
}

/// 304 Not Modified: the client's copy of the answer is current.
fn not_modified(tag: String) -> Reply {
    Reply { status: 304, headers: vec![("ETag".into(), tag)], body: None }
}

fn tagged(mut reply: Reply, tag: String) -> Reply {
    reply.headers.push(("ETag".into(), tag));
    reply
}

/// The extension on each `$changes` entry that carries its cursor.
pub const CHANGE_SEQUENCE: &str = "https://signpost.example/fhir/StructureDefinition/change-sequence";

/// `next` and `previous` links, only where they lead to a page with results: `next` when
/// results follow this page, `previous` when results come before it (from a page past the end,
/// `previous` leads to the last page).
fn page_links(offset: i64, count: i64, total: i64) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    if count <= 0 || total <= 0 {
        return out;
    }
    let end = offset.saturating_add(count);
    if end < total && end <= search::MAX_OFFSET {
        out.push(("next", end));
    }
    if offset > 0 {
        let last_page = ((total - 1) / count) * count;
        out.push(("previous", offset.saturating_sub(count).clamp(0, last_page.min(search::MAX_OFFSET))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{RAW_MARK, page_links, splice_raw};

    #[test]
    fn stored_bodies_are_spliced_in_entry_order_and_submitted_marks_stay_text() {
        // A submitted string holding the mark is escaped the same way, but it is neither a
        // `resource` value nor in entry order, so it stays as it is.
        let sneaky = format!("{RAW_MARK}0{RAW_MARK}");
        let bundle = serde_json::json!({
            "link": [{ "url": sneaky }],
            "entry": [
                { "fullUrl": "a", "resource": format!("{RAW_MARK}0{RAW_MARK}") },
                { "fullUrl": "b", "resource": format!("{RAW_MARK}1{RAW_MARK}") }
            ]
        })
        .to_string();
        let out = splice_raw(&bundle, &[r#"{"resourceType":"Task","id":"1"}"#, r#"{"resourceType":"Task","id":"2"}"#]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["entry"][0]["resource"]["id"], "1");
        assert_eq!(v["entry"][1]["resource"]["id"], "2");
        assert_eq!(v["link"][0]["url"], sneaky);
    }

    #[test]
    fn paging_links_lead_to_results_and_never_loop() {
        assert_eq!(page_links(0, 10, 25), vec![("next", 10)]);
        assert_eq!(page_links(10, 10, 25), vec![("next", 20), ("previous", 0)]);
        assert_eq!(page_links(20, 10, 25), vec![("previous", 10)]);
        assert_eq!(page_links(0, 10, 0), vec![], "an empty result has no links");
        assert_eq!(page_links(5, 10, 0), vec![], "no previous on an empty search");
        assert_eq!(page_links(90, 10, 25), vec![("previous", 20)], "past the end: back to the last page");
        assert_eq!(page_links(0, 0, 25), vec![], "_summary=count pages nowhere");
        for (offset, count, total) in [(i64::MAX - 5, 10, i64::MAX), (1_000_000, 100, 5_000_000)] {
            for (_, to) in page_links(offset, count, total) {
                assert!((0..=super::search::MAX_OFFSET).contains(&to), "{offset} {count} {total} -> {to}");
            }
        }
    }
}
