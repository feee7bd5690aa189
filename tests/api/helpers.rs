//! Test harness: a real Signpost on a random port, with its own database (a fresh SQLite
//! file, or a fresh PostgreSQL schema when `SIGNPOST_TEST_DATABASE_URL` is set), the example
//! directory, and API clients for two referrers, two charities and an operator.

use std::sync::Once;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use signpost::app::Application;
use signpost::auth::{Role, hash_key};
use signpost::config::{ClientSettings, Settings};

pub const REFERRER: &str = "test-referrer-riverside";
pub const REFERRER_2: &str = "test-referrer-lgi";
pub const STROKE: &str = "test-charity-stroke";
pub const BEFRIENDING: &str = "test-charity-befriending";
pub const OPERATOR: &str = "test-operator";
pub const AGE_UK: &str = "test-charity-ageuk";

pub struct TestApp {
    pub base: String,
    pub db_url: String,
    pub pool: signpost::store::Pool,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The Signpost issue codes of an OperationOutcome body.
    pub fn issue_codes(&self) -> Vec<String> {
        issues(&self.body)
            .iter()
            .map(|i| i["details"]["coding"][0]["code"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub fn expressions(&self) -> Vec<String> {
        issues(&self.body).iter().filter_map(|i| i["expression"][0].as_str().map(String::from)).collect()
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("body has an id").to_string()
    }

    /// Resources of a Bundle's entries (match entries only, for searchsets).
    pub fn resources(&self) -> Vec<Value> {
        self.body["entry"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter(|e| e["search"]["mode"] != "outcome")
                    .filter_map(|e| e.get("resource").cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn total(&self) -> i64 {
        self.body["total"].as_i64().expect("bundle has total")
    }

    pub fn assert_outcome(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["resourceType"], "OperationOutcome", "body: {}", self.body);
        assert!(self.issue_codes().iter().any(|c| c == code), "expected issue {code}, got {}", self.body);
    }
}

/// Checked on every response of the suite: a 4xx is an OperationOutcome holding at least one
/// `error` or `fatal` issue (warnings alone never refuse a request).
pub fn assert_refusal_is_an_error(status: u16, body: &Value) {
    if (400..500).contains(&status) {
        assert_eq!(body["resourceType"], "OperationOutcome", "a {status} must be an OperationOutcome: {body}");
        assert!(
            issues(body).iter().any(|i| i["severity"] == "error" || i["severity"] == "fatal"),
            "a {status} OperationOutcome must hold an error or fatal issue: {body}"
        );
    }
}

fn issues(body: &Value) -> Vec<Value> {
    body["issue"].as_array().cloned().unwrap_or_default()
}

pub fn corpus(path: &str) -> Value {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))).unwrap()
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            signpost::telemetry::init(&Default::default());
        }
    });
}

/// A database URL of its own for one test.
pub fn fresh_database(dir: &std::path::Path) -> String {
    match std::env::var("SIGNPOST_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let mut conn = diesel::PgConnection::establish(&base).expect("PostgreSQL reachable for the test suite");
            conn.batch_execute(&format!("CREATE SCHEMA {schema}")).expect("create test schema");
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options=-csearch_path%3D{schema}")
        }
        _ => format!("sqlite://{}", dir.join("signpost.db").display()),
    }
}

pub fn test_settings(db_url: &str) -> Settings {
    let mut s = Settings::default();
    s.server.port = 0;
    s.database.url = db_url.to_string();
    s.database.pool_size = 8;
    s.directory.path = format!("{}/examples/directory", env!("CARGO_MANIFEST_DIR")).into();
    s.sandbox.charities = false;
    let client = |key: &str, role: Role, org: &str| ClientSettings {
        name: key.to_string(),
        role,
        organization: org.to_string(),
        key_sha256: hash_key(key),
    };
    s.clients = vec![
        client(REFERRER, Role::Referrer, "riverside-medical-practice"),
        client(REFERRER_2, Role::Referrer, "leeds-general-infirmary"),
        client(STROKE, Role::Charity, "stroke-association"),
        client(BEFRIENDING, Role::Charity, "befriending-network-leeds"),
        client(OPERATOR, Role::Operator, "signpost-operator"),
        client(AGE_UK, Role::Charity, "age-uk-leeds"),
    ];
    s
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

/// A test server whose settings `adjust` changes first.
pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(dir.path());
    spawn_on(dir, db_url, adjust).await
}

/// A test server on an existing database (a restart), whose settings `adjust` changes first.
pub async fn spawn_on(dir: tempfile::TempDir, db_url: String, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let mut settings = test_settings(&db_url);
    adjust(&mut settings);
    let app = Application::build(settings).await.expect("app builds");
    let pool = app.pool().clone();
    let port = app.spawn();
    TestApp { base: format!("http://127.0.0.1:{port}"), db_url, pool, http: client(), _dir: dir }
}

impl TestApp {
    /// A second Signpost instance sharing this one's database.
    pub async fn another_instance(&self) -> TestApp {
        spawn_on(tempfile::tempdir().unwrap(), self.db_url.clone(), |_| {}).await
    }

    /// Stop serving, keeping the database (for a restart with [`spawn_on`]).
    pub fn into_database(self) -> (tempfile::TempDir, String) {
        (self._dir, self.db_url)
    }
}

impl TestApp {
    pub async fn send(
        &self,
        method: &str,
        key: Option<&str>,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            let ct = if method == "PATCH" { "application/json-patch+json" } else { "application/fhir+json" };
            req = req.header("Content-Type", ct).body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        assert_refusal_is_an_error(status, &body);
        Resp { status, headers, body }
    }

    pub async fn get(&self, key: &str, path: &str) -> Resp {
        self.send("GET", Some(key), path, None, &[]).await
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Resp {
        self.send("POST", Some(key), path, Some(body), &[]).await
    }

    pub async fn put(&self, key: &str, path: &str, body: &Value, if_match: Option<&str>) -> Resp {
        let h: Vec<(&str, &str)> = if_match.map(|m| vec![("If-Match", m)]).unwrap_or_default();
        self.send("PUT", Some(key), path, Some(body), &h).await
    }

    pub async fn patch(&self, key: &str, path: &str, ops: &Value, if_match: Option<&str>) -> Resp {
        let h: Vec<(&str, &str)> = if_match.map(|m| vec![("If-Match", m)]).unwrap_or_default();
        self.send("PATCH", Some(key), path, Some(ops), &h).await
    }

    /// Create a Patient as `key`, with a Consent to share with the voluntary sector (which a
    /// referral needs); returns the Patient's id.
    pub async fn patient(&self, key: &str) -> String {
        self.patient_with(key, &patient()).await
    }

    /// Create the given Patient as `key`, with a Consent to share; returns its id.
    pub async fn patient_with(&self, key: &str, body: &Value) -> String {
        let r = self.post(key, "/fhir/Patient", body).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.id();
        let c = self.post(key, "/fhir/Consent", &consent(&format!("Patient/{id}"))).await;
        assert_eq!(c.status, 201, "{}", c.body);
        id
    }

    /// Send a referral routed to `performer` for a new patient; returns (ServiceRequest id, patient id).
    pub async fn referral(&self, key: &str, performer: &str) -> (String, String) {
        let pid = self.patient(key).await;
        let r = self.post(key, "/fhir/ServiceRequest", &service_request(&pid, performer)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        (r.id(), pid)
    }

    /// The Tasks of a ServiceRequest as seen by `key`.
    pub async fn tasks_of(&self, key: &str, sr: &str) -> Vec<Value> {
        let r = self.get(key, &format!("/fhir/Task?based-on=ServiceRequest/{sr}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.resources()
    }
}

/// Wait (up to 10 s) until a process just started listens on `port`: a fixed pause is too
/// short on a loaded machine.
pub async fn wait_until_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009" }],
        "name": [{ "family": "DOE", "given": ["Jane"] }],
        "birthDate": "1948-07-02",
        "address": [{ "postalCode": "LS1 1AA" }]
    })
}

/// An active Consent to share with the voluntary sector for `patient` (a reference): the one
/// the conformance kit sends.
pub fn consent(patient: &str) -> Value {
    signpost::conformance::kit::consent_for(patient)
}

/// `examples/referral-bundle.json` (the README's example): the corpus referral Bundle with the
/// patient's Consent as a sixth entry. The corpus file itself has none, so Signpost refuses it
/// (consent-missing).
pub fn referral_bundle() -> Value {
    let path = format!("{}/examples/referral-bundle.json", env!("CARGO_MANIFEST_DIR"));
    let bundle: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let corpus_entries = corpus("referrals/referral-bundle.json")["entry"].as_array().unwrap().len();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), corpus_entries + 1);
    assert_eq!(bundle["entry"][corpus_entries]["resource"]["patient"]["reference"], bundle["entry"][0]["fullUrl"]);
    bundle
}

pub fn service_request(patient_id: &str, performer: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "identifier": [{ "system": "https://referrals.example.org.uk/Id/referral", "value": uuid::Uuid::new_v4().to_string() }],
        "status": "active",
        "intent": "order",
        "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral" }] },
        "subject": { "reference": format!("Patient/{patient_id}") },
        "authoredOn": "2024-03-14T10:15:00+00:00",
        "requester": { "reference": "PractitionerRole/gp-apatel" },
        "performer": [{ "reference": performer }],
        "reasonCode": [{ "coding": [{ "system": "http://snomed.info/sct", "code": "230690007", "display": "Cerebrovascular accident" }] }]
    })
}

/// A `signpost serve` child process started with `--log-format json`, killed when dropped (also
/// when a test fails half-way): its port, its log lines up to "Signpost listening", and the later
/// lines as they come.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub lines: Vec<String>,
    pub rest: std::sync::mpsc::Receiver<String>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` (a `signpost serve ... --log-format json`) and wait until it listens.
pub fn start_serve(mut cmd: std::process::Command) -> ServeProcess {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().expect("signpost starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rest) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut server = ServeProcess { child, port: 0, lines: Vec::new(), rest };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let line = server
            .rest
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| panic!("serve did not start: {:?}", server.lines));
        server.lines.push(line.clone());
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "Signpost listening" {
            server.port = v["port"].as_u64().expect("the port is logged") as u16;
            return server;
        }
    }
}

/// Another database session holding what every write needs — SQLite's write lock, PostgreSQL's
/// change counter row — until [`WriteLock::release`]; reads go on.
pub struct WriteLock(Box<dyn FnMut(&str)>);

impl WriteLock {
    pub fn hold(db_url: &str) -> WriteLock {
        let mut exec: Box<dyn FnMut(&str)> = match db_url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut c = diesel::SqliteConnection::establish(path).unwrap();
                Box::new(move |sql: &str| c.batch_execute(sql).unwrap())
            }
            None => {
                let mut c = diesel::PgConnection::establish(db_url).unwrap();
                Box::new(move |sql: &str| c.batch_execute(sql).unwrap())
            }
        };
        if db_url.starts_with("sqlite://") {
            exec("BEGIN IMMEDIATE");
        } else {
            exec("BEGIN; SELECT last_seq FROM change_counter WHERE id = 1 FOR UPDATE");
        }
        WriteLock(exec)
    }

    pub fn release(mut self) {
        (self.0)("COMMIT");
    }
}

/// The test client: it drops a pooled connection after 2 s idle, before the server's 5 s
/// keep-alive closes it, so a request after a pause (a CLI run, a delivery wait) never goes out
/// on a connection the server is closing (hyper's `IncompleteMessage`).
fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_idle_timeout(std::time::Duration::from_secs(2)).build().expect("test HTTP client")
}
