//! What a hostile second practice or a curious charity tries: granting itself access through a
//! Task, keys that should stop working, bodies built to exhaust the server, forged forwarding
//! headers, paging that loops, and requests the HTTP layer answers on its own.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

/// Riverside's referral to the Stroke Association: (ServiceRequest id, Patient id).
async fn riverside_referral(app: &TestApp) -> (String, String) {
    app.referral(REFERRER, "HealthcareService/stroke-association-support").await
}

#[tokio::test]
async fn a_sender_task_cannot_grant_access_to_someone_elses_referral() {
    let app = spawn().await;
    let (foreign_sr, foreign_pid) = riverside_referral(&app).await;
    // The second practice's own referral, for its own patient.
    let (own_sr, own_pid) = app.referral(REFERRER_2, "HealthcareService/stroke-association-support").await;
    let task = |focus: &str, for_: &str, based_on: &str, owner: &str| {
        json!({
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "focus": { "reference": focus },
            "for": { "reference": for_ },
            "basedOn": [{ "reference": based_on }],
            "owner": { "reference": owner }
        })
    };
    let own = format!("ServiceRequest/{own_sr}");
    let foreign = format!("ServiceRequest/{foreign_sr}");
    let own_patient = format!("Patient/{own_pid}");
    let foreign_patient = format!("Patient/{foreign_pid}");
    let attacks = [
        // Its own referral as focus, someone else's patient and referral beside it, itself as owner.
        task(&own, &foreign_patient, &foreign, "Organization/leeds-general-infirmary"),
        // The same with a charity as owner.
        task(&own, &foreign_patient, &own, "Organization/befriending-network-leeds"),
        task(&own, &own_patient, &foreign, "Organization/befriending-network-leeds"),
        // Someone else's referral as focus.
        task(&foreign, &foreign_patient, &foreign, "Organization/befriending-network-leeds"),
        // A practice, not a charity, as owner.
        task(&own, &own_patient, &own, "Organization/riverside-medical-practice"),
    ];
    let tasks_before = app.get(OPERATOR, "/fhir/Task").await.total();
    for attack in &attacks {
        let r = app.post(REFERRER_2, "/fhir/Task", attack).await;
        assert_eq!(r.status, 422, "{attack}: {}", r.body);
        // The same inside a transaction Bundle.
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{ "fullUrl": "urn:uuid:7b0f1d5e-1c1a-4d64-9a38-2c1f5e0d9a01", "resource": attack,
                        "request": { "method": "POST", "url": "Task" } }]
        });
        let r = app.post(REFERRER_2, "/fhir", &bundle).await;
        assert_eq!(r.status, 422, "{attack}: {}", r.body);
    }
    assert_eq!(app.get(OPERATOR, "/fhir/Task").await.total(), tasks_before, "nothing stored");
    for who in [REFERRER_2, BEFRIENDING] {
        app.get(who, &format!("/fhir/Patient/{foreign_pid}")).await.assert_outcome(404, "not-found");
        app.get(who, &format!("/fhir/ServiceRequest/{foreign_sr}")).await.assert_outcome(404, "not-found");
    }
    // A well-formed sender Task for its own referral to a charity is accepted.
    let ok = task(&own, &own_patient, &own, "Organization/befriending-network-leeds");
    assert_eq!(app.post(REFERRER_2, "/fhir/Task", &ok).await.status, 201);
}

#[tokio::test]
async fn a_reference_to_a_foreign_resource_grants_the_charity_nothing() {
    let app = spawn().await;
    let (_, foreign_pid) = riverside_referral(&app).await;
    let cond = app
        .post(
            REFERRER,
            "/fhir/Condition",
            &json!({ "resourceType": "Condition", "code": { "text": "x" },
            "subject": { "reference": format!("Patient/{foreign_pid}") } }),
        )
        .await
        .id();
    // The second practice refers its own patient but points at Riverside's Condition.
    let pid = app.patient(REFERRER_2).await;
    let mut sr = service_request(&pid, "HealthcareService/befriending-network-leeds-support");
    sr["reasonReference"] = json!([{ "reference": format!("Condition/{cond}") }]);
    let r = app.post(REFERRER_2, "/fhir/ServiceRequest", &sr).await;
    assert_eq!(r.status, 201, "{}", r.body);
    app.get(BEFRIENDING, &format!("/fhir/Condition/{cond}")).await.assert_outcome(404, "not-found");
    assert_eq!(app.get(BEFRIENDING, &format!("/fhir/Patient/{pid}")).await.status, 200);
    // Nor does changing the referral's references afterwards, by PATCH or PUT.
    let sr_id = r.id();
    let ops =
        json!([{ "op": "add", "path": "/supportingInfo", "value": [{ "reference": format!("Condition/{cond}") }] }]);
    assert_eq!(app.patch(REFERRER_2, &format!("/fhir/ServiceRequest/{sr_id}"), &ops, None).await.status, 200);
    let mut body = app.get(REFERRER_2, &format!("/fhir/ServiceRequest/{sr_id}")).await.body;
    body["subject"] = json!({ "reference": format!("Patient/{foreign_pid}") });
    assert_eq!(app.put(REFERRER_2, &format!("/fhir/ServiceRequest/{sr_id}"), &body, None).await.status, 200);
    app.get(BEFRIENDING, &format!("/fhir/Condition/{cond}")).await.assert_outcome(404, "not-found");
    app.get(BEFRIENDING, &format!("/fhir/Patient/{foreign_pid}")).await.assert_outcome(404, "not-found");
    // A Condition the sender owns, added later, becomes visible to the charity.
    let own = app
        .post(
            REFERRER_2,
            "/fhir/Condition",
            &json!({ "resourceType": "Condition", "code": { "text": "y" },
            "subject": { "reference": format!("Patient/{pid}") } }),
        )
        .await
        .id();
    let ops =
        json!([{ "op": "add", "path": "/reasonReference", "value": [{ "reference": format!("Condition/{own}") }] }]);
    assert_eq!(app.patch(REFERRER_2, &format!("/fhir/ServiceRequest/{sr_id}"), &ops, None).await.status, 200);
    assert_eq!(app.get(BEFRIENDING, &format!("/fhir/Condition/{own}")).await.status, 200);
}

/// The answer to a request as seen by an outsider, with what may differ (correlation ids) removed.
fn shape(r: &Resp) -> (u16, Vec<String>, Vec<String>) {
    (r.status, r.issue_codes(), r.expressions())
}

#[tokio::test]
async fn isolation_matrix_no_foreign_read_write_or_existence_leak() {
    let app = spawn().await;
    let r = app.post(REFERRER, "/fhir", &referral_bundle()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut targets: Vec<(String, String)> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["response"]["location"].as_str())
        .map(|l| {
            let mut parts = l.split('/');
            (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
        })
        .filter(|(ty, _)| ty != "Organization")
        .collect();
    let tasks = app.get(BEFRIENDING, "/fhir/Task").await.resources();
    targets.extend(tasks.iter().map(|t| ("Task".to_string(), t["id"].as_str().unwrap().to_string())));
    // Outsiders: the other practice, and a charity with no Task for this referral.
    for outsider in [REFERRER_2, STROKE] {
        for (ty, id) in &targets {
            let missing = "00000000-0000-4000-8000-000000000000";
            for (suffix, method) in [("", "GET"), ("/_history", "GET"), ("/_history/1", "GET")] {
                let real = app.send(method, Some(outsider), &format!("/fhir/{ty}/{id}{suffix}"), None, &[]).await;
                let none = app.send(method, Some(outsider), &format!("/fhir/{ty}/{missing}{suffix}"), None, &[]).await;
                assert_eq!(shape(&real), shape(&none), "{outsider} {ty}{suffix}");
                assert_eq!(real.status, 404);
            }
            let body = app.get(OPERATOR, &format!("/fhir/{ty}/{id}")).await.body;
            let put = app.put(outsider, &format!("/fhir/{ty}/{id}"), &body, None).await;
            let mut other = body.clone();
            other["id"] = json!(missing);
            let put_none = app.put(outsider, &format!("/fhir/{ty}/{missing}"), &other, None).await;
            assert_eq!(shape(&put), shape(&put_none), "{outsider} PUT {ty}");
            let ops = json!([{ "op": "add", "path": "/language", "value": "en" }]);
            let patch = app.patch(outsider, &format!("/fhir/{ty}/{id}"), &ops, None).await;
            let patch_none = app.patch(outsider, &format!("/fhir/{ty}/{missing}"), &ops, None).await;
            assert_eq!(shape(&patch), shape(&patch_none), "{outsider} PATCH {ty}");
            // Transaction PUT: a foreign id answers exactly like a missing one.
            let tx = |rid: &str, res: &Value| {
                json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{
                    "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": res,
                    "request": { "method": "PUT", "url": format!("{ty}/{rid}") } }] })
            };
            let tput = app.post(outsider, "/fhir", &tx(id, &body)).await;
            let tput_none = app.post(outsider, "/fhir", &tx(missing, &other)).await;
            assert_eq!(shape(&tput), shape(&tput_none), "{outsider} transaction PUT {ty}: {}", tput.body);
            // Searches by every reference parameter find nothing.
            for q in [
                format!("/fhir/{ty}?_id={id}"),
                format!("/fhir/{ty}?_id={id}&_count=1&_offset=0"),
                format!("/fhir/{ty}?_lastUpdated=gt2000-01-01"),
            ] {
                let s = app.get(outsider, &q).await;
                assert_eq!((s.status, s.total()), (200, 0), "{outsider} {q}: {}", s.body);
                assert!(s.body["link"].as_array().unwrap().iter().all(|l| l["relation"] == "self"), "{}", s.body);
            }
        }
        for q in [
            "/fhir/Task?owner=Organization/befriending-network-leeds",
            "/fhir/Task?status=requested",
            "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C9000000009",
            "/fhir/ServiceRequest?identifier=https://fhir.nhs.uk/Id/UBRN%7C000000070000",
        ] {
            assert_eq!(app.get(outsider, q).await.total(), 0, "{outsider} {q}");
        }
        // Every reference search parameter of every type, pointed at each of the referral's
        // resources, finds nothing.
        for spec in signpost::fhir::TYPES.iter().filter(|t| t.class == signpost::fhir::TypeClass::Referral) {
            for param in spec.params.iter().filter(|p| p.kind == signpost::fhir::ParamKind::Reference) {
                for (ty, id) in &targets {
                    let q = format!("/fhir/{}?{}={ty}/{id}", spec.name, param.name);
                    let s = app.get(outsider, &q).await;
                    assert_eq!((s.status, s.total()), (200, 0), "{outsider} {q}: {}", s.body);
                }
            }
        }
    }
    // Nothing changed.
    for (ty, id) in &targets {
        assert_eq!(app.get(OPERATOR, &format!("/fhir/{ty}/{id}")).await.body["meta"]["versionId"], "1", "{ty}");
    }
}

#[tokio::test]
async fn a_referrer_cannot_choose_ids_through_a_transaction() {
    let app = spawn().await;
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:7b0f1d5e-1c1a-4d64-9a38-2c1f5e0d9a02",
        "resource": patient(),
        "request": { "method": "PUT", "url": "Patient/chosen-by-client" } }] });
    let mut with_id = bundle.clone();
    with_id["entry"][0]["resource"]["id"] = json!("chosen-by-client");
    app.post(REFERRER, "/fhir", &with_id).await.assert_outcome(404, "not-found");
    app.get(OPERATOR, "/fhir/Patient/chosen-by-client").await.assert_outcome(404, "not-found");
}

/// Send raw bytes and read the answer until the server closes (off the test's runtime thread,
/// which also runs the server).
async fn raw_exchange(addr: String, request: String) -> String {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).to_string()
    })
    .await
    .unwrap()
}

fn signpost_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_signpost"));
    c.env_remove("SIGNPOST_CONFIG");
    c
}

/// Poll until `key` gets `status` on `path` (revocations take effect within seconds).
async fn until_status(app: &TestApp, key: &str, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(signpost::auth::CACHE_SECS + 10);
    loop {
        let r = app.get(key, path).await;
        if r.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "{key} still gets {} on {path}", r.status);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn clients_are_listed_revoked_and_changed_while_the_server_runs() {
    let app = spawn().await;
    let add = |name: &str, role: &str, org: &str| {
        signpost_cli()
            .args(["client", "add", "--name", name, "--role", role, "--organization", org])
            .args(["--database", &app.db_url])
            .output()
            .unwrap()
    };
    let unknown = add("ghost", "referrer", "no-such-practice");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not in the directory"));

    let out = add("gp-two", "referrer", "riverside-medical-practice");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(app.get(&key, "/fhir/Task").await.status, 200);

    let list = signpost_cli().args(["client", "list", "--database", &app.db_url]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("gp-two") && text.contains("referrer"), "{text}");
    assert!(!text.contains(&key) && !text.contains(&signpost::auth::hash_key(&key)), "keys are never listed");

    // A role change applies to the running server: an operator may write the directory.
    let org = json!({ "resourceType": "Organization", "id": "new-charity", "name": "New charity" });
    app.put(&key, "/fhir/Organization/new-charity", &org, None).await.assert_outcome(403, "forbidden");
    let set =
        signpost_cli().args(["client", "set-role", "gp-two", "operator", "--database", &app.db_url]).output().unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let deadline = Instant::now() + Duration::from_secs(signpost::auth::CACHE_SECS + 10);
    while app.put(&key, "/fhir/Organization/new-charity", &org, None).await.status == 403 {
        assert!(Instant::now() < deadline, "the role change never took effect");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let revoke = signpost_cli().args(["client", "revoke", "gp-two", "--database", &app.db_url]).output().unwrap();
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    until_status(&app, &key, "/fhir/Task", 401).await;
    let again = signpost_cli().args(["client", "revoke", "gp-two", "--database", &app.db_url]).output().unwrap();
    assert!(!again.status.success());
}

#[tokio::test]
async fn a_client_removed_from_the_configuration_stops_working_at_the_next_start() {
    let first = spawn().await;
    assert_eq!(first.get(REFERRER_2, "/fhir/Task").await.status, 200);
    let (dir, db_url) = first.into_database();
    let second = spawn_on(dir, db_url, |s| s.clients.retain(|c| c.name != REFERRER_2)).await;
    second.get(REFERRER_2, "/fhir/Task").await.assert_outcome(401, "unauthenticated");
    assert_eq!(second.get(REFERRER, "/fhir/Task").await.status, 200);
}

#[tokio::test]
async fn a_body_of_ninety_thousand_unknown_properties_gets_a_bounded_answer() {
    let app = spawn().await;
    let mut body = String::from(r#"{"resourceType":"Patient""#);
    for i in 0..90_000 {
        body.push_str(&format!(r#","x{i}":1"#));
    }
    body.push('}');
    assert!(body.len() < 1024 * 1024);
    let r = app
        .http
        .post(format!("{}/fhir/Patient", app.base))
        .bearer_auth(REFERRER)
        .header("Content-Type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let text = r.text().await.unwrap();
    assert!(text.len() < 64 * 1024, "the answer is {} bytes", text.len());
    let outcome: Value = serde_json::from_str(&text).unwrap();
    let issues = outcome["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 101);
    assert_eq!(issues[100]["details"]["coding"][0]["code"], "too-many-issues");
    let more: u64 = issues[100]["diagnostics"].as_str().unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(more >= 900, "{more}");
    assert!(text.contains("89000 more were found"), "the validator says how many it did not keep");
    assert!(!text.contains("x123"), "property names are never echoed");
    assert_eq!(app.get(REFERRER, "/fhir/Patient").await.total(), 0);
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_off() {
    let app = spawn_with(|s| s.limits.body_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let request = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {REFERRER}\r\n\
         Content-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n{{\"resourceType\""
    );
    let answer = raw_exchange(addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn compressed_bodies_are_decoded_within_the_limit_and_unknown_encodings_refused() {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    let app = spawn().await;
    let gzip = |bytes: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let post = |body: Vec<u8>, encoding: &'static str| {
        app.http
            .post(format!("{}/fhir/Patient", app.base))
            .bearer_auth(REFERRER)
            .header("Content-Type", "application/fhir+json")
            .header("Content-Encoding", encoding)
            .body(body)
            .send()
    };
    let r = post(gzip(patient().to_string().as_bytes()), "gzip").await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = post(patient().to_string().into_bytes(), "br").await.unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let outcome: Value = r.json().await.unwrap();
    assert_refusal_is_an_error(415, &outcome);
    // 5 MB of spaces compress to a few KB: the limit applies to what they inflate to.
    let mut big = patient().to_string().into_bytes();
    big.splice(1..1, std::iter::repeat_n(b' ', 5 * 1024 * 1024));
    let r = post(gzip(&big), "gzip").await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(app.get(REFERRER, "/fhir/Patient").await.total(), 1);
}

#[tokio::test]
async fn links_come_from_the_configured_base_url_never_from_forwarding_headers() {
    let app = spawn_with(|s| s.server.public_base_url = "https://signpost.example.org".into()).await;
    let forged = [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "http"),
        ("Forwarded", "host=evil.example;proto=http"),
        ("Host", "evil.example"),
    ];
    let r = app.send("POST", Some(REFERRER), "/fhir/Patient", Some(&patient()), &forged).await;
    assert_eq!(r.status, 201);
    assert!(r.header("location").unwrap().starts_with("https://signpost.example.org/fhir/Patient/"));
    app.post(REFERRER, "/fhir/Patient", &patient()).await;
    let s = app.send("GET", Some(REFERRER), "/fhir/Patient?_count=1", None, &forged).await;
    let links = s.body["link"].as_array().unwrap();
    assert!(links.iter().all(|l| l["url"].as_str().unwrap().starts_with("https://signpost.example.org/fhir/")));
    assert!(!s.body.to_string().contains("evil.example"));
}

#[tokio::test]
async fn paging_cannot_loop_or_overflow() {
    let app = spawn().await;
    for _ in 0..3 {
        app.post(REFERRER, "/fhir/Patient", &patient()).await;
    }
    app.get(REFERRER, "/fhir/Patient?_offset=9223372036854775807").await.assert_outcome(400, "bad-search-value");
    app.get(REFERRER, "/fhir/Patient?_offset=-1").await.assert_outcome(400, "bad-search-value");
    // Following `next` visits every result once and stops.
    let mut seen = Vec::new();
    let mut url = "/fhir/Patient?_count=2".to_string();
    for _ in 0..10 {
        let page = app.get(REFERRER, &url).await;
        seen.extend(page.resources().iter().map(|r| r["id"].as_str().unwrap().to_string()));
        let next = page.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").cloned();
        match next {
            Some(l) => url = l["url"].as_str().unwrap().trim_start_matches(&app.base).to_string(),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    // An empty search has no next or previous.
    let empty = app.get(REFERRER_2, "/fhir/Patient?_offset=4").await;
    assert!(empty.body["link"].as_array().unwrap().iter().all(|l| l["relation"] == "self"), "{}", empty.body);
    // Past the end: only a way back to the last page.
    let past = app.get(REFERRER, "/fhir/Patient?_count=2&_offset=10").await;
    let rels: Vec<&str> =
        past.body["link"].as_array().unwrap().iter().map(|l| l["relation"].as_str().unwrap()).collect();
    assert_eq!(rels, vec!["self", "previous"]);
}

/// actix-http's HTTP/1 parser answers these itself, before any of Signpost's code runs, with an
/// empty body (no hook exists there): the test pins the statuses and that the connection closes.
#[tokio::test]
async fn http_layer_parse_errors_are_refused_and_close_the_connection() {
    let app = spawn().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let huge_header = format!("GET /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n", "a".repeat(200_000));
    assert!(raw_exchange(addr.clone(), huge_header).await.starts_with("HTTP/1.1 431"));
    let long_url = format!("GET /fhir/Patient?x={} HTTP/1.1\r\nHost: {addr}\r\n\r\n", "a".repeat(100_000));
    assert!(raw_exchange(addr.clone(), long_url).await.starts_with("HTTP/1.1 400"));
    let nul = format!("GET /fhir/Patient HTTP/1.1\r\nHost: {addr}\r\nX-Bad: a\0b\r\n\r\n");
    assert!(raw_exchange(addr.clone(), nul).await.starts_with("HTTP/1.1 400"));
    // The server keeps serving.
    assert_eq!(app.get(REFERRER, "/fhir/Patient").await.status, 200);
}

#[tokio::test]
async fn writes_beyond_the_limit_get_503_while_health_checks_keep_answering() {
    let app = spawn_with(|s| s.limits.max_concurrent_writes = 1).await;
    // Hold the database's write lock, so that the one write slot stays taken.
    let lock = WriteLock::hold(&app.db_url);
    let first = {
        let http = app.http.clone();
        let url = format!("{}/fhir/Patient", app.base);
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(REFERRER)
                .header("Content-Type", "application/fhir+json")
                .body(patient().to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = app.post(REFERRER, "/fhir/Patient", &patient()).await;
    second.assert_outcome(503, "overloaded");
    assert!(second.header("retry-after").is_some());
    let started = Instant::now();
    let live = app.http.get(format!("{}/livez", app.base)).send().await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(1), "health checks are not queued behind writes");
    assert_eq!(app.get(REFERRER, "/fhir/Task").await.status, 200, "reads keep answering");
    lock.release();
    assert_eq!(first.await.unwrap(), 201, "the write holding the slot completes");
}
