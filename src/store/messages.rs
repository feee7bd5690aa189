//! Where a referral that came in as a BaRS-style message came from, so that its status changes
//! go back as response messages (the original Bundle id, the conversation's correlation id).

use diesel::prelude::*;

use super::schema::messages;
use super::{DbConn, StoreError};

#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = messages)]
pub struct MessageOrigin {
    pub service_request_id: String,
    pub bundle_id: String,
    pub correlation_id: String,
    pub source_endpoint: String,
    pub receiver_base: String,
    pub received_at: i64,
}

pub fn insert(conn: &mut DbConn, row: &MessageOrigin) -> Result<(), StoreError> {
    diesel::insert_into(messages::table).values(row).execute(conn)?;
    Ok(())
}

pub fn of(conn: &mut DbConn, service_request_id: &str) -> Result<Option<MessageOrigin>, StoreError> {
    Ok(messages::table.find(service_request_id).first(conn).optional()?)
}
