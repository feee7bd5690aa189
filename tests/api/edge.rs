//! Everything a client sees is FHIR: metadata, health, and errors from the HTTP layer.

use crate::helpers::*;

#[tokio::test]
async fn capability_statement_lists_the_served_types_and_interactions() {
    let app = spawn().await;
    let r = app.send("GET", None, "/fhir/metadata", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/fhir+json; charset=utf-8"));
    assert_eq!(r.body["resourceType"], "CapabilityStatement");
    assert_eq!(r.body["fhirVersion"], "4.0.1");
    let rest = &r.body["rest"][0];
    assert_eq!(rest["interaction"][0]["code"], "transaction");
    let resources = rest["resource"].as_array().unwrap();
    for ty in ["ServiceRequest", "Task", "Patient", "Consent", "Organization", "HealthcareService", "Endpoint"] {
        let res = resources.iter().find(|x| x["type"] == ty).unwrap_or_else(|| panic!("{ty} missing"));
        let codes: Vec<&str> =
            res["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        for code in ["read", "vread", "update", "patch", "history-instance", "create", "search-type"] {
            assert!(codes.contains(&code), "{ty} lacks {code}");
        }
    }
    let patient = resources.iter().find(|x| x["type"] == "Patient").unwrap();
    assert_eq!(patient["supportedProfile"][0], "https://signpost.example/fhir/StructureDefinition/signpost-patient");
    assert_eq!(rest["operation"][0]["name"], "validate");
    let task = resources.iter().find(|x| x["type"] == "Task").unwrap();
    let params: Vec<&str> =
        task["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["_id", "_lastUpdated", "identifier", "status", "owner", "based-on", "focus", "requester", "patient"] {
        assert!(params.contains(&p), "Task search lacks {p}");
    }
}

#[tokio::test]
async fn health_checks() {
    let app = spawn().await;
    assert_eq!(app.send("GET", None, "/livez", None, &[]).await.status, 200);
    let ready = app.send("GET", None, "/readyz", None, &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
}

#[tokio::test]
async fn http_errors_are_operation_outcomes_with_the_correlation_id() {
    let app = spawn().await;
    let r = app.send("GET", Some(REFERRER), "/nowhere", None, &[("X-Correlation-Id", "corr-abc-123")]).await;
    r.assert_outcome(404, "unknown-path");
    assert_eq!(r.header("x-correlation-id"), Some("corr-abc-123"));

    app.send("DELETE", Some(REFERRER), "/fhir/Patient/x", None, &[]).await.assert_outcome(405, "method-not-allowed");
    app.send("PUT", Some(REFERRER), "/fhir/metadata", None, &[]).await.assert_outcome(405, "method-not-allowed");

    let wrong_type = app
        .http
        .post(format!("{}/fhir/Patient", app.base))
        .bearer_auth(REFERRER)
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status().as_u16(), 415);
    let generated = wrong_type.headers().get("x-correlation-id").unwrap().to_str().unwrap().to_string();
    assert!(!generated.is_empty());
    let body: serde_json::Value = wrong_type.json().await.unwrap();
    assert_eq!(body["issue"][0]["details"]["coding"][0]["code"], "unsupported-media-type");

    let malformed = app
        .http
        .post(format!("{}/fhir/Patient", app.base))
        .bearer_auth(REFERRER)
        .header("Content-Type", "application/fhir+json")
        .body(r#"{"resourceType": "Patient", "#)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let body: serde_json::Value = malformed.json().await.unwrap();
    assert_eq!(body["issue"][0]["details"]["coding"][0]["code"], "json-malformed");

    app.send("GET", Some(REFERRER), "/fhir/Patient?_format=xml", None, &[]).await.assert_outcome(406, "not-acceptable");
    app.send("GET", Some(REFERRER), "/fhir/Patient", None, &[("Accept", "application/fhir+xml")])
        .await
        .assert_outcome(406, "not-acceptable");
    app.send("GET", None, "/fhir/Patient", None, &[]).await.assert_outcome(401, "unauthenticated");
    app.get(REFERRER, "/fhir/Patient/does-not-exist").await.assert_outcome(404, "not-found");
}
