//! `signpost validate FILE|DIR|-`: the validator offline, with the same engine and the same
//! OperationOutcome a submission would get.

use std::collections::BTreeMap;
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
    let mut by_code: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for (name, bytes) in &inputs {
        let issues = validate_bytes(bytes, referral_rules, &profiles);
        if has_errors(&issues) {
            invalid += 1;
        }
        tally(&issues, &mut by_code);
        if json {
            println!("{}", serde_json::json!({ "file": name, "outcome": operation_outcome(&issues) }));
        } else {
            print_human(name, &issues);
        }
    }
    if !json {
        if inputs.len() > 1 {
            print!("{}", summary_table(&by_code));
        }
        println!("{} of {} valid", inputs.len() - invalid, inputs.len());
    }
    Ok(invalid)
}

/// Per issue code: the files it made invalid, and its errors and warnings over all files.
#[derive(Default, Debug, PartialEq, Eq)]
struct Tally {
    files_invalid: usize,
    errors: usize,
    warnings: usize,
}

fn tally(issues: &[Issue], by_code: &mut BTreeMap<&'static str, Tally>) {
    let mut seen_error: Vec<&'static str> = Vec::new();
    for i in issues {
        let t = by_code.entry(i.code.code()).or_default();
        match i.severity {
            Severity::Fatal | Severity::Error => {
                t.errors += 1;
                if !seen_error.contains(&i.code.code()) {
                    seen_error.push(i.code.code());
                    t.files_invalid += 1;
                }
            }
            Severity::Warning => t.warnings += 1,
            Severity::Information => {}
        }
    }
    by_code.retain(|_, t| t.errors + t.warnings > 0);
}

/// The summary over a sender's files: which issue codes made how many files invalid.
fn summary_table(by_code: &BTreeMap<&'static str, Tally>) -> String {
    let mut out = String::from("\nissue code                       files invalid  errors  warnings\n");
    let mut rows: Vec<(&&str, &Tally)> = by_code.iter().collect();
    rows.sort_by(|a, b| {
        b.1.files_invalid.cmp(&a.1.files_invalid).then(b.1.warnings.cmp(&a.1.warnings)).then(a.0.cmp(b.0))
    });
    for (code, t) in rows {
        out.push_str(&format!("{code:<32} {:>13}  {:>6}  {:>8}\n", t.files_invalid, t.errors, t.warnings));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::outcome::IssueCode;

    #[test]
    fn the_summary_counts_files_made_invalid_by_each_code() {
        let mut by_code = BTreeMap::new();
        let file_a = vec![
            Issue::error(IssueCode::Cardinality, "x"),
            Issue::error(IssueCode::Cardinality, "y"),
            Issue::warning(IssueCode::CodeNotInValueSet, "z"),
        ];
        let file_b = vec![Issue::error(IssueCode::Cardinality, "x"), Issue::error(IssueCode::ConsentMissing, "c")];
        tally(&file_a, &mut by_code);
        tally(&file_b, &mut by_code);
        assert_eq!(by_code["cardinality"], Tally { files_invalid: 2, errors: 3, warnings: 0 });
        assert_eq!(by_code["consent-missing"], Tally { files_invalid: 1, errors: 1, warnings: 0 });
        assert_eq!(by_code["code-not-in-value-set"], Tally { files_invalid: 0, errors: 0, warnings: 1 });
        let table = summary_table(&by_code);
        let lines: Vec<&str> = table.lines().filter(|l| !l.is_empty()).collect();
        assert!(lines[1].starts_with("cardinality") && lines[2].starts_with("consent-missing"), "{table}");
    }
}
