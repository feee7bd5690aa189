//! Routing: an explicit performer creates one Task in the same transaction; without one, the
//! referral is routed by its conditions (see also `routing_rules.rs`).

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn healthcare_service_performer_creates_one_task_for_its_charity() {
    let app = spawn().await;
    let (sr, pid) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let tasks = app.tasks_of(REFERRER, &sr).await;
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!(t["status"], "requested");
    assert_eq!(t["intent"], "order");
    assert_eq!(t["focus"]["reference"], format!("ServiceRequest/{sr}"));
    assert_eq!(t["basedOn"][0]["reference"], format!("ServiceRequest/{sr}"));
    assert_eq!(t["for"]["reference"], format!("Patient/{pid}"));
    assert_eq!(t["requester"]["reference"], "PractitionerRole/gp-apatel");
    assert_eq!(t["owner"]["reference"], "Organization/stroke-association");
    assert_eq!(t["meta"]["versionId"], "1");
    // The charity sees the same Task.
    assert_eq!(app.tasks_of(STROKE, &sr).await.len(), 1);
}

#[tokio::test]
async fn organization_performer_routes_and_duplicates_collapse_to_one_task() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let mut sr = service_request(&pid, "Organization/befriending-network-leeds");
    sr["performer"] = json!([
        { "reference": "Organization/befriending-network-leeds" },
        { "reference": "HealthcareService/befriending-network-leeds-support" },
        { "reference": "Practitioner/someone" }
    ]);
    let r = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let tasks = app.tasks_of(BEFRIENDING, &r.id()).await;
    assert_eq!(tasks.len(), 1);
}

#[tokio::test]
async fn unknown_or_inactive_performer_is_refused_and_nothing_is_stored() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let r = app.post(REFERRER, "/fhir/ServiceRequest", &service_request(&pid, "HealthcareService/nowhere")).await;
    r.assert_outcome(422, "unknown-performer");
    assert_eq!(r.expressions(), vec!["ServiceRequest.performer[0]".to_string()]);

    // An operator closes the MS Society's service in the directory.
    let mut service = app.get(OPERATOR, "/fhir/HealthcareService/ms-society-support").await.body;
    service["active"] = json!(false);
    let closed = app.put(OPERATOR, "/fhir/HealthcareService/ms-society-support", &service, None).await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    let r = app
        .post(REFERRER, "/fhir/ServiceRequest", &service_request(&pid, "HealthcareService/ms-society-support"))
        .await;
    r.assert_outcome(422, "inactive-performer");

    assert_eq!(app.get(OPERATOR, "/fhir/ServiceRequest?_summary=count").await.total(), 0);
    assert_eq!(app.get(OPERATOR, "/fhir/Task?_summary=count").await.total(), 0);
}

#[tokio::test]
async fn sender_may_post_its_own_task_with_focus_and_owner() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let mut sr = service_request(&pid, "Organization/stroke-association");
    sr.as_object_mut().unwrap().remove("performer");
    // A condition no service in the directory serves: no routed Task.
    sr["reasonCode"] =
        json!([{ "coding": [{ "system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure" }] }]);
    let sr_id = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.id();
    assert!(app.tasks_of(REFERRER, &sr_id).await.is_empty(), "no performer, no fitting service, no routed Task");

    let task = json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "focus": { "reference": format!("ServiceRequest/{sr_id}") },
        "basedOn": [{ "reference": format!("ServiceRequest/{sr_id}") }],
        "for": { "reference": format!("Patient/{pid}") },
        "owner": { "reference": "Organization/rnid" }
    });
    let r = app.post(REFERRER, "/fhir/Task", &task).await;
    assert_eq!(r.status, 201, "{}", r.body);

    let mut no_focus = task.clone();
    no_focus.as_object_mut().unwrap().remove("focus");
    // The referral Task profile requires focus (400, before the routing checks' 422s).
    let r = app.post(REFERRER, "/fhir/Task", &no_focus).await;
    r.assert_outcome(400, "cardinality");
    assert!(r.body.to_string().contains("Task.focus: minimum required = 1"), "{}", r.body);
    let mut bad_owner = task.clone();
    bad_owner["owner"] = json!({ "reference": "Organization/not-a-charity" });
    app.post(REFERRER, "/fhir/Task", &bad_owner).await.assert_outcome(422, "unknown-performer");
    let mut foreign_focus = task.clone();
    let (other_sr, _) = app.referral(REFERRER_2, "Organization/rnid").await;
    foreign_focus["focus"] = json!({ "reference": format!("ServiceRequest/{other_sr}") });
    app.post(REFERRER, "/fhir/Task", &foreign_focus).await.assert_outcome(422, "unknown-reference");
}
