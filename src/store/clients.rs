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
pub fn upsert_by_name(conn: &mut DbConn, row: &ClientRow) -> Result<(), StoreError> {
    super::write_txn(conn, |conn| {
        diesel::delete(api_clients::table.filter(api_clients::name.eq(&row.name))).execute(conn)?;
        diesel::delete(api_clients::table.filter(api_clients::key_hash.eq(&row.key_hash))).execute(conn)?;
        insert(conn, row)
    })
}
