//! The change log (PRODUCT.md §5, gap-free polling): every stored resource version gets the next
//! number of one sequence, in commit order, in the writer's own transaction.
//!
//! The rule that makes a cursor safe: the number comes from incrementing a single counter row
//! inside the write transaction. On PostgreSQL that row stays locked until the transaction ends,
//! so a writer can only take number n + 1 after the holder of n has committed or rolled back; on
//! SQLite every write transaction holds the database write lock. A reader that asks for
//! `seq > cursor` therefore never sees n + 1 before n, and never skips a change that commits late.
//! (A plain PostgreSQL sequence would not do: its numbers are handed out at insert time, not in
//! commit order.) To keep that serialised stretch short, a write transaction ([`super::write_txn`])
//! collects its changes and numbers them all just before it commits ([`record`], [`flush`]):
//! writers on PostgreSQL overlap for everything else they do.

use diesel::dsl::exists;
use diesel::prelude::*;

use super::schema::{access_grants, change_counter, change_log};
use super::{DbConn, StoreError};

/// One entry of the change log.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = change_log)]
pub struct Change {
    pub seq: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    pub changed_at: i64,
}

/// What a write transaction does last: the changes waiting for their numbers (type, id,
/// version, time), and the open-Task counts to adjust (Organization, delta).
#[derive(Default)]
struct Pending {
    changes: Vec<(String, String, i64, i64)>,
    open: Vec<(String, i64)>,
}

thread_local! {
    /// The changes of the write transaction running on this thread, numbered at its end.
    static PENDING: std::cell::RefCell<Option<Pending>> = const { std::cell::RefCell::new(None) };
}

/// Start collecting this thread's changes (the outermost write transaction); `false` when a
/// transaction already collects them.
pub(super) fn begin_collecting() -> bool {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_some() {
            return false;
        }
        *p = Some(Pending::default());
        true
    })
}

/// Number and write the collected changes (just before commit), and stop collecting.
pub(super) fn flush(conn: &mut DbConn) -> Result<(), StoreError> {
    let pending = PENDING.with(|p| p.borrow_mut().take()).unwrap_or_default();
    if !pending.changes.is_empty() {
        append_all(conn, pending.changes)?;
    }
    // Per Organization, one update (its row is then locked only until the commit that follows).
    let mut open: Vec<(String, i64)> = Vec::new();
    for (org, delta) in pending.open {
        match open.iter_mut().find(|(o, _)| *o == org) {
            Some((_, d)) => *d += delta,
            None => open.push((org, delta)),
        }
    }
    open.sort();
    for (org, delta) in open.into_iter().filter(|(_, d)| *d != 0) {
        super::routing::add_open(conn, &org, delta)?;
    }
    Ok(())
}

/// How many changes and open-Task adjustments are collected so far (for [`rewind`]).
pub(super) fn mark() -> (usize, usize) {
    PENDING.with(|p| p.borrow().as_ref().map_or((0, 0), |p| (p.changes.len(), p.open.len())))
}

/// Forget what was collected after `mark` (a savepoint rolled back).
pub(super) fn rewind(mark: (usize, usize)) {
    PENDING.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p.changes.truncate(mark.0);
            p.open.truncate(mark.1);
        }
    });
}

/// Drop the collected changes (the transaction rolled back).
pub(super) fn discard() {
    PENDING.with(|p| p.borrow_mut().take());
}

/// Record that `ty/id` now has `version`: collected for the end of the running write
/// transaction, or appended at once outside one.
pub fn record(conn: &mut DbConn, ty: &str, id: &str, version: i64, at: i64) -> Result<(), StoreError> {
    let collected = PENDING.with(|p| match p.borrow_mut().as_mut() {
        Some(pending) => {
            pending.changes.push((ty.to_string(), id.to_string(), version, at));
            true
        }
        None => false,
    });
    if !collected {
        append(conn, ty, id, version, at)?;
    }
    Ok(())
}

/// Adjust an Organization's open-Task count: at the end of the running write transaction, or
/// at once outside one.
pub(super) fn count_open(conn: &mut DbConn, org: &str, delta: i64) -> Result<(), StoreError> {
    let collected = PENDING.with(|p| match p.borrow_mut().as_mut() {
        Some(pending) => {
            pending.open.push((org.to_string(), delta));
            true
        }
        None => false,
    });
    if !collected {
        super::routing::add_open(conn, org, delta)?;
    }
    Ok(())
}

/// Record that `ty/id` now has `version`; returns its sequence number. Call inside the write
/// transaction that stored the version.
pub fn append(conn: &mut DbConn, ty: &str, id: &str, version: i64, at: i64) -> Result<i64, StoreError> {
    append_all(conn, vec![(ty.to_string(), id.to_string(), version, at)])
}

/// Number a transaction's changes (type, id, version, time; at least one) in order: the
/// counter moves once by their number and they are written together. Returns the last number.
fn append_all(conn: &mut DbConn, changes: Vec<(String, String, i64, i64)>) -> Result<i64, StoreError> {
    let n = changes.len() as i64;
    let counter = change_counter::table.filter(change_counter::id.eq(1));
    let take = diesel::update(counter).set(change_counter::last_seq.eq(change_counter::last_seq + n));
    let last: i64 = match conn {
        // One round trip while the counter row is locked.
        DbConn::Pg(c) => take.returning(change_counter::last_seq).get_result(c)?,
        DbConn::Sqlite(c) => {
            super::increment!(TakeNumbers: "change_counter", "last_seq", "id": i32 as diesel::sql_types::Integer);
            TakeNumbers { key: &1, delta: n }.execute(c)?;
            counter.select(change_counter::last_seq).first(c)?
        }
    };
    let rows: Vec<Change> = changes
        .into_iter()
        .zip(last - n + 1..)
        .map(|((resource_type, resource_id, version_id, changed_at), seq)| Change {
            seq,
            resource_type,
            resource_id,
            version_id,
            changed_at,
        })
        .collect();
    // In chunks that keep within both databases' limits on bound parameters (a large
    // directory import).
    for chunk in rows.chunks(1000) {
        super::insert_rows!(&mut *conn, change_log::table, chunk);
    }
    Ok(last)
}

/// The most changes one page of the feed reads, whatever it shows of them: a client that may
/// see few of the changes after its cursor (a quiet charity among busy ones) gets a short page,
/// or an empty one, and a cursor past the rest, instead of a read of every change since.
pub const PAGE_READS: i64 = 500;

/// One page of the change feed: the changes shown, and the cursor to ask from next.
#[derive(Debug)]
pub struct Page {
    pub changes: Vec<Change>,
    pub next: i64,
}

/// Up to `limit` changes after `cursor`, in order, from at most `reads` changes. With
/// `visible_to`, only changes to directory resources (`public_types`) and to resources that
/// Organization may see now. `next` is past every change read that was not shown, and equals
/// `cursor` only when nothing was written after it.
pub fn page(
    conn: &mut DbConn,
    cursor: i64,
    limit: i64,
    visible_to: Option<&str>,
    public_types: &[&str],
    reads: i64,
) -> Result<Page, StoreError> {
    // The last change this page reads: the `reads`-th after the cursor, or else the newest. It
    // is read first and it has committed, so every change up to it has too (numbers become
    // visible in order): the page may move the cursor up to it.
    let after = || change_log::table.filter(change_log::seq.gt(cursor)).select(change_log::seq);
    let end = match after().order(change_log::seq.asc()).offset(reads - 1).first::<i64>(conn).optional()? {
        Some(end) => end,
        None => after().select(diesel::dsl::max(change_log::seq)).first::<Option<i64>>(conn)?.unwrap_or(cursor),
    };
    let mut q = change_log::table
        .filter(change_log::seq.gt(cursor))
        .filter(change_log::seq.le(end))
        .into_boxed::<super::Backend>();
    if let Some(org) = visible_to {
        let granted = exists(
            access_grants::table
                .filter(access_grants::resource_type.eq(change_log::resource_type))
                .filter(access_grants::resource_id.eq(change_log::resource_id))
                .filter(access_grants::org_id.eq(org.to_string())),
        );
        q = q.filter(
            change_log::resource_type
                .eq_any(public_types.iter().map(|t| t.to_string()).collect::<Vec<_>>())
                .or(granted),
        );
    }
    let changes: Vec<Change> = q.order(change_log::seq.asc()).limit(limit).load(conn)?;
    // A full page may leave visible changes unshown before `end`.
    let next = match changes.last() {
        Some(last) if changes.len() as i64 == limit => last.seq,
        _ => end,
    };
    Ok(Page { changes, next })
}

/// Whether a resource of a type other than `except` changed after `seq`: committed since, or
/// written earlier in the transaction running on `conn`.
pub fn others_since(conn: &mut DbConn, seq: i64, except: [&str; 2]) -> Result<bool, StoreError> {
    let query = change_log::table
        .filter(change_log::seq.gt(seq))
        .filter(change_log::resource_type.ne(except[0]))
        .filter(change_log::resource_type.ne(except[1]))
        .select(change_log::seq);
    let found: Option<i64> = super::on_backend!(conn, |c| query.first(c).optional())?;
    Ok(found.is_some())
}

/// The newest sequence number (0 when nothing was ever written).
pub fn last(conn: &mut DbConn) -> Result<i64, StoreError> {
    let query = change_counter::table.filter(change_counter::id.eq(1)).select(change_counter::last_seq);
    Ok(super::on_backend!(conn, |c| query.first(c))?)
}
