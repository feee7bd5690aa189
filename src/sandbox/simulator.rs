//! The sandbox's simulated charities (PRODUCT.md §10): two charities that answer referrals the
//! way real ones do, so a referrer can test the whole loop alone. The referral chooses what
//! happens with a sentinel note (`ServiceRequest.note[].text`, see [`Behaviour`]).
//!
//! They use the same doors as a real charity: `sandbox-charity-webhook` receives each
//! `referral.created` as a signed Standard Webhooks request at `/sandbox/hook` (verified with
//! the Endpoint's secret, deduplicated on `webhook-id`) and `sandbox-charity-polling` searches
//! for its `requested` Tasks every second; both then read the Task and its ServiceRequest and
//! move the Task with JSON Patch over HTTP, with their own public sandbox keys.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::delivery::signature;

/// The tag on every sandbox directory resource; production never loads a resource carrying it.
pub const TAG_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/sandbox";
/// The charity that gets webhooks.
pub const WEBHOOK_CHARITY: &str = "sandbox-charity-webhook";
/// The charity that polls.
pub const POLLING_CHARITY: &str = "sandbox-charity-polling";
/// The webhook charity's Endpoint (its address is set to this server at start).
pub const ENDPOINT: &str = "sandbox-charity-webhook-endpoint";
/// The sandbox charities' directory entries (`examples/sandbox/charities.json`).
pub const DIRECTORY: &str = include_str!("../../examples/sandbox/charities.json");
/// The sentinel prefix in a referral's note.
pub const SENTINEL: &str = "sandbox:";
/// Seconds between accepting and completing, unless the sentinel says otherwise.
pub const DEFAULT_COMPLETE_AFTER: u64 = 5;

const REASONS: &str = "https://signpost.example/fhir/CodeSystem/rejection-reason";
const STAGES: &str = "https://signpost.example/fhir/CodeSystem/referral-outcome";
const OUTCOMES: &str = "https://signpost.example/fhir/CodeSystem/support-outcome";

/// What a simulated charity does with a referral, chosen by the first note of the referral
/// that starts with `sandbox:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `sandbox:accept-complete[:N]` (also the default): accepted at once, completed with the
    /// outcome `support-completed` N seconds later (5 by default).
    AcceptComplete(u64),
    /// `sandbox:reject-out-of-area`: rejected with the reason `out-of-area`.
    RejectOutOfArea,
    /// `sandbox:no-response`: the webhook is acknowledged, the Task is never touched.
    NoResponse,
    /// `sandbox:webhook-500`: every webhook for the referral is answered 500, so Signpost
    /// retries on its schedule (the polling charity treats it as `no-response`).
    Webhook500,
    /// `sandbox:on-hold`: accepted, then put on hold with the stage `waitlisted`.
    OnHold,
    /// `sandbox:could-not-contact`: accepted, a contact attempt recorded, then failed with the
    /// reason `could-not-contact`.
    CouldNotContact,
}

/// The documented sentinels: (note text, what happens).
pub const SENTINELS: &[(&str, &str)] = &[
    ("sandbox:accept-complete[:N]", "accepted, then completed with an outcome after N seconds (default 5)"),
    ("sandbox:reject-out-of-area", "rejected with the reason out-of-area"),
    ("sandbox:no-response", "never answered: the Task stays requested"),
    ("sandbox:webhook-500", "the webhook charity answers 500 to every delivery, so Signpost retries"),
    ("sandbox:on-hold", "accepted, then on hold (stage waitlisted)"),
    ("sandbox:could-not-contact", "accepted, a contact attempt, then failed with the reason could-not-contact"),
];

impl Behaviour {
    /// The behaviour a ServiceRequest asks for (the default when it has no sentinel; an
    /// unknown sentinel is ignored).
    pub fn of(service_request: &Value) -> Behaviour {
        let notes = service_request.get("note").and_then(Value::as_array).into_iter().flatten();
        for text in notes.filter_map(|n| n.get("text").and_then(Value::as_str)) {
            let Some(rest) = text.trim().to_ascii_lowercase().strip_prefix(SENTINEL).map(str::to_string) else {
                continue;
            };
            let (name, arg) = rest.split_once(':').map_or((rest.as_str(), None), |(n, a)| (n, Some(a)));
            let found = match name.trim() {
                "accept-complete" => Some(Behaviour::AcceptComplete(
                    arg.and_then(|a| a.trim().parse().ok()).unwrap_or(DEFAULT_COMPLETE_AFTER).min(3_600),
                )),
                "reject-out-of-area" => Some(Behaviour::RejectOutOfArea),
                "no-response" => Some(Behaviour::NoResponse),
                "webhook-500" => Some(Behaviour::Webhook500),
                "on-hold" => Some(Behaviour::OnHold),
                "could-not-contact" => Some(Behaviour::CouldNotContact),
                _ => None,
            };
            if let Some(b) = found {
                return b;
            }
        }
        Behaviour::AcceptComplete(DEFAULT_COMPLETE_AFTER)
    }
}

/// One simulated charity acting through the HTTP API with its key.
#[derive(Clone)]
struct Charity {
    http: reqwest::Client,
    base: String,
    key: &'static str,
}

impl Charity {
    async fn get(&self, path: &str) -> Option<(Value, Option<String>)> {
        let res = self.http.get(format!("{}/{path}", self.base)).bearer_auth(self.key).send().await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        let etag = res.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        Some((res.json().await.ok()?, etag))
    }

    /// Apply JSON Patch `ops` to the Task, guarded by the version just read (three tries).
    async fn patch(&self, task: &str, ops: Value) -> bool {
        for _ in 0..3 {
            let Some((_, Some(etag))) = self.get(&format!("Task/{task}")).await else { return false };
            let sent = self
                .http
                .patch(format!("{}/Task/{task}", self.base))
                .bearer_auth(self.key)
                .header("Content-Type", "application/json-patch+json")
                .header("If-Match", etag)
                .body(ops.to_string())
                .send()
                .await;
            match sent.map(|r| r.status().as_u16()) {
                Ok(200) => return true,
                Ok(412) => continue,
                Ok(status) => {
                    tracing::warn!(task, status, "sandbox charity: a Task move was refused");
                    return false;
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// The behaviour the Task's referral asks for.
    async fn behaviour(&self, task: &Value) -> Option<Behaviour> {
        let focus = task.pointer("/focus/reference").and_then(Value::as_str)?;
        let (sr, _) = self.get(focus).await?;
        Some(Behaviour::of(&sr))
    }

    /// Play `behaviour` out on the Task.
    async fn act(self, task: String, behaviour: Behaviour) {
        let status = |s: &str| json!({ "op": "replace", "path": "/status", "value": s });
        let coded = |system: &str, code: &str| json!({ "coding": [{ "system": system, "code": code }] });
        let stage = |code: &str| json!({ "op": "add", "path": "/businessStatus", "value": coded(STAGES, code) });
        let reason = |code: &str| json!({ "op": "add", "path": "/statusReason", "value": coded(REASONS, code) });
        match behaviour {
            Behaviour::NoResponse | Behaviour::Webhook500 => {}
            Behaviour::RejectOutOfArea => {
                self.patch(&task, json!([status("rejected"), reason("out-of-area")])).await;
            }
            Behaviour::AcceptComplete(after) => {
                if self.patch(&task, json!([status("accepted")])).await {
                    tokio::time::sleep(Duration::from_secs(after)).await;
                    let output = json!({ "op": "add", "path": "/output", "value": [{
                        "type": { "text": "outcome" }, "valueCodeableConcept": coded(OUTCOMES, "support-completed") }] });
                    self.patch(&task, json!([status("completed"), stage("support-completed"), output])).await;
                }
            }
            Behaviour::OnHold => {
                if self.patch(&task, json!([status("accepted")])).await {
                    self.patch(&task, json!([status("on-hold"), stage("waitlisted")])).await;
                }
            }
            Behaviour::CouldNotContact => {
                if self.patch(&task, json!([status("accepted")])).await
                    && self.patch(&task, json!([stage("contact-attempted")])).await
                {
                    self.patch(
                        &task,
                        json!([status("failed"), stage("could-not-contact"), reason("could-not-contact")]),
                    )
                    .await;
                }
            }
        }
    }
}

/// The running simulator: the webhook charity's secret and what both have seen.
pub struct Simulator {
    webhook: Charity,
    polling: Charity,
    secret: String,
    seen_events: Mutex<HashSet<String>>,
}

impl Simulator {
    /// A simulator acting on the FHIR API at `base` (`http://host:port/fhir`); `secret` is the
    /// webhook charity's Endpoint secret.
    pub fn new(base: String, secret: String) -> Arc<Simulator> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("HTTP client builds");
        let client = |key: &'static str| Charity { http: http.clone(), base: base.clone(), key };
        Arc::new(Simulator {
            webhook: client(super::SIM_WEBHOOK_KEY),
            polling: client(super::SIM_POLLING_KEY),
            secret,
            seen_events: Mutex::new(HashSet::new()),
        })
    }

    /// The polling charity: every second, the `requested` Tasks it owns and has not handled.
    pub async fn poll(self: Arc<Self>) {
        let mut handled: HashSet<String> = HashSet::new();
        let query = format!("Task?owner=Organization/{POLLING_CHARITY}&status=requested&_sort=_lastUpdated&_count=50");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some((bundle, _)) = self.polling.get(&query).await else { continue };
            let tasks = bundle.get("entry").and_then(Value::as_array).into_iter().flatten();
            for task in tasks.filter_map(|e| e.get("resource")) {
                let Some(id) = task.get("id").and_then(Value::as_str) else { continue };
                if handled.contains(id) {
                    continue;
                }
                let Some(behaviour) = self.polling.behaviour(task).await else { continue };
                handled.insert(id.to_string());
                let behaviour = if behaviour == Behaviour::Webhook500 { Behaviour::NoResponse } else { behaviour };
                tracing::info!(task = id, ?behaviour, "sandbox charity (polling) found a referral");
                tokio::spawn(self.polling.clone().act(id.to_string(), behaviour));
            }
        }
    }
}

/// `POST /sandbox/hook`: the webhook charity's receiver.
pub async fn hook(req: HttpRequest, body: web::Bytes, sim: web::Data<Arc<Simulator>>) -> HttpResponse {
    if let Err(why) = signature::verify_request(&sim.secret, req.headers(), &body) {
        tracing::warn!(why, "sandbox charity: webhook refused");
        return HttpResponse::Unauthorized().finish();
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else { return HttpResponse::BadRequest().finish() };
    let webhook_id = req.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if event.get("type").and_then(Value::as_str) != Some("referral.created")
        || sim.seen_events.lock().expect("not poisoned").contains(&webhook_id)
    {
        return HttpResponse::NoContent().finish();
    }
    let Some(task_ref) = event.pointer("/data/task").and_then(Value::as_str) else {
        return HttpResponse::BadRequest().finish();
    };
    let Some((task, _)) = sim.webhook.get(task_ref).await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let Some(behaviour) = sim.webhook.behaviour(&task).await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    if behaviour == Behaviour::Webhook500 {
        return HttpResponse::InternalServerError().body("sandbox:webhook-500");
    }
    if !sim.seen_events.lock().expect("not poisoned").insert(webhook_id) {
        return HttpResponse::NoContent().finish();
    }
    let id = task_ref.trim_start_matches("Task/").to_string();
    tracing::info!(task = %id, ?behaviour, "sandbox charity (webhook) got a referral");
    tokio::spawn(sim.webhook.clone().act(id, behaviour));
    HttpResponse::NoContent().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noted(texts: &[&str]) -> Value {
        json!({ "resourceType": "ServiceRequest", "note": texts.iter().map(|t| json!({ "text": t })).collect::<Vec<_>>() })
    }

    #[test]
    fn each_documented_sentinel_selects_its_behaviour() {
        assert_eq!(Behaviour::of(&noted(&[])), Behaviour::AcceptComplete(DEFAULT_COMPLETE_AFTER));
        assert_eq!(Behaviour::of(&noted(&["Please call after 5pm"])), Behaviour::AcceptComplete(5));
        assert_eq!(Behaviour::of(&noted(&["sandbox:accept-complete:2"])), Behaviour::AcceptComplete(2));
        assert_eq!(Behaviour::of(&noted(&["x", " Sandbox:Reject-Out-Of-Area "])), Behaviour::RejectOutOfArea);
        assert_eq!(Behaviour::of(&noted(&["sandbox:no-response"])), Behaviour::NoResponse);
        assert_eq!(Behaviour::of(&noted(&["sandbox:webhook-500"])), Behaviour::Webhook500);
        assert_eq!(Behaviour::of(&noted(&["sandbox:on-hold"])), Behaviour::OnHold);
        assert_eq!(Behaviour::of(&noted(&["sandbox:could-not-contact"])), Behaviour::CouldNotContact);
        assert_eq!(Behaviour::of(&noted(&["sandbox:unknown", "sandbox:on-hold"])), Behaviour::OnHold);
        assert_eq!(SENTINELS.len(), 6, "the README lists each of them");
    }
}
