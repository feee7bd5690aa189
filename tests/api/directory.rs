//! The directory: FHIR search over it, and `signpost directory import`, which reports every
//! problem at once and writes nothing unless every file is valid.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::*;

fn import(app: &TestApp, path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["directory", "import"])
        .arg(path)
        .args(["--database", &app.db_url])
        .env_remove("SIGNPOST_CONFIG")
        .output()
        .unwrap()
}

/// A heart failure charity: Organization, a national service with an Endpoint.
fn heart_charity() -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            { "fullUrl": "https://directory.example.org/fhir/Organization/heart-support", "resource": {
                "resourceType": "Organization", "id": "heart-support", "active": true, "name": "Heart Support (example)" } },
            { "fullUrl": "https://directory.example.org/fhir/HealthcareService/heart-support-line", "resource": {
                "resourceType": "HealthcareService", "id": "heart-support-line", "active": true,
                "extension": [{ "url": "https://signpost.example/fhir/StructureDefinition/service-capacity", "valueCode": "open" }],
                "providedBy": { "reference": "Organization/heart-support" },
                "specialty": [{ "coding": [{ "system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure" }] }],
                "name": "Heart failure support line",
                "endpoint": [{ "reference": "Endpoint/heart-support-webhook" }] } },
            { "fullUrl": "https://directory.example.org/fhir/Endpoint/heart-support-webhook", "resource": {
                "resourceType": "Endpoint", "id": "heart-support-webhook", "status": "active",
                "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
                "managingOrganization": { "reference": "Organization/heart-support" },
                "payloadType": [{ "text": "referral" }],
                "address": "https://heart-support.example.org.uk/signpost" } }
        ]
    })
}

#[tokio::test]
async fn an_import_with_problems_reports_them_all_and_writes_nothing() {
    let app = spawn().await;
    // The running server routes a referral first, so that it holds the directory as it was.
    let pid = app.patient(REFERRER).await;
    let before = service_request(&pid, "HealthcareService/stroke-association-support");
    assert_eq!(app.post(REFERRER, "/fhir/ServiceRequest", &before).await.status, 201);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-good.json"), heart_charity().to_string()).unwrap();
    // A service whose capacity is not a known code, and one for a charity nobody has heard of.
    let mut bad = heart_charity();
    bad["entry"][1]["resource"]["id"] = json!("heart-support-clinic");
    bad["entry"][1]["resource"]["extension"][0]["valueCode"] = json!("maybe");
    bad["entry"].as_array_mut().unwrap().retain(|e| e["resource"]["resourceType"] == "HealthcareService");
    std::fs::write(dir.path().join("b-bad-capacity.json"), bad.to_string()).unwrap();
    let orphan = json!({ "resourceType": "HealthcareService", "id": "orphan", "active": true, "name": "Orphan",
        "providedBy": { "reference": "Organization/nobody" },
        "specialty": [{ "coding": [{ "system": "http://snomed.info/sct", "code": "84114007" }] }] });
    std::fs::write(dir.path().join("c-orphan.json"), orphan.to_string()).unwrap();
    std::fs::write(dir.path().join("d-not-json.json"), "{ nope").unwrap();

    let out = import(&app, dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for file in ["b-bad-capacity.json", "c-orphan.json", "d-not-json.json"] {
        assert!(err.contains(file), "{file} reported: {err}");
    }
    assert!(err.contains("nothing was written"), "{err}");
    app.get(OPERATOR, "/fhir/Organization/heart-support").await.assert_outcome(404, "not-found");

    // The good file alone loads, and loading it again changes nothing.
    for f in ["b-bad-capacity.json", "c-orphan.json", "d-not-json.json"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let out = import(&app, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 created"), "{}", String::from_utf8_lossy(&out.stdout));
    let again = import(&app, &dir.path().join("a-good.json"));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("3 unchanged"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // The running server routes to the new service at once.
    let mut sr = service_request(&pid, "unused");
    sr.as_object_mut().unwrap().remove("performer");
    sr["reasonCode"] = json!([{ "coding": [{ "system": "http://snomed.info/sct", "code": "84114007" }] }]);
    let id = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.id();
    let tasks = app.tasks_of(OPERATOR, &id).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["owner"]["reference"], "Organization/heart-support");
}

#[tokio::test]
async fn clients_search_the_directory_the_fhir_way() {
    let app = spawn().await;
    let by_specialty = app.get(REFERRER, "/fhir/HealthcareService?specialty=http://snomed.info/sct%7C230690007").await;
    let ids: Vec<String> = by_specialty.resources().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["stroke-association-support", "stroke-association-west-yorkshire"]);
    let by_org = app.get(STROKE, "/fhir/HealthcareService?organization=Organization/macmillan").await;
    assert_eq!(by_org.total(), 3);
    let covering = app.get(REFERRER, "/fhir/Location?organization=Organization/macmillan").await;
    assert_eq!(covering.total(), 2);
    // Operators alone change it.
    let location = covering.resources()[0].clone();
    let path = format!("/fhir/Location/{}", location["id"].as_str().unwrap());
    app.put(REFERRER, &path, &location, None).await.assert_outcome(403, "forbidden");
    assert_eq!(app.put(OPERATOR, &path, &location, None).await.status, 200);
}
