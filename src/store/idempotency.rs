//! Idempotency keys (`X-Request-Id`, `Idempotency-Key`), scoped per client.
//!
//! The key row is inserted as the first write of the request's own transaction; the primary
//! key makes a concurrent duplicate fail (SQLite: it waits for the write lock, then sees the
//! row; PostgreSQL: its insert waits on the index, then fails), never check-then-insert.

use diesel::prelude::*;

use super::schema::idempotency_keys;
use super::{DbConn, StoreError};

/// The stored outcome of a finished request.
#[derive(Debug, Clone, Queryable)]
pub struct StoredResponse {
    pub request_hash: String,
    pub status: i32,
    /// JSON object of the response headers to replay.
    pub headers: String,
    pub body: String,
}

/// Claim the key for this request; [`StoreError::Unique`] if it was used before.
pub fn claim(conn: &mut DbConn, client_id: &str, key: &str, hash: &str, now_ms: i64) -> Result<(), StoreError> {
    diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::client_id.eq(client_id),
            idempotency_keys::request_key.eq(key),
            idempotency_keys::request_hash.eq(hash),
            idempotency_keys::response_status.eq(0),
            idempotency_keys::response_headers.eq("{}"),
            idempotency_keys::response_body.eq(""),
            idempotency_keys::created_at.eq(now_ms),
        ))
        .execute(conn)?;
    Ok(())
}

/// Record the response, in the same transaction as the claim.
pub fn finish(
    conn: &mut DbConn,
    client_id: &str,
    key: &str,
    status: i32,
    headers: &str,
    body: &str,
) -> Result<(), StoreError> {
    diesel::update(
        idempotency_keys::table
            .filter(idempotency_keys::client_id.eq(client_id))
            .filter(idempotency_keys::request_key.eq(key)),
    )
    .set((
        idempotency_keys::response_status.eq(status),
        idempotency_keys::response_headers.eq(headers),
        idempotency_keys::response_body.eq(body),
    ))
    .execute(conn)?;
    Ok(())
}

/// The stored response for a key, if any.
pub fn find(conn: &mut DbConn, client_id: &str, key: &str) -> Result<Option<StoredResponse>, StoreError> {
    Ok(idempotency_keys::table
        .filter(idempotency_keys::client_id.eq(client_id))
        .filter(idempotency_keys::request_key.eq(key))
        .select((
            idempotency_keys::request_hash,
            idempotency_keys::response_status,
            idempotency_keys::response_headers,
            idempotency_keys::response_body,
        ))
        .first(conn)
        .optional()?)
}
