//! Idempotency: X-Request-Id replays, conflicts, and concurrent duplicates stored once.

use futures::future::join_all;

use crate::helpers::*;

#[tokio::test]
async fn replay_with_same_request_id_returns_the_first_response() {
    let app = spawn().await;
    let bundle = referral_bundle();
    let h = [("X-Request-Id", "req-0001")];
    let first = app.send("POST", Some(REFERRER), "/fhir", Some(&bundle), &h).await;
    assert_eq!(first.status, 200);
    let second = app.send("POST", Some(REFERRER), "/fhir", Some(&bundle), &h).await;
    assert_eq!(second.status, 200);
    assert_eq!(first.body, second.body);
    assert_eq!(second.header("x-request-id"), Some("req-0001"));
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?_summary=count").await.total(), 1);

    let mut other = bundle.clone();
    other["entry"][0]["resource"]["gender"] = serde_json::json!("male");
    let conflict = app.send("POST", Some(REFERRER), "/fhir", Some(&other), &h).await;
    conflict.assert_outcome(409, "duplicate-request");
    assert_eq!(conflict.body["issue"][0]["code"], "duplicate");
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?_summary=count").await.total(), 1);

    // Keys are per client: another referrer may use the same id.
    let other_client = app.send("POST", Some(REFERRER_2), "/fhir", Some(&bundle), &h).await;
    assert_eq!(other_client.status, 200);
}

#[tokio::test]
async fn replayed_create_keeps_location_and_etag() {
    let app = spawn().await;
    let h = [("X-Request-Id", "pat-1")];
    let a = app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&patient()), &h).await;
    let b = app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&patient()), &h).await;
    assert_eq!(a.status, 201);
    assert_eq!(b.status, 201);
    assert_eq!(a.header("location"), b.header("location"));
    assert_eq!(a.header("etag"), b.header("etag"));
    assert_eq!(app.get(REFERRER, "/fhir/Patient?_summary=count").await.total(), 1);
}

#[tokio::test]
async fn ten_concurrent_identical_submissions_store_one_referral() {
    let app = spawn().await;
    let bundle = referral_bundle();
    let h = [("X-Request-Id", "burst-1")];
    let results = join_all((0..10).map(|_| app.send("POST", Some(REFERRER), "/fhir", Some(&bundle), &h))).await;
    for r in &results {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, results[0].body, "every replay returns the first response");
    }
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?_summary=count").await.total(), 1);
    assert_eq!(app.get(REFERRER, "/fhir/Patient?_summary=count").await.total(), 1);
    assert_eq!(app.get(REFERRER, "/fhir/Task?_summary=count").await.total(), 1);
}

#[tokio::test]
async fn if_none_exist_returns_the_existing_resource_even_under_concurrency() {
    let app = spawn().await;
    let h = [("If-None-Exist", "identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009")];
    let body = patient();
    let results = join_all((0..10).map(|_| app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&body), &h))).await;
    let created = results.iter().filter(|r| r.status == 201).count();
    let found = results.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, found), (1, 9), "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    let ids: std::collections::HashSet<_> = results.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.get(REFERRER, "/fhir/Patient?_summary=count").await.total(), 1);

    let bad =
        app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&patient()), &[("If-None-Exist", "name=DOE")]).await;
    bad.assert_outcome(400, "bad-conditional");
}

/// A referral's checks run before its write transaction, but a replay still gets the first
/// answer: withdrawing the Consent afterwards refuses a new submission, not the replay.
#[tokio::test]
async fn a_replayed_referral_keeps_its_first_answer_after_the_consent_is_withdrawn() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let sr = service_request(&pid, "HealthcareService/stroke-association-support");
    let h = [("X-Request-Id", "sr-replay-1")];
    let first = app.send("POST", Some(REFERRER), "/fhir/ServiceRequest", Some(&sr), &h).await;
    assert_eq!(first.status, 201, "{}", first.body);

    let consents = app.get(REFERRER, &format!("/fhir/Consent?patient=Patient/{pid}")).await;
    let mut consent = consents.body["entry"][0]["resource"].clone();
    consent["status"] = serde_json::json!("inactive");
    let id = consent["id"].as_str().unwrap().to_string();
    let withdrawn = app.put(REFERRER, &format!("/fhir/Consent/{id}"), &consent, None).await;
    assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);

    let replay = app.send("POST", Some(REFERRER), "/fhir/ServiceRequest", Some(&sr), &h).await;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert_eq!(replay.body, first.body);
    let fresh =
        app.send("POST", Some(REFERRER), "/fhir/ServiceRequest", Some(&sr), &[("X-Request-Id", "sr-replay-2")]).await;
    assert_eq!(fresh.status, 422, "{}", fresh.body);
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?_summary=count").await.total(), 1);
}
