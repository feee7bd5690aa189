//! The conformance kit (`signpost conformance`, PRODUCT.md §10) run as integrators run it: the
//! binary against a freshly started Signpost (all green), against a misbehaving server that
//! accepts an invalid referral, shows a charity another's Task and sends unsigned webhooks
//! (exactly those requirements fail), and the two webhook modes against each other and against
//! a receiver that accepts anything.

use std::process::{Command, Output};
use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

use crate::helpers::*;

async fn signpost(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_signpost")).args(args).output().unwrap())
        .await
        .unwrap()
}

fn kit_args(base: &str, out: &std::path::Path) -> Vec<String> {
    [
        "conformance",
        "--base-url",
        base,
        "--key",
        REFERRER,
        "--charity-key",
        STROKE,
        "--other-charity-key",
        BEFRIENDING,
        "--operator-key",
        OPERATOR,
        "--junit",
        out.join("kit.xml").to_str().unwrap(),
        "--html",
        out.join("kit.html").to_str().unwrap(),
        "--json",
        out.join("kit.json").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["outcome"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test]
async fn the_whole_kit_passes_against_a_fresh_signpost() {
    let app = spawn().await;
    let out = tempfile::tempdir().unwrap();
    let run = signpost(kit_args(&app.base, out.path())).await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("kit.json")).unwrap()).unwrap();
    let results = outcomes(&report);
    assert_eq!(results.len(), signpost::conformance::catalogue::CATALOGUE.len(), "every requirement ran");
    assert!(results.iter().all(|(_, o)| o == "passed"), "{results:?}");
    let junit = std::fs::read_to_string(out.path().join("kit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), results.len());
    assert!(junit.contains("failures=\"0\"") && !junit.contains("<failure"));
    let html = std::fs::read_to_string(out.path().join("kit.html")).unwrap();
    assert_eq!(html.matches("<tr class=\"passed\">").count(), results.len());
    // The kit ran through the real doors: its referral reached the charity as a Task.
    assert!(app.get(STROKE, "/fhir/Task?status=completed").await.total() >= 1);
}

/// A proxy in front of a real Signpost that breaks three promises.
struct Proxy {
    upstream: String,
    me: String,
    http: reqwest::Client,
}

async fn forward(
    state: &Proxy,
    method: &str,
    url: &str,
    req: &HttpRequest,
    body: web::Bytes,
    key: Option<&str>,
) -> reqwest::Response {
    let mut out = state.http.request(method.parse().unwrap(), url).body(body.to_vec());
    for name in ["content-type", "if-match", "x-request-id", "x-correlation-id", "prefer", "authorization"] {
        if name == "authorization" && key.is_some() {
            continue;
        }
        if let Some(v) = req.headers().get(name) {
            out = out.header(name, v.to_str().unwrap());
        }
    }
    if let Some(k) = key {
        out = out.bearer_auth(k);
    }
    out.send().await.unwrap()
}

async fn into_response(res: reqwest::Response) -> HttpResponse {
    let mut reply = HttpResponse::build(actix_web::http::StatusCode::from_u16(res.status().as_u16()).unwrap());
    for name in ["content-type", "etag", "location"] {
        if let Some(v) = res.headers().get(name) {
            reply.insert_header((name, v.to_str().unwrap()));
        }
    }
    reply.body(res.bytes().await.unwrap())
}

async fn misbehave(req: HttpRequest, body: web::Bytes, state: web::Data<Arc<Proxy>>) -> HttpResponse {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let method = req.method().as_str().to_string();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    // 1. A referral without a subject is "accepted".
    if method == "POST" && path == "/fhir/ServiceRequest" {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        if v["resourceType"] == "ServiceRequest" && v.get("subject").is_none() {
            let mut stored = v.clone();
            stored["id"] = "accepted-without-checking".into();
            return HttpResponse::Created().content_type("application/fhir+json").body(stored.to_string());
        }
    }
    // 2. Webhooks are relayed without their signature.
    if path.starts_with("/relay?to=") {
        let to = urlencoding_decode(path.trim_start_matches("/relay?to="));
        let mut out = state.http.post(to).body(body.to_vec());
        for name in ["content-type", "webhook-id", "webhook-timestamp"] {
            if let Some(v) = req.headers().get(name) {
                out = out.header(name, v.to_str().unwrap());
            }
        }
        let status = out.send().await.map(|r| r.status().as_u16()).unwrap_or(502);
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish();
    }
    let url = format!("{}{path}", state.upstream);
    let mut body = body;
    if method == "PUT" && path.starts_with("/fhir/Endpoint/") {
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        let original = v["address"].as_str().unwrap().to_string();
        v["address"] = format!("{}/relay?to={}", state.me, urlencoding_encode(&original)).into();
        body = web::Bytes::from(v.to_string());
    }
    let res = forward(&state, &method, &url, &req, body.clone(), None).await;
    // 3. Another charity's 404 for a Task becomes the Task (read with an operator's key).
    if method == "GET" && path.starts_with("/fhir/Task/") && res.status() == 404 && auth.ends_with(BEFRIENDING) {
        return into_response(forward(&state, &method, &url, &req, body, Some(OPERATOR)).await).await;
    }
    into_response(res).await
}

fn urlencoding_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn urlencoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().unwrap().1.into_owned()
}

#[tokio::test]
async fn against_a_misbehaving_server_the_kit_reports_exactly_its_three_faults() {
    let app = spawn().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let me = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let state =
        web::Data::new(Arc::new(Proxy { upstream: app.base.clone(), me: me.clone(), http: reqwest::Client::new() }));
    let server = HttpServer::new(move || App::new().app_data(state.clone()).default_service(web::to(misbehave)))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    tokio::spawn(server);

    let out = tempfile::tempdir().unwrap();
    let run = signpost(kit_args(&me, out.path())).await;
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("kit.json")).unwrap()).unwrap();
    let failed: Vec<String> =
        outcomes(&report).into_iter().filter(|(_, o)| o != "passed").map(|(id, o)| format!("{id} {o}")).collect();
    assert_eq!(failed, vec!["REF-INVALID-02 failed", "CH-FOREIGN-01 failed", "CH-WEBHOOK-01 failed"], "{stdout}");
    assert!(stdout.contains("FAIL REF-INVALID-02") && stdout.contains("answered 201"), "{stdout}");
    assert!(stdout.contains("another charity reading the Task got 200"), "{stdout}");
    assert!(stdout.contains("does not verify"), "{stdout}");
    let junit = std::fs::read_to_string(out.path().join("kit.xml")).unwrap();
    assert_eq!(junit.matches("<failure ").count(), 3, "{junit}");
}

#[tokio::test]
async fn the_webhook_probe_and_the_receiver_agree_and_a_careless_receiver_is_caught() {
    let secret = signpost::delivery::signature::new_secret();
    // The kit's receiver, verifying with the secret.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut receiver = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(["conformance", "receiver", "--port", &port.to_string(), "--secret", &secret])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_listening(port).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let probe =
        signpost(vec!["conformance".into(), "webhook".into(), "--url".into(), url, "--secret".into(), secret.clone()])
            .await;
    let table = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(probe.status.success(), "{table}");
    assert!(table.contains("9 of 9 answered rightly"), "{table}");
    receiver.kill().unwrap();
    let printed = String::from_utf8_lossy(&receiver.wait_with_output().unwrap().stdout).to_string();
    assert_eq!(printed.matches("\nverified ").count(), 2, "{printed}");
    assert_eq!(printed.matches("\nREFUSED ").count(), 7, "{printed}");

    // A receiver that never checks anything accepts every forgery; the probe says so.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let careless = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let server = HttpServer::new(|| App::new().default_service(web::to(HttpResponse::NoContent)))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    tokio::spawn(server);
    let probe =
        signpost(vec!["conformance".into(), "webhook".into(), "--url".into(), careless, "--secret".into(), secret])
            .await;
    let table = String::from_utf8_lossy(&probe.stdout).to_string();
    assert_eq!(probe.status.code(), Some(1), "{table}");
    assert_eq!(table.matches("WRONGLY ACCEPTED").count(), 7, "{table}");
}
