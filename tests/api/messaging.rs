//! BaRS-style messaging (PRODUCT.md §2): `POST /fhir/$process-message` with the project's own
//! example messages (`examples/bars/`, shaped after the public BaRS examples): new, update,
//! cancel, duplicates, and status changes going back as response messages.

use serde_json::{Value, json};
use signpost::delivery::worker::{Worker, WorkerSettings};

use crate::delivery::Receiver;
use crate::helpers::*;

fn example(name: &str) -> Value {
    let path = format!("{}/examples/bars/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The example message with a fresh Bundle id and UBRN (so that each test is its own referral).
fn message(name: &str, ubrn: &str) -> Value {
    let mut m = example(name);
    m["id"] = json!(uuid::Uuid::new_v4().to_string());
    for e in m["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "ServiceRequest" {
            e["resource"]["identifier"][0]["value"] = json!(ubrn);
        }
    }
    m
}

fn new_ubrn() -> String {
    format!("{:012}", uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000)
}

async fn send(app: &TestApp, key: &str, body: &Value, request_id: Option<&str>, correlation: Option<&str>) -> Resp {
    let mut headers = Vec::new();
    if let Some(r) = request_id {
        headers.push(("X-Request-Id", r));
    }
    if let Some(c) = correlation {
        headers.push(("X-Correlation-Id", c));
    }
    app.send("POST", Some(key), "/fhir/$process-message", Some(body), &headers).await
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn entry<'a>(bundle: &'a Value, ty: &str) -> Vec<&'a Value> {
    bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == ty).collect()
}

#[tokio::test]
async fn a_new_referral_message_is_stored_routed_and_answered_with_a_response_message() {
    let app = spawn().await;
    let ubrn = new_ubrn();
    let request = message("referral-message.json", &ubrn);
    let correlation = uuid();
    let r = send(&app, REFERRER, &request, Some(&uuid()), Some(&correlation)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-correlation-id"), Some(correlation.as_str()));
    assert_eq!(r.body["type"], "message");
    let header = entry(&r.body, "MessageHeader")[0];
    assert_eq!(header["eventCoding"]["code"], "servicerequest-response");
    assert_eq!(header["response"]["identifier"], request["id"]);
    assert_eq!(header["response"]["code"], "ok");
    assert_eq!(header["destination"][0]["endpoint"], "https://gp-system.example.org.uk/bars");
    let sr = entry(&r.body, "ServiceRequest")[0];
    assert_eq!(sr["identifier"][0]["value"], ubrn.as_str());
    // What Signpost does not keep became a logical reference; the charity is the directory's.
    assert_eq!(sr["encounter"]["identifier"]["value"], "ENC-2024-0314-01");
    assert_eq!(sr["performer"][0]["reference"], "Organization/befriending-network-leeds");
    let tasks = entry(&r.body, "Task");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["owner"]["reference"], "Organization/befriending-network-leeds");
    // The same model as REST: the charity sees its Task; the referrer reads the referral.
    let sr_id = sr["id"].as_str().unwrap();
    assert_eq!(app.tasks_of(BEFRIENDING, sr_id).await.len(), 1);
    assert_eq!(app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr_id}")).await.status, 200);
    // Only referrers send referral messages.
    send(&app, STROKE, &message("referral-message.json", &new_ubrn()), Some(&uuid()), Some(&uuid()))
        .await
        .assert_outcome(403, "forbidden");
    // Warnings never refuse a message: they come back with the response, at the message's entry.
    let mut local_code = message("referral-message.json", &new_ubrn());
    let patient_index = local_code["entry"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["resource"]["resourceType"] == "Patient")
        .unwrap();
    local_code["entry"][patient_index]["resource"]["maritalStatus"] =
        json!({ "coding": [{ "system": "https://gp-system.example.org.uk/marital", "code": "CIV" }] });
    let warned = send(&app, REFERRER, &local_code, Some(&uuid()), Some(&uuid())).await;
    assert_eq!(warned.status, 200, "{}", warned.body);
    let outcome = entry(&warned.body, "OperationOutcome");
    assert_eq!(outcome.len(), 1, "{}", warned.body);
    assert_eq!(outcome[0]["issue"][0]["severity"], "warning");
    let at = outcome[0]["issue"][0]["expression"][0].as_str().unwrap();
    assert!(at.starts_with(&format!("Bundle.entry[{patient_index}]")), "{at}");
    assert!(entry(&warned.body, "MessageHeader")[0]["response"]["details"]["reference"].is_string());
    // A second referral for the same patient reuses the Patient (NHS number).
    let again =
        send(&app, REFERRER, &message("referral-message.json", &new_ubrn()), Some(&uuid()), Some(&uuid())).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(entry(&again.body, "ServiceRequest")[0]["subject"], sr["subject"]);
}

#[tokio::test]
async fn headers_are_required_and_a_repeated_request_id_is_a_duplicate() {
    let app = spawn().await;
    let request = message("referral-message.json", &new_ubrn());
    send(&app, REFERRER, &request, None, Some(&uuid())).await.assert_outcome(400, "message-header-missing");
    send(&app, REFERRER, &request, Some(&uuid()), None).await.assert_outcome(400, "message-header-missing");
    let id = uuid();
    assert_eq!(send(&app, REFERRER, &request, Some(&id), Some(&uuid())).await.status, 200);
    let dup = send(&app, REFERRER, &request, Some(&id), Some(&uuid())).await;
    dup.assert_outcome(409, "duplicate");
    assert_eq!(dup.body["issue"][0]["code"], "duplicate");
    let sr = app.get(REFERRER, "/fhir/ServiceRequest?_summary=count").await.total();
    assert_eq!(sr, 1, "stored once");
    // Nothing of a refused message is kept.
    let mut bad = message("referral-message.json", &new_ubrn());
    bad["entry"][0]["resource"]["eventCoding"]["code"] = json!("booking-request");
    send(&app, REFERRER, &bad, Some(&uuid()), Some(&uuid())).await.assert_outcome(422, "bad-message");
    let mut not_first = message("referral-message.json", &new_ubrn());
    not_first["entry"].as_array_mut().unwrap().swap(0, 1);
    assert_eq!(send(&app, REFERRER, &not_first, Some(&uuid()), Some(&uuid())).await.status, 400);
    assert_eq!(app.get(REFERRER, "/fhir/ServiceRequest?_summary=count").await.total(), 1);
}

#[tokio::test]
async fn a_message_that_fails_the_referral_rules_names_the_message_entry() {
    let app = spawn().await;
    let mut request = message("referral-message.json", &new_ubrn());
    // Drop the Consent: the referral rules refuse it, pointing at the message's own entry.
    let entries = request["entry"].as_array_mut().unwrap();
    entries.retain(|e| e["resource"]["resourceType"] != "Consent");
    let sr_index = entries.iter().position(|e| e["resource"]["resourceType"] == "ServiceRequest").unwrap();
    let r = send(&app, REFERRER, &request, Some(&uuid()), Some(&uuid())).await;
    r.assert_outcome(422, "consent-missing");
    assert!(
        r.expressions().iter().any(|e| e.starts_with(&format!("Bundle.entry[{sr_index}]"))),
        "{:?} should point at entry {sr_index}",
        r.expressions()
    );
    assert_eq!(app.get(OPERATOR, "/fhir/ServiceRequest?_summary=count").await.total(), 0);
}

#[tokio::test]
async fn update_and_cancel_messages_change_the_stored_referral() {
    let app = spawn().await;
    let ubrn = new_ubrn();
    let conversation = uuid();
    let created =
        send(&app, REFERRER, &message("referral-message.json", &ubrn), Some(&uuid()), Some(&conversation)).await;
    let sr_id = entry(&created.body, "ServiceRequest")[0]["id"].as_str().unwrap().to_string();

    let updated =
        send(&app, REFERRER, &message("update-message.json", &ubrn), Some(&uuid()), Some(&conversation)).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let stored = app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr_id}")).await.body;
    assert_eq!(stored["priority"], "urgent");
    assert_eq!(stored["note"][0]["text"], "Lives alone since February; prefers morning calls.");

    // Another referrer's message cannot reach this referral.
    send(&app, REFERRER_2, &message("cancel-message.json", &ubrn), Some(&uuid()), Some(&uuid()))
        .await
        .assert_outcome(404, "not-found");
    // A cancellation must say revoked or entered-in-error.
    let mut vague = message("cancel-message.json", &ubrn);
    for e in vague["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "ServiceRequest" {
            e["resource"]["status"] = json!("active");
        }
    }
    send(&app, REFERRER, &vague, Some(&uuid()), Some(&conversation)).await.assert_outcome(422, "bad-message");

    let cancelled =
        send(&app, REFERRER, &message("cancel-message.json", &ubrn), Some(&uuid()), Some(&conversation)).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(app.get(REFERRER, &format!("/fhir/ServiceRequest/{sr_id}")).await.body["status"], "revoked");
    let task = &app.tasks_of(BEFRIENDING, &sr_id).await[0];
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["statusReason"]["coding"][0]["code"], "referral-revoked");
}

/// The referrer's Endpoint speaks FHIR messaging: the charity's status changes reach it as
/// response messages naming the original message and carrying the conversation's
/// X-Correlation-Id (and a new X-Request-Id each).
#[tokio::test]
async fn status_changes_go_back_as_response_messages() {
    let app = spawn_with(|s| s.delivery.enabled = false).await;
    let gp = Receiver::start().await;
    let endpoint = json!({
        "resourceType": "Endpoint", "id": "riverside-bars", "status": "active",
        "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-msg" },
        "managingOrganization": { "reference": "Organization/riverside-medical-practice" },
        "payloadType": [{ "text": "BaRS response messages" }],
        "address": gp.url
    });
    assert_eq!(app.put(OPERATOR, "/fhir/Endpoint/riverside-bars", &endpoint, None).await.status, 201);
    let secret = app.post(OPERATOR, "/fhir/Endpoint/riverside-bars/$secret", &json!({})).await.body["parameter"][0]
        ["valueString"]
        .as_str()
        .unwrap()
        .to_string();
    let request = message("referral-message.json", &new_ubrn());
    let conversation = uuid();
    let created = send(&app, REFERRER, &request, Some(&uuid()), Some(&conversation)).await;
    let task = entry(&created.body, "Task")[0].clone();
    let path = format!("/fhir/Task/{}", task["id"].as_str().unwrap());
    let read = app.get(BEFRIENDING, &path).await.body;
    let mut accepted = read.clone();
    accepted["status"] = json!("accepted");
    assert_eq!(app.put(BEFRIENDING, &path, &accepted, None).await.status, 200);

    let worker = Worker::new(
        app.pool.clone(),
        WorkerSettings { allow_loopback: true, ..Default::default() },
        Default::default(),
    );
    worker.drain_all(signpost::fhir::now_ms()).await.unwrap();
    let hits = gp.hits();
    assert_eq!(hits.len(), 2, "created and accepted");
    let mut request_ids = Vec::new();
    for hit in &hits {
        assert!(standardwebhooks::Webhook::new(&secret).unwrap().verify(&hit.body, &hit.headers).is_ok());
        assert_eq!(hit.headers["x-correlation-id"], conversation.as_str());
        assert_eq!(hit.headers["content-type"], "application/fhir+json");
        request_ids.push(hit.headers["x-request-id"].to_str().unwrap().to_string());
        let body: Value = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(body["type"], "message");
        let header = &body["entry"][0]["resource"];
        assert_eq!(header["eventCoding"]["code"], "servicerequest-response");
        assert_eq!(header["response"]["identifier"], request["id"]);
        assert_eq!(header["destination"][0]["endpoint"], "https://gp-system.example.org.uk/bars");
        assert_eq!(body["entry"][1]["resource"]["resourceType"], "Task");
    }
    request_ids.dedup();
    assert_eq!(request_ids.len(), 2, "each message its own X-Request-Id");
    let statuses: Vec<String> = hits
        .iter()
        .map(|h| {
            serde_json::from_slice::<Value>(&h.body).unwrap()["entry"][1]["resource"]["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(statuses.contains(&"accepted".to_string()), "{statuses:?}");
}

/// A sender's second message about the same people finds what the first stored (the patient by
/// NHS number, the PractitionerRole and Consent by identifier) instead of storing them again, so
/// that later lookups by identifier (a transaction's `ifNoneExist`) still find exactly one.
#[tokio::test]
async fn a_second_message_reuses_the_patient_practitioner_role_and_consent_it_sent_before() {
    let app = spawn().await;
    for _ in 0..2 {
        let r =
            send(&app, REFERRER, &message("referral-message.json", &new_ubrn()), Some(&uuid()), Some(&uuid())).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let msg = example("referral-message.json");
    for ty in ["Patient", "PractitionerRole", "Consent"] {
        let ident = &entry(&msg, ty)[0]["identifier"][0];
        let query =
            format!("/fhir/{ty}?identifier={}|{}", ident["system"].as_str().unwrap(), ident["value"].as_str().unwrap());
        let found = app.get(REFERRER, &query).await;
        assert_eq!(found.total(), 1, "{ty} stored once: {}", found.body);
    }
    // Both referrals are there, each its own.
    let srs = app.get(REFERRER, "/fhir/ServiceRequest?_count=10").await;
    assert_eq!(srs.total(), 2);
    // The README's transaction walk (a PractitionerRole matched by identifier) still works after.
    let walk = app.send("POST", Some(REFERRER), "/fhir", Some(&referral_bundle()), &[("X-Request-Id", &uuid())]).await;
    assert_eq!(walk.status, 200, "{}", walk.body);
}
