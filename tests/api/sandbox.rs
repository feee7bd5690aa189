//! The sandbox's simulated charities (PRODUCT.md §10): each sentinel a referral can carry,
//! played out by the webhook charity (signed webhooks to the server's own `/sandbox/hook`) and
//! by the polling charity (searches every second), through the real delivery and API paths;
//! and sandbox data refused by a production configuration.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

const WEBHOOK: &str = "sandbox-charity-webhook";
const POLLING: &str = "sandbox-charity-polling";

/// What a sentinel must lead to: (Task status, businessStatus, statusReason, output).
fn expected(sentinel: &str) -> (&'static str, Option<&'static str>, Option<&'static str>, Option<&'static str>) {
    match sentinel {
        "sandbox:accept-complete:1" => ("completed", Some("support-completed"), None, Some("support-completed")),
        "sandbox:reject-out-of-area" => ("rejected", None, Some("out-of-area"), None),
        "sandbox:on-hold" => ("on-hold", Some("waitlisted"), None, None),
        "sandbox:could-not-contact" => ("failed", Some("could-not-contact"), Some("could-not-contact"), None),
        "sandbox:no-response" | "sandbox:webhook-500" => ("requested", None, None, None),
        other => panic!("no expectation for {other}"),
    }
}

async fn refer(app: &TestApp, patient: &str, charity: &str, sentinel: &str) -> String {
    let mut sr = service_request(patient, &format!("Organization/{charity}"));
    sr["note"] = json!([{ "text": "Prefers a morning call" }, { "text": sentinel }]);
    let r = app.post(REFERRER, "/fhir/ServiceRequest", &sr).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let tasks = app.tasks_of(REFERRER, &r.id()).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["owner"]["reference"], format!("Organization/{charity}"));
    tasks[0]["id"].as_str().unwrap().to_string()
}

fn code(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(Value::as_str).map(str::to_string)
}

fn matches(task: &Value, sentinel: &str) -> bool {
    let (status, stage, reason, output) = expected(sentinel);
    task["status"] == status
        && stage.is_none_or(|s| code(task, "/businessStatus/coding/0/code").as_deref() == Some(s))
        && code(task, "/statusReason/coding/0/code").as_deref() == reason
        && output.is_none_or(|o| code(task, "/output/0/valueCodeableConcept/coding/0/code").as_deref() == Some(o))
}

/// The webhook charity's events, as its Endpoint's `$events` lists them.
async fn endpoint_events(app: &TestApp) -> Vec<Value> {
    let r = app.get(OPERATOR, "/fhir/Endpoint/sandbox-charity-webhook-endpoint/$events?since=0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["parameter"].as_array().cloned().unwrap_or_default()
}

/// The value (`valueString`, `valueCode`, ...) of an event's part `name`.
fn part<'a>(event: &'a Value, name: &str) -> &'a Value {
    let part = event["part"].as_array().unwrap().iter().find(|p| p["name"] == name);
    part.and_then(|p| p.as_object().unwrap().iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn each_sentinel_is_played_out_by_the_webhook_and_the_polling_charity() {
    let app = spawn_with(|s| s.sandbox.charities = true).await;
    let patient = app.patient(REFERRER).await;
    let sentinels = [
        "sandbox:accept-complete:1",
        "sandbox:reject-out-of-area",
        "sandbox:on-hold",
        "sandbox:could-not-contact",
        "sandbox:no-response",
        "sandbox:webhook-500",
    ];
    let mut cases: Vec<(&str, &str, String)> = Vec::new();
    for charity in [WEBHOOK, POLLING] {
        for s in sentinels {
            cases.push((charity, s, refer(&app, &patient, charity, s).await));
        }
    }
    // Wait until every case that ends somewhere has got there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Vec<Value> = Vec::new();
    loop {
        last.clear();
        for (_, _, task) in &cases {
            last.push(app.get(REFERRER, &format!("/fhir/Task/{task}")).await.body);
        }
        let moving =
            cases.iter().zip(&last).any(|((_, s, _), t)| t["status"] == "requested" && expected(s).0 != "requested")
                || cases.iter().zip(&last).any(|((_, s, _), t)| !matches(t, s) && t["status"] != "requested");
        if !moving || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for ((charity, sentinel, task), body) in cases.iter().zip(&last) {
        assert!(matches(body, sentinel), "{charity} with {sentinel}: Task/{task} is {body}");
    }
    // Every move was the charity's own, through the API (Provenance names its client).
    let focus = last[0]["focus"]["reference"].as_str().unwrap();
    let timeline = app.get(REFERRER, &format!("/fhir/{focus}/$timeline")).await;
    assert!(timeline.body.to_string().contains("sandbox-charity-webhook"), "{}", timeline.body);

    // The webhook charity got its events by signed webhook: delivered for every sentinel but
    // webhook-500, whose event is still pending after a failed attempt with a 500.
    let webhook_500 = &cases.iter().find(|(c, s, _)| *c == WEBHOOK && *s == "sandbox:webhook-500").unwrap().2;
    let events = endpoint_events(&app).await;
    let created: Vec<&Value> = events.iter().filter(|e| part(e, "type") == "referral.created").collect();
    assert_eq!(created.len(), sentinels.len(), "{events:?}");
    for e in created {
        let payload = part(e, "payload").as_str().unwrap();
        if payload.contains(webhook_500.as_str()) {
            assert_eq!(part(e, "state"), "pending", "{e}");
            assert!(part(e, "attempts").as_i64().unwrap() >= 1, "{e}");
            assert!(part(e, "lastError").as_str().unwrap_or_default().contains("500"), "{e}");
        } else {
            assert_eq!(part(e, "state"), "delivered", "{e}");
        }
    }
    // The polling charity has no Endpoint: it found its referrals by search alone.
    let r = app.get(OPERATOR, &format!("/fhir/Endpoint?organization=Organization/{POLLING}")).await;
    assert_eq!(r.total(), 0);
}

#[tokio::test]
async fn without_a_sentinel_the_sandbox_charity_accepts_and_a_foreign_webhook_is_refused() {
    let app = spawn_with(|s| s.sandbox.charities = true).await;
    let patient = app.patient(REFERRER).await;
    let task = refer(&app, &patient, WEBHOOK, "Please call in the morning").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = app.get(REFERRER, &format!("/fhir/Task/{task}")).await.body;
        if t["status"] == "accepted" || Instant::now() > deadline {
            assert_eq!(t["status"], "accepted", "the default is accept, then complete after 5 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anyone else posting to the sandbox hook is refused: it verifies signatures.
    let forged = reqwest::Client::new()
        .post(format!("{}/sandbox/hook", app.base))
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", chrono::Utc::now().timestamp().to_string())
        .header("webhook-signature", "v1,Zm9yZ2Vk")
        .body(json!({ "type": "referral.created", "data": { "task": format!("Task/{task}") } }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
}

#[tokio::test]
async fn the_sandbox_charities_are_absent_unless_the_sandbox_runs_them() {
    let app = spawn().await;
    app.get(OPERATOR, &format!("/fhir/Organization/{WEBHOOK}")).await.assert_outcome(404, "not-found");
    let r = reqwest::Client::new().post(format!("{}/sandbox/hook", app.base)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_production_configuration_refuses_sandbox_data() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{}/examples/sandbox/charities.json", env!("CARGO_MANIFEST_DIR")),
        folder.path().join("charities.json"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database(dir.path());
    let mut settings = test_settings(&db);
    settings.mode = signpost::config::RunMode::Production;
    settings.directory.path = folder.path().to_path_buf();
    let err = signpost::app::Application::build(settings).await.err().expect("production refuses to start");
    assert!(err.to_string().contains("sandbox data"), "{err}");
    // Nor can an operator put it in through the API.
    let app = spawn_with(|s| s.mode = signpost::config::RunMode::Production).await;
    let directory: Value = serde_json::from_str(signpost::sandbox::simulator::DIRECTORY).unwrap();
    let org = &directory["entry"][0]["resource"];
    app.put(OPERATOR, &format!("/fhir/Organization/{WEBHOOK}"), org, None).await.assert_outcome(422, "sandbox-data");
    app.get(OPERATOR, &format!("/fhir/Organization/{WEBHOOK}")).await.assert_outcome(404, "not-found");
    // ... and `serve --sandbox` refuses a production configuration.
    let config = dir.path().join("signpost.toml");
    std::fs::write(&config, format!("[database]\nurl = \"sqlite://{}/x.db\"\n", dir.path().display())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["--config", config.to_str().unwrap(), "serve", "--sandbox"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("production mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
