//! The examples an EHR vendor starts from (`examples/referrals/index.json`): every file is
//! listed, and each is sent as the index says to a fresh gateway and gets exactly the answer
//! the index records (status, each error's issue code and first expression). The client
//! program (`examples/send_referral.rs`) runs against the sandbox charity and sees the outcome.

use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::*;

fn folder() -> String {
    format!("{}/examples/referrals", env!("CARGO_MANIFEST_DIR"))
}

fn index() -> Vec<Value> {
    serde_json::from_str::<Value>(&std::fs::read_to_string(format!("{}/index.json", folder())).unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A file's text with its placeholders filled: `{uuid}` (one new value per file), and the ids
/// in `ids` (`{patient}`, `{servicerequest}`).
fn filled(file: &str, ids: &HashMap<&str, String>) -> Value {
    let mut text = std::fs::read_to_string(format!("{}/{file}", folder())).unwrap();
    text = text.replace("{uuid}", &uuid::Uuid::new_v4().to_string());
    for (k, v) in ids {
        text = text.replace(&format!("{{{k}}}"), v);
    }
    assert!(!text.contains("{patient}") && !text.contains("{servicerequest}"), "{file}: a placeholder is left");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

async fn create(app: &TestApp, file: &str, path: &str, ids: &HashMap<&str, String>) -> String {
    let r = app.post(REFERRER, path, &filled(file, ids)).await;
    assert_eq!(r.status, 201, "{file}: {}", r.body);
    r.id()
}

fn issues_of(body: &Value, severity: &str) -> Vec<(String, String)> {
    body["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["severity"] == severity)
        .map(|i| {
            (
                i.pointer("/details/coding/0/code").and_then(Value::as_str).unwrap_or_default().to_string(),
                i.pointer("/expression/0").and_then(Value::as_str).unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn expected(entry: &Value, key: &str) -> Vec<(String, String)> {
    entry["expect"][key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| (i["code"].as_str().unwrap().to_string(), i["expression"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn every_example_file_is_in_the_index() {
    let listed: Vec<String> = index().iter().map(|e| e["file"].as_str().unwrap().to_string()).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(folder())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "index.json")
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, on_disk);
    assert!(listed.iter().filter(|f| f.starts_with("mistake-")).count() >= 8);
    for door in ["rest", "task", "transaction", "bars"] {
        assert!(index().iter().any(|e| e["door"] == door && e["expect"]["issues"].as_array().unwrap().is_empty()));
    }
}

#[tokio::test]
async fn every_example_gets_the_answer_its_index_records() {
    let app = spawn().await;
    for entry in index() {
        let file = entry["file"].as_str().unwrap();
        let mut ids: HashMap<&str, String> = HashMap::new();
        for need in entry["needs"].as_array().unwrap() {
            match need.as_str().unwrap() {
                "patient" => {
                    let p = create(&app, "rest-patient.json", "/fhir/Patient", &ids).await;
                    ids.insert("patient", p);
                    create(&app, "rest-consent.json", "/fhir/Consent", &ids).await;
                }
                "servicerequest" => {
                    let sr = create(&app, "rest-servicerequest-by-condition.json", "/fhir/ServiceRequest", &ids).await;
                    ids.insert("servicerequest", sr);
                }
                other => panic!("{file}: unknown need {other}"),
            }
        }
        let headers: Vec<(String, String)> = entry["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().replace("{uuid}", &uuid::Uuid::new_v4().to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = filled(file, &ids);
        let r = app
            .send(
                entry["method"].as_str().unwrap(),
                Some(REFERRER),
                entry["path"].as_str().unwrap(),
                Some(&body),
                &headers,
            )
            .await;
        assert_eq!(r.status, entry["expect"]["status"].as_u64().unwrap() as u16, "{file}: {}", r.body);
        let errors = if r.body["resourceType"] == "OperationOutcome" { issues_of(&r.body, "error") } else { vec![] };
        assert_eq!(errors, expected(&entry, "issues"), "{file}: {}", r.body);
        let warnings = expected(&entry, "warnings");
        if !warnings.is_empty() {
            let got = issues_of(&r.body, "warning");
            assert!(warnings.iter().all(|w| got.contains(w)), "{file}: warnings {got:?}, expected {warnings:?}");
        }
    }
}

/// A built example program, next to the `signpost` binary (`cargo test` builds the examples;
/// `cargo test --test api` alone does not, so it is built here then).
fn example_program(name: &str) -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_signpost"));
    let path = bin.parent().unwrap().join("examples").join(name);
    if !path.exists() {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success() && path.exists(), "{} could not be built", path.display());
    }
    path
}

#[tokio::test]
async fn the_client_program_sends_a_referral_and_waits_for_the_sandbox_charitys_outcome() {
    let app = spawn_with(|s| s.sandbox.charities = true).await;
    let program = example_program("send_referral");
    let run = |note: &'static str| {
        let (program, base) = (program.clone(), format!("{}/fhir", app.base));
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(program)
                .args(["--signpost", &base, "--key", REFERRER, "--note", note, "--timeout", "30"])
                .output()
                .unwrap()
        })
    };
    let done = run("sandbox:accept-complete:1").await.unwrap();
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{out}{}", String::from_utf8_lossy(&done.stderr));
    assert!(
        out.contains("outcome: Organization/sandbox-charity-webhook completed reason - output support-completed"),
        "{out}"
    );
    assert!(out.contains("summary for the record:"), "{out}");
    // Sent again for the same patient: the patient and consent are found, not duplicated.
    let rejected = run("sandbox:reject-out-of-area").await.unwrap();
    let out = String::from_utf8_lossy(&rejected.stdout);
    assert!(out.contains("rejected reason out-of-area"), "{out}");
    let patients = app.get(REFERRER, "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919").await;
    assert_eq!(patients.total(), 1);
}

#[tokio::test]
async fn the_example_webhook_receiver_passes_the_webhook_probe() {
    let secret = signpost::delivery::signature::new_secret();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut receiver = std::process::Command::new(example_program("webhook_receiver"))
        .args(["--port", &port.to_string(), "--secret", &secret, "--key", "unused", "--no-accept"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until_listening(port).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let probe = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_signpost"))
            .args(["conformance", "webhook", "--url", &url, "--secret", &secret])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    receiver.kill().unwrap();
    let _ = receiver.wait();
    let table = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "{table}");
}
