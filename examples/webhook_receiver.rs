//! A charity's webhook receiver for Signpost, as small as it can be while doing it right:
//! verifies each request's Standard Webhooks signature (and refuses timestamps more than five
//! minutes off), ignores a `webhook-id` it has seen before, fetches the Task with the charity's
//! own API key (the webhook carries no patient data), and accepts new referrals.
//!
//! ```sh
//! cargo run --example webhook_receiver -- --port 9000 --secret whsec_... \
//!     --signpost http://127.0.0.1:8080/fhir --key sp_sandbox_charity_stroke
//! ```
//!
//! Point the charity's Endpoint at `http://127.0.0.1:9000/hook` (an operator `PUT`s it, then
//! `POST /fhir/Endpoint/{id}/$secret` gives the secret).

use std::collections::HashSet;
use std::sync::Mutex;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// The Endpoint's signing secret (`whsec_...`).
    #[arg(long, env = "WEBHOOK_SECRET")]
    secret: String,
    /// Signpost's FHIR base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    signpost: String,
    /// The charity's API key.
    #[arg(long, env = "SIGNPOST_KEY")]
    key: String,
    /// Only record events; do not accept new referrals.
    #[arg(long)]
    no_accept: bool,
}

struct State {
    args: Args,
    verifier: standardwebhooks::Webhook,
    seen: Mutex<HashSet<String>>,
    http: reqwest::Client,
}

async fn hook(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let mut headers = http::HeaderMap::new();
    for (k, v) in req.headers() {
        if let (Ok(k), Ok(v)) =
            (http::HeaderName::from_bytes(k.as_str().as_bytes()), http::HeaderValue::from_bytes(v.as_bytes()))
        {
            headers.insert(k, v);
        }
    }
    if state.verifier.verify(&body, &headers).is_err() {
        eprintln!("refused: bad signature or timestamp");
        return HttpResponse::BadRequest().finish();
    }
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if !state.seen.lock().map(|mut s| s.insert(id.clone())).unwrap_or(false) {
        println!("{id}: already handled");
        return HttpResponse::Ok().finish();
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    let kind = event["type"].as_str().unwrap_or_default();
    let task_ref = event["data"]["task"].as_str().unwrap_or_default();
    let sr = event["data"]["serviceRequest"].as_str().unwrap_or_default();
    println!("{id}: {kind} {task_ref} {sr} (event {})", event["data"]["eventNumber"]);
    if kind == "referral.created" && !state.args.no_accept {
        accept(&state, task_ref).await;
    }
    HttpResponse::NoContent().finish()
}

/// Read the Task with our own key and accept it, guarded by the version we read.
async fn accept(state: &State, task_ref: &str) {
    let url = format!("{}/{task_ref}", state.args.signpost);
    let Ok(res) = state.http.get(&url).bearer_auth(&state.args.key).send().await else { return };
    let etag = res.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
    let task: Value = res.json().await.unwrap_or_default();
    if task["status"] != "requested" {
        return;
    }
    let patch = json!([{ "op": "replace", "path": "/status", "value": "accepted" }]);
    let mut req = state
        .http
        .patch(&url)
        .bearer_auth(&state.args.key)
        .header("Content-Type", "application/json-patch+json")
        .body(patch.to_string());
    if let Some(e) = etag {
        req = req.header("If-Match", e);
    }
    match req.send().await {
        Ok(r) => println!("{task_ref}: accepted ({})", r.status()),
        Err(e) => eprintln!("{task_ref}: could not accept: {e}"),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let verifier = standardwebhooks::Webhook::new(&args.secret)
        .map_err(|_| std::io::Error::other("the secret is not a whsec_ key"))?;
    let port = args.port;
    let state =
        web::Data::new(State { args, verifier, seen: Mutex::new(HashSet::new()), http: reqwest::Client::new() });
    println!("listening on http://127.0.0.1:{port}/hook");
    HttpServer::new(move || App::new().app_data(state.clone()).route("/hook", web::post().to(hook)))
        .bind(("127.0.0.1", port))?
        .run()
        .await
}
