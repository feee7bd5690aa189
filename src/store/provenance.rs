//! Provenance rows: one per stored version of a referral resource (who, for which Organization,
//! when, which version, correlation id). The gateway renders them as FHIR Provenance.

use diesel::prelude::*;

use super::schema::provenance;
use super::{DbConn, StoreError};

/// One Provenance row.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = provenance)]
pub struct ProvenanceRow {
    pub id: String,
    pub target_type: String,
    pub target_id: String,
    pub target_version: i64,
    pub recorded: i64,
    pub client: String,
    pub org: Option<String>,
    pub role: String,
    pub activity: String,
    pub correlation_id: String,
    pub reason: Option<String>,
}

/// Write rows (one insert).
pub fn insert(conn: &mut DbConn, rows: &[ProvenanceRow]) -> Result<(), StoreError> {
    super::insert_rows!(conn, provenance::table, rows);
    Ok(())
}

/// Every row for one resource, in version order.
pub fn of(conn: &mut DbConn, ty: &str, id: &str) -> Result<Vec<ProvenanceRow>, StoreError> {
    Ok(provenance::table
        .filter(provenance::target_type.eq(ty))
        .filter(provenance::target_id.eq(id))
        .order((provenance::target_version.asc(), provenance::recorded.asc()))
        .load(conn)?)
}
