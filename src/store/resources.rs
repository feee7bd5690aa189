//! Resources, their versions, search index rows and access grants. The two functions that store
//! a version, [`insert_new`] and [`update_if_version`], are the only ones: every write path
//! (REST, transactions, routed Tasks, directory loads) goes through them, and they append the
//! version to the change log ([`super::changes`]) in the same transaction.

use diesel::prelude::*;

use super::schema::{access_grants, conditional_creates, resource_versions, resources, search_index, task_queue};
use super::{Backend, DbConn, StoreError};

/// One version of a stored resource. `body` is the JSON served to clients, with `meta` set.
#[derive(Debug, Clone, Queryable)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: i64,
    pub body: String,
}

#[derive(Insertable)]
#[diesel(table_name = resources)]
struct CurrentRow<'a> {
    resource_type: &'a str,
    id: &'a str,
    version_id: i64,
    last_updated: i64,
    body: &'a str,
}

#[derive(Insertable)]
#[diesel(table_name = resource_versions)]
struct VersionRow<'a> {
    resource_type: &'a str,
    id: &'a str,
    version_id: i64,
    last_updated: i64,
    body: &'a str,
}

/// A stored version as a row of `resources` (the current one) or of `resource_versions`.
macro_rules! row_of {
    ($($row:ident),*) => {$(
        impl<'a> $row<'a> {
            fn of(r: &'a StoredResource) -> Self {
                $row {
                    resource_type: &r.resource_type,
                    id: &r.id,
                    version_id: r.version_id,
                    last_updated: r.last_updated,
                    body: &r.body,
                }
            }
        }
    )*};
}
row_of!(CurrentRow, VersionRow);

/// The columns of `resource_versions` in [`StoredResource`] order.
const VERSION_COLUMNS: (
    resource_versions::resource_type,
    resource_versions::id,
    resource_versions::version_id,
    resource_versions::last_updated,
    resource_versions::body,
) = (
    resource_versions::resource_type,
    resource_versions::id,
    resource_versions::version_id,
    resource_versions::last_updated,
    resource_versions::body,
);

/// A search value extracted from a resource: `(parameter name, value)`.
pub type IndexEntry = (String, String);

/// Who may see a resource: an Organization id, and why (`sender` or `task:{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub resource_type: String,
    pub resource_id: String,
    pub org_id: String,
}

/// The current version, if the resource exists.
pub fn get(conn: &mut DbConn, ty: &str, rid: &str) -> Result<Option<StoredResource>, StoreError> {
    let query = resources::table.filter(resources::resource_type.eq(ty)).filter(resources::id.eq(rid));
    Ok(super::on_backend!(conn, |c| query.first::<StoredResource>(c).optional())?)
}

impl StoredResource {
    /// The stored body as JSON; a body that does not parse is [`StoreError::Corrupt`].
    pub fn json(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.body)
            .map_err(|_| StoreError::Corrupt(format!("{}/{} version {}", self.resource_type, self.id, self.version_id)))
    }
}

/// One historical version.
pub fn get_version(conn: &mut DbConn, ty: &str, rid: &str, version: i64) -> Result<Option<StoredResource>, StoreError> {
    Ok(resource_versions::table
        .filter(resource_versions::resource_type.eq(ty))
        .filter(resource_versions::id.eq(rid))
        .filter(resource_versions::version_id.eq(version))
        .select(VERSION_COLUMNS)
        .first::<StoredResource>(conn)
        .optional()?)
}

/// Every version, newest first.
pub fn history(conn: &mut DbConn, ty: &str, rid: &str) -> Result<Vec<StoredResource>, StoreError> {
    Ok(resource_versions::table
        .filter(resource_versions::resource_type.eq(ty))
        .filter(resource_versions::id.eq(rid))
        .order(resource_versions::version_id.desc())
        .select(VERSION_COLUMNS)
        .load::<StoredResource>(conn)?)
}

fn insert_version(conn: &mut DbConn, r: &StoredResource) -> Result<(), StoreError> {
    diesel::insert_into(resource_versions::table).values(VersionRow::of(r)).execute(conn)?;
    Ok(())
}

/// Write a new resource's search rows.
fn write_index(conn: &mut DbConn, ty: &str, rid: &str, index: &[IndexEntry]) -> Result<(), StoreError> {
    super::insert_rows!(conn, search_index::table, &index_rows(ty, rid, unique(index)));
    Ok(())
}

/// A new version's search rows in place of the old ones: with the old values known (`previous`),
/// only the rows that changed are deleted and inserted (a stage changes one of a Task's dozen);
/// without them every old row is deleted and the new ones written (reading the old rows to write
/// only the difference cost more, because SQLite without statistics reads them through the
/// primary key's `resource_type` prefix rather than the `(resource_type, resource_id)` index).
fn rewrite_index(
    conn: &mut DbConn,
    ty: &str,
    rid: &str,
    index: &[IndexEntry],
    previous: Option<&[IndexEntry]>,
) -> Result<(), StoreError> {
    let Some(previous) = previous else {
        diesel::delete(
            search_index::table.filter(search_index::resource_type.eq(ty)).filter(search_index::resource_id.eq(rid)),
        )
        .execute(conn)?;
        return write_index(conn, ty, rid, index);
    };
    let (old, new) = (unique(previous), unique(index));
    for (p, v) in old.iter().filter(|e| new.binary_search(e).is_err()) {
        diesel::delete(search_index::table.find((ty, p.as_str(), v.as_str(), rid))).execute(conn)?;
    }
    // A row may already be there although the old values do not name it (written by a release
    // that extracted values differently): kept, not a conflict.
    let added = index_rows(ty, rid, new.into_iter().filter(|e| old.binary_search(e).is_err()).collect());
    super::insert_rows!(keep_existing: conn, search_index::table, &added);
    Ok(())
}

/// The entries sorted, each once.
fn unique(index: &[IndexEntry]) -> Vec<&IndexEntry> {
    let mut entries: Vec<&IndexEntry> = index.iter().collect();
    entries.sort();
    entries.dedup();
    entries
}

/// A search row, as inserted.
type IndexRow<'a> = (
    diesel::dsl::Eq<search_index::resource_type, &'a str>,
    diesel::dsl::Eq<search_index::resource_id, &'a str>,
    diesel::dsl::Eq<search_index::param, &'a str>,
    diesel::dsl::Eq<search_index::value, &'a str>,
);

/// One resource's search rows.
fn index_rows<'a>(ty: &'a str, rid: &'a str, entries: Vec<&'a IndexEntry>) -> Vec<IndexRow<'a>> {
    entries
        .into_iter()
        .map(|(p, v)| {
            (
                search_index::resource_type.eq(ty),
                search_index::resource_id.eq(rid),
                search_index::param.eq(p.as_str()),
                search_index::value.eq(v.as_str()),
            )
        })
        .collect()
}

/// A new resource for [`insert_new_all`]: its first version, its search values, and its body
/// as JSON.
#[derive(Clone, Copy)]
pub struct New<'a> {
    pub stored: &'a StoredResource,
    pub index: &'a [IndexEntry],
    pub body: &'a serde_json::Value,
}

/// Store a new resource (version 1 or a create-on-update) with its search values; `body` is
/// `r.body` as JSON. Fails with [`StoreError::Unique`] if the id is taken.
pub fn insert_new(
    conn: &mut DbConn,
    r: &StoredResource,
    index: &[IndexEntry],
    body: &serde_json::Value,
) -> Result<(), StoreError> {
    insert_new_all(conn, &[New { stored: r, index, body }])
}

/// Store new resources together (a referral and its Tasks): each table's rows for all of them
/// in one insert (one statement each on PostgreSQL, where every statement is a round trip).
pub fn insert_new_all(conn: &mut DbConn, new: &[New<'_>]) -> Result<(), StoreError> {
    let current: Vec<CurrentRow> = new.iter().map(|n| CurrentRow::of(n.stored)).collect();
    super::insert_rows!(&mut *conn, resources::table, &current);
    let versions: Vec<VersionRow> = new.iter().map(|n| VersionRow::of(n.stored)).collect();
    super::insert_rows!(&mut *conn, resource_versions::table, &versions);
    let index: Vec<IndexRow> =
        new.iter().flat_map(|n| index_rows(&n.stored.resource_type, &n.stored.id, unique(n.index))).collect();
    super::insert_rows!(&mut *conn, search_index::table, &index);
    for n in new {
        record_change(conn, n.stored, n.body, None)?;
    }
    Ok(())
}

/// The change log and, for Tasks, the outbox: written with every stored version (`new` is
/// `r.body` as JSON; `old` the version it replaces, read again here when the caller has not).
fn record_change(
    conn: &mut DbConn,
    r: &StoredResource,
    new: &serde_json::Value,
    old: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    super::changes::record(conn, &r.resource_type, &r.id, r.version_id, r.last_updated)?;
    super::routing::note_directory_write(conn, &r.resource_type)?;
    if r.resource_type == "Task" {
        let read;
        let old = match (r.version_id, old) {
            (1, _) => None,
            (_, Some(old)) => Some(old),
            (v, None) => {
                read = get_version(conn, "Task", &r.id, v - 1)?.map(|o| o.json()).transpose()?;
                read.as_ref()
            }
        };
        super::routing::note_task_change(conn, old, new)?;
        super::routing::note_task_queue(conn, &r.id, new, r.last_updated, r.version_id == 1)?;
        crate::failpoint::hit("store::before_outbox");
        super::outbox::enqueue_for_task(conn, r, new, old)?;
    }
    Ok(())
}

/// The version an update replaces, as its caller read it: its body and its search values.
#[derive(Clone, Copy)]
pub struct Replaced<'a> {
    pub body: &'a serde_json::Value,
    pub index: &'a [IndexEntry],
}

/// Replace the current version if it is still `expected_version` (compare-and-swap).
/// Returns `false`, writing nothing, when another writer got there first.
///
/// `body` is `r.body` as JSON. `replaced` is the version replaced, when the caller has it: then
/// only the search rows that changed are rewritten (none for a note), and the Task bookkeeping
/// compares against it without reading it again.
pub fn update_if_version(
    conn: &mut DbConn,
    r: &StoredResource,
    expected_version: i64,
    index: &[IndexEntry],
    replaced: Option<Replaced<'_>>,
    body: &serde_json::Value,
) -> Result<bool, StoreError> {
    let changed = diesel::update(
        resources::table
            .filter(resources::resource_type.eq(&r.resource_type))
            .filter(resources::id.eq(&r.id))
            .filter(resources::version_id.eq(expected_version)),
    )
    .set((
        resources::version_id.eq(r.version_id),
        resources::last_updated.eq(r.last_updated),
        resources::body.eq(&r.body),
    ))
    .execute(conn)?;
    if changed != 1 {
        return Ok(false);
    }
    insert_version(conn, r)?;
    // Both come from `index_values`, which lists a body's values in a fixed order.
    let previous_index = replaced.map(|p| p.index);
    if previous_index != Some(index) {
        rewrite_index(conn, &r.resource_type, &r.id, index, previous_index)?;
    }
    record_change(conn, r, body, replaced.map(|p| p.body))?;
    Ok(true)
}

/// Replace every grant that comes from `source` with `grants`.
pub fn replace_grants(conn: &mut DbConn, source: &str, grants: &[Grant]) -> Result<(), StoreError> {
    diesel::delete(access_grants::table.filter(access_grants::source.eq(source))).execute(conn)?;
    add_grants(conn, source, grants)
}

/// Write the grants of a `source` that has none yet (a resource just created).
pub fn add_grants(conn: &mut DbConn, source: &str, grants: &[Grant]) -> Result<(), StoreError> {
    add_grants_all(conn, &[(source, grants)])
}

/// [`add_grants`] for several sources, in one insert.
pub fn add_grants_all(conn: &mut DbConn, sources: &[(&str, &[Grant])]) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    for (source, grants) in sources {
        let mut unique: Vec<&Grant> = grants.iter().collect();
        unique.sort_by(|a, b| {
            (&a.resource_type, &a.resource_id, &a.org_id).cmp(&(&b.resource_type, &b.resource_id, &b.org_id))
        });
        unique.dedup();
        rows.extend(unique.into_iter().map(|g| {
            (
                access_grants::resource_type.eq(g.resource_type.as_str()),
                access_grants::resource_id.eq(g.resource_id.as_str()),
                access_grants::org_id.eq(g.org_id.as_str()),
                access_grants::source.eq(*source),
            )
        }));
    }
    super::insert_rows!(conn, access_grants::table, &rows);
    Ok(())
}

/// Whether `org_id` holds any grant on the resource.
pub fn is_visible(conn: &mut DbConn, ty: &str, rid: &str, org_id: &str) -> Result<bool, StoreError> {
    let query = access_grants::table
        .filter(access_grants::resource_type.eq(ty))
        .filter(access_grants::resource_id.eq(rid))
        .filter(access_grants::org_id.eq(org_id))
        .count();
    let n: i64 = super::on_backend!(conn, |c| query.get_result(c))?;
    Ok(n > 0)
}

/// The Organization that sent a referral resource (its `sender:` grant), if any.
///
/// Filtered by `source` alone, so that the `source` index answers it: with the type and id
/// in the query too, SQLite's planner preferred the primary key's `resource_type` prefix and
/// read every grant of the type. A `sender:` source holds only the grant on its own resource.
pub fn sender_of(conn: &mut DbConn, ty: &str, rid: &str) -> Result<Option<String>, StoreError> {
    let query = access_grants::table.filter(access_grants::source.eq(format!("sender:{ty}/{rid}"))).select((
        access_grants::resource_type,
        access_grants::resource_id,
        access_grants::org_id,
    ));
    let grants: Vec<(String, String, String)> = super::on_backend!(conn, |c| query.load(c))?;
    Ok(grants.into_iter().find(|(t, id, _)| t == ty && id == rid).map(|(_, _, org)| org))
}

/// Record the resource created by a conditional create (`If-None-Exist`); the primary key
/// makes two concurrent creates for the same query collide.
pub fn claim_conditional(conn: &mut DbConn, ty: &str, query: &str, rid: &str) -> Result<(), StoreError> {
    diesel::insert_into(conditional_creates::table)
        .values((
            conditional_creates::resource_type.eq(ty),
            conditional_creates::query.eq(query),
            conditional_creates::resource_id.eq(rid),
        ))
        .execute(conn)?;
    Ok(())
}

pub use crate::fhir::search::{Cmp, Criteria as SearchQuery};

/// `query` narrowed by each `_lastUpdated` bound on the column `col` (the same for the general
/// plan's `resources` and the polling plan's `task_queue`).
macro_rules! last_updated_bounds {
    ($query:expr, $col:expr, $bounds:expr) => {{
        let mut query = $query;
        for (cmp, ms) in $bounds {
            query = match cmp {
                Cmp::Eq => query.filter($col.eq(*ms)),
                Cmp::Gt => query.filter($col.gt(*ms)),
                Cmp::Ge => query.filter($col.ge(*ms)),
                Cmp::Lt => query.filter($col.lt(*ms)),
                Cmp::Le => query.filter($col.le(*ms)),
            };
        }
        query
    }};
}

/// `$column` is one of `$values`, given as `$cond` to `$then`. One value is compared with `=`:
/// PostgreSQL then bounds its index scan by the value whatever its statistics say, where with
/// `= ANY` it may read every row of the column's prefix and filter them (a fast-growing table's
/// statistics lag behind, and they did: each conditional create read all the referrals'
/// identifiers, and all the grants of the sender). The two comparisons are different types,
/// hence a macro.
macro_rules! one_of {
    ($column:expr, $values:expr, |$cond:ident| $then:expr) => {
        match $values {
            [one] => {
                let $cond = $column.eq(one);
                $then
            }
            values => {
                let $cond = $column.eq_any(values);
                $then
            }
        }
    };
}

/// The search rows that answer `param` on type `ty` (`patient` is answered from `subject`'s,
/// see [`crate::fhir::search::indexed_as`]), whoever built the query.
fn rows_of<'a>(ty: &str, param: &'a str) -> &'a str {
    crate::fhir::type_spec(ty).map_or(param, |spec| crate::fhir::search::indexed_as(spec, param))
}

fn filtered(q: &SearchQuery) -> resources::BoxedQuery<'_, Backend> {
    let mut query = resources::table.filter(resources::resource_type.eq(&q.resource_type)).into_boxed::<Backend>();
    if let Some(ids) = q.ids.as_deref() {
        query = one_of!(resources::id, ids, |is_one| query.filter(is_one));
    }
    for (param, values) in &q.params {
        if q.ids.is_some() {
            // A known, short list of ids: probe the index for each (its primary key) rather
            // than collect every resource with the value.
            let probe = search_index::table
                .filter(search_index::resource_type.eq(&q.resource_type))
                .filter(search_index::param.eq(rows_of(&q.resource_type, param)))
                .filter(search_index::resource_id.eq(resources::id));
            query = one_of!(search_index::value, values.as_slice(), |has| query
                .filter(diesel::dsl::exists(probe.filter(has))));
            continue;
        }
        let rows = search_index::table
            .filter(search_index::resource_type.eq(&q.resource_type))
            .filter(search_index::param.eq(rows_of(&q.resource_type, param)));
        query = one_of!(search_index::value, values.as_slice(), |has| query
            .filter(resources::id.eq_any(rows.filter(has).select(search_index::resource_id))));
    }
    query = last_updated_bounds!(query, resources::last_updated, &q.last_updated);
    if let Some(org) = &q.visible_to {
        query = query.filter(
            resources::id.eq_any(
                access_grants::table
                    .filter(access_grants::resource_type.eq(&q.resource_type))
                    .filter(access_grants::org_id.eq(org))
                    .select(access_grants::resource_id),
            ),
        );
    }
    query
}

/// The most candidates a selective parameter may give before the search falls back to one
/// query for everything.
const FEW: usize = 200;

/// The most resources of a type an Organization's grants may give for the search to start from
/// them.
const GRANTED: usize = 10_000;

/// Run a search: the total number of matches and one page of them.
///
/// A selective start is resolved first — the few candidates of `identifier`, of a reference
/// (a patient, a referral) or of `_id`, or the resources the caller's Organization holds grants
/// on (up to 10,000) — then the rest of the search probes the index for each of those ids. One
/// query for everything would leave the join order to the database's statistics, and a
/// PostgreSQL whose statistics lag behind fast-growing tables scans every grant of the caller's
/// Organization for each conditional create.
pub fn search(conn: &mut DbConn, q: &SearchQuery) -> Result<(i64, Vec<StoredResource>), StoreError> {
    if let Some(plan) = QueuePlan::of(q) {
        return plan.search(conn, q);
    }
    search_general(conn, q)
}

/// [`search`] without the `task_queue` plan (the tests check both give the same answers).
#[doc(hidden)]
pub fn search_general(conn: &mut DbConn, q: &SearchQuery) -> Result<(i64, Vec<StoredResource>), StoreError> {
    if let Some(narrowed) = narrow(conn, q)? {
        return search_all(conn, &narrowed);
    }
    search_all(conn, q)
}

/// A Task search by one owning Organization (`owner=Organization/X`, optionally `status`,
/// `_lastUpdated`, either sort), made by that Organization or an operator: it reads and counts
/// the owner's range of `task_queue`'s indexes (kept by every Task write), instead of every Task
/// the caller may see. The same results as the general plan.
struct QueuePlan<'q> {
    owner: &'q str,
    statuses: Option<&'q [String]>,
}

impl<'q> QueuePlan<'q> {
    fn of(q: &'q SearchQuery) -> Option<QueuePlan<'q>> {
        if q.resource_type != "Task" || q.ids.is_some() {
            return None;
        }
        let (mut owner, mut statuses) = (None, None);
        for (param, values) in &q.params {
            match (param.as_str(), values.as_slice()) {
                ("owner", [one]) if owner.is_none() => owner = Some(one.strip_prefix("Organization/")?),
                ("status", vs) if statuses.is_none() && vs.iter().all(|v| !v.contains('|')) => statuses = Some(vs),
                _ => return None,
            }
        }
        let owner = owner?;
        if q.visible_to.as_deref().is_some_and(|org| org != owner) {
            return None;
        }
        Some(QueuePlan { owner, statuses })
    }

    fn rows(&self, q: &'q SearchQuery) -> task_queue::BoxedQuery<'q, Backend> {
        let mut rows = task_queue::table.filter(task_queue::owner_org.eq(self.owner)).into_boxed::<Backend>();
        if let Some(s) = self.statuses {
            rows = rows.filter(task_queue::status.eq_any(s));
        }
        // No grant probe: the caller is the owner (or an operator), and the owner of every row
        // holds its Task's grant (written with every Task version that names it; migration 13
        // added those an earlier release left out).
        last_updated_bounds!(rows, task_queue::last_updated, &q.last_updated)
    }

    fn search(&self, conn: &mut DbConn, q: &'q SearchQuery) -> Result<(i64, Vec<StoredResource>), StoreError> {
        let ordered = match q.sort_desc {
            Some(true) => self.rows(q).order((task_queue::last_updated.desc(), task_queue::task_id.desc())),
            Some(false) => self.rows(q).order((task_queue::last_updated.asc(), task_queue::task_id.asc())),
            None => self.rows(q).order(task_queue::task_id.asc()),
        };
        let ids: Vec<String> = ordered.select(task_queue::task_id).limit(q.count).offset(q.offset).load(conn)?;
        let mut found: Vec<StoredResource> = resources::table
            .filter(resources::resource_type.eq("Task"))
            .filter(resources::id.eq_any(&ids))
            .load(conn)?;
        found.sort_by_key(|r| ids.iter().position(|i| *i == r.id));
        let total = if q.offset == 0 && (ids.len() as i64) < q.count {
            ids.len() as i64
        } else {
            self.rows(q).count().get_result(conn)?
        };
        Ok((total, found))
    }
}

/// The parameters worth starting a search from, most selective first: `identifier`, then
/// references (a patient's Consents, a referral's Tasks). Each is tried in turn; one that matches
/// more than [`FEW`] resources (a charity's thousands of Tasks by `owner`) is left to the query.
fn selective_params(q: &SearchQuery) -> Vec<usize> {
    let spec = crate::fhir::type_spec(&q.resource_type);
    let is_reference = |name: &str| {
        spec.and_then(|s| s.params.iter().find(|p| p.name == name))
            .is_some_and(|p| p.kind == crate::fhir::ParamKind::Reference)
    };
    let mut out: Vec<usize> = q.params.iter().position(|(p, _)| p == "identifier").into_iter().collect();
    out.extend(q.params.iter().enumerate().filter(|(_, (p, _))| is_reference(p)).map(|(i, _)| i));
    out
}

fn narrow(conn: &mut DbConn, q: &SearchQuery) -> Result<Option<SearchQuery>, StoreError> {
    let mut narrowed = q.clone();
    let mut start = None;
    for i in selective_params(q) {
        let (param, values) = &q.params[i];
        let rows = search_index::table
            .filter(search_index::resource_type.eq(&q.resource_type))
            .filter(search_index::param.eq(rows_of(&q.resource_type, param)))
            .select(search_index::resource_id)
            .limit(FEW as i64 + 1);
        let found: Vec<String> = one_of!(search_index::value, values.as_slice(), |has| rows.filter(has).load(conn)?);
        if found.len() <= FEW {
            // These ids are exactly the parameter's matches: it is answered.
            narrowed.params.remove(i);
            start = Some(match &q.ids {
                Some(wanted) => found.into_iter().filter(|id| wanted.contains(id)).collect(),
                None => found,
            });
            break;
        }
    }
    let mut ids: Vec<String> = match (start, &q.ids, &q.visible_to) {
        (Some(found), _, _) => found,
        (None, Some(ids), _) => ids.clone(),
        // What an Organization may see is usually far less than everything (a charity's own
        // Tasks): start from its grants.
        (None, None, Some(org)) => {
            let granted: Vec<String> = access_grants::table
                .filter(access_grants::resource_type.eq(&q.resource_type))
                .filter(access_grants::org_id.eq(org))
                .select(access_grants::resource_id)
                .distinct()
                .limit(GRANTED as i64 + 1)
                .load(conn)?;
            if granted.len() > GRANTED {
                return Ok(None);
            }
            narrowed.visible_to = None;
            granted
        }
        (None, None, None) => return Ok(None),
    };
    if ids.len() > GRANTED {
        return Ok(None);
    }
    ids.sort();
    ids.dedup();
    if let Some(org) = &narrowed.visible_to {
        let granted = access_grants::table
            .filter(access_grants::resource_type.eq(&q.resource_type))
            .filter(access_grants::org_id.eq(org))
            .select(access_grants::resource_id)
            .distinct();
        ids = one_of!(access_grants::resource_id, ids.as_slice(), |is_one| granted.filter(is_one).load(conn)?);
        narrowed.visible_to = None;
    }
    narrowed.ids = Some(ids);
    Ok(Some(narrowed))
}

/// The first `ty` resource that carries one of `resource`'s identifiers (system and value), among
/// those `visible_to` may see (`None`: any).
pub fn find_by_identifiers(
    conn: &mut DbConn,
    ty: &str,
    resource: &serde_json::Value,
    visible_to: Option<&str>,
) -> Result<Option<StoredResource>, StoreError> {
    for ident in crate::fhir::items(resource, "identifier") {
        let (Some(system), Some(value)) = (
            ident.get("system").and_then(serde_json::Value::as_str),
            ident.get("value").and_then(serde_json::Value::as_str),
        ) else {
            continue;
        };
        let criteria = SearchQuery {
            resource_type: ty.to_string(),
            params: vec![("identifier".into(), vec![format!("{system}|{value}")])],
            visible_to: visible_to.map(str::to_string),
            count: 1,
            ..Default::default()
        };
        if let Some(found) = find(conn, &criteria)?.into_iter().next() {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The matches of a search, one page of them, without counting them all (for Signpost's own
/// lookups, which never need the total).
pub fn find(conn: &mut DbConn, q: &SearchQuery) -> Result<Vec<StoredResource>, StoreError> {
    if let Some(found) = find_by_one_value(conn, q) {
        return found;
    }
    let q = narrow(conn, q)?.unwrap_or_else(|| q.clone());
    page_of(conn, &q)
}

/// [`find`] for the lookups Signpost makes on every referral (a patient's Consents, a
/// referral's Tasks): one parameter with one value, optionally what one Organization may see,
/// first page by id. Typed statements on the backend's own connection, so each connection
/// prepares them once and finds them by type; `None` for any other search.
fn find_by_one_value(conn: &mut DbConn, q: &SearchQuery) -> Option<Result<Vec<StoredResource>, StoreError>> {
    let [(param, values)] = q.params.as_slice() else { return None };
    let [value] = values.as_slice() else { return None };
    if q.ids.is_some() || !q.last_updated.is_empty() || q.sort_desc.is_some() || q.offset != 0 {
        return None;
    }
    let matching = search_index::table
        .filter(search_index::resource_type.eq(&q.resource_type))
        .filter(search_index::param.eq(rows_of(&q.resource_type, param)))
        .filter(search_index::value.eq(value))
        .select(search_index::resource_id);
    let found =
        resources::table.filter(resources::resource_type.eq(&q.resource_type)).filter(resources::id.eq_any(matching));
    Some(
        match &q.visible_to {
            Some(org) => {
                let query = found
                    .filter(diesel::dsl::exists(
                        access_grants::table
                            .filter(access_grants::resource_type.eq(&q.resource_type))
                            .filter(access_grants::org_id.eq(org))
                            .filter(access_grants::resource_id.eq(resources::id)),
                    ))
                    .order(resources::id.asc())
                    .limit(q.count);
                super::on_backend!(conn, |c| query.load::<StoredResource>(c))
            }
            None => {
                let query = found.order(resources::id.asc()).limit(q.count);
                super::on_backend!(conn, |c| query.load::<StoredResource>(c))
            }
        }
        .map_err(StoreError::from),
    )
}

fn search_all(conn: &mut DbConn, q: &SearchQuery) -> Result<(i64, Vec<StoredResource>), StoreError> {
    if q.ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok((0, Vec::new()));
    }
    let page = page_of(conn, q)?;
    // A first page that is not full holds every match: no need to count them.
    if q.offset == 0 && (page.len() as i64) < q.count {
        return Ok((page.len() as i64, page));
    }
    let total: i64 = filtered(q).count().get_result(conn)?;
    Ok((total, page))
}

fn page_of(conn: &mut DbConn, q: &SearchQuery) -> Result<Vec<StoredResource>, StoreError> {
    if q.ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let mut page = filtered(q);
    page = match q.sort_desc {
        Some(true) => page.order((resources::last_updated.desc(), resources::id.desc())),
        Some(false) => page.order((resources::last_updated.asc(), resources::id.asc())),
        None => page.order(resources::id.asc()),
    };
    Ok(page.limit(q.count).offset(q.offset).load::<StoredResource>(conn)?)
}
