//! The directory: charity Organizations, HealthcareServices and Endpoints loaded at start-up
//! from a folder of FHIR JSON files (Bundles or single resources), or in sandbox mode from the
//! example directory embedded in the binary.
//!
//! Loading is idempotent: an entry whose content is unchanged keeps its version; a changed
//! one gets a new version. An invalid file stops start-up with its name and the issues.

use std::path::Path;

use serde_json::Value;

use crate::fhir::outcome::has_errors;
use crate::fhir::search::index_values;
use crate::fhir::{TypeClass, now_ms, stamp_meta, type_spec};
use crate::store::resources::{self, StoredResource};
use crate::store::{self, Pool};

/// Load every `*.json` under `dir` (the `directory.path` setting); returns how many resources
/// were created or changed.
pub fn load(pool: &Pool, dir: &Path) -> anyhow::Result<usize> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("directory.path: cannot read the folder {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        files.push((path.display().to_string(), text));
    }
    load_files(pool, &files)
}

/// Load directory files given as (name, JSON text); returns how many resources were created
/// or changed.
pub fn load_files(pool: &Pool, files: &[(String, String)]) -> anyhow::Result<usize> {
    let mut conn = pool.get()?;
    let mut changed = 0;
    for (file, text) in files {
        let value: Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let mut issues = Vec::new();
        let root = value.get("resourceType").and_then(Value::as_str).unwrap_or("Resource").to_string();
        // The full validation a write gets: base R4, Signpost's charity HealthcareService and
        // Endpoint profiles, then the JSON Schema.
        crate::fhir::validate_resource(&value, &root, &mut issues);
        if has_errors(&issues) {
            let list: Vec<String> = issues
                .iter()
                .map(|i| format!("{} {}", i.expression.clone().unwrap_or_default(), i.diagnostics))
                .collect();
            anyhow::bail!("{file} is not valid FHIR R4: {}", list.join("; "));
        }
        let resources: Vec<Value> = if root == "Bundle" {
            value
                .get("entry")
                .and_then(Value::as_array)
                .map(|es| es.iter().filter_map(|e| e.get("resource").cloned()).collect())
                .unwrap_or_default()
        } else {
            vec![value]
        };
        for resource in resources {
            let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            let Some(spec) = type_spec(ty).filter(|s| s.class == TypeClass::Directory) else {
                anyhow::bail!("{file}: only Organization, HealthcareService and Endpoint belong in the directory");
            };
            let Some(id) = resource.get("id").and_then(Value::as_str).map(str::to_string) else {
                anyhow::bail!("{file}: every directory resource needs an id");
            };
            let done = store::write_txn(&mut conn, |conn| -> anyhow::Result<bool> {
                let now = now_ms();
                let current = resources::get(conn, spec.name, &id)?;
                let version = match &current {
                    Some(c) => {
                        let mut old: Value = serde_json::from_str(&c.body)?;
                        if let Some(o) = old.as_object_mut() {
                            o.remove("meta");
                        }
                        let mut new = resource.clone();
                        if let Some(o) = new.as_object_mut() {
                            o.remove("meta");
                        }
                        if old == new {
                            return Ok(false);
                        }
                        c.version_id + 1
                    }
                    None => 1,
                };
                let mut body = resource.clone();
                stamp_meta(&mut body, version, now);
                let stored = StoredResource {
                    resource_type: spec.name.into(),
                    id: id.clone(),
                    version_id: version,
                    last_updated: now,
                    body: body.to_string(),
                };
                let index = index_values(spec, &body);
                match current {
                    Some(c) => {
                        resources::update_if_version(conn, &stored, c.version_id, &index)?;
                    }
                    None => resources::insert_new(conn, &stored, &index)?,
                }
                Ok(true)
            })?;
            if done {
                changed += 1;
            }
        }
    }
    Ok(changed)
}
