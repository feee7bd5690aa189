//! The directory: charity Organizations, HealthcareServices, the Locations they cover and their
//! Endpoints, loaded from FHIR JSON files (Bundles or single resources): at start-up from the
//! `directory.path` folder (or, in sandbox mode, the example directory embedded in the binary),
//! and by `signpost directory import DIR|FILE`.
//!
//! A load is all or nothing: every file is read and validated and every problem reported
//! together before anything is written; then everything is written in one transaction. It is
//! idempotent: an entry whose content is unchanged keeps its version, a changed one gets a new
//! version.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use crate::fhir::outcome::has_errors;
use crate::fhir::search::index_values;
use crate::fhir::{TypeClass, items, now_ms, reference_of, stamp_meta, type_spec};
use crate::store::resources::{self, StoredResource};
use crate::store::{self, Pool};

/// What a load changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// Every problem found in the files, one line each (`file: where: what`).
#[derive(Debug, thiserror::Error)]
#[error("the directory files have {} problem(s); nothing was written:\n{}", .0.len(), .0.join("\n"))]
pub struct Problems(pub Vec<String>);

/// Read a folder's `*.json` files (sorted by name), or one file.
pub fn read_files(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let paths: Vec<_> = if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("cannot read the folder {}: {e}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        })
        .collect()
}

/// Load every `*.json` under `dir` (the `directory.path` setting).
pub fn load(pool: &Pool, dir: &Path, allow_loopback: bool) -> anyhow::Result<Loaded> {
    load_files(pool, &read_files(dir)?, allow_loopback, Overwrite::Yes)
}

/// Whether a load replaces directory resources that already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// The files are the source of truth (`directory.path`, `signpost directory import`).
    Yes,
    /// Only missing resources are created: the sandbox's embedded example directory never undoes
    /// what an operator changed through the API.
    No,
}

/// Validate directory files given as (name, JSON text) and, when every one is valid, write them
/// all in one transaction.
/// `allow_loopback`: active Endpoints may have `http` and loopback addresses (tests, sandbox).
pub fn load_files(
    pool: &Pool,
    files: &[(String, String)],
    allow_loopback: bool,
    overwrite: Overwrite,
) -> anyhow::Result<Loaded> {
    let mut conn = pool.get()?;
    let resources = check(files, allow_loopback, &mut |ty, id| Ok(resources::get(&mut conn, ty, id)?.is_some()))?;
    store::write_txn(&mut conn, |conn| -> anyhow::Result<Loaded> {
        let mut loaded = Loaded::default();
        let now = now_ms();
        for resource in &resources {
            let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            let spec = type_spec(ty).expect("checked");
            let id = resource.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let current = resources::get(conn, spec.name, &id)?;
            let version = match &current {
                Some(_) if overwrite == Overwrite::No => {
                    loaded.unchanged += 1;
                    continue;
                }
                Some(c) => {
                    let mut old = c.json()?;
                    let mut new = resource.clone();
                    for v in [&mut old, &mut new] {
                        if let Some(o) = v.as_object_mut() {
                            o.remove("meta");
                        }
                    }
                    if old == new {
                        loaded.unchanged += 1;
                        continue;
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
                    if !resources::update_if_version(conn, &stored, c.version_id, &index, None, &body)? {
                        anyhow::bail!("{}/{id} changed while the directory was loading; load it again", spec.name);
                    }
                    loaded.updated += 1;
                }
                None => {
                    resources::insert_new(conn, &stored, &index, &body)?;
                    loaded.created += 1;
                }
            }
        }
        Ok(loaded)
    })
}

/// Parse and validate every file; the directory resources they hold, or every problem found.
/// `exists` says whether a directory resource is already stored (for references between
/// directory resources that the files do not hold themselves).
fn check(
    files: &[(String, String)],
    allow_loopback: bool,
    exists: &mut dyn FnMut(&str, &str) -> Result<bool, store::StoreError>,
) -> anyhow::Result<Vec<Value>> {
    let mut problems = Vec::new();
    let mut out: Vec<(String, Value)> = Vec::new();
    for (file, text) in files {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{file}: not JSON (line {}, column {})", e.line(), e.column()));
                continue;
            }
        };
        let root = value.get("resourceType").and_then(Value::as_str).unwrap_or("Resource").to_string();
        // The full validation a write gets: base R4, Signpost's profiles, the JSON Schema.
        let mut issues = Vec::new();
        crate::fhir::validate_resource(&value, &root, &mut issues);
        if has_errors(&issues) {
            for i in issues.iter().filter(|i| has_errors(std::slice::from_ref(*i))) {
                problems.push(format!(
                    "{file}: {}: {}",
                    i.expression.clone().unwrap_or_else(|| root.clone()),
                    i.diagnostics
                ));
            }
            continue;
        }
        let resources: Vec<(String, Value)> = if root == "Bundle" {
            items(&value, "entry")
                .enumerate()
                .filter_map(|(i, e)| e.get("resource").map(|r| (format!("Bundle.entry[{i}].resource"), r.clone())))
                .collect()
        } else {
            vec![(root.clone(), value)]
        };
        for (at, resource) in resources {
            let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            if !type_spec(ty).is_some_and(|s| s.class == TypeClass::Directory) {
                problems.push(format!(
                    "{file}: {at}: only Organization, HealthcareService, Location and Endpoint belong in the directory"
                ));
                continue;
            }
            if !resource.get("id").and_then(Value::as_str).is_some_and(crate::fhir::is_valid_id) {
                problems.push(format!("{file}: {at}: every directory resource needs an id"));
                continue;
            }
            if let Err(e) = super::write::check_endpoint_address(&resource, allow_loopback, &at) {
                for i in e.to_issues("") {
                    problems.push(format!("{file}: {}: {}", i.expression.unwrap_or_default(), i.diagnostics));
                }
                continue;
            }
            out.push((format!("{file}: {at}"), resource));
        }
    }
    let mut seen = HashSet::new();
    for (at, r) in &out {
        let key =
            format!("{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default());
        if !seen.insert(key.clone()) {
            problems.push(format!("{at}: {key} appears twice"));
        }
    }
    // References between directory resources must resolve, in the files or the directory.
    for (at, r) in &out {
        let refs = r
            .get("providedBy")
            .into_iter()
            .chain(r.get("managingOrganization"))
            .chain(items(r, "coverageArea"))
            .chain(items(r, "endpoint"))
            .chain(items(r, "location"));
        for reference in refs {
            if let Some((ty, id)) = reference_of(reference)
                && type_spec(ty).is_some_and(|s| s.class == TypeClass::Directory)
                && !seen.contains(&format!("{ty}/{id}"))
                && !exists(ty, id)?
            {
                problems
                    .push(format!("{at}: refers to {ty}/{id}, which is neither in these files nor in the directory"));
            }
        }
    }
    if problems.is_empty() { Ok(out.into_iter().map(|(_, r)| r).collect()) } else { Err(Problems(problems).into()) }
}
