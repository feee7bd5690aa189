//! Validation speed: parse + full validation of the corpus referral ServiceRequest and the
//! 5-entry referral Bundle, one core (the validator alone, and with Signpost's route profiles
//! and the referral rules as a write gets them, minus the store lookups), against the Rust JSON Schema check of the same files
//! measured in the same run (the structure-only ceiling; BENCHMARKS.md); and the corpus
//! ServiceRequest with four faults, with the number of errors each check finds (speed per issue).
//!
//! `cargo bench --bench validation`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use signpost::fhir::ValidationMode::Enforce;
use signpost::fhir::json::{Limits, parse};
use signpost::fhir::profiles::Profiles;
use signpost::fhir::referral_rules::Offline;
use signpost::fhir::schema::StructureValidator;
use signpost::fhir::validator;
use std::hint::black_box;

fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/referrals/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn bench(c: &mut Criterion) {
    let start = std::time::Instant::now();
    let _ = validator::validate(&serde_json::json!({ "resourceType": "Patient" }));
    println!("validation index built in {} ms", start.elapsed().as_millis());
    let start = std::time::Instant::now();
    let _ = Profiles::shared();
    println!("profiles (R4 core and Signpost's) compiled in {} ms", start.elapsed().as_millis());
    let counts = signpost::fhir::definitions::Definitions::shared().invariants;
    println!("invariants: {} evaluated by FHIRPath, {} not evaluable", counts.evaluated, counts.not_evaluated);
    StructureValidator::shared()
        .warm(&["ServiceRequest", "Bundle", "Patient", "PractitionerRole", "Organization", "Task"])
        .unwrap();

    // Issues found on the corpus ServiceRequest with four faults, by each check: the speed
    // per issue found is the rate below times this count.
    let broken = corpus("invalid/referral-servicerequest-broken.json");
    let v = parse(&broken, Limits::default()).unwrap();
    let errors = |issues: &[signpost::fhir::outcome::Issue]| signpost::fhir::outcome::has_errors(issues);
    let mut ours = validator::validate(&v);
    Profiles::shared().check(&v, "ServiceRequest", true, &[], &mut ours);
    let mut schema = Vec::new();
    StructureValidator::shared().validate(&v, "ServiceRequest", &mut schema);
    let count = |issues: &[signpost::fhir::outcome::Issue]| {
        issues.iter().filter(|i| matches!(i.severity, signpost::fhir::outcome::Severity::Error)).count()
    };
    println!(
        "broken ServiceRequest: Signpost finds {} errors, the JSON Schema {} (invalid: {} / {})",
        count(&ours),
        count(&schema),
        errors(&ours),
        errors(&schema)
    );

    for (label, file) in [
        ("servicerequest", "referral-servicerequest.json"),
        ("bundle", "referral-bundle.json"),
        ("broken-servicerequest", "invalid/referral-servicerequest-broken.json"),
    ] {
        let bytes = corpus(file);
        let mut group = c.benchmark_group(label);
        group.throughput(Throughput::Elements(1));
        group.bench_function("parse + signpost validator", |b| {
            b.iter(|| {
                let v = parse(black_box(&bytes), Limits::default()).unwrap();
                black_box(validator::validate(&v))
            })
        });
        group.bench_function("parse + validator + profiles + referral rules", |b| {
            b.iter(|| {
                let v = parse(black_box(&bytes), Limits::default()).unwrap();
                let mut issues = validator::validate(&v);
                let root = v["resourceType"].as_str().unwrap();
                Profiles::shared().check(&v, root, true, &[], &mut issues);
                let Ok(()) = signpost::fhir::check_referral_rules(&v, root, Enforce, &mut Offline, &mut issues);
                black_box(issues)
            })
        });
        group.bench_function("parse + json schema (structure only)", |b| {
            b.iter(|| {
                let v = parse(black_box(&bytes), Limits::default()).unwrap();
                let mut issues = Vec::new();
                let root = v["resourceType"].as_str().unwrap().to_string();
                StructureValidator::shared().validate(&v, &root, &mut issues);
                black_box(issues)
            })
        });
        group.bench_function("parse only", |b| {
            b.iter(|| black_box(parse(black_box(&bytes), Limits::default()).unwrap()))
        });
        group.bench_function("serde_json::from_slice only", |b| {
            b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).unwrap()))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
