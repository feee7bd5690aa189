//! `signpost validate FILE|DIR|-`: the validator offline, with the same engine and the same
//! OperationOutcome a submission would get.

use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;

use crate::fhir::ValidationMode;
use crate::fhir::json::{Limits, parse};
use crate::fhir::outcome::{Issue, Severity, has_errors, operation_outcome};
use crate::fhir::profiles::Profiles;
use crate::fhir::referral_rules::Offline;
use crate::fhir::validator;

/// Validate every named input; prints a report and returns how many inputs had errors.
/// `ig` names files or folders of conformance resources (StructureDefinitions, ValueSets,
/// CodeSystems, an ImplementationGuide with global profiles, or Bundles of them) to validate
/// against as well.
pub fn run(paths: &[PathBuf], json: bool, referral_rules: bool, ig: &[PathBuf]) -> anyhow::Result<usize> {
    let extra: Vec<Value> = read_inputs(ig)?
        .into_iter()
        .map(|(name, bytes)| serde_json::from_slice::<Value>(&bytes).map_err(|e| anyhow::anyhow!("{name}: {e}")))
        .collect::<anyhow::Result<Vec<Value>>>()?
        .into_iter()
        .flat_map(|v| match v.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => {
                v["entry"].as_array().into_iter().flatten().filter_map(|e| e.get("resource").cloned()).collect()
            }
            _ => vec![v],
        })
        .collect();
    let profiles = Profiles::shared().with(extra).map_err(|e| anyhow::anyhow!("--ig: {e}"))?;
    let inputs = read_inputs(paths)?;
    let mut invalid = 0;
    for (name, bytes) in &inputs {
        let issues = validate_bytes(bytes, referral_rules, &profiles);
        if has_errors(&issues) {
            invalid += 1;
        }
        if json {
            println!("{}", serde_json::json!({ "file": name, "outcome": operation_outcome(&issues) }));
        } else {
            print_human(name, &issues);
        }
    }
    if !json {
        println!("{} of {} valid", inputs.len() - invalid, inputs.len());
    }
    Ok(invalid)
}

/// The bytes of each named file, of each `.json` file in a named folder, or of stdin (`-`).
fn read_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            inputs.push(("-".into(), buf));
        } else if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            for f in files {
                inputs.push((f.display().to_string(), std::fs::read(&f)?));
            }
        } else {
            inputs.push((
                p.display().to_string(),
                std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            ));
        }
    }
    Ok(inputs)
}

/// The issues of one JSON text: base R4 and the profiles the resource claims (or an
/// implementation guide makes global); with `referral_rules` (the default), also Signpost's
/// profile for the resource type and, for a ServiceRequest or Bundle, the referral business
/// rules as far as they can be checked offline (a Patient or Consent held by a server is
/// reported as not checked).
pub fn validate_bytes(bytes: &[u8], referral_rules: bool, profiles: &Profiles) -> Vec<Issue> {
    match parse(bytes, Limits { max_depth: 64, max_string_bytes: 16 << 20 }) {
        Ok(v) => {
            let mut issues = validator::validate(&v);
            let root = v.get("resourceType").and_then(serde_json::Value::as_str).unwrap_or("Resource");
            profiles.check(&v, root, referral_rules, &[], &mut issues);
            if referral_rules && !has_errors(&issues) {
                let Ok(()) =
                    crate::fhir::check_referral_rules(&v, root, ValidationMode::Enforce, &mut Offline, &mut issues);
            }
            issues
        }
        Err(issue) => vec![issue],
    }
}

fn print_human(name: &str, issues: &[Issue]) {
    let verdict = if has_errors(issues) { "INVALID" } else { "valid" };
    println!("{name}: {verdict}");
    for i in issues {
        let sev = match i.severity {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "info",
        };
        println!("  {sev:7} {:40} {} [{}]", i.expression.as_deref().unwrap_or("-"), i.diagnostics, i.code.code());
    }
}
