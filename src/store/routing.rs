//! Routing decisions and the directory as routing reads it.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::schema::{directory_version, open_tasks, resources, routing_decisions, task_queue};
use super::{DbConn, StoreError};
use crate::store::resources::StoredResource;

/// The directory resource types routing reads.
pub const DIRECTORY_TYPES: &[&str] = &["Organization", "HealthcareService", "Location"];

/// The directory's version: it moves whenever a directory resource is written, on any
/// instance sharing the database ([`note_directory_write`]). One row, however large the
/// directory.
pub fn directory_stamp(conn: &mut DbConn) -> Result<i64, StoreError> {
    let query = directory_version::table.find(1).select(directory_version::version);
    Ok(super::on_backend!(conn, |c| query.first(c))?)
}

/// Move the directory's version, in the transaction that writes a directory resource of type
/// `ty` (a no-op for other types). The new version is drawn at random, not counted on: a
/// version seen inside a transaction that was then rolled back (and cached by routing) never
/// comes back with another directory behind it.
pub fn note_directory_write(conn: &mut DbConn, ty: &str) -> Result<(), StoreError> {
    if DIRECTORY_TYPES.contains(&ty) {
        diesel::update(directory_version::table.find(1))
            .set(directory_version::version.eq(rand::random::<i64>()))
            .execute(conn)?;
    }
    Ok(())
}

/// Every directory resource routing reads.
pub fn directory_resources(conn: &mut DbConn) -> Result<Vec<StoredResource>, StoreError> {
    Ok(resources::table.filter(resources::resource_type.eq_any(DIRECTORY_TYPES)).load(conn)?)
}

/// Open referrals (Tasks requested, accepted, in progress or on hold) per owner Organization id,
/// as every Task write keeps them (`open_tasks`, see [`note_task_change`]).
pub fn open_referrals(conn: &mut DbConn) -> Result<HashMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> = open_tasks::table.select((open_tasks::org_id, open_tasks::open)).load(conn)?;
    Ok(rows.into_iter().filter(|(_, n)| *n > 0).collect())
}

fn open_owner(task: &serde_json::Value) -> Option<String> {
    let status = task.get("status").and_then(serde_json::Value::as_str)?;
    if !matches!(status, "requested" | "accepted" | "in-progress" | "on-hold") {
        return None;
    }
    match task.get("owner").and_then(crate::fhir::reference_of) {
        Some(("Organization", org)) => Some(org.to_string()),
        _ => None,
    }
}

/// Keep `open_tasks` right for a Task going from `old` (none when new) to `new`.
pub fn note_task_change(
    conn: &mut DbConn,
    old: Option<&serde_json::Value>,
    new: &serde_json::Value,
) -> Result<(), StoreError> {
    let (was, is) = (old.and_then(open_owner), open_owner(new));
    if was == is {
        return Ok(());
    }
    if let Some(org) = was {
        super::changes::count_open(conn, &org, -1)?;
    }
    if let Some(org) = is {
        super::changes::count_open(conn, &org, 1)?;
    }
    Ok(())
}

/// Keep `task_queue` right for a stored Task version: its owner Organization, status and
/// lastUpdated (no row when it has no Organization owner). `first`: the Task's first version,
/// which has no row yet.
pub fn note_task_queue(
    conn: &mut DbConn,
    id: &str,
    task: &serde_json::Value,
    last_updated: i64,
    first: bool,
) -> Result<(), StoreError> {
    use diesel::upsert::excluded;
    let owner = match task.get("owner").and_then(crate::fhir::reference_of) {
        Some(("Organization", org)) => org.to_string(),
        _ => {
            diesel::delete(task_queue::table.find(id)).execute(conn)?;
            return Ok(());
        }
    };
    let status = task.get("status").and_then(serde_json::Value::as_str).unwrap_or_default();
    let row = (
        task_queue::task_id.eq(id),
        task_queue::owner_org.eq(&owner),
        task_queue::status.eq(status),
        task_queue::last_updated.eq(last_updated),
    );
    match conn {
        // The one writer. A first version's row is new: one insert, which diesel keeps prepared
        // (it prepares an update or an upsert again for every call). Otherwise (or if a row was
        // left by an earlier release) an update, else an insert.
        DbConn::Sqlite(c) => {
            if first {
                match diesel::insert_into(task_queue::table).values(row).execute(c) {
                    Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {}
                    done => {
                        done?;
                        return Ok(());
                    }
                }
            }
            let changed = diesel::update(task_queue::table.find(id))
                .set((
                    task_queue::owner_org.eq(&owner),
                    task_queue::status.eq(status),
                    task_queue::last_updated.eq(last_updated),
                ))
                .execute(c)?;
            if changed == 0 {
                diesel::insert_into(task_queue::table).values(row).execute(c)?;
            }
        }
        DbConn::Pg(c) => {
            diesel::insert_into(task_queue::table)
                .values(row)
                .on_conflict(task_queue::task_id)
                .do_update()
                .set((
                    task_queue::owner_org.eq(excluded(task_queue::owner_org)),
                    task_queue::status.eq(excluded(task_queue::status)),
                    task_queue::last_updated.eq(excluded(task_queue::last_updated)),
                ))
                .execute(c)?;
        }
    }
    Ok(())
}

/// Add `delta` to an Organization's open Tasks.
pub(super) fn add_open(conn: &mut DbConn, org: &str, delta: i64) -> Result<(), StoreError> {
    use diesel::upsert::excluded;
    let row = (open_tasks::org_id.eq(org), open_tasks::open.eq(delta));
    match conn {
        // As in `note_task_queue`: the one writer updates, else inserts.
        DbConn::Sqlite(c) => {
            super::increment!(AddOpen: "open_tasks", "open", "org_id": str as diesel::sql_types::Text);
            let changed = AddOpen { key: org, delta }.execute(c)?;
            if changed == 0 {
                diesel::insert_into(open_tasks::table).values(row).execute(c)?;
            }
        }
        DbConn::Pg(c) => {
            diesel::insert_into(open_tasks::table)
                .values(row)
                .on_conflict(open_tasks::org_id)
                .do_update()
                .set(open_tasks::open.eq(open_tasks::open + excluded(open_tasks::open)))
                .execute(c)?;
        }
    }
    Ok(())
}

/// A stored decision.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = routing_decisions)]
pub struct DecisionRow {
    pub service_request_id: String,
    pub sender_org: String,
    pub decided_at: i64,
    pub unmatched: i32,
    pub explanation: String,
}

/// Store the decision for a referral.
pub fn insert(conn: &mut DbConn, row: &DecisionRow) -> Result<(), StoreError> {
    let insert = diesel::insert_into(routing_decisions::table).values(row);
    super::on_backend!(conn, |c| insert.execute(c))?;
    Ok(())
}

/// The decision for a referral.
pub fn get(conn: &mut DbConn, service_request_id: &str) -> Result<Option<DecisionRow>, StoreError> {
    Ok(routing_decisions::table
        .filter(routing_decisions::service_request_id.eq(service_request_id))
        .first(conn)
        .optional()?)
}

/// The referrals with needs no service fits, newest first.
pub fn unmatched(conn: &mut DbConn, limit: i64) -> Result<Vec<DecisionRow>, StoreError> {
    Ok(routing_decisions::table
        .filter(routing_decisions::unmatched.gt(0))
        .order((routing_decisions::decided_at.desc(), routing_decisions::service_request_id.asc()))
        .limit(limit)
        .load(conn)?)
}

#[cfg(test)]
mod tests {
    /// Routing caches the directory by its version: a version seen inside a transaction that
    /// rolled back must not come back for another directory.
    #[test]
    fn a_rolled_back_directory_version_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::store::connect(&format!("sqlite://{}", dir.path().join("d.db").display()), 2).unwrap();
        crate::store::migrate(&pool).unwrap();
        let mut conn = pool.get().unwrap();
        let before = super::directory_stamp(&mut conn).unwrap();
        let mut seen = 0;
        let refused = crate::store::write_txn::<(), crate::store::StoreError>(&mut conn, |c| {
            super::note_directory_write(c, "HealthcareService")?;
            seen = super::directory_stamp(c)?;
            Err(crate::store::StoreError::Unique)
        });
        assert!(refused.is_err());
        assert_ne!(seen, before, "a directory write moves the version");
        assert_eq!(super::directory_stamp(&mut conn).unwrap(), before, "the rolled-back move is gone");
        crate::store::write_txn::<(), crate::store::StoreError>(&mut conn, |c| {
            super::note_directory_write(c, "Organization")
        })
        .unwrap();
        let after = super::directory_stamp(&mut conn).unwrap();
        assert!(after != before && after != seen, "the next directory write took a version already seen");
        // Other types leave it alone.
        crate::store::write_txn::<(), crate::store::StoreError>(&mut conn, |c| super::note_directory_write(c, "Task"))
            .unwrap();
        assert_eq!(super::directory_stamp(&mut conn).unwrap(), after);
    }
}
