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

/// One fault in an otherwise valid referral, for each rule family the validator applies: the
/// JSON form, cardinality, lexical forms, required bindings, references (form, target type,
/// resolution in the Bundle), codings, identifiers, extensions, narratives, contained
/// resources, Bundle entries. Each mutant must be refused with an error at (or under) the
/// faulty element, and the referral itself must pass: the family, not one instance.
#[test]
fn single_fault_referral_mutants_are_each_refused_where_the_fault_is() {
    use serde_json::json;
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(corpus().join("referrals").join(f)).unwrap()).unwrap()
    };
    type Mutation = Box<dyn Fn(&mut Value)>;
    let set = |pointer: &'static str, v: Value| -> Mutation {
        Box::new(move |r: &mut Value| {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let p = r.pointer_mut(parent).unwrap_or_else(|| panic!("{parent}"));
            match p {
                Value::Array(a) => a[key.parse::<usize>().unwrap()] = v.clone(),
                p => {
                    p[key] = v.clone();
                }
            }
        })
    };
    let remove = |pointer: &'static str| -> Mutation {
        Box::new(move |r: &mut Value| {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            r.pointer_mut(parent).and_then(Value::as_object_mut).unwrap().remove(key).unwrap();
        })
    };
    let check = |base: &Value, mutants: Vec<(&str, Mutation, &str)>| {
        let root = base["resourceType"].as_str().unwrap().to_string();
        let errors = |v: &Value| {
            validate_text(&v.to_string(), Profiles::shared()).into_iter().filter(is_error).collect::<Vec<_>>()
        };
        assert_eq!(errors(base).len(), 0, "{root}: the unmutated referral is valid: {:?}", errors(base));
        let mut missed = Vec::new();
        for (name, mutate, at) in &mutants {
            let mut m = base.clone();
            mutate(&mut m);
            let found = errors(&m);
            let want = format!("{root}{at}");
            // At the element or under it (`.status` is not `.statusReason`).
            let at_or_under = |e: &str| {
                e.strip_prefix(want.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            };
            if !found.iter().any(|i| i.expression.as_deref().is_some_and(at_or_under)) {
                missed.push(format!(
                    "{name}: no error at {want}, got {:?}",
                    found.iter().map(|i| &i.expression).collect::<Vec<_>>()
                ));
            }
        }
        assert!(
            missed.is_empty(),
            "{} of {} {root} mutants missed:\n{}",
            missed.len(),
            mutants.len(),
            missed.join("\n")
        );
    };
    let sr = read("referral-servicerequest.json");
    check(
        &sr,
        vec![
            ("status outside its required value set", set("/status", json!("pending")), ".status"),
            ("status as an array", set("/status", json!(["active"])), ".status"),
            ("status as a number", set("/status", json!(1)), ".status"),
            ("intent missing", remove("/intent"), ""),
            ("intent outside its value set", set("/intent", json!("referral")), ".intent"),
            ("subject missing", remove("/subject"), ""),
            ("subject to a type it may not name", set("/subject/reference", json!("Organization/x")), ".subject"),
            ("authoredOn as a number", set("/authoredOn", json!(20240314)), ".authoredOn"),
            ("authoredOn an impossible date", set("/authoredOn", json!("2024-13-14")), ".authoredOn"),
            ("authoredOn with a time but no zone", set("/authoredOn", json!("2024-03-14T10:15:00")), ".authoredOn"),
            ("authoredOn in a local format", set("/authoredOn", json!("14/03/2024")), ".authoredOn"),
            ("an element R4 does not define (reported at its parent, as Java does)", set("/urgency", json!("high")), ""),
            ("priority outside its value set", set("/priority", json!("normal")), ".priority"),
            ("identifier as an object", set("/identifier", json!({ "system": "https://fhir.nhs.uk/Id/UBRN", "value": "1" })), ".identifier"),
            ("identifier system relative", set("/identifier/0/system", json!("UBRN")), ".identifier[0]"),
            ("identifier use outside its value set", set("/identifier/0/use", json!("primary")), ".identifier[0].use"),
            ("coding system relative", set("/code/coding/0/system", json!("snomed")), ".code.coding[0].system"),
            ("coding system a value set", set("/code/coding/0/system", json!("http://hl7.org/fhir/ValueSet/c80-practice-codes")), ".code.coding[0].system"),
            ("code as a number", set("/code/coding/0/code", json!(871731000000106u64)), ".code.coding[0].code"),
            ("code with a leading space", set("/code/coding/0/code", json!(" 871731000000106")), ".code.coding[0].code"),
            ("reference with a space", set("/encounter/reference", json!("Encounter/enc 1")), ".encounter"),
            ("encounter to a Patient", set("/encounter/reference", json!("Patient/x")), ".encounter"),
            ("requester a Location", set("/requester/reference", json!("Location/x")), ".requester"),
            ("reasonReference a Practitioner", set("/reasonReference/0/reference", json!("Practitioner/x")), ".reasonReference[0]"),
            ("two occurrence[x] types", set("/occurrenceDateTime", json!("2024-03-14")), ""),
            ("period ending before it starts", set("/occurrencePeriod", json!({ "start": "2024-05-14", "end": "2024-03-14" })), ".occurrence"),
            ("lastUpdated without a time", set("/meta/lastUpdated", json!("2024-03-14")), ".meta.lastUpdated"),
            ("meta.source with a space", set("/meta/source", json!("https://gp system")), ".meta.source"),
            ("id with an underscore and slash", set("/id", json!("ref_2024/000123")), ".id"),
            ("id of 65 characters", set("/id", json!("a".repeat(65))), ".id"),
            ("narrative status outside its value set", set("/text/status", json!("done")), ".text.status"),
            ("narrative with a script", set("/text/div", json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x</script><p>a</p></div>")), ".text"),
            ("narrative outside the XHTML namespace", set("/text/div", json!("<div><p>a</p></div>")), ".text"),
            ("narrative with an HTML entity", set("/text/div", json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>a&nbsp;b</p></div>")), ".text"),
            ("narrative empty", set("/text/div", json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"></div>")), ".text"),
            ("two note authors", set("/note/0/authorReference", json!({ "reference": "Practitioner/x" })), ".note[0]"),
            ("note without text", remove("/note/0/text"), ".note[0]"),
            ("extension without url", set("/extension", json!([{ "valueString": "x" }])), ".extension[0]"),
            ("extension with value and extensions", set("/extension", json!([{ "url": "http://example.org/x", "valueString": "x", "extension": [{ "url": "a", "valueString": "b" }] }])), ".extension[0]"),
            ("extension with neither", set("/extension", json!([{ "url": "http://example.org/x" }])), ".extension[0]"),
            ("an unknown modifierExtension", set("/modifierExtension", json!([{ "url": "https://vendor.example.com/fhir/flag", "valueBoolean": true }])), ".modifierExtension[0]"),
            ("an empty string", set("/patientInstruction", json!("")), ".patientInstruction"),
            ("a null", set("/patientInstruction", Value::Null), ".patientInstruction"),
            ("an empty object", set("/performerType", json!({})), ".performerType"),
            ("an empty array", set("/category", json!([])), ".category"),
            ("a boolean as a string", set("/doNotPerform", json!("true")), ".doNotPerform"),
            ("a quantity comparator outside its value set", set("/quantityQuantity", json!({ "value": 1, "comparator": "==" })), ".quantity"),
            ("a contained resource nothing refers to", set("/contained", json!([{ "resourceType": "Organization", "id": "o1", "name": "x" }])), ".contained[0]"),
            ("a contained resource without an id", set("/contained", json!([{ "resourceType": "Organization", "name": "x" }])), ".contained[0]"),
            ("a local reference to nothing contained", set("/requester/reference", json!("#nothere")), ".requester"),
            ("a contained resource of a type the reference may not name", set("/contained", json!([{ "resourceType": "Location", "id": "l1", "name": "x" }])), ".requester"),
            ("a uri with a space", set("/instantiatesUri", json!(["http://a b"])), ".instantiatesUri[0]"),
            ("a canonical that is relative", set("/instantiatesCanonical", json!(["PlanDefinition/x"])), ".instantiatesCanonical[0]"),
            ("a string over 1 MB", set("/patientInstruction", json!("a".repeat(1_048_577))), ".patientInstruction"),
        ]
        .into_iter()
        .map(|(n, m, at)| {
            // The contained Location mutant also points the requester at it.
            if n.starts_with("a contained resource of a type") {
                let both: Mutation = Box::new(move |r: &mut Value| {
                    m(r);
                    r["requester"]["reference"] = json!("#l1");
                });
                (n, both, at)
            } else {
                (n, m, at)
            }
        })
        .collect(),
    );
    let bundle = read("referral-bundle.json");
    check(
        &bundle,
        vec![
            ("Bundle type outside its value set", set("/type", json!("transactions")), ".type"),
            ("Bundle type missing", remove("/type"), ""),
            (
                "a urn:uuid naming no entry",
                set("/entry/3/resource/subject/reference", json!("urn:uuid:00000000-0000-4000-8000-000000000000")),
                ".entry[3].resource.subject",
            ),
            ("a relative fullUrl", set("/entry/0/fullUrl", json!("Patient/1")), ".entry[0]"),
            (
                "two entries with one fullUrl",
                set("/entry/1/fullUrl", json!("urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01")),
                "",
            ),
            (
                "request method outside its value set",
                set("/entry/0/request/method", json!("POSTS")),
                ".entry[0].request.method",
            ),
            ("request without url", remove("/entry/0/request/url"), ".entry[0].request"),
            (
                "Task status outside its value set",
                set("/entry/4/resource/status", json!("open")),
                ".entry[4].resource.status",
            ),
            ("Task intent missing", remove("/entry/4/resource/intent"), ".entry[4].resource"),
            ("Task for as a number", set("/entry/4/resource/for", json!(5)), ".entry[4].resource.for"),
            (
                "Patient gender outside its value set",
                set("/entry/0/resource/gender", json!("F")),
                ".entry[0].resource.gender",
            ),
            (
                "Patient birthDate impossible",
                set("/entry/0/resource/birthDate", json!("1970-02-30")),
                ".entry[0].resource.birthDate",
            ),
            (
                "Patient telecom system outside its value set",
                set("/entry/0/resource/telecom", json!([{ "system": "mobile", "value": "07700900000" }])),
                ".entry[0].resource.telecom[0].system",
            ),
            ("Patient name as a string", set("/entry/0/resource/name", json!("Jane Doe")), ".entry[0].resource.name"),
            ("Organization name as an array", set("/entry/2/resource/name", json!(["x"])), ".entry[2].resource.name"),
            (
                "PractitionerRole practitioner an Organization",
                set("/entry/1/resource/practitioner", json!({ "reference": "Organization/x" })),
                ".entry[1].resource.practitioner",
            ),
            (
                "subject resolving to the Organization entry",
                set("/entry/3/resource/subject/reference", json!("urn:uuid:1f9a7b3c-2d4e-4f6a-8b0c-9e1d2f3a4b04")),
                ".entry[3].resource.subject",
            ),
            (
                "an entry of a type R4 does not define",
                set("/entry/2/resource", json!({ "resourceType": "Charity", "name": "x" })),
                ".entry[2].resource",
            ),
            (
                "a paging link outside a search",
                set("/link", json!([{ "relation": "next", "url": "http://x.org/fhir?page=2" }])),
                ".link[0]",
            ),
            (
                "a relative reference that is not Type/id",
                set("/entry/3/resource/requester/reference", json!("pr-gp-apatel")),
                ".entry[3].resource.requester",
            ),
        ],
    );
}
