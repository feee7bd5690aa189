//! Seed a Signpost database with Tasks for the polling benchmark (`bench/load.py poll`), through
//! Signpost's own store functions (resource, version, search rows, change log, owner grant), a
//! thousand per transaction — far faster than the API, and stored exactly as the API stores.
//!
//!     cargo run --release --example seed -- DATABASE_URL TASKS CHARITIES

use serde_json::json;
use signpost::fhir::{search::index_values, stamp_meta, type_spec};
use signpost::store::resources::{self, Grant, StoredResource};
use signpost::store::{self, StoreError};

fn main() -> Result<(), StoreError> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("DATABASE_URL");
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let charities: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(50);
    let pool = store::connect(url, 2)?;
    store::migrate(&pool)?;
    let mut conn = pool.get()?;
    let spec = type_spec("Task").expect("Task");
    let start = signpost::fhir::now_ms() - n as i64 * 10;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        store::write_txn(&mut conn, |conn| {
            for i in chunk {
                let org = format!("bench-charity-{:02}", i % charities);
                let id = uuid::Uuid::new_v4().to_string();
                let status = if i % 4 == 0 { "requested" } else { "accepted" };
                let mut task = json!({
                    "resourceType": "Task", "id": id, "status": status, "intent": "order",
                    "focus": { "reference": "ServiceRequest/bench" },
                    "basedOn": [{ "reference": "ServiceRequest/bench" }],
                    "for": { "reference": "Patient/bench" },
                    "owner": { "reference": format!("Organization/{org}") }
                });
                let at = start + *i as i64 * 10;
                stamp_meta(&mut task, 1, at);
                let stored = StoredResource {
                    resource_type: "Task".into(),
                    id: id.clone(),
                    version_id: 1,
                    last_updated: at,
                    body: task.to_string(),
                };
                resources::insert_new(conn, &stored, &index_values(spec, &task), &task)?;
                let grant = Grant { resource_type: "Task".into(), resource_id: id.clone(), org_id: org };
                resources::replace_grants(conn, &format!("task:{id}"), &[grant])?;
            }
            Ok::<(), StoreError>(())
        })?;
    }
    println!("seeded {n} Tasks over {charities} charities");
    Ok(())
}
