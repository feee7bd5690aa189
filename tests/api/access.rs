//! Who may do what: API keys, roles, and isolation between charities and between referrers.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn requests_without_a_valid_key_get_401() {
    let app = spawn().await;
    let none = app.send("GET", None, "/fhir/Task", None, &[]).await;
    none.assert_outcome(401, "unauthenticated");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    app.send("GET", Some("not-a-key"), "/fhir/Task", None, &[]).await.assert_outcome(401, "unauthenticated");
}

#[tokio::test]
async fn a_charity_cannot_reach_another_charitys_task_by_id_search_or_history() {
    let app = spawn().await;
    let (sr, pid) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let tid = app.tasks_of(STROKE, &sr).await[0]["id"].as_str().unwrap().to_string();
    let path = format!("/fhir/Task/{tid}");

    // By id, version and history.
    app.get(BEFRIENDING, &path).await.assert_outcome(404, "not-found");
    app.get(BEFRIENDING, &format!("{path}/_history")).await.assert_outcome(404, "not-found");
    app.get(BEFRIENDING, &format!("{path}/_history/1")).await.assert_outcome(404, "not-found");
    // By search, with every parameter that names it.
    for q in [
        format!("/fhir/Task?_id={tid}"),
        "/fhir/Task?owner=Organization/stroke-association".to_string(),
        format!("/fhir/Task?based-on=ServiceRequest/{sr}"),
        format!("/fhir/Task?focus=ServiceRequest/{sr}"),
        format!("/fhir/Task?patient=Patient/{pid}"),
        "/fhir/Task".to_string(),
    ] {
        let r = app.get(BEFRIENDING, &q).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.total(), 0, "{q} leaked: {}", r.body);
    }
    // Nor its referral and patient.
    app.get(BEFRIENDING, &format!("/fhir/ServiceRequest/{sr}")).await.assert_outcome(404, "not-found");
    app.get(BEFRIENDING, &format!("/fhir/Patient/{pid}")).await.assert_outcome(404, "not-found");
    // Nor change it.
    let task = app.get(STROKE, &path).await.body;
    let mut accept = task.clone();
    accept["status"] = json!("accepted");
    app.put(BEFRIENDING, &path, &accept, None).await.assert_outcome(404, "not-found");
    app.patch(BEFRIENDING, &path, &json!([{ "op": "replace", "path": "/status", "value": "accepted" }]), None)
        .await
        .assert_outcome(404, "not-found");
    assert_eq!(app.get(STROKE, &path).await.body["status"], "requested");
}

#[tokio::test]
async fn the_owning_charity_reads_the_referral_and_patient_its_task_points_to() {
    let app = spawn().await;
    let (sr, pid) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    assert_eq!(app.get(STROKE, &format!("/fhir/ServiceRequest/{sr}")).await.status, 200);
    assert_eq!(app.get(STROKE, &format!("/fhir/Patient/{pid}")).await.status, 200);
    assert_eq!(app.get(STROKE, "/fhir/ServiceRequest").await.total(), 1);
    // But may not change them.
    let p = app.get(STROKE, &format!("/fhir/Patient/{pid}")).await.body;
    app.put(STROKE, &format!("/fhir/Patient/{pid}"), &p, None).await.assert_outcome(403, "forbidden");
    // Nor create referrals.
    app.post(STROKE, "/fhir/ServiceRequest", &service_request(&pid, "Organization/rnid"))
        .await
        .assert_outcome(403, "forbidden");
}

#[tokio::test]
async fn a_referrer_sees_only_what_its_organization_sent() {
    let app = spawn().await;
    let (sr, pid) = app.referral(REFERRER, "Organization/rnid").await;
    app.get(REFERRER_2, &format!("/fhir/ServiceRequest/{sr}")).await.assert_outcome(404, "not-found");
    app.get(REFERRER_2, &format!("/fhir/Patient/{pid}")).await.assert_outcome(404, "not-found");
    assert_eq!(app.get(REFERRER_2, "/fhir/ServiceRequest").await.total(), 0);
    assert_eq!(app.get(REFERRER_2, "/fhir/Task").await.total(), 0);
    assert_eq!(app.get(REFERRER, "/fhir/Task").await.total(), 1);
    // Operators see everything.
    assert_eq!(app.get(OPERATOR, "/fhir/Task").await.total(), 1);
}

#[tokio::test]
async fn the_directory_is_readable_by_all_and_writable_by_operators_only() {
    let app = spawn().await;
    let services = app.get(STROKE, "/fhir/HealthcareService?_count=100").await;
    assert!(services.total() >= 8, "{}", services.body);
    let org = app.get(REFERRER, "/fhir/Organization/stroke-association").await;
    assert_eq!(org.status, 200);
    app.put(REFERRER, "/fhir/Organization/stroke-association", &org.body, None).await.assert_outcome(403, "forbidden");
    app.post(REFERRER, "/fhir/Organization", &json!({ "resourceType": "Organization", "name": "X" }))
        .await
        .assert_outcome(403, "forbidden");
    let new_org = json!({ "resourceType": "Organization", "id": "new-charity", "active": true, "name": "New Charity" });
    let created = app.put(OPERATOR, "/fhir/Organization/new-charity", &new_org, None).await;
    assert_eq!(created.status, 201, "{}", created.body);
}
