//! The Task lifecycle (PRODUCT.md §6) as the charity, the referrer and operators see it: the
//! transition table per actor, coded reasons and outcomes, Signpost's own moves (delivered,
//! viewed, re-routing after a rejection, the revoke and consent cascades, the referral's status
//! roll-up), the timeline with Provenance, and the outcome summary for the GP record.

use futures::future::join;
use serde_json::{Value, json};

use crate::helpers::*;

const REASONS: &str = "https://signpost.example/fhir/CodeSystem/rejection-reason";
const STAGES: &str = "https://signpost.example/fhir/CodeSystem/referral-outcome";
const OUTCOMES: &str = "https://signpost.example/fhir/CodeSystem/support-outcome";

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

fn coded(system: &str, code: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code }] })
}

fn outcome(code: &str) -> Value {
    json!([{ "type": { "text": "outcome" }, "valueCodeableConcept": coded(OUTCOMES, code) }])
}

/// `task` moved to `status` with whatever that status needs.
fn moved(task: &Value, status: &str) -> Value {
    let mut t = with_status(task, status);
    match status {
        "rejected" | "failed" | "cancelled" => t["statusReason"] = coded(REASONS, "not-eligible"),
        "completed" => t["output"] = outcome("support-completed"),
        _ => {}
    }
    t
}

fn etag(r: &Resp) -> String {
    r.header("etag").unwrap().to_string()
}

#[tokio::test]
async fn the_whole_loop_viewed_accept_complete_and_the_referrer_files_the_outcome() {
    let app = spawn().await;
    let (sr, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");

    // The charity's first read records `viewed` and returns that version.
    let read = app.get(STROKE, &path).await;
    assert_eq!(read.body["businessStatus"]["coding"][0]["code"], "viewed");
    assert_eq!(etag(&read), "W/\"2\"");
    assert_eq!(etag(&app.get(STROKE, &path).await), "W/\"2\"", "only the first read");
    let accepted = app.put(STROKE, &path, &with_status(&read.body, "accepted"), Some(&etag(&read))).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);

    let progress = app
        .patch(
            STROKE,
            &path,
            &json!([
                { "op": "replace", "path": "/status", "value": "in-progress" },
                { "op": "replace", "path": "/businessStatus", "value": coded(STAGES, "contacted") },
                { "op": "add", "path": "/executionPeriod", "value": { "start": "2024-03-20" } },
                { "op": "add", "path": "/note", "value": [{ "text": "Weekly stroke club, Tuesdays" }] }
            ]),
            Some("W/\"3\""),
        )
        .await;
    assert_eq!(progress.status, 200, "{}", progress.body);
    let completed = app
        .patch(
            STROKE,
            &path,
            &json!([
                { "op": "replace", "path": "/status", "value": "completed" },
                { "op": "add", "path": "/output", "value": outcome("peer-support-joined") }
            ]),
            Some("W/\"4\""),
        )
        .await;
    assert_eq!(completed.status, 200, "{}", completed.body);

    // The referral follows its only Task.
    assert_eq!(app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr}")).await.body["status"], "completed");
    // The outcome summary for the GP record.
    let summary = app.get(REFERRER, &format!("{path}/$outcome-summary")).await;
    assert_eq!(summary.status, 200, "{}", summary.body);
    assert_eq!(summary.body["type"], "document");
    let composition = &summary.body["entry"][0]["resource"];
    assert_eq!(composition["resourceType"], "Composition");
    let sections: Vec<&str> = composition["section"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(sections, vec!["referral-details", "outcome", "support-offered", "key-dates", "contact"]);
    let text = composition.to_string();
    for item in
        ["Stroke Association", "Joined peer support", "Weekly stroke club", "2024-03-20", "Cerebrovascular accident"]
    {
        assert!(text.contains(item), "{item} missing from {text}");
    }
    for pii in ["9000000009", "DOE", "1948"] {
        assert!(!summary.body.to_string().contains(pii), "{pii} copied into the summary");
    }
    let filed = &summary.body["entry"][1]["resource"];
    assert_eq!(filed["output"][0]["valueCodeableConcept"]["coding"][0]["code"], "peer-support-joined");
    // It validates as a FHIR document.
    let check = app.post(REFERRER, "/fhir/Bundle/$validate", &summary.body).await;
    assert_eq!(check.status, 200);
    assert!(!check.body.to_string().contains("\"severity\":\"error\""), "{}", check.body);
    // Only the referral's parties read it.
    app.get(BEFRIENDING, &format!("{path}/$outcome-summary")).await.assert_outcome(404, "not-found");
}

#[tokio::test]
async fn no_summary_while_the_task_is_open() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    app.get(REFERRER, &format!("/fhir/Task/{tid}/$outcome-summary")).await.assert_outcome(409, "not-finished");
}

/// Put a Task in `status` directly in the store (the table test needs every starting state).
fn force_status(app: &TestApp, id: &str, status: &str) {
    use signpost::store::resources;
    let mut conn = app.pool.get().unwrap();
    let current = resources::get(&mut conn, "Task", id).unwrap().unwrap();
    let mut body = moved(&current.json().unwrap(), status);
    let version = current.version_id + 1;
    let now = signpost::fhir::now_ms();
    signpost::fhir::stamp_meta(&mut body, version, now);
    let stored = resources::StoredResource {
        resource_type: "Task".into(),
        id: id.into(),
        version_id: version,
        last_updated: now,
        body: body.to_string(),
    };
    let spec = signpost::fhir::type_spec("Task").unwrap();
    assert!(
        resources::update_if_version(
            &mut conn,
            &stored,
            current.version_id,
            &signpost::fhir::search::index_values(spec, &body),
            None,
            &body
        )
        .unwrap()
    );
}

/// Every (from, to, actor): the moves of PRODUCT.md §6 succeed; every other one is refused with
/// 409 naming the allowed moves, and the Task is unchanged.
#[tokio::test]
async fn every_move_of_every_actor_through_the_api() {
    let app = spawn().await;
    let statuses = signpost::lifecycle::STATUSES;
    let open = ["requested", "accepted", "in-progress", "on-hold"];
    let allowed = |from: &str, to: &str, who: &str| -> bool {
        match who {
            "charity" => matches!(
                (from, to),
                ("requested", "accepted" | "rejected")
                    | ("accepted", "in-progress" | "on-hold" | "completed" | "failed")
                    | ("in-progress", "on-hold" | "completed" | "failed")
                    | ("on-hold", "in-progress" | "completed" | "failed")
            ),
            "referrer" => (to == "cancelled" && open.contains(&from)) || (to == "entered-in-error" && from != to),
            _ => to == "entered-in-error" && from != to,
        }
    };
    let (sr, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let mut moves = 0;
    for from in statuses.iter().copied() {
        for to in statuses.iter().filter(|t| **t != from) {
            for (who, key) in [("charity", STROKE), ("referrer", REFERRER), ("operator", OPERATOR)] {
                force_status(&app, &tid, from);
                let before = app.get(REFERRER, &path).await;
                let r = app.put(key, &path, &moved(&before.body, to), Some(&etag(&before))).await;
                if allowed(from, to, who) {
                    assert_eq!(r.status, 200, "{from} -> {to} by the {who}: {}", r.body);
                    assert_eq!(r.body["status"], *to);
                    moves += 1;
                } else {
                    assert_eq!(r.status, 409, "{from} -> {to} by the {who} must be refused: {}", r.body);
                    assert_eq!(r.issue_codes(), vec!["illegal-transition"]);
                    let after = app.get(REFERRER, &path).await;
                    assert_eq!(after.body, before.body, "{from} -> {to} by the {who} changed the Task");
                }
            }
        }
    }
    assert_eq!(moves, 12 + 4 + 11 * 2, "the table's moves: charity 12, referrer cancels 4, entered-in-error 11 each");
    let _ = sr;
}

#[tokio::test]
async fn reasons_and_outcomes_are_coded_from_signposts_code_systems() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let task = app.get(STROKE, &path).await.body;
    app.put(STROKE, &path, &with_status(&task, "rejected"), None).await.assert_outcome(422, "reason-required");
    let mut free_text = with_status(&task, "rejected");
    free_text["statusReason"] = json!({ "text": "too far" });
    app.put(STROKE, &path, &free_text, None).await.assert_outcome(422, "reason-required");
    let mut unknown = with_status(&task, "rejected");
    unknown["statusReason"] = coded(REASONS, "too-far");
    let r = app.put(STROKE, &path, &unknown, None).await;
    r.assert_outcome(422, "unknown-lifecycle-code");
    assert_eq!(r.expressions(), vec!["Task.statusReason"]);
    let mut stage = task.clone();
    stage["businessStatus"] = coded(STAGES, "phoned-twice");
    app.put(STROKE, &path, &stage, None).await.assert_outcome(422, "unknown-lifecycle-code");
    assert_eq!(app.get(STROKE, &path).await.body["meta"]["versionId"], "2", "nothing changed");

    let (_, tid2) = routed_task(&app).await;
    let path2 = format!("/fhir/Task/{tid2}");
    let t2 = app.get(STROKE, &path2).await.body;
    let accepted = app.put(STROKE, &path2, &with_status(&t2, "accepted"), None).await.body;
    app.put(STROKE, &path2, &with_status(&accepted, "completed"), None).await.assert_outcome(422, "output-required");
    let mut uncoded = with_status(&accepted, "completed");
    uncoded["output"] = json!([{ "type": { "text": "outcome" }, "valueCodeableConcept": { "text": "went well" } }]);
    app.put(STROKE, &path2, &uncoded, None).await.assert_outcome(422, "output-required");
    let mut bad = with_status(&accepted, "completed");
    bad["output"] = outcome("cured");
    app.put(STROKE, &path2, &bad, None).await.assert_outcome(422, "unknown-lifecycle-code");
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
async fn two_clients_racing_with_the_same_if_match_get_one_200_and_one_412() {
    let app = spawn().await;
    let (_, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let read = app.get(STROKE, &path).await;
    let tag = etag(&read);
    let accept = with_status(&read.body, "accepted");
    let mut accept_with_note = accept.clone();
    accept_with_note["note"] = json!([{ "text": "first call booked" }]);
    let (a, b) =
        join(app.put(STROKE, &path, &accept, Some(&tag)), app.put(STROKE, &path, &accept_with_note, Some(&tag))).await;
    let mut statuses = vec![a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, vec![200, 412], "{} / {}", a.body, b.body);
    let history = app.get(STROKE, &format!("{path}/_history")).await;
    assert_eq!(history.total(), 3, "created, viewed, and one of the two");
}

/// A social-isolation referral fits Age UK Leeds and the Befriending Network; the first charity
/// rejects; Signpost routes the referral to the other with a new Task and marks the rejected one
/// `rerouted`; when the second rejects too, none is left: `no-service-left`.
#[tokio::test]
async fn a_rejection_moves_the_referral_to_the_next_fitting_service() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let mut sr = service_request(&pid, "Organization/x");
    sr.as_object_mut().unwrap().remove("performer");
    sr["reasonCode"] = json!([{ "coding": [{ "system": "http://snomed.info/sct", "code": "422650009", "display": "Social isolation" }] }]);
    let created = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let sr_id = created.id();
    let tasks = app.tasks_of(REFERRER, &sr_id).await;
    assert_eq!(tasks.len(), 1);
    let first_owner = tasks[0]["owner"]["reference"].as_str().unwrap().to_string();
    let (first_key, second_key, second_owner) = if first_owner == "Organization/age-uk-leeds" {
        (AGE_UK, BEFRIENDING, "Organization/befriending-network-leeds")
    } else {
        (BEFRIENDING, AGE_UK, "Organization/age-uk-leeds")
    };
    let first = format!("/fhir/Task/{}", tasks[0]["id"].as_str().unwrap());
    let read = app.get(first_key, &first).await;
    let mut reject = with_status(&read.body, "rejected");
    reject["statusReason"] = coded(REASONS, "service-full");
    assert_eq!(app.put(first_key, &first, &reject, Some(&etag(&read))).await.status, 200);

    let tasks = app.tasks_of(REFERRER, &sr_id).await;
    assert_eq!(tasks.len(), 2, "a new Task, the rejected one kept");
    let rejected = tasks.iter().find(|t| t["status"] == "rejected").unwrap();
    assert_eq!(rejected["businessStatus"]["coding"][0]["code"], "rerouted");
    let next = tasks.iter().find(|t| t["status"] == "requested").unwrap();
    assert_eq!(next["owner"]["reference"], second_owner);
    assert_ne!(next["id"], rejected["id"]);
    let why = next["note"][0]["text"].as_str().unwrap();
    assert!(why.contains(&format!("After {first_owner} rejected")), "{why}");
    assert_eq!(app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr_id}")).await.body["status"], "active");

    let second = format!("/fhir/Task/{}", next["id"].as_str().unwrap());
    let read = app.get(second_key, &second).await;
    let mut reject = with_status(&read.body, "rejected");
    reject["statusReason"] = coded(REASONS, "out-of-area");
    assert_eq!(app.put(second_key, &second, &reject, Some(&etag(&read))).await.status, 200);
    let tasks = app.tasks_of(REFERRER, &sr_id).await;
    assert_eq!(tasks.len(), 2, "nobody left to try");
    let last = tasks.iter().find(|t| t["id"] == next["id"]).unwrap();
    assert_eq!(last["businessStatus"]["coding"][0]["code"], "no-service-left");
    // Everything finished, nothing completed: the referral stays active for the referrer to act on.
    assert_eq!(app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr_id}")).await.body["status"], "active");
}

#[tokio::test]
async fn revoking_the_referral_cancels_its_open_tasks() {
    let app = spawn().await;
    let (sr, tid) = routed_task(&app).await;
    let path = format!("/fhir/ServiceRequest/{sr}");
    let current = app.get(REFERRER, &path).await;
    let r = app.put(REFERRER, &path, &with_status(&current.body, "revoked"), Some(&etag(&current))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let task = app.get(STROKE, &format!("/fhir/Task/{tid}")).await.body;
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["statusReason"]["coding"][0]["code"], "referral-revoked");
    assert_eq!(app.get(REFERRER, &path).await.body["status"], "revoked", "left as the referrer set it");

    // entered-in-error does the same, with its own reason.
    let (sr2, tid2) = routed_task(&app).await;
    let path2 = format!("/fhir/ServiceRequest/{sr2}");
    let current = app.get(REFERRER, &path2).await.body;
    assert_eq!(app.put(REFERRER, &path2, &with_status(&current, "entered-in-error"), None).await.status, 200);
    let task = app.get(STROKE, &format!("/fhir/Task/{tid2}")).await.body;
    assert_eq!(task["statusReason"]["coding"][0]["code"], "referral-entered-in-error");
}

#[tokio::test]
async fn withdrawing_consent_cancels_every_open_referral_of_the_patient() {
    let app = spawn().await;
    let pid = app.patient(REFERRER).await;
    let mut task_ids = Vec::new();
    for performer in ["HealthcareService/stroke-association-support", "Organization/befriending-network-leeds"] {
        let r = app.post(REFERRER, "/fhir/ServiceRequest", &service_request(&pid, performer)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        task_ids.push(app.tasks_of(REFERRER, &r.id()).await[0]["id"].as_str().unwrap().to_string());
    }
    // One is already finished: it stays as it is.
    let done = format!("/fhir/Task/{}", task_ids[1]);
    let t = app.get(BEFRIENDING, &done).await.body;
    let mut reject = with_status(&t, "rejected");
    reject["statusReason"] = coded(REASONS, "not-eligible");
    assert_eq!(app.put(BEFRIENDING, &done, &reject, None).await.status, 200);

    let consents = app.get(REFERRER, &format!("/fhir/Consent?patient=Patient/{pid}")).await.resources();
    let mut withdrawn = consents[0].clone();
    withdrawn["status"] = json!("inactive");
    let c = app.put(REFERRER, &format!("/fhir/Consent/{}", withdrawn["id"].as_str().unwrap()), &withdrawn, None).await;
    assert_eq!(c.status, 200, "{}", c.body);
    let open = app.get(STROKE, &format!("/fhir/Task/{}", task_ids[0])).await.body;
    assert_eq!(open["status"], "cancelled");
    assert_eq!(open["statusReason"]["coding"][0]["code"], "consent-withdrawn");
    assert_eq!(app.get(BEFRIENDING, &done).await.body["status"], "rejected");
}

#[tokio::test]
async fn the_timeline_shows_every_version_with_its_provenance_to_the_referral_parties_only() {
    let app = spawn().await;
    let (sr, tid) = routed_task(&app).await;
    let path = format!("/fhir/Task/{tid}");
    let read = app.get(STROKE, &path).await;
    let accepted = app
        .send(
            "PUT",
            Some(STROKE),
            &path,
            Some(&with_status(&read.body, "accepted")),
            &[("If-Match", etag(&read).as_str()), ("X-Correlation-Id", "corr-accept-1")],
        )
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);

    let timeline = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr}/$timeline")).await;
    assert_eq!(timeline.status, 200, "{}", timeline.body);
    let entries = timeline.body["entry"].as_array().unwrap();
    let seq: Vec<String> = entries
        .iter()
        .map(|e| {
            let r = &e["resource"];
            match r["resourceType"].as_str().unwrap() {
                "Provenance" => {
                    format!("Provenance:{}", r["target"][0]["reference"].as_str().unwrap().split('/').next().unwrap())
                }
                t => format!("{t}/{}", r["meta"]["versionId"].as_str().unwrap()),
            }
        })
        .collect();
    assert_eq!(
        seq,
        vec![
            "ServiceRequest/1",
            "Provenance:ServiceRequest",
            "Task/1",
            "Provenance:Task",
            "Task/2",
            "Provenance:Task",
            "Task/3",
            "Provenance:Task"
        ],
        "{seq:?}"
    );
    let accept_provenance = &entries[7]["resource"];
    assert_eq!(accept_provenance["target"][0]["reference"], format!("Task/{tid}/_history/3"));
    assert_eq!(accept_provenance["agent"][0]["onBehalfOf"]["reference"], "Organization/stroke-association");
    assert!(accept_provenance.to_string().contains("corr-accept-1"));
    let viewed = &entries[5]["resource"];
    assert_eq!(viewed["agent"][0]["who"]["display"], "Signpost");
    // The charity sees it too; another charity and operators do not.
    assert_eq!(app.get(STROKE, &format!("/fhir/ServiceRequest/{sr}/$timeline")).await.status, 200);
    app.get(BEFRIENDING, &format!("/fhir/ServiceRequest/{sr}/$timeline")).await.assert_outcome(404, "not-found");
    app.get(OPERATOR, &format!("/fhir/ServiceRequest/{sr}/$timeline")).await.assert_outcome(403, "forbidden");
}

/// Routing ranks charities by their open referrals, kept as Tasks are written: after creating,
/// accepting, rejecting (with a re-route), completing and cancelling, the kept counts equal a
/// recount of every Task.
#[tokio::test]
async fn open_referral_counts_follow_every_task_move() {
    let app = spawn().await;
    let (sr_a, ta) = routed_task(&app).await;
    let (_, tb) = routed_task(&app).await;
    let (_, tc) = routed_task(&app).await;
    let accept = |t: &Value| with_status(t, "accepted");
    let a = app.get(STROKE, &format!("/fhir/Task/{ta}")).await.body;
    let a = app.put(STROKE, &format!("/fhir/Task/{ta}"), &accept(&a), None).await.body;
    assert_eq!(app.put(STROKE, &format!("/fhir/Task/{ta}"), &moved(&a, "completed"), None).await.status, 200);
    let b = app.get(STROKE, &format!("/fhir/Task/{tb}")).await.body;
    assert_eq!(app.put(STROKE, &format!("/fhir/Task/{tb}"), &moved(&b, "rejected"), None).await.status, 200);
    let c = app.get(REFERRER, &format!("/fhir/Task/{tc}")).await.body;
    assert_eq!(app.put(REFERRER, &format!("/fhir/Task/{tc}"), &moved(&c, "cancelled"), None).await.status, 200);
    app.referral(REFERRER, "Organization/befriending-network-leeds").await;
    let _ = sr_a;

    let everything = app.get(OPERATOR, "/fhir/Task?_count=100").await.resources();
    let mut recount = std::collections::HashMap::<String, i64>::new();
    for t in &everything {
        if ["requested", "accepted", "in-progress", "on-hold"].contains(&t["status"].as_str().unwrap()) {
            let owner = t["owner"]["reference"].as_str().unwrap().trim_start_matches("Organization/").to_string();
            *recount.entry(owner).or_default() += 1;
        }
    }
    let mut conn = app.pool.get().unwrap();
    let kept = signpost::store::routing::open_referrals(&mut conn).unwrap();
    assert_eq!(kept, recount);
    assert_eq!(kept.get("befriending-network-leeds"), Some(&1));
    assert_eq!(kept.get("stroke-association"), None, "all three stroke Tasks are finished");
}
