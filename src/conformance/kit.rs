//! The black-box scenarios: the kit talks to a deployment over HTTP only, as a referrer, a
//! charity, a second charity and (for the webhook scenario) an operator, each with its key.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::catalogue::{Suite, requirement};
use super::receiver::{self, Received};
use super::report::{Exchange, Outcome, ScenarioResult};

/// What the kit needs to know about the deployment.
#[derive(Debug, Clone)]
pub struct KitOptions {
    /// The server root (`https://signpost.example.org`), without `/fhir`.
    pub base_url: String,
    pub referrer_key: String,
    pub charity_key: Option<String>,
    pub charity_org: String,
    pub other_charity_key: Option<String>,
    pub operator_key: Option<String>,
    /// A SNOMED CT condition the deployment's directory routes (for REF-ROUTE-01).
    pub condition: String,
    pub suites: Vec<Suite>,
    /// The host the deployment reaches the kit's webhook receiver at.
    pub receiver_host: String,
    /// Seconds to wait for something asynchronous (a cascade, a webhook).
    pub wait_secs: u64,
}

/// Why a scenario did not pass.
enum Stop {
    Failed(String),
    Skipped(String),
}

type Check = Result<(), Stop>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Stop::Failed(format!($($msg)+)));
        }
    };
}

/// A response as the kit sees it.
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is_outcome_with_error(&self) -> bool {
        self.body["resourceType"] == "OperationOutcome"
            && self.body["issue"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
    }

    fn issue_codes(&self) -> Vec<String> {
        self.body["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.pointer("/details/coding/0/code").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    fn expressions(&self) -> Vec<String> {
        self.body["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["severity"] == "error")
            .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect()
    }

    fn resources(&self) -> Vec<Value> {
        self.body["entry"].as_array().into_iter().flatten().filter_map(|e| e.get("resource").cloned()).collect()
    }

    fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_default().to_string()
    }
}

/// The request body.
enum Body<'a> {
    Json(&'a Value),
    Patch(&'a Value),
    Raw(&'a str),
}

/// Which key a request uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum As {
    Nobody,
    Referrer,
    Charity,
    OtherCharity,
    Operator,
    Key(&'static str),
}

/// The state shared by the scenarios of one run.
pub struct Kit {
    opts: KitOptions,
    http: reqwest::Client,
    exchanges: Vec<Exchange>,
    results: Vec<ScenarioResult>,
    run: String,
    patient: Option<String>,
    /// A referral addressed to the charity and its Task (REF-SEND-01).
    sent: Option<(String, String)>,
    /// The Task the charity completed (CH-COMPLETE-01).
    completed: Option<String>,
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A random NHS number in the 999 test range that passes Modulus 11.
fn test_nhs_number() -> String {
    use rand::Rng;
    loop {
        let mut digits: Vec<u32> = vec![9, 9, 9];
        digits.extend((0..6).map(|_| rand::thread_rng().gen_range(0..10)));
        let sum: u32 = digits.iter().enumerate().map(|(i, d)| d * (10 - i as u32)).sum();
        let check = 11 - sum % 11;
        if check == 10 {
            continue;
        }
        digits.push(if check == 11 { 0 } else { check });
        return digits.iter().map(|d| char::from_digit(*d, 10).expect("a digit")).collect();
    }
}

/// An active Consent to share with the voluntary sector for `patient` (a reference), which a
/// referral needs.
pub fn consent_for(patient: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [
            { "system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent" },
            { "system": "https://signpost.example/fhir/CodeSystem/consent-category", "code": "share-with-vcs" }
        ] }],
        "patient": { "reference": patient },
        "policy": [{ "uri": "https://signpost.example/fhir/consent-policy/share-with-vcs" }],
        "dateTime": "2024-03-14T10:10:00+00:00",
        "provision": { "type": "permit" }
    })
}

const IDENTIFIER_SYSTEM: &str = "https://conformance.signpost.example/Id/referral";
const OUTCOMES: &str = "https://signpost.example/fhir/CodeSystem/support-outcome";
const REASONS: &str = "https://signpost.example/fhir/CodeSystem/rejection-reason";

impl Kit {
    pub fn new(opts: KitOptions) -> Kit {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client builds");
        Kit {
            opts,
            http,
            exchanges: Vec::new(),
            results: Vec::new(),
            run: uid(),
            patient: None,
            sent: None,
            completed: None,
        }
    }

    /// Run the chosen suites; the results in catalogue order.
    pub async fn run(mut self) -> Vec<ScenarioResult> {
        macro_rules! scenario {
            ($id:literal, $f:ident) => {{
                let req = requirement($id);
                if self.opts.suites.contains(&req.suite) {
                    self.exchanges.clear();
                    let started = Instant::now();
                    let outcome = match self.$f().await {
                        Ok(()) => Outcome::Passed,
                        Err(Stop::Failed(why)) => Outcome::Failed(why),
                        Err(Stop::Skipped(why)) => Outcome::Skipped(why),
                    };
                    self.results.push(ScenarioResult {
                        id: req.id,
                        outcome,
                        ms: started.elapsed().as_millis() as u64,
                        exchanges: std::mem::take(&mut self.exchanges),
                    });
                }
            }};
        }
        scenario!("REF-AUTH-01", auth);
        scenario!("REF-SEND-01", send);
        scenario!("REF-INVALID-01", invalid_json);
        scenario!("REF-INVALID-02", invalid_missing_subject);
        scenario!("REF-INVALID-03", invalid_unknown_element);
        scenario!("REF-INVALID-04", invalid_code);
        scenario!("REF-INVALID-05", invalid_date);
        scenario!("REF-INVALID-06", invalid_no_consent);
        scenario!("REF-INVALID-07", invalid_type);
        scenario!("REF-IDEM-01", idempotent_retry);
        scenario!("REF-BUNDLE-01", transaction);
        scenario!("REF-ROUTE-01", routed_by_condition);
        scenario!("REF-BARS-01", bars_message);
        scenario!("REF-REVOKE-01", revoke);
        scenario!("REF-POLL-01", poll);
        scenario!("REF-FEED-01", change_feed);
        scenario!("CH-FIND-01", find_new);
        scenario!("CH-STALE-01", stale_update);
        scenario!("CH-ACCEPT-01", accept);
        scenario!("CH-COMPLETE-01", complete);
        scenario!("CH-ILLEGAL-01", illegal_moves);
        scenario!("CH-REJECT-01", reject);
        scenario!("CH-REJECT-02", reject_without_reason);
        scenario!("CH-FOREIGN-01", foreign_task);
        scenario!("CH-WEBHOOK-01", webhook_signed);
        // Last: it reads what the charity suite recorded.
        scenario!("REF-OUTCOME-01", read_outcome);
        self.results
    }

    fn key(&self, who: As) -> Result<Option<String>, Stop> {
        let need =
            |k: &Option<String>, flag: &str| k.clone().map(Some).ok_or_else(|| Stop::Skipped(format!("needs {flag}")));
        match who {
            As::Nobody => Ok(None),
            As::Referrer => Ok(Some(self.opts.referrer_key.clone())),
            As::Charity => need(&self.opts.charity_key, "--charity-key"),
            As::OtherCharity => need(&self.opts.other_charity_key, "--other-charity-key"),
            As::Operator => need(&self.opts.operator_key, "--operator-key"),
            As::Key(k) => Ok(Some(k.to_string())),
        }
    }

    async fn call(
        &mut self,
        who: As,
        method: &str,
        path: &str,
        body: Option<Body<'_>>,
        headers: &[(&str, String)],
    ) -> Result<Resp, Stop> {
        let key = self.key(who)?;
        let url = format!("{}{path}", self.opts.base_url.trim_end_matches('/'));
        let mut req = self.http.request(method.parse().expect("a method"), &url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req = match body {
            Some(Body::Json(v)) => req.header("Content-Type", "application/fhir+json").body(v.to_string()),
            Some(Body::Patch(v)) => req.header("Content-Type", "application/json-patch+json").body(v.to_string()),
            Some(Body::Raw(s)) => req.header("Content-Type", "application/fhir+json").body(s.to_string()),
            None => req,
        };
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        // Reports name the path without identifier values (they can be NHS numbers), and the
        // transport error without its URL.
        let shown = without_identifier_values(path);
        let res =
            req.send().await.map_err(|e| Stop::Failed(format!("{method} {shown}: no answer ({})", e.without_url())))?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body =
            serde_json::from_str(&text).unwrap_or(if text.is_empty() { Value::Null } else { Value::String(text) });
        let who = match who {
            As::Nobody => "no key",
            As::Referrer => "referrer",
            As::Charity => "charity",
            As::OtherCharity => "other charity",
            As::Operator => "operator",
            As::Key(_) => "unknown key",
        };
        let summary = match body.get("resourceType").and_then(Value::as_str) {
            Some("OperationOutcome") => {
                let codes = Resp { status, headers: Default::default(), body: body.clone() }.issue_codes();
                format!("OperationOutcome {}", codes.join(", "))
            }
            Some(t) => t.to_string(),
            None => String::new(),
        };
        self.exchanges.push(Exchange {
            method: method.to_string(),
            path: shown,
            who: who.to_string(),
            status,
            summary,
        });
        Ok(Resp { status, headers, body })
    }

    async fn get(&mut self, who: As, path: &str) -> Result<Resp, Stop> {
        self.call(who, "GET", path, None, &[]).await
    }

    async fn post(&mut self, who: As, path: &str, body: &Value) -> Result<Resp, Stop> {
        self.call(who, "POST", path, Some(Body::Json(body)), &[]).await
    }

    async fn patch(&mut self, who: As, path: &str, ops: &Value, etag: Option<&str>) -> Result<Resp, Stop> {
        let headers: Vec<(&str, String)> = etag.map(|e| vec![("If-Match", e.to_string())]).unwrap_or_default();
        self.call(who, "PATCH", path, Some(Body::Patch(ops)), &headers).await
    }

    /// A Patient with an active Consent to share (made once per run).
    async fn patient(&mut self) -> Result<String, Stop> {
        if let Some(p) = &self.patient {
            return Ok(p.clone());
        }
        let p = self.new_patient(true).await?;
        self.patient = Some(p.clone());
        Ok(p)
    }

    async fn new_patient(&mut self, with_consent: bool) -> Result<String, Stop> {
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "https://fhir.nhs.uk/Id/nhs-number", "value": test_nhs_number() }],
            "name": [{ "family": "CONFORMANCE", "given": ["Kit"] }],
            "birthDate": "1960-01-01",
            "telecom": [{ "system": "phone", "value": "0113 496 0999", "use": "home" }],
            "address": [{ "postalCode": "LS1 1AA" }]
        });
        let r = self.post(As::Referrer, "/fhir/Patient", &patient).await?;
        ensure!(r.status == 201, "creating the test Patient answered {}", r.status);
        let id = r.id();
        if with_consent {
            let consent = consent_for(&format!("Patient/{id}"));
            let c = self.post(As::Referrer, "/fhir/Consent", &consent).await?;
            ensure!(c.status == 201, "creating the test Consent answered {}", c.status);
        }
        Ok(id)
    }

    /// A referral for `patient`: to the kit's charity unless `performer` is None (routed by
    /// condition).
    fn referral(&self, patient: &str, performer: Option<&str>) -> Value {
        let mut sr = json!({
            "resourceType": "ServiceRequest",
            "identifier": [{ "system": IDENTIFIER_SYSTEM, "value": uid() }],
            "status": "active",
            "intent": "order",
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral" }] },
            "subject": { "reference": format!("Patient/{patient}") },
            "authoredOn": "2024-03-14T10:15:00+00:00",
            "requester": { "reference": "PractitionerRole/gp-apatel" },
            "reasonCode": [{ "coding": [{ "system": "http://snomed.info/sct", "code": self.opts.condition }] }],
            "note": [{ "text": format!("Conformance kit run {}", self.run) }]
        });
        if let Some(p) = performer {
            sr["performer"] = json!([{ "reference": p }]);
        }
        sr
    }

    fn charity_ref(&self) -> String {
        format!("Organization/{}", self.opts.charity_org)
    }

    /// Send a referral to the kit's charity; (ServiceRequest id, Task id).
    async fn send_to_charity(&mut self) -> Result<(String, String), Stop> {
        let patient = self.patient().await?;
        let sr = self.referral(&patient, Some(&self.charity_ref()));
        let r = self.post(As::Referrer, "/fhir/ServiceRequest", &sr).await?;
        ensure!(r.status == 201, "the referral answered {} (expected 201)", r.status);
        let id = r.id();
        let tasks = self.tasks_of(&id).await?;
        ensure!(tasks.len() == 1, "the referral has {} Tasks (expected one, for the charity)", tasks.len());
        Ok((id, tasks[0]["id"].as_str().unwrap_or_default().to_string()))
    }

    /// The Task of REF-SEND-01's referral, or of a new one when that scenario did not run.
    async fn sent_task(&mut self) -> Result<String, Stop> {
        match &self.sent {
            Some((_, t)) => Ok(t.clone()),
            None => Ok(self.send_to_charity().await?.1),
        }
    }

    async fn tasks_of(&mut self, sr: &str) -> Result<Vec<Value>, Stop> {
        let r = self.get(As::Referrer, &format!("/fhir/Task?based-on=ServiceRequest/{sr}")).await?;
        ensure!(r.status == 200, "searching the referral's Tasks answered {}", r.status);
        Ok(r.resources())
    }

    /// How many ServiceRequests carry `identifier` (as the referrer sees them).
    async fn stored(&mut self, sr: &Value) -> Result<usize, Stop> {
        let value = sr.pointer("/identifier/0/value").and_then(Value::as_str).unwrap_or_default().to_string();
        let r = self.get(As::Referrer, &format!("/fhir/ServiceRequest?identifier={IDENTIFIER_SYSTEM}|{value}")).await?;
        ensure!(r.status == 200, "searching by identifier answered {}", r.status);
        Ok(r.resources().len())
    }

    /// POST an invalid referral; it must be refused with `statuses`, an error OperationOutcome
    /// (optionally naming `expression` or carrying `code`), and nothing stored.
    async fn refused(&mut self, sr: &Value, statuses: &[u16], expression: Option<&str>, code: Option<&str>) -> Check {
        let r = self.post(As::Referrer, "/fhir/ServiceRequest", sr).await?;
        ensure!(statuses.contains(&r.status), "answered {} (expected {statuses:?})", r.status);
        ensure!(r.is_outcome_with_error(), "the refusal is not an OperationOutcome with an error");
        if let Some(e) = expression {
            let found = r.expressions();
            ensure!(found.iter().any(|x| x.starts_with(e)), "no error issue at {e} (expressions: {found:?})");
        }
        if let Some(c) = code {
            let codes = r.issue_codes();
            ensure!(codes.iter().any(|x| x == c), "no issue coded {c} (codes: {codes:?})");
        }
        ensure!(self.stored(sr).await? == 0, "the refused referral was stored");
        Ok(())
    }

    async fn wait_for<F: Fn(&Resp) -> bool>(&mut self, who: As, path: &str, done: F) -> Result<Resp, Stop> {
        let deadline = Instant::now() + Duration::from_secs(self.opts.wait_secs);
        loop {
            let r = self.get(who, path).await?;
            if done(&r) || Instant::now() > deadline {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // ---- the referrer ----

    async fn auth(&mut self) -> Check {
        let r = self.get(As::Nobody, "/fhir/Task").await?;
        ensure!(r.status == 401, "no key: answered {} (expected 401)", r.status);
        ensure!(r.is_outcome_with_error(), "no key: the refusal is not an OperationOutcome");
        let r = self.get(As::Key("sp_conformance_not_a_key"), "/fhir/Task").await?;
        ensure!(r.status == 401, "an unknown key: answered {} (expected 401)", r.status);
        ensure!(r.is_outcome_with_error(), "an unknown key: the refusal is not an OperationOutcome");
        Ok(())
    }

    async fn send(&mut self) -> Check {
        let patient = self.patient().await?;
        let sr = self.referral(&patient, Some(&self.charity_ref()));
        let r = self.post(As::Referrer, "/fhir/ServiceRequest", &sr).await?;
        ensure!(r.status == 201, "answered {} (expected 201)", r.status);
        ensure!(r.header("location").is_some_and(|l| l.contains("/ServiceRequest/")), "no Location header");
        ensure!(r.header("etag").is_some(), "no ETag header");
        let id = r.id();
        let tasks = self.tasks_of(&id).await?;
        ensure!(tasks.len() == 1, "{} Tasks for the referral (expected one)", tasks.len());
        let owner = tasks[0].pointer("/owner/reference").and_then(Value::as_str).unwrap_or_default();
        ensure!(owner == self.charity_ref(), "the Task's owner is {owner:?} (expected {})", self.charity_ref());
        ensure!(tasks[0]["status"] == "requested", "the new Task's status is {}", tasks[0]["status"]);
        self.sent = Some((id, tasks[0]["id"].as_str().unwrap_or_default().to_string()));
        Ok(())
    }

    async fn invalid_json(&mut self) -> Check {
        let r = self
            .call(
                As::Referrer,
                "POST",
                "/fhir/ServiceRequest",
                Some(Body::Raw(r#"{"resourceType": "ServiceRequest", "status": "#)),
                &[],
            )
            .await?;
        ensure!(r.status == 400, "answered {} (expected 400)", r.status);
        ensure!(r.is_outcome_with_error(), "the refusal is not an OperationOutcome with an error");
        Ok(())
    }

    async fn invalid_missing_subject(&mut self) -> Check {
        let patient = self.patient().await?;
        let mut sr = self.referral(&patient, Some(&self.charity_ref()));
        sr.as_object_mut().expect("an object").remove("subject");
        self.refused(&sr, &[400, 422], Some("ServiceRequest"), None).await
    }

    async fn invalid_unknown_element(&mut self) -> Check {
        let patient = self.patient().await?;
        let mut sr = self.referral(&patient, Some(&self.charity_ref()));
        sr["reasonCodes"] = sr["reasonCode"].clone();
        self.refused(&sr, &[400], Some("ServiceRequest"), None).await
    }

    async fn invalid_code(&mut self) -> Check {
        let patient = self.patient().await?;
        let mut sr = self.referral(&patient, Some(&self.charity_ref()));
        sr["status"] = json!("open");
        self.refused(&sr, &[400], Some("ServiceRequest.status"), None).await
    }

    async fn invalid_date(&mut self) -> Check {
        let patient = self.patient().await?;
        let mut sr = self.referral(&patient, Some(&self.charity_ref()));
        sr["authoredOn"] = json!("14/03/2024");
        self.refused(&sr, &[400], Some("ServiceRequest.authoredOn"), None).await
    }

    async fn invalid_no_consent(&mut self) -> Check {
        let patient = self.new_patient(false).await?;
        let sr = self.referral(&patient, Some(&self.charity_ref()));
        self.refused(&sr, &[422], None, Some("consent-missing")).await
    }

    async fn invalid_type(&mut self) -> Check {
        let patient =
            json!({ "resourceType": "Patient", "identifier": [{ "system": IDENTIFIER_SYSTEM, "value": uid() }] });
        let r = self.post(As::Referrer, "/fhir/ServiceRequest", &patient).await?;
        ensure!(r.status == 400, "answered {} (expected 400)", r.status);
        ensure!(r.is_outcome_with_error(), "the refusal is not an OperationOutcome with an error");
        Ok(())
    }

    async fn idempotent_retry(&mut self) -> Check {
        let patient = self.patient().await?;
        let sr = self.referral(&patient, Some(&self.charity_ref()));
        let key = vec![("X-Request-Id", format!("conformance-{}", uid()))];
        let first = self.call(As::Referrer, "POST", "/fhir/ServiceRequest", Some(Body::Json(&sr)), &key).await?;
        ensure!(first.status == 201, "the first attempt answered {}", first.status);
        let again = self.call(As::Referrer, "POST", "/fhir/ServiceRequest", Some(Body::Json(&sr)), &key).await?;
        ensure!(again.status == first.status, "the retry answered {} (the first {})", again.status, first.status);
        ensure!(again.id() == first.id(), "the retry returned another id ({} then {})", first.id(), again.id());
        let n = self.stored(&sr).await?;
        ensure!(n == 1, "{n} ServiceRequests stored for one referral sent twice");
        Ok(())
    }

    fn transaction_bundle(&self, valid: bool) -> Value {
        let (p, c, s) = (format!("urn:uuid:{}", uid()), format!("urn:uuid:{}", uid()), format!("urn:uuid:{}", uid()));
        let nhs = test_nhs_number();
        let mut sr = self.referral("x", Some(&self.charity_ref()));
        sr["subject"] = json!({ "reference": p });
        if !valid {
            sr["status"] = json!("open");
        }
        json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                { "fullUrl": p, "resource": {
                    "resourceType": "Patient",
                    "identifier": [{ "system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs }],
                    "name": [{ "family": "CONFORMANCE", "given": ["Bundle"] }],
                    "birthDate": "1961-02-03",
                    "address": [{ "postalCode": "LS2 2BB" }] },
                  "request": { "method": "POST", "url": "Patient" } },
                { "fullUrl": c, "resource": consent_for(&p),
                  "request": { "method": "POST", "url": "Consent" } },
                { "fullUrl": s, "resource": sr, "request": { "method": "POST", "url": "ServiceRequest" } }
            ]
        })
    }

    async fn transaction(&mut self) -> Check {
        let bundle = self.transaction_bundle(true);
        let r = self.post(As::Referrer, "/fhir", &bundle).await?;
        ensure!(r.status == 200, "answered {} (expected 200)", r.status);
        ensure!(r.body["type"] == "transaction-response", "the answer is a {} Bundle", r.body["type"]);
        let statuses: Vec<String> = r.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e.pointer("/response/status").and_then(Value::as_str).unwrap_or_default().to_string())
            .collect();
        ensure!(
            statuses.len() == 3 && statuses.iter().all(|s| s.starts_with("201")),
            "entry statuses {statuses:?} (expected three 201s)"
        );
        ensure!(
            self.stored(&bundle["entry"][2]["resource"]).await? == 1,
            "the referral is not findable after the transaction"
        );
        let bad = self.transaction_bundle(false);
        let r = self.post(As::Referrer, "/fhir", &bad).await?;
        ensure!((400..500).contains(&r.status), "a transaction with an invalid entry answered {}", r.status);
        ensure!(r.is_outcome_with_error(), "its refusal is not an OperationOutcome with an error");
        ensure!(self.stored(&bad["entry"][2]["resource"]).await? == 0, "part of the refused transaction was stored");
        let nhs = bad.pointer("/entry/0/resource/identifier/0/value").and_then(Value::as_str).unwrap_or_default();
        let p = self
            .get(As::Referrer, &format!("/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"))
            .await?;
        ensure!(p.resources().is_empty(), "the refused transaction's Patient was stored");
        Ok(())
    }

    async fn routed_by_condition(&mut self) -> Check {
        let patient = self.patient().await?;
        let sr = self.referral(&patient, None);
        let r = self.post(As::Referrer, "/fhir/ServiceRequest", &sr).await?;
        ensure!(
            r.status == 201,
            "answered {} (expected 201; is condition {} in the directory?)",
            r.status,
            self.opts.condition
        );
        let tasks = self.tasks_of(&r.id()).await?;
        ensure!(!tasks.is_empty(), "the referral was routed to nobody");
        for t in &tasks {
            let owner = t.pointer("/owner/reference").and_then(Value::as_str).unwrap_or_default();
            ensure!(owner.starts_with("Organization/"), "a Task's owner is {owner:?}");
        }
        Ok(())
    }

    async fn bars_message(&mut self) -> Check {
        let mut message: Value = serde_json::from_str(include_str!("../../examples/bars/referral-message.json"))
            .expect("the example message is JSON");
        let bundle_id = uid();
        message["id"] = json!(bundle_id);
        let receiver_url = message.pointer("/entry/0/resource/destination/0/receiver/reference").cloned();
        let header_id = uid();
        message["entry"][0]["fullUrl"] = json!(format!("urn:uuid:{header_id}"));
        message["entry"][0]["resource"]["id"] = json!(header_id);
        let nhs = test_nhs_number();
        let entries = message["entry"].as_array_mut().expect("entries");
        // Address the kit's charity, as a reference to the directory, and make the referral new.
        let charity = self.charity_ref();
        entries.retain(|e| Some(&e["fullUrl"]) != receiver_url.as_ref());
        let mut text = Value::Array(entries.clone()).to_string();
        if let Some(Value::String(urn)) = &receiver_url {
            text = text.replace(&format!("\"{urn}\""), &format!("\"{charity}\""));
        }
        text = text.replace("000000070000", &format!("{:012}", rand::random::<u32>())).replace("9000000009", &nhs);
        message["entry"] = serde_json::from_str(&text).expect("still JSON");
        let headers = vec![("X-Request-Id", uid()), ("X-Correlation-Id", uid())];
        let r = self.call(As::Referrer, "POST", "/fhir/$process-message", Some(Body::Json(&message)), &headers).await?;
        ensure!(r.status == 200, "answered {} (expected 200)", r.status);
        ensure!(r.body["type"] == "message", "the answer is not a message Bundle");
        let response = &r.body["entry"][0]["resource"]["response"];
        ensure!(
            response["identifier"] == json!(bundle_id),
            "response.identifier is {} (expected the request Bundle's id {bundle_id})",
            response["identifier"]
        );
        ensure!(response["code"] == "ok", "response.code is {}", response["code"]);
        let again =
            self.call(As::Referrer, "POST", "/fhir/$process-message", Some(Body::Json(&message)), &headers).await?;
        ensure!(again.status == 409, "the same X-Request-Id again answered {} (expected 409)", again.status);
        Ok(())
    }

    async fn revoke(&mut self) -> Check {
        let patient = self.patient().await?;
        let sr = self.referral(&patient, Some(&self.charity_ref()));
        let r = self.post(As::Referrer, "/fhir/ServiceRequest", &sr).await?;
        ensure!(r.status == 201, "sending the referral answered {}", r.status);
        let id = r.id();
        let ops = json!([{ "op": "replace", "path": "/status", "value": "revoked" }]);
        let p = self.patch(As::Referrer, &format!("/fhir/ServiceRequest/{id}"), &ops, None).await?;
        ensure!(p.status == 200, "revoking answered {} (expected 200)", p.status);
        let path = format!("/fhir/Task?based-on=ServiceRequest/{id}");
        let r = self
            .wait_for(As::Referrer, &path, |r| {
                !r.resources().is_empty() && r.resources().iter().all(|t| t["status"] == "cancelled")
            })
            .await?;
        let statuses: Vec<Value> = r.resources().iter().map(|t| t["status"].clone()).collect();
        ensure!(
            !statuses.is_empty() && statuses.iter().all(|s| s == "cancelled"),
            "the Tasks are {statuses:?} after {} s (expected cancelled)",
            self.opts.wait_secs
        );
        Ok(())
    }

    async fn poll(&mut self) -> Check {
        let before = chrono::Utc::now() - chrono::Duration::seconds(2);
        let (sr, task) = self.send_to_charity().await?;
        let r = self.get(As::Referrer, &format!("/fhir/Task?based-on=ServiceRequest/{sr}")).await?;
        ensure!(r.body["type"] == "searchset", "not a searchset Bundle");
        ensure!(r.body["total"].as_i64() == Some(1), "total is {} (expected 1)", r.body["total"]);
        let since = before.format("%Y-%m-%dT%H:%M:%SZ");
        let r =
            self.get(As::Referrer, &format!("/fhir/Task?based-on=ServiceRequest/{sr}&_lastUpdated=ge{since}")).await?;
        ensure!(r.status == 200, "_lastUpdated search answered {}", r.status);
        ensure!(
            r.resources().iter().any(|t| t["id"] == json!(task)),
            "the Task is missing from the _lastUpdated search"
        );
        Ok(())
    }

    async fn change_feed(&mut self) -> Check {
        // Walk to the end of the feed (bounded), then send.
        let mut cursor = 0i64;
        for _ in 0..500 {
            let r = self.get(As::Referrer, &format!("/fhir/$changes?cursor={cursor}&_count=100")).await?;
            ensure!(r.status == 200, "$changes answered {}", r.status);
            let next =
                next_cursor(&r.body).ok_or_else(|| Stop::Failed("the feed has no next link with a cursor".into()))?;
            let n = r.body["entry"].as_array().map_or(0, Vec::len);
            // Only the last page read matters to the report.
            let older = self.exchanges.len().saturating_sub(1);
            self.exchanges.drain(..older);
            if n < 100 || next == cursor {
                cursor = next;
                break;
            }
            cursor = next;
        }
        let (sr, task) = self.send_to_charity().await?;
        let r = self.get(As::Referrer, &format!("/fhir/$changes?cursor={cursor}&_count=100")).await?;
        ensure!(r.body["type"] == "history", "the feed is a {} Bundle (expected history)", r.body["type"]);
        let urls: Vec<String> = r.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["fullUrl"].as_str().map(str::to_string))
            .collect();
        for want in [format!("ServiceRequest/{sr}"), format!("Task/{task}")] {
            ensure!(urls.iter().any(|u| u.ends_with(&want)), "{want} is not in the feed after cursor {cursor}");
        }
        ensure!(next_cursor(&r.body).is_some_and(|n| n > cursor), "the next link does not move past the new changes");
        Ok(())
    }

    async fn read_outcome(&mut self) -> Check {
        let Some(task) = self.completed.clone() else {
            return Err(Stop::Skipped("needs the charity suite (CH-COMPLETE-01) to have completed a Task".into()));
        };
        let r = self.get(As::Referrer, &format!("/fhir/Task/{task}")).await?;
        ensure!(r.status == 200, "reading the Task answered {}", r.status);
        ensure!(r.body["status"] == "completed", "the referrer sees status {}", r.body["status"]);
        let code = r.body.pointer("/output/0/valueCodeableConcept/coding/0/code").and_then(Value::as_str);
        ensure!(code == Some("support-completed"), "the referrer sees output {:?}", code);
        let s = self.get(As::Referrer, &format!("/fhir/Task/{task}/$outcome-summary")).await?;
        ensure!(s.status == 200, "$outcome-summary answered {}", s.status);
        ensure!(s.body["type"] == "document", "$outcome-summary is not a document Bundle");
        Ok(())
    }

    // ---- the charity ----

    /// The charity's view of a Task and its ETag.
    async fn charity_read(&mut self, task: &str) -> Result<(Value, String), Stop> {
        let r = self.get(As::Charity, &format!("/fhir/Task/{task}")).await?;
        ensure!(r.status == 200, "the charity reading its Task got {}", r.status);
        let etag = r.header("etag").unwrap_or_default().to_string();
        ensure!(!etag.is_empty(), "no ETag on the Task");
        Ok((r.body, etag))
    }

    async fn find_new(&mut self) -> Check {
        self.key(As::Charity)?;
        let task = self.sent_task().await?;
        let path = format!("/fhir/Task?owner={}&status=requested&_sort=-_lastUpdated&_count=100", self.charity_ref());
        let r = self.get(As::Charity, &path).await?;
        ensure!(r.status == 200, "the search answered {}", r.status);
        ensure!(
            r.resources().iter().any(|t| t["id"] == json!(task)),
            "the new Task is not among the charity's requested Tasks"
        );
        Ok(())
    }

    async fn stale_update(&mut self) -> Check {
        self.key(As::Charity)?;
        let (_, task) = self.send_to_charity().await?;
        let (body, _) = self.charity_read(&task).await?;
        let version: i64 =
            body.pointer("/meta/versionId").and_then(Value::as_str).and_then(|v| v.parse().ok()).unwrap_or(1);
        let stale = format!("W/\"{}\"", version - 1);
        let ops = json!([{ "op": "replace", "path": "/status", "value": "accepted" }]);
        let r = self.patch(As::Charity, &format!("/fhir/Task/{task}"), &ops, Some(&stale)).await?;
        ensure!(r.status == 412, "answered {} (expected 412)", r.status);
        let (after, _) = self.charity_read(&task).await?;
        ensure!(after["status"] == "requested", "the Task moved to {}", after["status"]);
        Ok(())
    }

    async fn accept(&mut self) -> Check {
        self.key(As::Charity)?;
        let task = self.sent_task().await?;
        let (_, etag) = self.charity_read(&task).await?;
        let ops = json!([{ "op": "replace", "path": "/status", "value": "accepted" }]);
        let r = self.patch(As::Charity, &format!("/fhir/Task/{task}"), &ops, Some(&etag)).await?;
        ensure!(r.status == 200, "answered {} (expected 200)", r.status);
        ensure!(r.body["status"] == "accepted", "the Task is {}", r.body["status"]);
        ensure!(r.header("etag").is_some_and(|e| e != etag), "the version did not change");
        Ok(())
    }

    async fn complete(&mut self) -> Check {
        self.key(As::Charity)?;
        let Some((_, task)) = self.sent.clone() else {
            return Err(Stop::Skipped("needs REF-SEND-01's referral".into()));
        };
        let (body, etag) = self.charity_read(&task).await?;
        ensure!(body["status"] == "accepted", "the Task is {} (CH-ACCEPT-01 should have accepted it)", body["status"]);
        let ops = json!([
            { "op": "replace", "path": "/status", "value": "completed" },
            { "op": "add", "path": "/output", "value": [{ "type": { "text": "outcome" },
                "valueCodeableConcept": { "coding": [{ "system": OUTCOMES, "code": "support-completed" }] } }] }
        ]);
        let r = self.patch(As::Charity, &format!("/fhir/Task/{task}"), &ops, Some(&etag)).await?;
        ensure!(r.status == 200, "answered {} (expected 200)", r.status);
        ensure!(r.body["status"] == "completed", "the Task is {}", r.body["status"]);
        self.completed = Some(task);
        Ok(())
    }

    async fn illegal_moves(&mut self) -> Check {
        self.key(As::Charity)?;
        let Some(task) = self.completed.clone() else {
            return Err(Stop::Skipped("needs CH-COMPLETE-01's completed Task".into()));
        };
        let (_, etag) = self.charity_read(&task).await?;
        let back = json!([{ "op": "replace", "path": "/status", "value": "requested" }]);
        let r = self.patch(As::Charity, &format!("/fhir/Task/{task}"), &back, Some(&etag)).await?;
        ensure!(
            (400..500).contains(&r.status) && r.is_outcome_with_error(),
            "completed → requested answered {}",
            r.status
        );
        let (_, task2) = self.send_to_charity().await?;
        let (_, etag2) = self.charity_read(&task2).await?;
        let refocus =
            json!([{ "op": "replace", "path": "/focus", "value": { "reference": "ServiceRequest/another" } }]);
        let r = self.patch(As::Charity, &format!("/fhir/Task/{task2}"), &refocus, Some(&etag2)).await?;
        ensure!(
            (400..500).contains(&r.status) && r.is_outcome_with_error(),
            "changing the Task's focus answered {}",
            r.status
        );
        let (after, _) = self.charity_read(&task).await?;
        ensure!(after["status"] == "completed", "the completed Task is now {}", after["status"]);
        Ok(())
    }

    async fn reject(&mut self) -> Check {
        self.key(As::Charity)?;
        let (_, task) = self.send_to_charity().await?;
        let (_, etag) = self.charity_read(&task).await?;
        let ops = json!([
            { "op": "replace", "path": "/status", "value": "rejected" },
            { "op": "add", "path": "/statusReason", "value": { "coding": [{ "system": REASONS, "code": "out-of-area" }] } }
        ]);
        let r = self.patch(As::Charity, &format!("/fhir/Task/{task}"), &ops, Some(&etag)).await?;
        ensure!(r.status == 200, "answered {} (expected 200)", r.status);
        let seen = self.get(As::Referrer, &format!("/fhir/Task/{task}")).await?;
        ensure!(seen.body["status"] == "rejected", "the referrer sees {}", seen.body["status"]);
        let code = seen.body.pointer("/statusReason/coding/0/code").and_then(Value::as_str);
        ensure!(code == Some("out-of-area"), "the referrer sees the reason {code:?}");
        Ok(())
    }

    async fn reject_without_reason(&mut self) -> Check {
        self.key(As::Charity)?;
        let (_, task) = self.send_to_charity().await?;
        let (_, etag) = self.charity_read(&task).await?;
        let ops = json!([{ "op": "replace", "path": "/status", "value": "rejected" }]);
        let r = self.patch(As::Charity, &format!("/fhir/Task/{task}"), &ops, Some(&etag)).await?;
        ensure!((400..500).contains(&r.status), "answered {} (expected a 4xx)", r.status);
        ensure!(r.is_outcome_with_error(), "the refusal is not an OperationOutcome with an error");
        let (after, _) = self.charity_read(&task).await?;
        ensure!(after["status"] == "requested", "the Task moved to {}", after["status"]);
        Ok(())
    }

    async fn foreign_task(&mut self) -> Check {
        self.key(As::OtherCharity)?;
        self.key(As::Charity)?;
        let (_, task) = self.send_to_charity().await?;
        let r = self.get(As::OtherCharity, &format!("/fhir/Task/{task}")).await?;
        ensure!(r.status == 404, "another charity reading the Task got {} (expected 404)", r.status);
        let ops = json!([{ "op": "replace", "path": "/status", "value": "accepted" }]);
        let r = self.patch(As::OtherCharity, &format!("/fhir/Task/{task}"), &ops, Some("W/\"1\"")).await?;
        ensure!(matches!(r.status, 403 | 404), "another charity changing the Task got {} (expected 404)", r.status);
        let r = self.get(As::OtherCharity, &format!("/fhir/Task?_id={task}")).await?;
        ensure!(r.resources().is_empty(), "another charity's search lists the Task");
        let (after, _) = self.charity_read(&task).await?;
        ensure!(after["status"] == "requested", "the Task moved to {}", after["status"]);
        Ok(())
    }

    async fn webhook_signed(&mut self) -> Check {
        self.key(As::Operator)?;
        let (port, mut inbox, stop) = receiver::listen(&self.opts.receiver_host, 0, None)
            .await
            .map_err(|e| Stop::Failed(format!("the kit's receiver could not listen: {e}")))?;
        let endpoint_id = format!("conformance-{}", &self.run[..8]);
        let host = if self.opts.receiver_host.contains(':') {
            format!("[{}]", self.opts.receiver_host)
        } else {
            self.opts.receiver_host.clone()
        };
        let mut endpoint = json!({
            "resourceType": "Endpoint",
            "id": endpoint_id,
            "status": "active",
            "connectionType": { "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest" },
            "name": "Conformance kit receiver (temporary)",
            "managingOrganization": { "reference": self.charity_ref() },
            "payloadType": [{ "text": "referral events" }],
            "address": format!("http://{host}:{port}/hook")
        });
        let path = format!("/fhir/Endpoint/{endpoint_id}");
        let put = self.call(As::Operator, "PUT", &path, Some(Body::Json(&endpoint)), &[]).await?;
        let result = async {
            ensure!(
                matches!(put.status, 200 | 201),
                "the operator's PUT of the kit's Endpoint answered {}",
                put.status
            );
            let s = self.call(As::Operator, "POST", &format!("{path}/$secret"), None, &[]).await?;
            let secret =
                s.body.pointer("/parameter/0/valueString").and_then(Value::as_str).unwrap_or_default().to_string();
            ensure!(secret.starts_with("whsec_"), "$secret answered {} without a whsec_ secret", s.status);
            let (_, task) = self.send_to_charity().await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(self.opts.wait_secs);
            let got: Received = loop {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(r)) if r.body.contains(&task) => break r,
                    Ok(Some(_)) => continue,
                    _ => {
                        return Err(Stop::Failed(format!(
                            "no webhook for Task/{task} within {} s",
                            self.opts.wait_secs
                        )));
                    }
                }
            };
            if let Err(why) = crate::delivery::signature::verify_headers(&secret, &got.headers, got.body.as_bytes()) {
                return Err(Stop::Failed(format!("the webhook for Task/{task} does not verify: {why}")));
            }
            let event: Value =
                serde_json::from_str(&got.body).map_err(|_| Stop::Failed("the webhook body is not JSON".into()))?;
            ensure!(event["type"] == "referral.created", "the first event is {}", event["type"]);
            ensure!(!got.body.contains("nhs-number"), "the webhook body carries an NHS number");
            Ok(())
        }
        .await;
        endpoint["status"] = json!("off");
        let _ = self.call(As::Operator, "PUT", &path, Some(Body::Json(&endpoint)), &[]).await;
        let _ = stop.send(());
        result
    }
}

/// `path` with the values of its `identifier` search parameters left out: the reports name the
/// requests made, and an identifier (an NHS number, even the kit's test ones) is patient data.
fn without_identifier_values(path: &str) -> String {
    let Some((base, query)) = path.split_once('?') else { return path.to_string() };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((name, _)) if name.contains("identifier") => format!("{name}=(left out)"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// The cursor in a `$changes` page's `next` link.
fn next_cursor(bundle: &Value) -> Option<i64> {
    let next = bundle["link"].as_array()?.iter().find(|l| l["relation"] == "next")?["url"].as_str()?;
    let query = next.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix("cursor=")).and_then(|c| c.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_leave_out_identifier_values() {
        assert_eq!(
            without_identifier_values("/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9990000018&_count=1"),
            "/fhir/Patient?identifier=(left out)&_count=1"
        );
        assert_eq!(without_identifier_values("/fhir/Task/1"), "/fhir/Task/1");
    }

    #[test]
    fn test_nhs_numbers_pass_modulus_11() {
        for _ in 0..200 {
            let n = test_nhs_number();
            assert!(n.starts_with("999") && n.len() == 10);
            assert!(crate::fhir::referral_rules::nhs_number_valid(&n), "{n}");
        }
    }
}
