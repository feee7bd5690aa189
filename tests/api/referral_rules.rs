//! The referral business rules through the API: NHS number, consent, reason and contact route
//! (PRODUCT.md §3, layer 4). A referral that breaks one is refused with 422, the issue at its
//! element, and nothing is stored.

use serde_json::{Value, json};

use crate::helpers::*;

async fn count(app: &TestApp, ty: &str) -> i64 {
    app.get(OPERATOR, &format!("/fhir/{ty}?_summary=count")).await.total()
}

fn issue_at<'a>(r: &'a Resp, code: &str) -> &'a Value {
    r.body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["details"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no {code}: {}", r.body))
}

/// A Patient without the Consent `app.patient` adds.
async fn bare_patient(app: &TestApp, body: &Value) -> String {
    let r = app.post(REFERRER, "/fhir/Patient", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.id()
}

#[tokio::test]
async fn a_referral_needs_an_active_consent_to_share() {
    let app = spawn().await;
    let pid = bare_patient(&app, &patient()).await;
    let sr = service_request(&pid, "Organization/stroke-association");
    let refused = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
    refused.assert_outcome(422, "consent-missing");
    assert_eq!(issue_at(&refused, "consent-missing")["expression"][0], "ServiceRequest");
    assert_eq!((count(&app, "ServiceRequest").await, count(&app, "Task").await), (0, 0));

    // $validate says the same before anything is sent.
    let checked = app.post(REFERRER, "/fhir/ServiceRequest/$validate", &sr).await;
    assert_eq!(checked.status, 200);
    assert_eq!(checked.body["issue"], refused.body["issue"]);

    // A withdrawn consent does not count; an active one does.
    let mut withdrawn = consent(&format!("Patient/{pid}"));
    withdrawn["status"] = json!("inactive");
    assert_eq!(app.post(REFERRER, "/fhir/Consent", &withdrawn).await.status, 201);
    app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.assert_outcome(422, "consent-not-active");
    assert_eq!(app.post(REFERRER, "/fhir/Consent", &consent(&format!("Patient/{pid}"))).await.status, 201);
    let accepted = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    assert_eq!(count(&app, "Task").await, 1);
}

#[tokio::test]
async fn nhs_number_reason_and_contact_route_are_checked_without_echoing_patient_data() {
    let app = spawn().await;
    let mut p = patient();
    p["identifier"][0]["value"] = json!("9000000008");
    p["extension"] = json!([{ "url": "https://signpost.example/fhir/StructureDefinition/contact-preference", "valueCode": "email" }]);
    let pid = app.patient_with(REFERRER, &p).await;
    let mut sr = service_request(&pid, "Organization/stroke-association");
    sr.as_object_mut().unwrap().remove("reasonCode");
    let r = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let found: Vec<(String, String)> = r.issue_codes().into_iter().zip(r.expressions()).collect();
    for expected in [
        ("nhs-number-invalid", "ServiceRequest.subject.resolve().identifier[0].value"),
        ("reason-missing", "ServiceRequest"),
        ("contact-preference-unmet", "ServiceRequest.subject.resolve().extension[0]"),
    ] {
        assert!(found.contains(&(expected.0.to_string(), expected.1.to_string())), "{expected:?} in {found:?}");
    }
    assert!(!r.body.to_string().contains("9000000008") && !r.body.to_string().contains("LS1"), "{}", r.body);
    assert_eq!(count(&app, "ServiceRequest").await, 0);
}

#[tokio::test]
async fn a_bundle_carries_its_own_consent_and_without_one_nothing_is_stored() {
    let app = spawn().await;
    let corpus_bundle = corpus("referrals/referral-bundle.json");
    let refused = app.post(REFERRER, "/fhir", &corpus_bundle).await;
    refused.assert_outcome(422, "consent-missing");
    assert_eq!(issue_at(&refused, "consent-missing")["expression"][0], "Bundle.entry[3].resource");
    assert_eq!((count(&app, "Patient").await, count(&app, "ServiceRequest").await), (0, 0));

    let accepted = app.post(REFERRER, "/fhir", &referral_bundle()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!((count(&app, "Consent").await, count(&app, "ServiceRequest").await), (1, 1));
}

#[tokio::test]
async fn log_mode_accepts_a_referral_that_breaks_the_rules_with_warnings() {
    use signpost::config::ValidationMode;
    let app = spawn_with(|s| s.validation.mode = ValidationMode::Log).await;
    let pid = bare_patient(&app, &patient()).await;
    let sr = service_request(&pid, "Organization/stroke-association");
    let checked = app.post(REFERRER, "/fhir/ServiceRequest/$validate", &sr).await;
    assert_eq!(issue_at(&checked, "consent-missing")["severity"], "warning");
    assert_eq!(app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.status, 201);
}
