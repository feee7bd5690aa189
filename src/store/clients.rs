//! Registered API clients. Only the SHA-256 of each key is stored.

use diesel::prelude::*;

use super::schema::api_clients;
use super::{DbConn, StoreError};

/// A registered client.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = api_clients)]
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub organization_id: String,
    pub key_hash: String,
    pub created_at: i64,
}

/// Look a client up by the hash of the key it presented.
pub fn find_by_key_hash(conn: &mut DbConn, hash: &str) -> Result<Option<ClientRow>, StoreError> {
    Ok(api_clients::table.filter(api_clients::key_hash.eq(hash)).first(conn).optional()?)
}

/// Register a new client; [`StoreError::Unique`] if the name or key is taken.
pub fn insert(conn: &mut DbConn, row: &ClientRow) -> Result<(), StoreError> {
    diesel::insert_into(api_clients::table).values(row).execute(conn)?;
    Ok(())
}

/// Create or replace the client of this name (used for clients declared in the config file).
pub fn upsert_by_name(conn: &mut super::PooledConn, row: &ClientRow) -> Result<(), StoreError> {
    super::write_txn(conn, |conn| {
        diesel::delete(api_clients::table.filter(api_clients::name.eq(&row.name))).execute(conn)?;
        diesel::delete(api_clients::table.filter(api_clients::key_hash.eq(&row.key_hash))).execute(conn)?;
        insert(conn, row)
    })
}

/// Every registered client, by name.
pub fn list(conn: &mut DbConn) -> Result<Vec<ClientRow>, StoreError> {
    Ok(api_clients::table.order(api_clients::name.asc()).load(conn)?)
}

/// Remove the client of this name; `false` if there is none.
pub fn revoke(conn: &mut DbConn, name: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(api_clients::table.filter(api_clients::name.eq(name))).execute(conn)? > 0)
}

/// Change the role of the client of this name; `false` if there is none.
pub fn set_role(conn: &mut DbConn, name: &str, role: &str) -> Result<bool, StoreError> {
    Ok(diesel::update(api_clients::table.filter(api_clients::name.eq(name)))
        .set(api_clients::role.eq(role))
        .execute(conn)?
        > 0)
}

/// Remove the clients whose id starts with `prefix` and whose name is not in `keep` (clients
/// dropped from the configuration, or sandbox clients outside sandbox mode). Returns how many.
pub fn remove_stale(conn: &mut DbConn, prefix: &str, keep: &[&str]) -> Result<usize, StoreError> {
    let pattern = format!("{}%", prefix.replace('%', "\\%").replace('_', "\\_"));
    Ok(diesel::delete(
        api_clients::table.filter(api_clients::id.like(pattern).escape('\\')).filter(api_clients::name.ne_all(keep)),
    )
    .execute(conn)?)
}
