//! Provenance of referral changes (PRODUCT.md §6): recorded with every stored version of a
//! referral resource, rendered as FHIR R4 Provenance.

use serde_json::{Value, json};

use super::flow::Author;
use crate::fhir::{TypeClass, instant, type_spec};
use crate::store::provenance::{self, ProvenanceRow};
use crate::store::resources::StoredResource;
use crate::store::{DbConn, StoreError};

/// The extension carrying the request's `X-Correlation-Id`.
pub const CORRELATION_EXTENSION: &str = "https://signpost.example/fhir/StructureDefinition/correlation-id";

/// Record who wrote `stored` (referral resources only; the directory has its own history).
pub fn record(conn: &mut DbConn, stored: &StoredResource, author: &Author, activity: &str) -> Result<(), StoreError> {
    record_all(conn, &[stored], author, activity)
}

/// [`record`] for versions written together, in one insert.
pub fn record_all(
    conn: &mut DbConn,
    stored: &[&StoredResource],
    author: &Author,
    activity: &str,
) -> Result<(), StoreError> {
    let rows: Vec<ProvenanceRow> = stored
        .iter()
        .filter(|s| type_spec(&s.resource_type).map(|s| s.class) == Some(TypeClass::Referral))
        .map(|s| ProvenanceRow {
            id: crate::store::new_id(),
            target_type: s.resource_type.clone(),
            target_id: s.id.clone(),
            target_version: s.version_id,
            recorded: s.last_updated,
            client: author.client.clone(),
            org: author.org.clone(),
            role: author.role.to_string(),
            activity: activity.to_string(),
            correlation_id: author.correlation_id.clone(),
            reason: author.reason.clone(),
        })
        .collect();
    provenance::insert(conn, &rows)
}

/// A row as a FHIR Provenance.
pub fn resource(row: &ProvenanceRow) -> Value {
    let mut agent = json!({
        "type": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            "code": "author", "display": "Author" }] },
        "role": [{ "text": row.role }],
        "who": { "display": if row.role == "signpost" { "Signpost".to_string() } else { format!("API client {}", row.client) } },
    });
    if let Some(org) = &row.org {
        agent["onBehalfOf"] = json!({ "reference": format!("Organization/{org}") });
    }
    let mut p = json!({
        "resourceType": "Provenance",
        "id": row.id,
        "target": [{ "reference": format!("{}/{}/_history/{}", row.target_type, row.target_id, row.target_version) }],
        "recorded": instant(row.recorded),
        "activity": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "code": row.activity,
            "display": if row.activity == "CREATE" { "create" } else { "revise" } }] },
        "agent": [agent],
    });
    if !row.correlation_id.is_empty() {
        p["extension"] = json!([{ "url": CORRELATION_EXTENSION, "valueString": row.correlation_id }]);
    }
    if let Some(reason) = &row.reason {
        p["reason"] = json!([{ "text": reason }]);
    }
    p
}
