//! A GP system's side of the loop, as small as it can be while doing it right: create (or find)
//! the patient and their consent to share, send a referral, then poll its Tasks until every
//! charity has finished with it, and print the outcome and the summary for the patient record.
//!
//! Against the sandbox (`cargo run --release -- serve`), the sandbox charity answers as the
//! `--note` sentinel asks (see the README's "Integrate in an afternoon"):
//!
//! ```sh
//! cargo run --example send_referral -- --note sandbox:accept-complete:2
//! cargo run --example send_referral -- --note sandbox:reject-out-of-area
//! ```
//!
//! Exit status: 0 when every Task finished, 1 on a refusal or when `--timeout` passed first.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// Signpost's FHIR base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    signpost: String,
    /// The referrer's API key (the sandbox's public GP key by default).
    #[arg(long, env = "SIGNPOST_KEY", default_value = "sp_sandbox_referrer_riverside")]
    key: String,
    /// The charity to refer to (a reference); without it, Signpost routes by the condition.
    #[arg(long, default_value = "Organization/sandbox-charity-webhook")]
    performer: String,
    /// The condition (SNOMED CT) the referral is for.
    #[arg(long, default_value = "230690007")]
    condition: String,
    /// A note to the charity (the sandbox charities read their sentinel from it).
    #[arg(long, default_value = "sandbox:accept-complete:2")]
    note: String,
    /// The patient's NHS number.
    #[arg(long, default_value = "9434765919")]
    nhs_number: String,
    /// Seconds to wait for every Task to finish.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

const FINISHED: &[&str] = &["completed", "rejected", "failed", "cancelled", "entered-in-error"];

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn send(&self, method: &str, path: &str, body: Option<&Value>, headers: &[(&str, String)]) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().expect("a method"), format!("{}/{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.header("Content-Type", "application/fhir+json").body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                (status, res.json().await.unwrap_or(Value::Null))
            }
            Err(e) => {
                eprintln!("{method} {path}: {e}");
                std::process::exit(1);
            }
        }
    }

    /// POST, failing loudly with the OperationOutcome on a refusal; the stored resource's id.
    async fn create(&self, path: &str, body: &Value, headers: &[(&str, String)]) -> String {
        let (status, answer) = self.send("POST", path, Some(body), headers).await;
        if !(200..300).contains(&status) {
            eprintln!("POST {path} refused with {status}:");
            for issue in answer["issue"].as_array().into_iter().flatten() {
                eprintln!("  {} {} at {}", issue["severity"], issue["diagnostics"], issue["expression"]);
            }
            std::process::exit(1);
        }
        answer["id"].as_str().unwrap_or_default().to_string()
    }
}

fn code(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("-").to_string()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let api =
        Client { http: reqwest::Client::new(), base: args.signpost.trim_end_matches('/').to_string(), key: args.key };
    let nhs = format!("https://fhir.nhs.uk/Id/nhs-number|{}", args.nhs_number);

    // 1. The patient, found by NHS number if Signpost already has them (If-None-Exist).
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "https://fhir.nhs.uk/Id/nhs-number", "value": args.nhs_number }],
        "name": [{ "family": "EXAMPLE", "given": ["Sam"] }],
        "birthDate": "1957-05-12",
        "telecom": [{ "system": "phone", "value": "0113 496 0321", "use": "home" }],
        "address": [{ "postalCode": "LS6 2AB" }]
    });
    let patient_id = api.create("Patient", &patient, &[("If-None-Exist", format!("identifier={nhs}"))]).await;

    // 2. Their consent to share with the voluntary sector (one per patient, found again the same way).
    let consent_key = format!("https://gp-system.example.org.uk/Id/consent|vcs-{}", args.nhs_number);
    let consent = json!({
        "resourceType": "Consent",
        "identifier": [{ "system": "https://gp-system.example.org.uk/Id/consent", "value": format!("vcs-{}", args.nhs_number) }],
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [
            { "system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent" },
            { "system": "https://signpost.example/fhir/CodeSystem/consent-category", "code": "share-with-vcs" }
        ] }],
        "patient": { "reference": format!("Patient/{patient_id}") },
        "policy": [{ "uri": "https://signpost.example/fhir/consent-policy/share-with-vcs" }],
        "dateTime": chrono::Utc::now().to_rfc3339(),
        "provision": { "type": "permit" }
    });
    api.create("Consent", &consent, &[("If-None-Exist", format!("identifier={consent_key}"))]).await;

    // 3. The referral; X-Request-Id makes a retry after a lost answer safe.
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut referral = json!({
        "resourceType": "ServiceRequest",
        "identifier": [{ "system": "https://gp-system.example.org.uk/Id/referral", "value": request_id }],
        "status": "active",
        "intent": "order",
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral" }] },
        "subject": { "reference": format!("Patient/{patient_id}") },
        "authoredOn": chrono::Utc::now().to_rfc3339(),
        "requester": { "reference": "PractitionerRole/gp-apatel" },
        "reasonCode": [{ "coding": [{ "system": "http://snomed.info/sct", "code": args.condition }] }],
        "note": [{ "text": args.note }]
    });
    if !args.performer.is_empty() {
        referral["performer"] = json!([{ "reference": args.performer }]);
    }
    let sr = api.create("ServiceRequest", &referral, &[("X-Request-Id", request_id)]).await;
    println!("referral ServiceRequest/{sr} accepted");

    // 4. Poll its Tasks (one per charity) until each has finished.
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last = String::new();
    let tasks = loop {
        let (_, bundle) = api.send("GET", &format!("Task?based-on=ServiceRequest/{sr}"), None, &[]).await;
        let tasks: Vec<Value> =
            bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect();
        let now: Vec<String> = tasks
            .iter()
            .map(|t| {
                format!(
                    "{} {} ({})",
                    code(t, "/owner/reference"),
                    code(t, "/status"),
                    code(t, "/businessStatus/coding/0/code")
                )
            })
            .collect();
        if now.join("; ") != last {
            last = now.join("; ");
            println!("  {last}");
        }
        if !tasks.is_empty() && tasks.iter().all(|t| FINISHED.contains(&t["status"].as_str().unwrap_or_default())) {
            break tasks;
        }
        if Instant::now() > deadline {
            eprintln!("not finished after {} s", args.timeout);
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // 5. The outcome of each, and the summary to file in the patient record.
    for t in &tasks {
        println!(
            "outcome: {} {} reason {} output {}",
            code(t, "/owner/reference"),
            code(t, "/status"),
            code(t, "/statusReason/coding/0/code"),
            code(t, "/output/0/valueCodeableConcept/coding/0/code")
        );
        let id = t["id"].as_str().unwrap_or_default();
        let (status, summary) = api.send("GET", &format!("Task/{id}/$outcome-summary"), None, &[]).await;
        if status == 200 {
            let titles: Vec<String> = summary
                .pointer("/entry/0/resource/section")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|s| code(s, "/title"))
                .collect();
            println!("summary for the record: {}", titles.join(" | "));
        }
    }
}
