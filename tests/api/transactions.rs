//! Transaction Bundles: atomic, `urn:uuid` references resolved.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn corpus_referral_bundle_is_stored_with_references_rewritten() {
    let app = spawn().await;
    let bundle = referral_bundle();
    let r = app.post(REFERRER, "/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["type"], "transaction-response");
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    let status: Vec<_> = entries.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    // The charity Organization is matched to the directory by charity number, not created.
    assert_eq!(status, vec!["201 Created", "201 Created", "200 OK", "201 Created", "201 Created", "201 Created"]);
    assert_eq!(entries[2]["response"]["location"], "Organization/befriending-network-leeds/_history/1");

    let patient_loc = entries[0]["response"]["location"].as_str().unwrap();
    let patient_id = patient_loc.split('/').nth(1).unwrap();
    let sr_id = entries[3]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    let sr = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr_id}")).await;
    assert_eq!(sr.body["subject"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(sr.body["performer"][0]["reference"], "Organization/befriending-network-leeds");
    assert!(!sr.body.to_string().contains("urn:uuid"), "{}", sr.body);

    // The Bundle's own Task is the route: exactly one Task, owned by the charity.
    let tasks = app.tasks_of(REFERRER, &sr_id).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["focus"]["reference"], format!("ServiceRequest/{sr_id}"));
    assert_eq!(tasks[0]["for"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(tasks[0]["owner"]["reference"], "Organization/befriending-network-leeds");
    let charity_view = app.tasks_of(BEFRIENDING, &sr_id).await;
    assert_eq!(charity_view.len(), 1);
}

#[tokio::test]
async fn bundle_without_a_task_gets_a_routed_task() {
    let app = spawn().await;
    let mut bundle = referral_bundle();
    bundle["entry"].as_array_mut().unwrap().remove(4);
    let r = app.post(REFERRER, "/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sr_id = r.body["entry"][3]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    let tasks = app.tasks_of(BEFRIENDING, &sr_id).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["status"], "requested");
    assert_eq!(tasks[0]["intent"], "order");
}

#[tokio::test]
async fn one_failing_entry_fails_the_whole_bundle_and_stores_nothing() {
    let app = spawn().await;
    let before = app.get(OPERATOR, "/fhir/Patient?_summary=count").await.total();
    let mut bundle = referral_bundle();
    bundle["entry"][3]["resource"]["performer"][0]["reference"] = json!("Organization/no-such-charity");
    bundle["entry"][2]["resource"]["identifier"][0]["value"] = json!("0000000");
    let r = app.post(REFERRER, "/fhir", &bundle).await;
    r.assert_outcome(422, "unknown-reference");
    assert!(r.expressions().contains(&"Bundle.entry[2].resource.identifier".to_string()), "{}", r.body);
    assert_eq!(app.get(OPERATOR, "/fhir/Patient?_summary=count").await.total(), before);
    assert_eq!(app.get(OPERATOR, "/fhir/ServiceRequest?_summary=count").await.total(), 0);
    assert_eq!(app.get(OPERATOR, "/fhir/Task?_summary=count").await.total(), 0);

    let mut bad_structure = referral_bundle();
    bad_structure["entry"][0]["resource"]["gender"] = json!(12);
    let r = app.post(REFERRER, "/fhir", &bad_structure).await;
    r.assert_outcome(400, "wrong-type");
    assert!(r.expressions().contains(&"Bundle.entry[0].resource.gender".to_string()), "{}", r.body);
    assert_eq!(app.get(OPERATOR, "/fhir/Patient?_summary=count").await.total(), before);
}

#[tokio::test]
async fn bundles_must_be_transactions_with_post_or_put_entries() {
    let app = spawn().await;
    let mut batch = referral_bundle();
    batch["type"] = json!("batch");
    app.post(REFERRER, "/fhir", &batch).await.assert_outcome(400, "bad-transaction");
    let mut delete = referral_bundle();
    delete["entry"][0]["request"]["method"] = json!("DELETE");
    let r = app.post(REFERRER, "/fhir", &delete).await;
    r.assert_outcome(422, "bad-transaction");
    assert!(r.expressions().contains(&"Bundle.entry[0].request.method".to_string()));
}

#[tokio::test]
async fn a_urn_reference_to_no_entry_refuses_the_bundle() {
    let app = spawn().await;
    let mut bundle = referral_bundle();
    bundle["entry"][3]["resource"]["requester"]["reference"] = json!("urn:uuid:00000000-0000-4000-8000-000000000000");
    let r = app.post(REFERRER, "/fhir", &bundle).await;
    r.assert_outcome(400, "bundle-reference");
    assert!(r.expressions().contains(&"Bundle.entry[3].resource.requester".to_string()), "{}", r.body);
    assert_eq!(app.get(OPERATOR, "/fhir/ServiceRequest?_summary=count").await.total(), 0);
}
