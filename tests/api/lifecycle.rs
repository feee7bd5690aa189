//! The Task lifecycle as the charity and the referrer see it, ending with the referrer
//! reading the outcome.

use futures::future::join;
use serde_json::{Value, json};

use crate::helpers::*;

async fn routed_task(app: &TestApp) -> (String, String) {
    let (sr, _) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let tasks = app.tasks_of(STROKE, &sr).await;
    (sr, tasks[0]["id"].as_str().unwrap().to_string())
}

fn with_status(task: &Value, status: &str) -> Value {
    let mut t = task.clone();
    t["status"] = json!(status);
    t
}

#[tokio::test]
async fn the_whole_loop_accept_complete_and_referrer_reads_the_outcome() {
    let app = spawn().await;
    let (sr, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");

    let task = app.get(STROKE, &path).await.body;
    let accepted = app.put(STROKE, &path, &with_status(&task, "accepted"), Some("W/\"1\"")).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(accepted.body["status"], "accepted");

    let progress = app
        .patch(
            STROKE,
            &path,
            &json!([
                { "op": "replace", "path": "/status", "value": "in-progress" },
                { "op": "add", "path": "/businessStatus", "value": { "text": "contacted" } }
            ]),
            Some("W/\"2\""),
        )
        .await;
    assert_eq!(progress.status, 200, "{}", progress.body);

    let completed = app
        .patch(
            STROKE,
            &path,
            &json!([
                { "op": "replace", "path": "/status", "value": "completed" },
                { "op": "add", "path": "/output", "value": [{
                    "type": { "text": "outcome" },
                    "valueCodeableConcept": { "text": "Attended stroke support group" }
                }] }
            ]),
            Some("W/\"3\""),
        )
        .await;
    assert_eq!(completed.status, 200, "{}", completed.body);

    let seen = app.tasks_of(REFERRER, &sr).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["status"], "completed");
    assert_eq!(seen[0]["output"][0]["valueCodeableConcept"]["text"], "Attended stroke support group");
    assert_eq!(seen[0]["meta"]["versionId"], "4");
}

#[tokio::test]
async fn illegal_moves_are_refused_naming_the_allowed_ones_and_change_nothing() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let task = app.get(STROKE, &path).await.body;

    let r = app.put(STROKE, &path, &with_status(&task, "completed"), None).await;
    r.assert_outcome(409, "illegal-transition");
    let diag = r.body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diag.contains("accepted") && diag.contains("rejected"), "{diag}");
    assert_eq!(r.expressions(), vec!["Task.status".to_string()]);

    // A referrer cannot accept on the charity's behalf.
    app.put(REFERRER, &path, &with_status(&task, "accepted"), None).await.assert_outcome(409, "illegal-transition");

    let after = app.get(STROKE, &path).await.body;
    assert_eq!(after["status"], "requested");
    assert_eq!(after["meta"]["versionId"], "1");
}

#[tokio::test]
async fn rejection_needs_a_reason_and_completion_needs_an_output() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let task = app.get(STROKE, &path).await.body;
    app.put(STROKE, &path, &with_status(&task, "rejected"), None).await.assert_outcome(422, "reason-required");
    let mut rejected = with_status(&task, "rejected");
    rejected["statusReason"] = json!({ "coding": [{ "system": "https://signpost.example/fhir/CodeSystem/rejection-reason", "code": "out-of-area" }] });
    assert_eq!(app.put(STROKE, &path, &rejected, None).await.status, 200);

    let (_, tid2) = routed_task(&app).await;
    let path2 = format!("/fhir/Task/{tid2}");
    let t2 = app.get(STROKE, &path2).await.body;
    let accepted = app.put(STROKE, &path2, &with_status(&t2, "accepted"), None).await.body;
    app.put(STROKE, &path2, &with_status(&accepted, "completed"), None).await.assert_outcome(422, "output-required");
    assert_eq!(app.get(STROKE, &path2).await.body["status"], "accepted");
}

#[tokio::test]
async fn charity_may_not_change_owner_requester_or_patient() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let task = app.get(STROKE, &path).await.body;
    let mut hijack = with_status(&task, "accepted");
    hijack["owner"] = json!({ "reference": "Organization/befriending-network-leeds" });
    hijack["for"] = json!({ "reference": "Patient/someone-else" });
    let r = app.put(STROKE, &path, &hijack, None).await;
    r.assert_outcome(422, "field-not-changeable");
    assert!(r.expressions().contains(&"Task.owner".to_string()) && r.expressions().contains(&"Task.for".to_string()));
    let after = app.get(STROKE, &path).await.body;
    assert_eq!(after["owner"]["reference"], "Organization/stroke-association");
    assert_eq!(after["status"], "requested");
}

#[tokio::test]
async fn referrer_may_cancel_an_open_task_with_a_reason() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let task = app.get(REFERRER, &path).await.body;
    let mut cancel = with_status(&task, "cancelled");
    cancel["statusReason"] = json!({ "text": "Patient moved away" });
    let r = app.put(REFERRER, &path, &cancel, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get(STROKE, &path).await.body["status"], "cancelled");
}

#[tokio::test]
async fn two_clients_racing_with_the_same_if_match_get_one_200_and_one_412() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let task = app.get(STROKE, &path).await.body;
    let mut by_charity = with_status(&task, "accepted");
    by_charity["note"] = json!([{ "text": "Accepted by the duty adviser" }]);
    let mut by_referrer = with_status(&task, "cancelled");
    by_referrer["statusReason"] = json!({ "text": "Referred elsewhere" });
    let (a, b) = join(
        app.put(STROKE, &path, &by_charity, Some("W/\"1\"")),
        app.put(REFERRER, &path, &by_referrer, Some("W/\"1\"")),
    )
    .await;
    let mut statuses = vec![a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, vec![200, 412], "{} / {}", a.body, b.body);
    let history = app.get(STROKE, &format!("{path}/_history")).await;
    assert_eq!(history.total(), 2, "exactly one new version");
}
