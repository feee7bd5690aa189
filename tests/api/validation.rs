//! Validation, first layer: limits, JSON well-formedness, R4 structure; nothing stored.

use serde_json::{Value, json};

use crate::helpers::*;

async fn stored_service_requests(app: &TestApp) -> i64 {
    app.get(OPERATOR, "/fhir/ServiceRequest?_summary=count").await.total()
}

async fn raw_post(app: &TestApp, path: &str, body: Vec<u8>) -> Resp {
    let res = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(REFERRER)
        .header("Content-Type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body: Value = res.json().await.unwrap();
    Resp { status, headers, body }
}

#[tokio::test]
async fn corpus_faults_are_reported_at_their_paths_and_nothing_is_stored() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    // Each broken referral: the Signpost code, the path, and a word of the diagnostics.
    let cases = [
        ("referrals/invalid/broken-authoredon-type.json", "wrong-type", "ServiceRequest.authoredOn", "string"),
        ("referrals/invalid/broken-unknown-element.json", "unknown-element", "ServiceRequest", "Unrecognized property"),
        (
            "referrals/invalid/broken-status-code.json",
            "code-not-in-value-set",
            "ServiceRequest.status",
            "request-status",
        ),
        ("referrals/invalid/broken-missing-intent.json", "cardinality", "ServiceRequest", "ServiceRequest.intent"),
    ];
    let mut all_expected = Vec::new();
    for (file, code, expr, word) in cases {
        let mut sr = corpus(file);
        sr["subject"] = json!({ "reference": format!("Patient/{pid}") });
        let r = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
        r.assert_outcome(400, code);
        let issue = r.body["issue"].as_array().unwrap().iter().find(|i| i["expression"][0] == expr).cloned();
        let issue = issue.unwrap_or_else(|| panic!("{file}: nothing at {expr}: {}", r.body));
        assert!(issue["diagnostics"].as_str().unwrap().contains(word), "{file}: {issue}");
        assert!(!r.body.to_string().contains("referralUrgency"), "property names are never echoed: {}", r.body);
        all_expected.push((code, expr));
    }
    let mut all = corpus("referrals/invalid/referral-servicerequest-broken.json");
    all["subject"] = json!({ "reference": format!("Patient/{pid}") });
    let r = app.post(REFERRER, "/fhir/ServiceRequest", &all).await;
    assert_eq!(r.status, 400);
    let found: Vec<(String, String)> = r.issue_codes().into_iter().zip(r.expressions()).collect();
    for (code, expr) in all_expected {
        assert!(found.contains(&(code.to_string(), expr.to_string())), "{code} at {expr} missing: {found:?}");
    }
    assert_eq!(stored_service_requests(&app).await, 0);
}

#[tokio::test]
async fn all_structural_issues_come_back_together_without_patient_data() {
    let app = spawn().await;
    let r = app
        .post(
            REFERRER,
            "/fhir/Patient",
            &json!({
                "resourceType": "Patient",
                "birthDate": "02/07/1948",
                "gender": 1,
                "nickname": "Janie",
                "name": [{ "family": "Unforgettable-Surname" }]
            }),
        )
        .await;
    assert_eq!(r.status, 400);
    let found: Vec<(String, String)> = r.issue_codes().into_iter().zip(r.expressions()).collect();
    for want in
        [("invalid-value", "Patient.birthDate"), ("wrong-type", "Patient.gender"), ("unknown-element", "Patient")]
    {
        assert!(found.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} missing: {}", r.body);
    }
    let text = r.body.to_string();
    assert!(!text.contains("02/07/1948") && !text.contains("Janie") && !text.contains("Unforgettable"), "{text}");
    assert_eq!(app.get(OPERATOR, "/fhir/Patient?_summary=count").await.total(), 0);
}

#[tokio::test]
async fn size_depth_entry_and_json_limits() {
    let app = spawn().await;
    let huge = format!(r#"{{"resourceType":"Patient","text":"{}"}}"#, "x".repeat(1024 * 1024 + 10));
    raw_post(&app, "/fhir/Patient", huge.into_bytes()).await.assert_outcome(413, "body-too-large");

    let mut deep = json!({ "url": "http://x", "valueString": "leaf" });
    for _ in 0..40 {
        deep = json!({ "url": "http://x", "extension": [deep] });
    }
    let deep_patient = json!({ "resourceType": "Patient", "extension": [deep] });
    app.post(REFERRER, "/fhir/Patient", &deep_patient).await.assert_outcome(400, "json-too-deep");
    raw_post(&app, "/fhir/Patient", "[".repeat(100_000).into_bytes()).await.assert_outcome(400, "json-too-deep");

    let long = json!({ "resourceType": "Patient", "name": [{ "text": "y".repeat(70 * 1024) }] });
    app.post(REFERRER, "/fhir/Patient", &long).await.assert_outcome(400, "string-too-long");

    raw_post(&app, "/fhir/Patient", br#"{"resourceType":"Patient","gender":"female","gender":"male"}"#.to_vec())
        .await
        .assert_outcome(400, "json-duplicate-key");
    raw_post(&app, "/fhir/Patient", b"{\"resourceType\":\"Patient\",\"gender\":\"\xff\"}".to_vec())
        .await
        .assert_outcome(400, "json-malformed");

    let mut bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [] });
    for _ in 0..101 {
        bundle["entry"].as_array_mut().unwrap().push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": patient(),
            "request": { "method": "POST", "url": "Patient" }
        }));
    }
    app.post(REFERRER, "/fhir", &bundle).await.assert_outcome(422, "too-many-entries");
    assert_eq!(app.get(OPERATOR, "/fhir/Patient?_summary=count").await.total(), 0);
}

#[tokio::test]
async fn body_type_must_match_the_url() {
    let app = spawn().await;
    app.post(REFERRER, "/fhir/ServiceRequest", &patient()).await.assert_outcome(400, "not-a-resource");
    app.post(REFERRER, "/fhir/Patient", &json!([1, 2])).await.assert_outcome(400, "not-a-resource");
    app.post(REFERRER, "/fhir/Observation", &json!({ "resourceType": "Observation" }))
        .await
        .assert_outcome(404, "unsupported-type");
}

#[tokio::test]
async fn validate_operation_returns_what_a_submission_would_get_and_stores_nothing() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let mut broken = corpus("referrals/invalid/referral-servicerequest-broken.json");
    broken["subject"] = json!({ "reference": format!("Patient/{pid}") });
    let submitted = app.post(REFERRER, "/fhir/ServiceRequest", &broken).await;
    assert_eq!(submitted.status, 400);

    let checked = app.post(REFERRER, "/fhir/ServiceRequest/$validate", &broken).await;
    assert_eq!(checked.status, 200, "{}", checked.body);
    assert_eq!(checked.body["issue"], submitted.body["issue"], "same outcome as a real submission");

    let wrapped = json!({ "resourceType": "Parameters", "parameter": [{ "name": "resource", "resource": broken }] });
    let via_parameters = app.post(REFERRER, "/fhir/$validate", &wrapped).await;
    assert_eq!(via_parameters.body["issue"], submitted.body["issue"]);

    let good = app.post(STROKE, "/fhir/Patient/$validate", &patient()).await;
    assert_eq!(good.status, 200);
    assert_eq!(good.body["issue"][0]["severity"], "information");
    app.post(REFERRER, "/fhir/Patient/$validate", &broken).await.assert_outcome(400, "not-a-resource");

    assert_eq!(stored_service_requests(&app).await, 0);
}

#[tokio::test]
async fn validation_modes_log_and_off_accept_what_enforce_refuses() {
    use signpost::config::ValidationMode;
    for (mode, missing_intent_status) in
        [(ValidationMode::Enforce, 400), (ValidationMode::Log, 201), (ValidationMode::Off, 201)]
    {
        let app = spawn_with(|s| s.validation.mode = mode).await;
        let pid = app.patient(REFERRER).await;
        let mut sr = corpus("referrals/invalid/broken-missing-intent.json");
        sr["subject"] = json!({ "reference": format!("Patient/{pid}") });
        sr.as_object_mut().unwrap().remove("performer");
        let r = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
        assert_eq!(r.status, missing_intent_status, "{mode:?}: {}", r.body);
        // The JSON Schema structure check refuses in every mode.
        let mut broken = corpus("referrals/invalid/broken-authoredon-type.json");
        broken["subject"] = json!({ "reference": format!("Patient/{pid}") });
        assert_eq!(app.post(REFERRER, "/fhir/ServiceRequest", &broken).await.status, 400, "{mode:?}");
        let checked = app.post(REFERRER, "/fhir/ServiceRequest/$validate", &sr).await;
        let severities: Vec<String> = checked.body["issue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["severity"].as_str().unwrap().to_string())
            .collect();
        match mode {
            ValidationMode::Enforce => assert!(severities.contains(&"error".to_string())),
            ValidationMode::Log => {
                assert!(severities.contains(&"warning".to_string()) && !severities.contains(&"error".to_string()))
            }
            ValidationMode::Off => assert_eq!(severities, vec!["information".to_string()]),
        }
    }
}

#[tokio::test]
async fn signpost_profiles_apply_to_writes_and_validate_takes_a_profile() {
    let app = spawn().await;
    // The route profile: a Patient must carry its NHS number (slice nhsNumber).
    let mut no_nhs = patient();
    no_nhs["identifier"] = json!([{ "system": "https://example.org/mrn", "value": "123" }]);
    let r = app.post(REFERRER, "/fhir/Patient", &no_nhs).await;
    r.assert_outcome(400, "cardinality");
    assert!(r.body.to_string().contains("Patient.identifier:nhsNumber: minimum required = 1"), "{}", r.body);
    assert_eq!(app.get(OPERATOR, "/fhir/Patient?_summary=count").await.total(), 0);

    // $validate with a profile in the query, or as a Parameters parameter.
    let consent_profile = "https://signpost.example/fhir/StructureDefinition/signpost-consent-vcs";
    let mut not_vcs = consent("Patient/p1");
    not_vcs["category"] = json!([{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }]);
    let by_query = app.post(REFERRER, &format!("/fhir/Consent/$validate?profile={consent_profile}"), &not_vcs).await;
    assert_eq!(by_query.status, 200);
    assert!(by_query.body.to_string().contains("Consent.category:shareWithVcs"), "{}", by_query.body);
    let params = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "resource", "resource": not_vcs },
        { "name": "profile", "valueCanonical": consent_profile }
    ] });
    let by_param = app.post(REFERRER, "/fhir/$validate", &params).await;
    assert_eq!(by_param.body["issue"], by_query.body["issue"]);
    // A profile of another type, and an unknown one.
    let task_profile = "https://signpost.example/fhir/StructureDefinition/signpost-referral-task";
    let wrong = app.post(REFERRER, &format!("/fhir/$validate?profile={task_profile}"), &patient()).await;
    assert!(wrong.issue_codes().contains(&"profile-unknown".to_string()), "{}", wrong.body);
    app.post(REFERRER, "/fhir/$validate?profile=http://example.org/nothing", &patient())
        .await
        .assert_outcome(400, "profile-unknown");
}
