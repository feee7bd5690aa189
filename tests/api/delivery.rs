//! Webhook delivery (RELIABILITY.md §2, scenarios D and C): real local HTTP receivers scripted to
//! succeed, fail, redirect or answer 410/429; the outbox drained step by step on a fake clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use signpost::delivery::worker::{Worker, WorkerSettings};

use crate::helpers::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// What the receiver answers next.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// Send a body this long.
    pub body_len: usize,
}

type Script = VecDeque<Answer>;

/// A local webhook receiver: records every request, answers from its script (200 when empty, or
/// the default answer), and tracks how many requests it had open at once.
pub struct Receiver {
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<Script>>,
    default: Arc<Mutex<Answer>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    max_open: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use std::sync::atomic::Ordering;
        let hits: Arc<Mutex<Vec<Hit>>> = Default::default();
        let script: Arc<Mutex<Script>> = Default::default();
        let default = Arc::new(Mutex::new(Answer { status: 200, ..Default::default() }));
        let open: Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let max_open: Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (h, s, d, o, m) = (hits.clone(), script.clone(), default.clone(), open.clone(), max_open.clone());
        let server = HttpServer::new(move || {
            let (h, s, d, o, m) = (h.clone(), s.clone(), d.clone(), o.clone(), m.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (h, s, d, o, m) = (h.clone(), s.clone(), d.clone(), o.clone(), m.clone());
                async move {
                    let now_open = o.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now_open, Ordering::SeqCst);
                    let mut headers = http::HeaderMap::new();
                    for (k, v) in req.headers() {
                        headers.insert(
                            http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                            http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                        );
                    }
                    h.lock().unwrap().push(Hit { headers, body: body.to_vec() });
                    let answer = s.lock().unwrap().pop_front().unwrap_or_else(|| d.lock().unwrap().clone());
                    if answer.delay_ms > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(answer.delay_ms)).await;
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                    let mut res = HttpResponse::build(actix_web::http::StatusCode::from_u16(answer.status).unwrap());
                    for (k, v) in answer.headers {
                        res.insert_header((k, v));
                    }
                    res.body(vec![b'x'; answer.body_len])
                }
            }))
        })
        .workers(2)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        Receiver { url: format!("http://127.0.0.1:{port}/hook"), hits, script, default, open, max_open }
    }

    pub fn answer(&self, status: u16, headers: Vec<(&'static str, String)>) {
        self.script.lock().unwrap().push_back(Answer { status, headers, ..Default::default() });
    }

    /// What to answer once the script is used up.
    pub fn by_default(&self, answer: Answer) {
        *self.default.lock().unwrap() = answer;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The most requests it had open at once.
    pub fn max_open(&self) -> usize {
        let _ = &self.open;
        self.max_open.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An app whose worker the test drives, with the Stroke Association's Endpoint pointed at a
/// receiver and given a secret.
async fn setup() -> (TestApp, Receiver, Worker, String) {
    let app = spawn_with(|s| s.delivery.enabled = false).await;
    let receiver = Receiver::start().await;
    let secret = point_endpoint(&app, "stroke-association-webhook", "stroke-association", &receiver.url).await;
    let worker = Worker::new(
        app.pool.clone(),
        WorkerSettings { allow_loopback: true, ..Default::default() },
        Default::default(),
    );
    (app, receiver, worker, secret)
}

/// Make an Endpoint of `org` active at `url` and set its secret; returns the secret.
async fn point_endpoint(app: &TestApp, id: &str, org: &str, url: &str) -> String {
    let endpoint = json!({
        "resourceType": "Endpoint", "id": id, "status": "active",
        "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
        "managingOrganization": { "reference": format!("Organization/{org}") },
        "payloadType": [{ "text": "referral events" }],
        "address": url
    });
    let r = app.put(OPERATOR, &format!("/fhir/Endpoint/{id}"), &endpoint, None).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let s = app.post(OPERATOR, &format!("/fhir/Endpoint/{id}/$secret"), &json!({})).await;
    assert_eq!(s.status, 200, "{}", s.body);
    s.body["parameter"][0]["valueString"].as_str().unwrap().to_string()
}

fn now() -> i64 {
    signpost::fhir::now_ms()
}

fn verify(secret: &str, hit: &Hit) -> bool {
    standardwebhooks::Webhook::new(secret).unwrap().verify(&hit.body, &hit.headers).is_ok()
}

#[tokio::test]
async fn a_new_referral_reaches_the_charity_as_a_signed_thin_webhook() {
    let (app, receiver, worker, secret) = setup().await;
    let (sr, _) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let report = worker.drain_once(now()).await.unwrap();
    assert_eq!((report.claimed, report.delivered), (1, 1), "{report:?}");
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    // D2: it verifies with the Standard Webhooks reference library, and tampering fails.
    assert!(verify(&secret, &hits[0]));
    let mut tampered = hits[0].clone();
    tampered.body[5] ^= 1;
    assert!(!verify(&secret, &tampered));
    assert!(!verify(&signpost::delivery::signature::new_secret(), &hits[0]), "another secret fails");
    // D11: a thin payload, no patient data.
    let body: Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(body["type"], "referral.created");
    assert_eq!(body["data"]["serviceRequest"], format!("ServiceRequest/{sr}"));
    assert_eq!(body["data"]["eventNumber"], 1);
    let text = String::from_utf8_lossy(&hits[0].body);
    for pii in ["9000000009", "DOE", "Jane", "LS1", "1948"] {
        assert!(!text.contains(pii), "{pii} in the webhook");
    }
    assert!(hits[0].headers["webhook-id"].to_str().unwrap().starts_with("msg_"));
    // Nothing more to send; the status call says what was sent.
    assert_eq!(worker.drain_once(now()).await.unwrap().claimed, 0);
    let status = app.get(STROKE, "/fhir/Endpoint/stroke-association-webhook/$status").await;
    assert_eq!(status.body["parameter"][0]["valueInteger"], 1, "{}", status.body);
    // Another charity cannot watch this Endpoint; only operators set secrets.
    app.get(BEFRIENDING, "/fhir/Endpoint/stroke-association-webhook/$status").await.assert_outcome(404, "not-found");
    app.post(STROKE, "/fhir/Endpoint/stroke-association-webhook/$secret", &json!({}))
        .await
        .assert_outcome(403, "forbidden");
}

#[tokio::test]
async fn status_changes_notify_the_charity_and_the_referrer() {
    let (app, receiver, worker, _) = setup().await;
    let gp = Receiver::start().await;
    let gp_secret = point_endpoint(&app, "riverside-outcomes", "riverside-medical-practice", &gp.url).await;
    let (sr, _) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let task = app.tasks_of(STROKE, &sr).await[0]["id"].as_str().unwrap().to_string();
    let ops = json!([{ "op": "replace", "path": "/status", "value": "accepted" }]);
    assert_eq!(app.patch(STROKE, &format!("/fhir/Task/{task}"), &ops, None).await.status, 200);
    // A change that is not a status change notifies nobody.
    let note = json!([{ "op": "add", "path": "/note", "value": [{ "text": "called, no answer" }] }]);
    assert_eq!(app.patch(STROKE, &format!("/fhir/Task/{task}"), &note, None).await.status, 200);
    worker.drain_all(now()).await.unwrap();
    let types = |r: &Receiver| -> Vec<(String, i64)> {
        r.hits()
            .iter()
            .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap())
            .map(|b| (b["type"].as_str().unwrap().to_string(), b["data"]["eventNumber"].as_i64().unwrap()))
            .collect()
    };
    let mut charity = types(&receiver);
    charity.sort_by_key(|t| t.1);
    assert_eq!(charity, vec![("referral.created".into(), 1), ("referral.updated".into(), 2)]);
    let mut referrer = types(&gp);
    referrer.sort_by_key(|t| t.1);
    assert_eq!(referrer, vec![("referral.created".into(), 1), ("referral.updated".into(), 2)], "the GP hears back");
    assert!(gp.hits().iter().all(|h| verify(&gp_secret, h)));
}

/// Delivery to the charity records the `delivered` stage and the charity's first read `viewed`,
/// neither notifying anyone; when the charity completes, the referrer's Endpoint hears it with
/// the address of the outcome summary (or the summary itself, for a full-resource Endpoint).
#[tokio::test]
async fn delivery_marks_delivered_and_the_referrer_receives_the_outcome_summary() {
    let (app, receiver, worker, _) = setup().await;
    let gp = Receiver::start().await;
    point_endpoint(&app, "riverside-outcomes", "riverside-medical-practice", &gp.url).await;
    let (sr, _) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    assert_eq!(worker.drain_all(now()).await.unwrap().delivered, 2);
    let tid = app.tasks_of(REFERRER, &sr).await[0]["id"].as_str().unwrap().to_string();
    let path = format!("/fhir/Task/{tid}");
    let seen = app.get(REFERRER, &path).await.body;
    assert_eq!(seen["businessStatus"]["coding"][0]["code"], "delivered");
    let read = app.get(STROKE, &path).await;
    assert_eq!(read.body["businessStatus"]["coding"][0]["code"], "viewed");
    assert_eq!(worker.drain_all(now()).await.unwrap().claimed, 0, "delivered and viewed notify nobody");

    let mut done = read.body.clone();
    done["status"] = json!("accepted");
    let accepted = app.put(STROKE, &path, &done, None).await.body;
    let mut done = accepted.clone();
    done["status"] = json!("completed");
    done["output"] = json!([{ "type": { "text": "outcome" }, "valueCodeableConcept": { "coding": [{
        "system": "https://signpost.example/fhir/CodeSystem/support-outcome", "code": "advice-given" }] } }]);
    assert_eq!(app.put(STROKE, &path, &done, None).await.status, 200);
    worker.drain_all(now()).await.unwrap();
    // Deliveries are unordered: the latest event is the one with the highest eventNumber.
    let latest = |r: &Receiver| -> Value {
        r.hits()
            .iter()
            .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap())
            .max_by_key(|b| b["data"]["eventNumber"].as_i64().unwrap())
            .unwrap()
    };
    let last = latest(&gp);
    assert_eq!(last["type"], "referral.updated");
    assert_eq!(last["data"]["outcomeSummary"], format!("Task/{tid}/$outcome-summary"));
    let charity_last = latest(&receiver);
    assert!(charity_last["data"].get("outcomeSummary").is_none(), "the summary is for the referrer");
    let summary = app.get(REFERRER, &format!("{path}/$outcome-summary")).await;
    assert_eq!(summary.status, 200);
    assert!(summary.body.to_string().contains("Advice and information given"));

    // A referrer Endpoint that asked for full resources gets the document itself.
    let mut full = app.get(OPERATOR, "/fhir/Endpoint/riverside-outcomes").await.body;
    full["payloadType"] = json!([{ "coding": [{ "system": "https://signpost.example/fhir/CodeSystem/webhook-payload", "code": "full-resource" }] }]);
    assert_eq!(app.put(OPERATOR, "/fhir/Endpoint/riverside-outcomes", &full, None).await.status, 200);
    let (sr2, _) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let t2 = app.tasks_of(STROKE, &sr2).await[0].clone();
    let mut rejected = t2.clone();
    rejected["status"] = json!("rejected");
    rejected["statusReason"] = json!({ "coding": [{ "system": "https://signpost.example/fhir/CodeSystem/rejection-reason", "code": "service-full" }] });
    assert_eq!(
        app.put(STROKE, &format!("/fhir/Task/{}", t2["id"].as_str().unwrap()), &rejected, None).await.status,
        200
    );
    worker.drain_all(now()).await.unwrap();
    let documents: Vec<Value> = gp
        .hits()
        .iter()
        .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap())
        .filter(|b| b["data"]["outcomeSummary"]["resourceType"] == "Bundle")
        .collect();
    assert!(!documents.is_empty(), "the document was pushed");
    assert!(documents[0]["data"]["outcomeSummary"].to_string().contains("Service full"));
}

#[tokio::test]
async fn failures_retry_on_the_schedule_with_one_webhook_id_then_dead_letter_and_resend() {
    let (app, receiver, worker, _) = setup().await;
    for _ in 0..10 {
        receiver.answer(500, Vec::new());
    }
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let start = now();
    let mut t = start;
    // D4: ten attempts, each only when due (checked one second before and at ±10 %).
    let delays = [0i64, 5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400];
    for (i, d) in delays.iter().enumerate() {
        let due = t + d * 1000;
        if *d > 0 {
            let early = worker.drain_once(due - d * 100 - 1000).await.unwrap();
            assert_eq!(early.claimed, 0, "attempt {} came early", i + 1);
        }
        t = due + d * 100;
        let r = worker.drain_once(t).await.unwrap();
        assert_eq!(r.claimed, 1, "attempt {} at +{d} s", i + 1);
        if i < 9 {
            assert_eq!(r.retrying, 1);
        } else {
            assert_eq!(r.dead_lettered, 1);
        }
    }
    assert_eq!(worker.drain_once(t + 365 * 86_400_000).await.unwrap().claimed, 0, "dead letters wait");
    // D6: every attempt carried the same webhook-id.
    let ids: Vec<String> =
        receiver.hits().iter().map(|h| h.headers["webhook-id"].to_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 10);
    assert!(ids.iter().all(|i| *i == ids[0]));
    let events = app.get(OPERATOR, "/fhir/Endpoint/stroke-association-webhook/$events?since=0").await;
    assert!(events.body.to_string().contains("\"failed\""), "{}", events.body);
    // An operator replays it; the receiver now answers 200.
    app.post(STROKE, "/fhir/Endpoint/stroke-association-webhook/$resend", &json!({}))
        .await
        .assert_outcome(403, "forbidden");
    let r = app.post(OPERATOR, "/fhir/Endpoint/stroke-association-webhook/$resend", &json!({})).await;
    assert_eq!(r.body["parameter"][0]["valueInteger"], 1);
    assert_eq!(worker.drain_once(now()).await.unwrap().delivered, 1);
    assert_eq!(receiver.hits().last().unwrap().headers["webhook-id"].to_str().unwrap(), ids[0]);
}

#[tokio::test]
async fn gone_disables_and_holds_retry_after_is_honoured_and_redirects_fail() {
    let (app, receiver, worker, _) = setup().await;
    // 429 with Retry-After: 120 s — not before.
    receiver.answer(429, vec![("Retry-After", "120".into())]);
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let t = now();
    assert_eq!(worker.drain_once(t).await.unwrap().retrying, 1);
    assert_eq!(worker.drain_once(t + 60_000).await.unwrap().claimed, 0, "5 s would be too early");
    // A redirect is a failure and is not followed.
    let target = Receiver::start().await;
    receiver.answer(301, vec![("Location", target.url.clone())]);
    assert_eq!(worker.drain_once(t + 121_000).await.unwrap().retrying, 1);
    assert!(target.hits().is_empty(), "redirects are never followed");
    // 410: the Endpoint is disabled; its events are held, not dropped.
    receiver.answer(410, Vec::new());
    assert_eq!(worker.drain_once(t + 121_000 + 330_000).await.unwrap().claimed, 1);
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    assert_eq!(worker.drain_all(t + 10 * 86_400_000).await.unwrap().claimed, 0, "held while disabled");
    let status = app.get(OPERATOR, "/fhir/Endpoint/stroke-association-webhook/$status").await;
    assert_eq!(status.body["parameter"][1]["valueBoolean"], true, "{}", status.body);
    assert_eq!(alert_kinds(&app).await, vec!["endpoint-gone"], "one alert, not one per held event");
    // Re-enabled by an operator, both events are delivered.
    app.post(OPERATOR, "/fhir/Endpoint/stroke-association-webhook/$resend", &json!({})).await;
    let r = worker.drain_all(now()).await.unwrap();
    assert_eq!(r.delivered, 2, "{r:?}");
}

/// The kinds of the operator alerts, newest first.
async fn alert_kinds(app: &TestApp) -> Vec<String> {
    let r = app.get(OPERATOR, "/fhir/Endpoint/$alerts").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["part"][1]["valueCode"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn alerts_reach_the_operators_channel_signed_until_it_answers() {
    let app = spawn_with(|s| s.delivery.enabled = false).await;
    let receiver = Receiver::start().await;
    point_endpoint(&app, "stroke-association-webhook", "stroke-association", &receiver.url).await;
    let pager = Receiver::start().await;
    let pager_secret = signpost::delivery::signature::new_secret();
    let worker = Worker::new(
        app.pool.clone(),
        WorkerSettings {
            allow_loopback: true,
            alert_url: Some(pager.url.clone()),
            alert_secret: Some(pager_secret.clone()),
            ..Default::default()
        },
        Default::default(),
    );
    receiver.answer(410, Vec::new());
    pager.answer(503, Vec::new());
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let t = now();
    // The charity's endpoint is gone; the pager is down at first: the alert waits, then arrives.
    assert_eq!(worker.drain_once(t).await.unwrap().alerts_pushed, 0);
    assert_eq!(pager.hits().len(), 1);
    assert_eq!(worker.drain_once(t + 30_000).await.unwrap().alerts_pushed, 0, "retried once a minute");
    assert_eq!(worker.drain_once(t + 61_000).await.unwrap().alerts_pushed, 1);
    assert_eq!(worker.drain_once(t + 200_000).await.unwrap().alerts_pushed, 0, "pushed once");
    let hits = pager.hits();
    assert_eq!(hits.len(), 2);
    assert!(verify(&pager_secret, &hits[1]), "signed with the alert secret");
    assert_eq!(hits[0].headers["webhook-id"], hits[1].headers["webhook-id"], "one id across retries");
    let body: Value = serde_json::from_slice(&hits[1].body).unwrap();
    assert_eq!(body["data"]["kind"], "endpoint-gone");
    assert_eq!(body["data"]["endpoint"], "Endpoint/stroke-association-webhook");
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("signpost_alerts_unsent 0"), "{metrics}");
}

#[tokio::test]
async fn a_receiver_sees_the_gap_and_catches_up_from_the_event_list() {
    // D7: events 5 and 6 are refused; 7 gets through; the receiver sees 1-4 then 7, asks for the
    // events since 4 and gets 5, 6 and 7; the retries then fill the gap.
    let (app, receiver, worker, _) = setup().await;
    let numbers = |r: &Receiver| -> Vec<i64> {
        r.hits()
            .iter()
            .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap()["data"]["eventNumber"].as_i64().unwrap())
            .collect()
    };
    for _ in 0..4 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    }
    assert_eq!(worker.drain_all(now()).await.unwrap().delivered, 4);
    receiver.answer(503, Vec::new());
    receiver.answer(503, Vec::new());
    for _ in 0..2 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    }
    let t = now();
    assert_eq!(worker.drain_all(t).await.unwrap().retrying, 2);
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    assert_eq!(worker.drain_all(now().min(t + 4_000)).await.unwrap().delivered, 1);
    // The receiver got 1-4, then 5 and 6 (refused), then 7.
    // (Delivery is at least once and unordered: receivers order by eventNumber.)
    let mut seen = numbers(&receiver);
    seen[..4].sort();
    seen[4..6].sort();
    assert_eq!(&seen[..6], &[1, 2, 3, 4, 5, 6]);
    assert_eq!(seen[6], 7, "7 arrived while 5 and 6 wait for their retry: the gap shows");
    // The status call says the last number is 7; the event list since 4 holds 5, 6 (pending) and 7.
    let status = app.get(STROKE, "/fhir/Endpoint/stroke-association-webhook/$status").await;
    assert_eq!(status.body["parameter"][0]["valueInteger"], 7, "{}", status.body);
    let events = app.get(STROKE, "/fhir/Endpoint/stroke-association-webhook/$events?since=4").await;
    let listed: Vec<(i64, String)> = events.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["part"][1]["valueInteger"].as_i64().unwrap(), e["part"][3]["valueCode"].as_str().unwrap().into()))
        .collect();
    assert_eq!(listed, vec![(5, "pending".into()), (6, "pending".into()), (7, "delivered".into())]);
    // Each listed event carries the payload the webhook would have, so the gap can be filled
    // from the list alone.
    let payload: Value =
        serde_json::from_str(events.body["parameter"][0]["part"][6]["valueString"].as_str().unwrap()).unwrap();
    assert_eq!(payload["data"]["eventNumber"], 5);
    // The retries deliver 5 and 6 with their first webhook-ids.
    assert_eq!(worker.drain_all(t + 6_000).await.unwrap().delivered, 2);
    let hits = receiver.hits();
    let id_of = |n: i64| -> Vec<String> {
        hits.iter()
            .zip(numbers(&receiver))
            .filter(|(_, m)| *m == n)
            .map(|(h, _)| h.headers["webhook-id"].to_str().unwrap().to_string())
            .collect()
    };
    for n in [5, 6] {
        let ids = id_of(n);
        assert_eq!(ids.len(), 2, "event {n}: refused once, then delivered");
        assert_eq!(ids[0], ids[1]);
    }
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_complete() {
    use signpost::store::outbox;
    let (app, _receiver, _worker, _) = setup().await;
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let mut conn = app.pool.get().unwrap();
    let t = now();
    let first = outbox::claim(&mut conn, "worker-a", t, 60_000, 10).unwrap();
    assert_eq!(first.len(), 1);
    // C5: while leased, nobody else claims it.
    assert!(outbox::claim(&mut conn, "worker-b", t + 1_000, 60_000, 10).unwrap().is_empty());
    // C6: the lease expires, worker B claims it; A's late completion changes nothing.
    let second = outbox::claim(&mut conn, "worker-b", t + 61_000, 60_000, 10).unwrap();
    assert_eq!(second.len(), 1);
    assert!(!outbox::complete(&mut conn, &first[0], t + 62_000).unwrap(), "the zombie is fenced off");
    assert!(outbox::complete(&mut conn, &second[0], t + 62_000).unwrap());
    let events = outbox::events_since(&mut conn, "stroke-association-webhook", 0, 10).unwrap();
    assert_eq!(events[0].state, "delivered");
}

#[tokio::test]
async fn webhook_addresses_must_be_public_https() {
    let app = spawn_with(|s| s.mode = signpost::config::RunMode::Production).await;
    for address in [
        "http://charity.example.org/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest",
        "https://good@127.0.0.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",
        "https://localhost/hook",
    ] {
        let endpoint = json!({
            "resourceType": "Endpoint", "id": "hostile", "status": "active",
            "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
            "managingOrganization": { "reference": "Organization/stroke-association" },
            "payloadType": [{ "text": "referral events" }],
            "address": address
        });
        let r = app.put(OPERATOR, "/fhir/Endpoint/hostile", &endpoint, None).await;
        assert!(r.status == 422 || r.status == 400, "{address}: {}", r.body);
    }
    app.get(OPERATOR, "/fhir/Endpoint/hostile").await.assert_outcome(404, "not-found");
}

/// Two `signpost serve` processes on one database take referrals and deliver them: 2,000
/// events, each delivered once, gap-free numbers per Endpoint, never more than 4 requests open at
/// one Endpoint across both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_share_the_outbox_without_double_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(dir.path());
    let (receiver, gp) = (Receiver::start().await, Receiver::start().await);
    // The default lease: with the short one of the crash tests, a send recorded late under a
    // busy test machine could expire and be redelivered (allowed, at least once, but this test
    // checks that claims never overlap).
    let lease = [("SIGNPOST__DELIVERY__TIMEOUT_SECS", "15"), ("SIGNPOST__DELIVERY__LEASE_SECS", "60")];
    let a = serve_process_with(&db_url, dir.path(), &lease);
    let b = serve_process_with(&db_url, dir.path(), &lease);
    let pid = prepare_process(a.port, &receiver.url).await;
    let gp_endpoint = json!({ "resourceType": "Endpoint", "id": "riverside-outcomes", "status": "active",
        "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
        "managingOrganization": { "reference": "Organization/riverside-medical-practice" },
        "payloadType": [{ "text": "referral events" }], "address": gp.url });
    let http = reqwest::Client::new();
    for (method, path, body) in [
        (reqwest::Method::PUT, "Endpoint/riverside-outcomes", gp_endpoint),
        (reqwest::Method::POST, "Endpoint/riverside-outcomes/$secret", json!({})),
    ] {
        let r = http
            .request(method, format!("http://127.0.0.1:{}/fhir/{path}", b.port))
            .bearer_auth("sp_sandbox_operator")
            .header("Content-Type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let referrals = 1_000;
    for chunk in (0..referrals).collect::<Vec<_>>().chunks(16) {
        let sends = chunk.iter().map(|i| {
            let (port, pid) = (if i % 2 == 0 { a.port } else { b.port }, pid.clone());
            async move {
                let r = post_referral(port, &pid, &format!("two-{i}")).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        });
        for (status, body) in futures::future::join_all(sends).await {
            assert_eq!(status, 201, "{body}");
        }
    }
    let expected = referrals * 2;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while receiver.hits().len() + gp.hits().len() < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A moment more, for any double delivery to show.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop((a, b));
    let hits: Vec<Hit> = receiver.hits().into_iter().chain(gp.hits()).collect();
    let mut ids: Vec<String> = hits.iter().map(|h| h.headers["webhook-id"].to_str().unwrap().to_string()).collect();
    let received = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((received, ids.len()), (expected, expected), "(requests received, distinct events)");
    // Per Endpoint, the event numbers run 1..=n with no gap.
    for r in [&receiver, &gp] {
        let mut numbers: Vec<i64> = r
            .hits()
            .iter()
            .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap()["data"]["eventNumber"].as_i64().unwrap())
            .collect();
        numbers.sort();
        assert_eq!(numbers, (1..=referrals as i64).collect::<Vec<_>>());
    }
    assert!(receiver.max_open() <= 4 && gp.max_open() <= 4, "{} / {} open at once", receiver.max_open(), gp.max_open());
}

#[tokio::test]
async fn five_days_of_failure_disable_an_endpoint_and_hold_its_events() {
    let (app, receiver, worker, _) = setup().await;
    receiver.by_default(Answer { status: 500, ..Default::default() });
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let t = now();
    // The first event runs its ten attempts over ~75 hours, then is dead-lettered.
    for secs in [0i64, 5, 305, 2_105, 9_305, 27_305, 63_305, 113_705, 185_705, 272_105] {
        assert_eq!(worker.drain_once(t + secs * 1_100).await.unwrap().claimed, 1);
    }
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    // Still failing five days after the first failure: disabled.
    let r = worker.drain_once(t + 5 * 86_400_000 + 1_000).await.unwrap();
    assert_eq!(r.claimed, 1);
    let status = app.get(OPERATOR, "/fhir/Endpoint/stroke-association-webhook/$status").await;
    assert_eq!(status.body["parameter"][1]["valueBoolean"], true, "{}", status.body);
    // New events are held, not dropped.
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    assert_eq!(worker.drain_all(t + 6 * 86_400_000).await.unwrap().claimed, 0);
    // The operators' view shows it; /metrics counts it.
    let view = app.get(OPERATOR, "/fhir/Endpoint/$delivery").await;
    assert_eq!(view.status, 200, "{}", view.body);
    assert!(view.body.to_string().contains("Endpoint/stroke-association-webhook"));
    app.get(STROKE, "/fhir/Endpoint/$delivery").await.assert_outcome(403, "forbidden");
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("signpost_endpoints_disabled 1"), "{metrics}");
    assert!(metrics.contains("signpost_alerts_unsent 2"), "{metrics}");
    assert_eq!(alert_kinds(&app).await, vec!["endpoint-failing", "dead-letter"], "newest first");
    app.get(STROKE, "/fhir/Endpoint/$alerts").await.assert_outcome(403, "forbidden");
    assert!(metrics.contains("signpost_outbox_dead_letters 1"), "{metrics}");
    assert!(metrics.contains("signpost_outbox_pending 2"), "{metrics}");
    // Fixed and re-enabled: all three events arrive.
    receiver.by_default(Answer { status: 204, ..Default::default() });
    app.post(OPERATOR, "/fhir/Endpoint/stroke-association-webhook/$resend", &json!({})).await;
    assert_eq!(worker.drain_all(now()).await.unwrap().delivered, 3);
}

#[tokio::test]
async fn a_slow_endpoint_never_holds_up_the_others() {
    let app = spawn_with(|s| s.delivery.enabled = false).await;
    let slow = Receiver::start().await;
    slow.by_default(Answer { status: 200, delay_ms: 3_000, ..Default::default() });
    let fast = Receiver::start().await;
    point_endpoint(&app, "stroke-association-webhook", "stroke-association", &slow.url).await;
    point_endpoint(&app, "befriending-network-leeds-webhook", "befriending-network-leeds", &fast.url).await;
    for _ in 0..6 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
        app.referral(REFERRER, "HealthcareService/befriending-network-leeds-support").await;
    }
    spawn_worker_loop(&app);
    let started = std::time::Instant::now();
    while fast.hits().len() < 6 && started.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(fast.hits().len(), 6);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2_800),
        "the healthy endpoint waited {:?}",
        started.elapsed()
    );
    assert!(slow.hits().len() <= 4, "at most 4 in flight to the slow endpoint");
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    assert!(slow.max_open() <= 4, "{}", slow.max_open());
}

/// The delivery worker's own loop (`Worker::run`, as `serve` runs it) on the app's database.
fn spawn_worker_loop(app: &TestApp) {
    let worker = Worker::new(
        app.pool.clone(),
        WorkerSettings { allow_loopback: true, timeout: std::time::Duration::from_secs(10), ..Default::default() },
        Default::default(),
    );
    tokio::spawn(worker.run());
}

/// A backlog of one Endpoint drains through its 4 slots (the loop claims again as each slot
/// frees): every event arrives exactly once, never more than 4 at a time.
#[tokio::test]
async fn a_backlog_drains_through_four_slots_each_event_once() {
    let app = spawn_with(|s| s.delivery.enabled = false).await;
    let receiver = Receiver::start().await;
    receiver.by_default(Answer { status: 200, delay_ms: 20, ..Default::default() });
    point_endpoint(&app, "stroke-association-webhook", "stroke-association", &receiver.url).await;
    for _ in 0..14 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    }
    spawn_worker_loop(&app);
    let started = std::time::Instant::now();
    while receiver.hits().len() < 14 && started.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let hits = receiver.hits();
    let ids: std::collections::HashSet<String> =
        hits.iter().map(|h| h.headers.get("webhook-id").unwrap().to_str().unwrap().to_string()).collect();
    assert_eq!((hits.len(), ids.len()), (14, 14), "each event once");
    assert!(receiver.max_open() <= 4, "{} at once", receiver.max_open());
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("signpost_outbox_pending 0"), "{metrics}");
}

/// After each delivery the worker goes on with the Endpoint's next due event, claimed as the
/// delivery is recorded: one round drains a whole backlog through the 4 slots, each event
/// once. An event whose attempt fails, due again later, is not taken by the other slots
/// meanwhile.
#[tokio::test]
async fn one_round_drains_a_backlog_slot_by_slot_and_a_failed_event_waits_for_its_retry() {
    let (app, receiver, worker, _) = setup().await;
    receiver.answer(500, vec![]);
    receiver.by_default(Answer { status: 200, delay_ms: 10, ..Default::default() });
    for _ in 0..10 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    }
    let t = now();
    let round = worker.drain_once(t).await.unwrap();
    assert_eq!((round.claimed, round.delivered, round.retrying), (10, 9, 1), "{round:?}");
    let ids = |hits: &[Hit]| -> std::collections::HashSet<String> {
        hits.iter().map(|h| h.headers.get("webhook-id").unwrap().to_str().unwrap().to_string()).collect()
    };
    let hits = receiver.hits();
    assert_eq!((hits.len(), ids(&hits).len()), (10, 10), "each event once");
    assert!(receiver.max_open() <= 4, "{} at once", receiver.max_open());
    assert_eq!(worker.drain_once(t).await.unwrap().claimed, 0, "the failed event waits for its retry");
    assert_eq!(worker.drain_all(t + 3_600_000).await.unwrap().delivered, 1);
    let hits = receiver.hits();
    assert_eq!((hits.len(), ids(&hits).len()), (11, 10));
}

#[tokio::test]
async fn a_huge_response_is_read_no_further_than_64_kib() {
    let (app, receiver, worker, _) = setup().await;
    receiver.by_default(Answer { status: 200, body_len: 10 * 1024 * 1024, ..Default::default() });
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let started = std::time::Instant::now();
    assert_eq!(worker.drain_once(now()).await.unwrap().delivered, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

/// A `signpost serve` process on `db_url`, killed with SIGKILL by the test (or when dropped).
pub(crate) fn serve_process(db_url: &str, home: &std::path::Path) -> ServeProcess {
    serve_process_with(db_url, home, &[])
}

/// [`serve_process`] with extra environment (fail points, delivery settings).
fn serve_process_with(db_url: &str, home: &std::path::Path, env: &[(&str, &str)]) -> ServeProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_signpost"));
    command
        .args(["serve", "--port", "0", "--log-format", "json", "--database", db_url])
        .env_remove("SIGNPOST_CONFIG")
        .env("HOME", home)
        .env("SIGNPOST__DELIVERY__TIMEOUT_SECS", "5")
        .env("SIGNPOST__DELIVERY__LEASE_SECS", "8")
        .envs(env.iter().copied());
    start_serve(command)
}

/// C1/C2: referrals sent while the gateway is killed with SIGKILL three times and restarted.
/// Every referral that got a 201 is stored and routed (N1, N2); at quiescence nothing is pending
/// (N3) and every Task reached the charity at least once, duplicates sharing their webhook-id
/// (N4); nothing reached another charity (N5); event numbers have no gaps (N7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_when_the_gateway_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(dir.path());
    let stroke = Receiver::start().await;
    let other = Receiver::start().await;
    let http = reqwest::Client::new();
    let gp = "sp_sandbox_referrer_riverside";
    let op = "sp_sandbox_operator";
    let mut child = serve_process(&db_url, dir.path());
    let port = child.port;
    let base = |port: u16| format!("http://127.0.0.1:{port}/fhir");
    let send = |port: u16, key: &'static str, method: reqwest::Method, path: String, body: Value| {
        let http = http.clone();
        async move {
            http.request(method, format!("{}{path}", base(port)))
                .bearer_auth(key)
                .header("Content-Type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
        }
    };
    for (id, org, url) in [
        ("stroke-association-webhook", "stroke-association", &stroke.url),
        ("befriending-network-leeds-webhook", "befriending-network-leeds", &other.url),
    ] {
        let endpoint = json!({ "resourceType": "Endpoint", "id": id, "status": "active",
            "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
            "managingOrganization": { "reference": format!("Organization/{org}") },
            "payloadType": [{ "text": "referral events" }], "address": url });
        assert!(
            send(port, op, reqwest::Method::PUT, format!("/Endpoint/{id}"), endpoint)
                .await
                .unwrap()
                .status()
                .is_success()
        );
        assert!(
            send(port, op, reqwest::Method::POST, format!("/Endpoint/{id}/$secret"), json!({}))
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    let pid: Value =
        send(port, gp, reqwest::Method::POST, "/Patient".into(), patient()).await.unwrap().json().await.unwrap();
    let pid = pid["id"].as_str().unwrap().to_string();
    let c = send(port, gp, reqwest::Method::POST, "/Consent".into(), consent(&format!("Patient/{pid}"))).await.unwrap();
    assert!(c.status().is_success());

    let mut accepted: Vec<String> = Vec::new();
    let mut port = port;
    for round in 0..4 {
        // Referrals in flight while the process dies.
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(700) {
            let batch = (0..8).map(|_| {
                let sr = service_request(&pid, "HealthcareService/stroke-association-support");
                send(port, gp, reqwest::Method::POST, "/ServiceRequest".into(), sr)
            });
            for r in futures::future::join_all(batch).await.into_iter().flatten() {
                if r.status().as_u16() == 201
                    && let Ok(v) = r.json::<Value>().await
                {
                    accepted.push(v["id"].as_str().unwrap().to_string());
                }
            }
        }
        if round < 3 {
            drop(child);
            child = serve_process(&db_url, dir.path());
            port = child.port;
        }
    }
    assert!(accepted.len() > 20, "only {} referrals accepted", accepted.len());
    let tasks_of = |port: u16, sr: &str| {
        let search = send(port, gp, reqwest::Method::GET, format!("/Task?based-on=ServiceRequest/{sr}"), Value::Null);
        async move { search.await.unwrap().json::<Value>().await.unwrap() }
    };
    // Quiescence: every accepted referral's Task has reached the charity.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let delivered = |r: &Receiver| -> std::collections::HashSet<String> {
        r.hits()
            .iter()
            .map(|h| {
                serde_json::from_slice::<Value>(&h.body).unwrap()["data"]["serviceRequest"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    while accepted.iter().any(|sr| !delivered(&stroke).contains(&format!("ServiceRequest/{sr}")))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for sr in &accepted {
        let r = send(port, gp, reqwest::Method::GET, format!("/ServiceRequest/{sr}"), Value::Null).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "N1: ServiceRequest/{sr} lost");
        let tasks = tasks_of(port, sr).await;
        assert_eq!(tasks["total"], 1, "N2: ServiceRequest/{sr} not routed");
        if !delivered(&stroke).contains(&format!("ServiceRequest/{sr}")) {
            let events = send(
                port,
                op,
                reqwest::Method::GET,
                "/Endpoint/stroke-association-webhook/$events?since=0".into(),
                Value::Null,
            )
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
            let mine: Vec<&str> = events.split("\"event\"").filter(|e| e.contains(sr.as_str())).collect();
            panic!("N4: ServiceRequest/{sr} never delivered: {mine:?}");
        }
    }
    assert!(other.hits().is_empty(), "N5: an event reached another charity");
    // N3: at quiescence nothing is pending (events a killed process had claimed come back when
    // their leases run out, and are delivered again with their webhook-id).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let m = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
        if m.contains("signpost_outbox_pending 0") || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("signpost_outbox_pending 0"), "N3: {metrics}");
    // Every delivered Task shows its `delivered` stage, those whose stage a killed process owed
    // but had not recorded too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    for sr in &accepted {
        loop {
            let stage = tasks_of(port, sr).await["entry"][0]["resource"]["businessStatus"]["coding"][0]["code"].clone();
            if stage == "delivered" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "ServiceRequest/{sr}'s Task has no delivered stage: {stage}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // N4: a duplicate is the same event (same webhook-id, same event number).
    let mut by_id: std::collections::HashMap<String, i64> = Default::default();
    for h in stroke.hits() {
        let n = serde_json::from_slice::<Value>(&h.body).unwrap()["data"]["eventNumber"].as_i64().unwrap();
        let id = h.headers["webhook-id"].to_str().unwrap().to_string();
        assert_eq!(*by_id.entry(id).or_insert(n), n);
    }
    // N7: event numbers 1..=n without gaps.
    let mut numbers: Vec<i64> = by_id.values().copied().collect();
    numbers.sort();
    assert_eq!(numbers, (1..=numbers.len() as i64).collect::<Vec<_>>());
    drop(child);
}

/// D3: a secret rotated while events are mid-retry — during the overlap every delivery carries
/// both signatures and verifies with either secret; after it, only the new one signs.
#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_overlap() {
    let (app, receiver, worker, old) = setup().await;
    for _ in 0..3 {
        receiver.answer(500, Vec::new());
    }
    for _ in 0..3 {
        app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    }
    let t = now();
    assert_eq!(worker.drain_once(t).await.unwrap().retrying, 3);
    let rotated = app.post(OPERATOR, "/fhir/Endpoint/stroke-association-webhook/$secret", &json!({})).await;
    let new = rotated.body["parameter"][0]["valueString"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(worker.drain_once(t + 6_000).await.unwrap().delivered, 3);
    for hit in &receiver.hits()[3..] {
        let signatures = hit.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
        assert!(verify(&old, hit) && verify(&new, hit), "either secret verifies");
    }
    // After the overlap (76 h), only the new secret signs.
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    let later = t + 77 * 3_600_000;
    let mut conn = app.pool.get().unwrap();
    diesel::RunQueryDsl::execute(
        diesel::sql_query(format!("UPDATE outbox SET next_attempt_at = {later} WHERE state = 'pending'")),
        &mut *conn,
    )
    .unwrap();
    assert_eq!(worker.drain_once(later).await.unwrap().delivered, 1);
    let last = receiver.hits().last().unwrap().clone();
    assert_eq!(last.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 1);
    // The timestamp is 77 h ahead of the real clock, so check the signature by hand.
    let ts: i64 = last.headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    let id = last.headers["webhook-id"].to_str().unwrap();
    let body = String::from_utf8(last.body.clone()).unwrap();
    assert_eq!(
        last.headers["webhook-signature"].to_str().unwrap(),
        signpost::delivery::signature::sign(&new, id, ts, &body).unwrap()
    );
}

/// Full-resource payloads are an Endpoint's choice; thin is the default (D11 above).
#[tokio::test]
async fn an_endpoint_may_opt_into_full_resource_payloads() {
    let (app, receiver, worker, _) = setup().await;
    let path = "/fhir/Endpoint/stroke-association-webhook";
    let mut endpoint = app.get(OPERATOR, path).await.body;
    endpoint["payloadType"] = json!([{ "coding": [{
        "system": "https://signpost.example/fhir/CodeSystem/webhook-payload", "code": "full-resource" }] }]);
    assert_eq!(app.put(OPERATOR, path, &endpoint, None).await.status, 200);
    let (sr, pid) = app.referral(REFERRER, "HealthcareService/stroke-association-support").await;
    assert_eq!(worker.drain_once(now()).await.unwrap().delivered, 1);
    let body: Value = serde_json::from_slice(&receiver.hits()[0].body).unwrap();
    let resources = body["data"]["resources"].as_array().unwrap();
    let kinds: Vec<&str> = resources.iter().map(|r| r["resourceType"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Task", "ServiceRequest", "Patient"]);
    assert_eq!(resources[1]["id"], sr.as_str());
    assert_eq!(resources[2]["id"], pid.as_str());
    assert_eq!(resources[2]["identifier"][0]["value"], "9000000009");
}

/// C8: SQLite runs in WAL mode with synchronous=FULL, and concurrent writers queue instead of
/// failing. (The one writer connection commits with NORMAL and fsyncs the WAL itself before it
/// answers a group: `store::tests::the_writer_syncs_the_wal_file_sqlite_writes`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_durable_and_concurrent_writers_queue() {
    let app = spawn().await;
    if let Some(signpost::store::DbConn::Sqlite(_)) = app.pool.get().ok().as_deref() {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Mode {
            #[diesel(sql_type = diesel::sql_types::Text)]
            journal_mode: String,
        }
        #[derive(diesel::QueryableByName)]
        struct Sync {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            synchronous: i32,
        }
        let mut conn = app.pool.get().unwrap();
        let mode: Mode = diesel::sql_query("PRAGMA journal_mode").get_result(&mut *conn).unwrap();
        let sync: Sync = diesel::sql_query("PRAGMA synchronous").get_result(&mut *conn).unwrap();
        assert_eq!(mode.journal_mode, "wal");
        assert_eq!(sync.synchronous, 2, "FULL");
    }
    let pid = app.patient(REFERRER).await;
    let writes = (0..10).map(|_| {
        let sr = service_request(&pid, "HealthcareService/stroke-association-support");
        let app = &app;
        async move { app.post(REFERRER, "/fhir/ServiceRequest", &sr).await.status }
    });
    assert!(futures::future::join_all(writes).await.iter().all(|s| *s == 201));
}

/// Set up a serve process's Stroke Association Endpoint at `url`, and a patient with consent;
/// the patient's id.
pub(crate) async fn prepare_process(port: u16, url: &str) -> String {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let call = |method: reqwest::Method, path: String, key: &str, body: Value| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(key)
            .header("Content-Type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let endpoint = json!({ "resourceType": "Endpoint", "id": "stroke-association-webhook", "status": "active",
        "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
        "managingOrganization": { "reference": "Organization/stroke-association" },
        "payloadType": [{ "text": "referral events" }], "address": url });
    let op = "sp_sandbox_operator";
    let gp = "sp_sandbox_referrer_riverside";
    assert!(
        call(reqwest::Method::PUT, "/Endpoint/stroke-association-webhook".into(), op, endpoint)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(
        call(reqwest::Method::POST, "/Endpoint/stroke-association-webhook/$secret".into(), op, json!({}))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let p: Value = call(reqwest::Method::POST, "/Patient".into(), gp, patient()).await.unwrap().json().await.unwrap();
    let pid = p["id"].as_str().unwrap().to_string();
    assert!(
        call(reqwest::Method::POST, "/Consent".into(), gp, consent(&format!("Patient/{pid}")))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    pid
}

pub(crate) async fn post_referral(port: u16, pid: &str, request_id: &str) -> Result<reqwest::Response, reqwest::Error> {
    post_body(port, &service_request(pid, "HealthcareService/stroke-association-support"), request_id).await
}

async fn post_body(port: u16, sr: &Value, request_id: &str) -> Result<reqwest::Response, reqwest::Error> {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/fhir/ServiceRequest"))
        .bearer_auth("sp_sandbox_referrer_riverside")
        .header("Content-Type", "application/fhir+json")
        .header("X-Request-Id", request_id)
        .body(sr.to_string())
        .send()
        .await
}

async fn wait_for_hits(r: &Receiver, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while r.hits().len() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// C4: a crash inside the write transaction, after the referral and before its outbox row —
/// neither exists; the client got no 201; the retry with the same X-Request-Id succeeds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_the_write_transaction_leaves_nothing_and_the_retry_succeeds_once() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(dir.path());
    let receiver = Receiver::start().await;
    let child = serve_process_with(&db_url, dir.path(), &[("SIGNPOST_FAILPOINTS", "store::before_outbox")]);
    let port = child.port;
    let pid = prepare_process(port, &receiver.url).await;
    let sr = service_request(&pid, "HealthcareService/stroke-association-support");
    let crashed = post_body(port, &sr, "c4-referral").await;
    assert!(crashed.is_err() || crashed.unwrap().status().is_server_error(), "no 201 from a crash");
    drop(child);
    let server = serve_process(&db_url, dir.path());
    let port = server.port;
    let http = reqwest::Client::new();
    let count = |ty: &'static str| {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(format!("http://127.0.0.1:{port}/fhir/{ty}?_summary=count"))
                .bearer_auth("sp_sandbox_operator")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["total"].as_i64().unwrap()
        }
    };
    assert_eq!((count("ServiceRequest").await, count("Task").await), (0, 0), "the transaction left nothing");
    let first = post_body(port, &sr, "c4-referral").await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let again = post_body(port, &sr, "c4-referral").await.unwrap();
    assert_eq!(again.status().as_u16(), 201, "a replay returns the first answer");
    assert_eq!((count("ServiceRequest").await, count("Task").await), (1, 1));
    wait_for_hits(&receiver, 1).await;
    assert_eq!(receiver.hits().len(), 1);
}

/// C3: a crash after the receiver answered 200 and before the delivery was recorded — the event
/// is delivered again once, with the same webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_send_and_record_redelivers_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(dir.path());
    let receiver = Receiver::start().await;
    let fast = [("SIGNPOST__DELIVERY__TIMEOUT_SECS", "1"), ("SIGNPOST__DELIVERY__LEASE_SECS", "2")];
    let child =
        serve_process_with(&db_url, dir.path(), &[fast[0], fast[1], ("SIGNPOST_FAILPOINTS", "outbox::after_send")]);
    let port = child.port;
    let pid = prepare_process(port, &receiver.url).await;
    // The worker may deliver and hit the fail point before the 201 is written back: the
    // referral is committed either way (its event exists), so only a 201 or a dropped
    // connection are acceptable answers.
    if let Ok(r) = post_referral(port, &pid, "c3-referral").await {
        assert_eq!(r.status().as_u16(), 201);
    }
    wait_for_hits(&receiver, 1).await;
    assert_eq!(receiver.hits().len(), 1);
    drop(child);
    let _server = serve_process_with(&db_url, dir.path(), &fast);
    wait_for_hits(&receiver, 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "delivered again once");
    assert_eq!(hits[0].headers["webhook-id"], hits[1].headers["webhook-id"]);
}

/// C9: SIGTERM under load — the server stops taking requests, finishes those in flight and exits;
/// every referral that got a 201 is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(dir.path());
    let receiver = Receiver::start().await;
    let mut child = serve_process(&db_url, dir.path());
    let port = child.port;
    let pid = prepare_process(port, &receiver.url).await;
    let mut accepted = Vec::new();
    let started = std::time::Instant::now();
    let mut signalled = false;
    loop {
        if !signalled && started.elapsed() > std::time::Duration::from_millis(400) {
            let ok =
                std::process::Command::new("kill").args(["-TERM", &child.child.id().to_string()]).status().unwrap();
            assert!(ok.success());
            signalled = true;
        }
        let batch = (0..8).map(|i| {
            let pid = pid.clone();
            async move { post_referral(port, &pid, &format!("c9-{}-{i}", uuid::Uuid::new_v4())).await }
        });
        let results = futures::future::join_all(batch).await;
        let mut refused = 0;
        for r in results {
            match r {
                Ok(r) if r.status().as_u16() == 201 => {
                    accepted.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string())
                }
                Ok(_) => {}
                Err(_) => refused += 1,
            }
        }
        if signalled && refused == 8 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(40), "the server did not stop");
    }
    let status = child.child.wait().unwrap();
    assert!(status.success(), "a graceful exit: {status:?}");
    assert!(!accepted.is_empty());
    let server = serve_process(&db_url, dir.path());
    let port = server.port;
    for sr in &accepted {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/fhir/ServiceRequest/{sr}"))
            .bearer_auth("sp_sandbox_referrer_riverside")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "ServiceRequest/{sr} lost");
    }
}
