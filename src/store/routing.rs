//! Routing decisions and the directory as routing reads it.

use std::collections::HashMap;

use diesel::dsl::{count_star, max};
use diesel::prelude::*;

use super::schema::{resources, routing_decisions, search_index};
use super::{DbConn, StoreError};
use crate::store::resources::StoredResource;

/// The directory resource types routing reads.
pub const DIRECTORY_TYPES: &[&str] = &["Organization", "HealthcareService", "Location"];

/// A cheap fingerprint of the directory: it changes whenever a directory resource is created
/// (the count) or updated (the newest write time), on any instance sharing the database.
pub fn directory_stamp(conn: &mut DbConn) -> Result<(i64, Option<i64>), StoreError> {
    Ok(resources::table
        .filter(resources::resource_type.eq_any(DIRECTORY_TYPES))
        .select((count_star(), max(resources::last_updated)))
        .first(conn)?)
}

/// Every directory resource routing reads.
pub fn directory_resources(conn: &mut DbConn) -> Result<Vec<StoredResource>, StoreError> {
    Ok(resources::table.filter(resources::resource_type.eq_any(DIRECTORY_TYPES)).load(conn)?)
}

/// Open referrals (Tasks requested, accepted, in progress or on hold) per owner Organization id.
pub fn open_referrals(conn: &mut DbConn) -> Result<HashMap<String, i64>, StoreError> {
    let status = diesel::alias!(search_index as status);
    let open = status
        .filter(status.field(search_index::resource_type).eq("Task"))
        .filter(status.field(search_index::param).eq("status"))
        .filter(status.field(search_index::value).eq_any(["requested", "accepted", "in-progress", "on-hold"]))
        .select(status.field(search_index::resource_id));
    let rows: Vec<(String, i64)> = search_index::table
        .filter(search_index::resource_type.eq("Task"))
        .filter(search_index::param.eq("owner"))
        .filter(search_index::value.like("Organization/%"))
        .filter(search_index::resource_id.eq_any(open))
        .group_by(search_index::value)
        .select((search_index::value, count_star()))
        .load(conn)?;
    Ok(rows.into_iter().map(|(v, n)| (v.trim_start_matches("Organization/").to_string(), n)).collect())
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
    diesel::insert_into(routing_decisions::table).values(row).execute(conn)?;
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
