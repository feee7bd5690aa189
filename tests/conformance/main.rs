//! Validation conformance: Signpost's validator against the HL7 Java reference validator's
//! outcomes (`tests/fixtures/fhir-test-cases/`) and the official R4 examples.
//!
//! Every case not listed in `known-disagreements.txt` must reach the Java verdict (valid or
//! invalid), so no case regresses once passing; the listed ones say why they differ.
//! `cargo test --test conformance -- --nocapture` prints the scores.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use signpost::fhir::outcome::{Issue, Severity};
use signpost::fhir::profiles::Profiles;
use signpost::fhir::validator;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn is_error(i: &Issue) -> bool {
    matches!(i.severity, Severity::Error | Severity::Fatal)
}

/// Base validation plus the profiles the resource claims (R4 core profiles, and the case's
/// supporting profiles in `profiles`), as `signpost validate --base-only --ig ...` does.
fn validate_text(text: &str, profiles: &Profiles) -> Vec<Issue> {
    match signpost::fhir::json::parse(
        text.as_bytes(),
        signpost::fhir::json::Limits { max_depth: 128, max_string_bytes: 1 << 30 },
    ) {
        Ok(v) => {
            let mut issues = validator::validate(&v);
            let root = v.get("resourceType").and_then(Value::as_str).unwrap_or("Resource").to_string();
            profiles.check(&v, &root, false, &[], &mut issues);
            issues
        }
        Err(issue) => vec![issue],
    }
}

/// The bundled profiles plus a case's supporting files (`None`: it has none).
fn case_profiles(case: &Value) -> Option<Profiles> {
    let extra: Vec<Value> = case["supporting"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| std::fs::read_to_string(corpus().join("fhir-test-cases").join(f.as_str()?)).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    (!extra.is_empty()).then(|| Profiles::shared().with(extra).unwrap())
}

fn known_disagreements() -> HashMap<String, String> {
    include_str!("known-disagreements.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace).map(|(n, why)| (n.to_string(), why.trim().to_string())))
        .collect()
}

#[test]
fn agrees_with_the_java_reference_on_every_case_not_listed() {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(corpus().join("fhir-test-cases/index.json")).unwrap()).unwrap();
    let known = known_disagreements();
    let (mut agree, mut total, mut java_errors, mut matched_errors) = (0, 0, 0, 0);
    let mut regressions = Vec::new();
    let mut fixed = Vec::new();
    for case in index["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let file = corpus().join("fhir-test-cases").join(case["file"].as_str().unwrap());
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        total += 1;
        let own = case_profiles(case);
        let issues = validate_text(&text, own.as_ref().unwrap_or(Profiles::shared()));
        let ours_invalid = issues.iter().any(is_error);
        let java_invalid = case["expected_errors"].as_u64().unwrap_or(0) > 0;
        let agrees = ours_invalid == java_invalid;
        if agrees {
            agree += 1;
        }
        for expected in case["expected_issues"].as_array().into_iter().flatten() {
            if !matches!(expected["severity"].as_str(), Some("error" | "fatal")) {
                continue;
            }
            java_errors += 1;
            let path = expected["expression"].as_str().unwrap_or("");
            if issues.iter().any(|i| is_error(i) && i.expression.as_deref() == Some(path)) {
                matched_errors += 1;
            }
        }
        match (agrees, known.get(name)) {
            (false, None) => regressions.push(format!(
                "{name}: Java {} / Signpost {} ({:?})",
                if java_invalid { "invalid" } else { "valid" },
                if ours_invalid { "invalid" } else { "valid" },
                issues.iter().filter(|i| is_error(i)).map(|i| (&i.expression, &i.diagnostics)).collect::<Vec<_>>()
            )),
            (true, Some(_)) => fixed.push(name.to_string()),
            _ => {}
        }
    }
    println!(
        "fhir-test-cases: verdict agreement {agree}/{total} ({:.1} %); Java errors matched on severity and path: {matched_errors}/{java_errors}",
        100.0 * agree as f64 / total as f64
    );
    if !fixed.is_empty() {
        println!("now agreeing, remove from known-disagreements.txt: {fixed:?}");
    }
    assert!(regressions.is_empty(), "cases that disagree with the Java reference:\n{}", regressions.join("\n"));
    assert!(agree * 100 >= total * 95, "verdict agreement fell below 95 %: {agree}/{total}");
    assert!(matched_errors >= 37, "fewer Java errors matched on severity and path: {matched_errors}");
}

/// `defective-examples.txt`: file → (the issue code of all its errors, why).
fn defective_examples() -> HashMap<String, (String, String)> {
    include_str!("defective-examples.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().unwrap().to_string();
            let code = parts.next().unwrap().to_string();
            (name, (code, parts.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[test]
fn official_r4_examples_have_no_errors() {
    let defective = defective_examples();
    let mut failures = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(corpus().join("r4-examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".json") || name == "package.json" {
            continue;
        }
        count += 1;
        let issues = validate_text(&std::fs::read_to_string(&path).unwrap(), Profiles::shared());
        let errors: Vec<_> =
            issues.iter().filter(|i| is_error(i)).map(|i| (i.expression.clone(), i.diagnostics.clone())).collect();
        match defective.get(&name) {
            Some((code, _)) if errors.is_empty() => {
                failures.push(format!("{name}: now clean; remove it from defective-examples.txt ({code})"))
            }
            Some((code, _)) => {
                let other: Vec<_> = issues.iter().filter(|i| is_error(i) && i.code.code() != code.as_str()).collect();
                if !other.is_empty() {
                    failures.push(format!("{name}: errors besides the listed {code}: {other:?}"));
                }
            }
            None if !errors.is_empty() => failures.push(format!("{name}: {errors:?}")),
            None => {}
        }
    }
    println!(
        "r4-examples: {} of {count} without errors; {} listed as defective (defective-examples.txt)",
        count - defective.len(),
        defective.len()
    );
    assert!(failures.is_empty(), "{} examples with errors:\n{}", failures.len(), failures.join("\n"));
}

/// The HL7 FHIRPath suite (`fhirpath/tests-fhir-r4.xml`, 937 tests) against Signpost's engine.
/// The suite's XML inputs are read from their JSON twins in `fhirpath-inputs/` (the same
/// official examples, from the R4 examples package); the two inputs that exist only as XML
/// (`parameters-example-types`, `patient-example-period`) are counted as not run. The engine
/// covers what R4 invariants use, so the score is reported, and a floor guards regressions.
#[test]
fn fhirpath_suite_score() {
    use signpost::fhir::fhirpath;
    let suite = std::fs::read_to_string(corpus().join("fhirpath/tests-fhir-r4.xml")).unwrap();
    let comments = regex::Regex::new(r"(?s)<!--.*?-->").unwrap();
    let suite = comments.replace_all(&suite, "");
    let test_rx = regex::Regex::new(r#"(?s)<test ([^>]*)>(.*?)</test>"#).unwrap();
    let attr_rx = regex::Regex::new(r#"(\w+)="([^"]*)""#).unwrap();
    let expr_rx = regex::Regex::new(r#"(?s)<expression([^>]*)>(.*?)</expression>"#).unwrap();
    let out_rx = regex::Regex::new(r#"(?s)<output type="(\w+)">(.*?)</output>"#).unwrap();
    let unescape = |s: &str| {
        s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
    };
    let inputs_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/fhirpath-inputs");
    let mut inputs: HashMap<String, Option<Value>> = HashMap::new();
    let defs = signpost::fhir::definitions::Definitions::shared();
    let (mut total, mut passed, mut not_run) = (0, 0, 0);
    for t in test_rx.captures_iter(&suite) {
        total += 1;
        let attrs: HashMap<&str, &str> =
            attr_rx.captures_iter(&t[1]).map(|c| (c.get(1).unwrap().as_str(), c.get(2).unwrap().as_str())).collect();
        let body = &t[2];
        let Some(e) = expr_rx.captures(body) else { continue };
        let invalid = e[1].contains("invalid=");
        let expression = unescape(&e[2]);
        let expected: Vec<(String, String)> =
            out_rx.captures_iter(body).map(|c| (c[1].to_string(), unescape(&c[2]))).collect();
        let file = attrs.get("inputfile").copied().unwrap_or("patient-example.xml");
        let input = inputs
            .entry(file.to_string())
            .or_insert_with(|| {
                let json = file.replace(".xml", ".json");
                std::fs::read_to_string(inputs_dir.join(&json))
                    .or_else(|_| std::fs::read_to_string(corpus().join("fhirpath").join(&json)))
                    .ok()
                    .map(|t| serde_json::from_str(&t).unwrap())
            })
            .as_ref();
        let Some(input) = input else {
            not_run += 1;
            continue;
        };
        let env = fhirpath::Env { resource: input, root: input, context: input, choices: &defs.choice_names };
        let parsed = fhirpath::parse(&expression);
        let result = parsed.as_ref().map_err(Clone::clone).and_then(|x| fhirpath::evaluate(x, input, None, env));
        let ok = match &result {
            Err(_) => invalid,
            Ok(_) if invalid => false,
            Ok(items) => {
                let got: Vec<String> = if attrs.get("predicate") == Some(&"true") {
                    vec![(!items.is_empty()).to_string()]
                } else {
                    items.iter().map(fhirpath::Item::to_text).collect()
                };
                got.len() == expected.len()
                    && got.iter().zip(&expected).all(|(g, (ty, want))| {
                        let want = if matches!(ty.as_str(), "date" | "dateTime" | "time") {
                            want.trim_start_matches('@').trim_start_matches('T')
                        } else {
                            want.as_str()
                        };
                        g == want || (ty == "decimal" && g.parse::<f64>().ok() == want.parse::<f64>().ok())
                    })
            }
        };
        passed += usize::from(ok);
        if !ok && std::env::var_os("SIGNPOST_FHIRPATH_FAILURES").is_some() {
            let got = result.map(|items| items.iter().map(fhirpath::Item::to_text).collect::<Vec<_>>());
            println!("FAIL {} | {expression} | expected {expected:?} | got {got:?}", attrs.get("name").unwrap_or(&""));
        }
    }
    println!(
        "fhirpath suite (tests-fhir-r4.xml): {passed}/{total} passed ({:.1} %), {not_run} not run (input only in XML)",
        100.0 * passed as f64 / total as f64
    );
    assert_eq!(total, 935, "the suite has 935 tests outside comments");
    assert!(passed >= FHIRPATH_SUITE_FLOOR, "FHIRPath suite regressed: {passed} < {FHIRPATH_SUITE_FLOOR}");
}

/// The engine's score on the HL7 suite when it was last raised; it may only go up.
const FHIRPATH_SUITE_FLOOR: usize = 698;

/// Every example of Signpost's profiles (`fhir-profiles/signpost/examples/`): `*.valid.json`
/// passes the full validation of a write (base R4, claimed and route profiles, JSON Schema);
/// `*.invalid.<code>.json` fails with an error carrying that Signpost issue code.
#[test]
fn signpost_profile_examples_pass_or_fail_as_named() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles/signpost/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let resource: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let root = resource["resourceType"].as_str().unwrap().to_string();
        let mut issues = Vec::new();
        signpost::fhir::validate_resource(&resource, &root, &mut issues);
        let errors: Vec<&str> = issues.iter().filter(|i| is_error(i)).map(|i| i.code.code()).collect();
        let parts: Vec<&str> = name.trim_end_matches(".json").split('.').collect();
        match parts.as_slice() {
            [_, "valid"] => assert!(errors.is_empty(), "{name}: {issues:?}"),
            [_, "invalid", code] => assert!(errors.contains(code), "{name}: expected {code}, got {issues:?}"),
            _ => panic!("{name}: name examples <profile>.valid.json or <profile>.invalid.<code>.json"),
        }
        checked += 1;
    }
    assert!(checked >= 17, "only {checked} examples");
}
