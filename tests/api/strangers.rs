//! What a stranger meets first: warnings that never refuse a write, the binary run from an
//! empty folder, sandbox and production modes, resends that create nothing twice, a charity
//! that sees everything its referral points to, and a CapabilityStatement that is valid FHIR.

use std::process::Command;

use serde_json::{Value, json};
use signpost::config::RunMode;

use crate::helpers::*;

/// A Patient whose marital status is a GP system's local code, as real EHR payloads carry: the
/// extensible binding of `Patient.maritalStatus` is not met, which is a warning, not an error.
fn with_local_marital_status(mut patient: Value) -> Value {
    patient["maritalStatus"] =
        json!({ "coding": [{ "system": "https://gp-system.example.org/marital", "code": "widowed-local" }] });
    patient
}

fn warnings(outcome: &Value) -> Vec<Value> {
    outcome["issue"].as_array().into_iter().flatten().filter(|i| i["severity"] == "warning").cloned().collect()
}

#[tokio::test]
async fn a_write_with_only_warnings_succeeds_and_returns_them() {
    let app = spawn().await;
    let body = with_local_marital_status(patient());
    // $validate shows the warning, and no error.
    let check = app.post(REFERRER, "/fhir/Patient/$validate", &body).await;
    assert_eq!(check.status, 200);
    assert!(!warnings(&check.body).is_empty(), "the payload carries a warning: {}", check.body);
    assert!(!check.body.to_string().contains("\"error\""), "{}", check.body);

    let r =
        app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&body), &[("Prefer", "return=OperationOutcome")]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert!(!warnings(&r.body).is_empty(), "the 201 carries the warnings: {}", r.body);
    assert!(r.issue_codes().contains(&"accepted".to_string()));
    let location = r.header("location").unwrap().to_string();
    let id = location.split('/').nth_back(2).unwrap().to_string();

    // Update and PATCH with the same warning succeed too.
    let mut stored = app.get(REFERRER, &format!("/fhir/Patient/{id}")).await.body;
    stored["gender"] = json!("female");
    let put = app
        .send(
            "PUT",
            Some(REFERRER),
            &format!("/fhir/Patient/{id}"),
            Some(&stored),
            &[("Prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(!warnings(&put.body).is_empty(), "{}", put.body);
    let ops = json!([{"op": "add", "path": "/birthDate", "value": "1948-07-03"}]);
    let patch = app.patch(REFERRER, &format!("/fhir/Patient/{id}"), &ops, None).await;
    assert_eq!(patch.status, 200, "{}", patch.body);

    // And a referral for this patient goes through.
    let c = app.post(REFERRER, "/fhir/Consent", &consent(&format!("Patient/{id}"))).await;
    assert_eq!(c.status, 201, "{}", c.body);
    let sr = service_request(&id, "HealthcareService/stroke-association-support");
    assert_eq!(app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.status, 201);
}

/// EHRs send UK Core and vendor extensions Signpost does not bundle: on a write they are a
/// warning (extensions are safe to ignore), but an unknown modifierExtension, which changes the
/// meaning of what it sits on, is refused and nothing is stored.
#[tokio::test]
async fn unknown_extensions_are_a_warning_on_writes_but_unknown_modifier_extensions_are_refused() {
    let app = spawn().await;
    let mut body = patient();
    body["extension"] = json!([{ "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
        "valueCodeableConcept": { "coding": [{ "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory", "code": "A" }] } }]);
    let r =
        app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&body), &[("Prefer", "return=OperationOutcome")]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let unknown: Vec<Value> =
        warnings(&r.body).into_iter().filter(|i| i["details"]["coding"][0]["code"] == "unknown-extension").collect();
    assert_eq!(unknown.len(), 1, "{}", r.body);
    assert_eq!(unknown[0]["expression"][0], "Patient.extension[0]");

    let mut modifier = patient();
    modifier["modifierExtension"] = json!([{ "url": "https://vendor.example.com/fhir/StructureDefinition/not-really-this-patient", "valueBoolean": true }]);
    let before = app.get(REFERRER, "/fhir/Patient?_summary=count").await.total();
    assert_eq!(before, 1, "the first Patient was stored");
    let refused = app.post(REFERRER, "/fhir/Patient", &modifier).await;
    assert_refusal_is_an_error(refused.status, &refused.body);
    assert!(refused.issue_codes().contains(&"unknown-extension".to_string()), "{}", refused.body);
    assert_eq!(app.get(REFERRER, "/fhir/Patient?_summary=count").await.total(), before, "nothing stored");
}

#[tokio::test]
async fn a_transaction_with_only_warnings_succeeds_and_returns_them_per_entry() {
    let app = spawn().await;
    let mut bundle = referral_bundle();
    bundle["entry"][0]["resource"] = with_local_marital_status(bundle["entry"][0]["resource"].clone());
    let check = app.post(REFERRER, "/fhir/$validate", &bundle).await;
    assert!(!warnings(&check.body).is_empty(), "{}", check.body);
    let r = app.post(REFERRER, "/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcome = &r.body["entry"][0]["response"]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{}", r.body);
    assert!(!warnings(outcome).is_empty());
    for issue in outcome["issue"].as_array().unwrap() {
        let at = issue["expression"][0].as_str().unwrap_or_default();
        assert!(at.starts_with("Bundle.entry[0]"), "{at}");
    }
    assert!(r.body["entry"][1]["response"].get("outcome").is_none(), "entries without warnings have none");
}

#[tokio::test]
async fn a_resent_bundle_creates_no_second_patient_or_referral() {
    let app = spawn().await;
    let bundle = referral_bundle();
    let first = app.send("POST", Some(REFERRER), "/fhir", Some(&bundle), &[("X-Request-Id", "run-1")]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = app.send("POST", Some(REFERRER), "/fhir", Some(&bundle), &[("X-Request-Id", "run-2")]).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let statuses: Vec<&str> =
        second.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert!(statuses.iter().all(|s| s.starts_with("200")), "nothing is created again: {statuses:?}");
    for (ty, ident) in [
        ("Patient", "https://fhir.nhs.uk/Id/nhs-number|9000000009"),
        ("ServiceRequest", "https://fhir.nhs.uk/Id/UBRN|000000070000"),
        ("Task", "https://referrals.example.org.uk/Id/task|TASK-2024-000123"),
    ] {
        let found = app.get(REFERRER, &format!("/fhir/{ty}?identifier={}", ident.replace('|', "%7C"))).await;
        assert_eq!(found.total(), 1, "{ty} duplicated: {}", found.body);
    }
    // The same ids in both answers.
    for (a, b) in first.body["entry"].as_array().unwrap().iter().zip(second.body["entry"].as_array().unwrap()) {
        assert_eq!(a["fullUrl"], b["fullUrl"]);
    }
    // A new referral for the same patient reuses the Patient.
    let mut next = bundle.clone();
    next["entry"][3]["resource"]["identifier"][0]["value"] = json!("000000070001");
    next["entry"][3]["request"]["ifNoneExist"] = json!("identifier=https://fhir.nhs.uk/Id/UBRN|000000070001");
    next["entry"][4]["resource"]["identifier"][0]["value"] = json!("TASK-2024-000124");
    next["entry"][4]["request"]["ifNoneExist"] =
        json!("identifier=https://referrals.example.org.uk/Id/task|TASK-2024-000124");
    let third = app.post(REFERRER, "/fhir", &next).await;
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(third.body["entry"][0]["fullUrl"], first.body["entry"][0]["fullUrl"], "same Patient");
    assert_ne!(third.body["entry"][3]["fullUrl"], first.body["entry"][3]["fullUrl"], "a new ServiceRequest");
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest").await.total(), 2);
    // A malformed ifNoneExist is refused, and nothing is stored.
    let mut bad = referral_bundle();
    bad["entry"][0]["request"]["ifNoneExist"] = json!("name=DOE");
    app.post(REFERRER, "/fhir", &bad).await.assert_outcome(422, "bad-conditional");
}

/// A referral Bundle whose ServiceRequest points to a Condition and a QuestionnaireResponse.
fn bundle_with_reasons() -> Value {
    let mut bundle = referral_bundle();
    let patient_url = bundle["entry"][0]["fullUrl"].as_str().unwrap().to_string();
    let entries = bundle["entry"].as_array_mut().unwrap();
    entries.push(json!({
        "fullUrl": "urn:uuid:2b1e6f0a-8a55-4c6e-9f61-3d2f9a1c0b11",
        "resource": {
            "resourceType": "Condition",
            "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "230690007", "display": "Cerebrovascular accident" }] },
            "subject": { "reference": patient_url }
        },
        "request": { "method": "POST", "url": "Condition" }
    }));
    entries.push(json!({
        "fullUrl": "urn:uuid:2b1e6f0a-8a55-4c6e-9f61-3d2f9a1c0b12",
        "resource": {
            "resourceType": "QuestionnaireResponse",
            "status": "completed",
            "subject": { "reference": patient_url },
            "item": [{ "linkId": "1", "text": "Lives alone", "answer": [{ "valueBoolean": true }] }]
        },
        "request": { "method": "POST", "url": "QuestionnaireResponse" }
    }));
    let sr = &mut entries[3]["resource"];
    sr["reasonReference"] = json!([{ "reference": "urn:uuid:2b1e6f0a-8a55-4c6e-9f61-3d2f9a1c0b11" }]);
    sr["supportingInfo"] = json!([{ "reference": "urn:uuid:2b1e6f0a-8a55-4c6e-9f61-3d2f9a1c0b12" }]);
    bundle
}

fn created(r: &Resp, ty: &str) -> Vec<String> {
    r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["response"]["location"].as_str())
        .filter(|l| l.starts_with(&format!("{ty}/")))
        .map(|l| l.split('/').nth(1).unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_charity_sees_everything_its_referral_points_to_and_nothing_else() {
    let app = spawn().await;
    let r = app.post(REFERRER, "/fhir", &bundle_with_reasons()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Another Condition of the same referrer, not part of the referral.
    let pid = created(&r, "Patient")[0].clone();
    let unrelated = json!({
        "resourceType": "Condition",
        "code": { "text": "Something else" },
        "subject": { "reference": format!("Patient/{pid}") }
    });
    let other = app.post(REFERRER, "/fhir/Condition", &unrelated).await.id();

    for ty in ["Patient", "ServiceRequest", "Consent", "Condition", "QuestionnaireResponse", "PractitionerRole"] {
        for id in created(&r, ty) {
            let path = format!("/fhir/{ty}/{id}");
            assert_eq!(app.get(BEFRIENDING, &path).await.status, 200, "the owning charity reads {path}");
            app.get(STROKE, &path).await.assert_outcome(404, "not-found");
            app.get(REFERRER_2, &path).await.assert_outcome(404, "not-found");
        }
    }
    app.get(BEFRIENDING, &format!("/fhir/Condition/{other}")).await.assert_outcome(404, "not-found");
    assert_eq!(app.get(BEFRIENDING, "/fhir/Condition").await.total(), 1);
}

#[tokio::test]
async fn metadata_is_valid_fhir_with_real_interaction_codes() {
    let app = spawn().await;
    let r = app.send("GET", None, "/fhir/metadata", None, &[]).await;
    assert_eq!(r.status, 200);
    let mut issues = Vec::new();
    signpost::fhir::validate_resource(&r.body, "CapabilityStatement", &mut issues);
    let errors: Vec<_> =
        issues.iter().filter(|i| signpost::fhir::outcome::has_errors(std::slice::from_ref(i))).collect();
    assert!(errors.is_empty(), "{errors:?}");
    const TYPE_CODES: &[&str] =
        &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];
    for resource in r.body["rest"][0]["resource"].as_array().unwrap() {
        for i in resource["interaction"].as_array().unwrap() {
            assert!(TYPE_CODES.contains(&i["code"].as_str().unwrap()), "{i}");
        }
        assert_eq!(resource["operation"][0]["name"], "validate");
    }
    assert_eq!(r.body["implementation"]["url"], format!("{}/fhir", app.base));
}

#[tokio::test]
async fn a_corrupt_stored_body_is_an_internal_error_never_an_empty_resource() {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let app = spawn().await;
    let sql =
        "UPDATE resources SET body = '{not json' WHERE resource_type = 'Organization' AND id = 'stroke-association'";
    match app.db_url.strip_prefix("sqlite://") {
        Some(path) => diesel::SqliteConnection::establish(path).unwrap().batch_execute(sql).unwrap(),
        None => diesel::PgConnection::establish(&app.db_url).unwrap().batch_execute(sql).unwrap(),
    }
    let r = app.get(REFERRER, "/fhir/Organization/stroke-association").await;
    r.assert_outcome(500, "internal");
    let pid = app.patient(REFERRER).await;
    let sr = service_request(&pid, "HealthcareService/stroke-association-support");
    app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.assert_outcome(500, "internal");
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest").await.total(), 0, "nothing stored");
}

#[tokio::test]
async fn production_mode_never_loads_sandbox_keys_or_data() {
    // First a sandbox on this database: the public keys work.
    let sandbox = spawn_with(|s| s.mode = RunMode::Sandbox).await;
    assert_eq!(sandbox.get("sp_sandbox_referrer_riverside", "/fhir/Task").await.status, 200);
    let (dir, db_url) = sandbox.into_database();
    // Then production on the same database, with no directory configured.
    let prod = spawn_on(dir, db_url, |s| {
        s.mode = RunMode::Production;
        s.directory.path = Default::default();
    })
    .await;
    for key in ["sp_sandbox_referrer_riverside", "sp_sandbox_charity_stroke", "sp_sandbox_operator"] {
        prod.get(key, "/fhir/Task").await.assert_outcome(401, "unauthenticated");
    }
    assert_eq!(prod.get(REFERRER, "/fhir/Task").await.status, 200, "configured clients still work");

    // A production server on a new database has no directory at all.
    let fresh = spawn_with(|s| {
        s.mode = RunMode::Production;
        s.directory.path = Default::default();
    })
    .await;
    assert_eq!(fresh.get(OPERATOR, "/fhir/Organization").await.total(), 0);
}

#[tokio::test]
async fn a_missing_directory_folder_stops_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&fresh_database(dir.path()));
    settings.directory.path = dir.path().join("no-such-folder");
    let err = match signpost::app::Application::build(settings).await {
        Ok(_) => panic!("start-up must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("directory.path"), "{err}");
}

#[tokio::test]
async fn serve_runs_from_an_empty_folder_as_a_loopback_sandbox() {
    let home = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
    command
        .args(["serve", "--port", "0", "--log-format", "json"])
        .current_dir(empty.path())
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    let server = start_serve(command);
    let (port, lines) = (server.port, server.lines.clone());
    let log = lines.join("\n");
    assert!(log.contains("SANDBOX MODE") && log.contains("PUBLIC sandbox API keys"), "{log}");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let orgs =
        http.get(format!("{base}/Organization")).bearer_auth("sp_sandbox_referrer_riverside").send().await.unwrap();
    assert_eq!(orgs.status().as_u16(), 200);
    let orgs: Value = orgs.json().await.unwrap();
    assert!(orgs["total"].as_i64().unwrap() >= 10, "the embedded example directory is loaded: {orgs}");
    // The walk's referral goes through.
    let r = http
        .post(&base)
        .bearer_auth("sp_sandbox_referrer_riverside")
        .header("Content-Type", "application/fhir+json")
        .body(referral_bundle().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(server);
    assert!(home.path().join(".local/share/signpost/signpost.db").is_file(), "the documented default place");
    let left: Vec<_> = std::fs::read_dir(empty.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing is written to the working folder: {left:?}");
}

#[test]
fn a_config_file_in_the_working_folder_is_never_picked_up() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("examples")).unwrap();
    std::fs::write(empty.path().join("examples/signpost.toml"), "[server]\nport = \"not a port\"\n").unwrap();
    std::fs::write(empty.path().join("signpost.toml"), "[server]\nport = \"not a port\"\n").unwrap();
    let db = empty.path().join("x.db");
    let out = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["migrate", "--database", &format!("sqlite://{}", db.display())])
        .current_dir(empty.path())
        .env_remove("SIGNPOST_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
