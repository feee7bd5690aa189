//! The `signpost` binary itself: `client add`, configuration errors, and logs free of
//! patient data while serving real traffic.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

fn signpost() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_signpost"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env_remove("SIGNPOST_CONFIG");
    c
}

#[tokio::test]
async fn client_add_prints_a_key_once_that_then_authenticates() {
    let app = spawn().await;
    let out = signpost()
        .args([
            "client",
            "add",
            "--name",
            "new-gp",
            "--role",
            "referrer",
            "--organization",
            "riverside-medical-practice",
        ])
        .args(["--database", &app.db_url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("sp_"), "{key}");
    let r = app.get(&key, "/fhir/Patient").await;
    assert_eq!(r.status, 200, "{}", r.body);

    let again = signpost()
        .args(["client", "add", "--name", "new-gp", "--role", "referrer", "--organization", "x"])
        .args(["--database", &app.db_url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let bad_role = signpost()
        .args(["client", "add", "--name", "z", "--role", "admin", "--organization", "x", "--database", &app.db_url])
        .output()
        .unwrap();
    assert!(!bad_role.status.success());
}

#[test]
fn a_bad_setting_stops_start_up_naming_its_key() {
    let out = signpost().args(["migrate"]).env("SIGNPOST__SERVER__PORT", "eighty").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.port"), "{err}");

    let out = signpost().args(["migrate"]).env("SIGNPOST__DATABASE__URL", "mysql://x").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.url"));
}

#[test]
fn the_database_url_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("from-env.db");
    let out = signpost()
        .args(["migrate"])
        .env("SIGNPOST__DATABASE__URL", format!("sqlite://{}", file.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(file.is_file(), "migrate used the database named by SIGNPOST__DATABASE__URL");
}

#[test]
fn migrate_runs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(dir.path());
    let out = signpost().args(["migrate", "--database", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = signpost().args(["migrate", "--database", &url]).output().unwrap();
    assert!(again.status.success());
}

#[tokio::test]
async fn served_traffic_leaves_no_patient_data_in_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(dir.path());
    let config = dir.path().join("signpost.toml");
    let settings = test_settings(&url);
    let directory = format!("{}/examples/directory", env!("CARGO_MANIFEST_DIR"));
    let mut toml = format!(
        "[database]\nurl = \"{url}\"\n[server]\nport = 0\n[log]\nlevel = \"debug\"\n[directory]\npath = \"{directory}\"\n"
    );
    for c in &settings.clients {
        toml.push_str(&format!(
            "[[clients]]\nname = \"{}\"\nrole = \"{}\"\norganization = \"{}\"\nkey_sha256 = \"{}\"\n",
            c.name,
            c.role.as_str(),
            c.organization,
            c.key_sha256
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let mut command = signpost();
    command.args(["serve", "--log-format", "json", "--config"]).arg(&config).env("RUST_LOG", "debug");
    let mut server = start_serve(command);
    let port = server.port;
    let mut lines = server.lines.clone();
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).expect("every log line is JSON");
    }
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let bundle = referral_bundle();
    let r = http
        .post(format!("{base}/fhir"))
        .bearer_auth(REFERRER)
        .header("Content-Type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut bad = patient();
    bad["birthDate"] = serde_json::json!("1948-02-31x");
    let r = http
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(REFERRER)
        .header("Content-Type", "application/fhir+json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .get(format!("{base}/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C9000000009"))
        .bearer_auth(REFERRER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    server.child.kill().unwrap();
    let _ = server.child.wait();
    while let Ok(line) = server.rest.recv_timeout(Duration::from_secs(2)) {
        lines.push(line);
    }
    let all = lines.join("\n");
    assert!(all.contains("\"correlation_id\""), "request spans carry ids");
    assert!(all.contains("\"resource_type\":\"ServiceRequest\""), "writes are logged by type and id");
    for secret in ["9000000009", "Jane", "DOE", "LS1 1AA", "Example Street", "0113 496 0000", "1948-0"] {
        assert!(!all.contains(secret), "log contains patient data {secret:?}");
    }
}

#[test]
fn validate_command_reports_faults_offline_with_an_exit_code() {
    let corpus = format!("{}/tests/fixtures/referrals", env!("CARGO_MANIFEST_DIR"));
    let bad = signpost().args(["validate", &format!("{corpus}/invalid/broken-status-code.json")]).output().unwrap();
    assert!(!bad.status.success());
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("INVALID") && text.contains("ServiceRequest.status"), "{text}");

    let json = signpost().args(["validate", "--json", &format!("{corpus}/invalid")]).output().unwrap();
    assert!(!json.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&json.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["outcome"]["resourceType"] == "OperationOutcome"));

    // The corpus Bundle is valid R4 but carries no Consent: the referral rules refuse it,
    // `--base-only` does not apply them, and with the Consent added it passes.
    let corpus_bundle = signpost().args(["validate", &format!("{corpus}/referral-bundle.json")]).output().unwrap();
    let text = String::from_utf8_lossy(&corpus_bundle.stdout);
    assert_eq!(corpus_bundle.status.code(), Some(2), "{text}");
    assert!(text.contains("[consent-missing]") && text.contains("Bundle.entry[3].resource"), "{text}");
    let base =
        signpost().args(["validate", "--base-only", &format!("{corpus}/referral-bundle.json")]).output().unwrap();
    assert!(base.status.success(), "{}", String::from_utf8_lossy(&base.stdout));
    let dir = tempfile::tempdir().unwrap();
    let with_consent = dir.path().join("referral.json");
    std::fs::write(&with_consent, referral_bundle().to_string()).unwrap();
    let good = signpost().args(["validate", with_consent.to_str().unwrap()]).output().unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stdout));

    // --ig: an implementation guide's global profile applies to every Patient.
    let cases = format!("{}/tests/fixtures/fhir-test-cases", env!("CARGO_MANIFEST_DIR"));
    let bad = format!("{cases}/patient-ig-bad.json");
    let plain = signpost().args(["validate", "--base-only", &bad]).output().unwrap();
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stdout));
    let with_ig = signpost()
        .args(["validate", "--base-only", "--ig", &format!("{cases}/patient-ig-ig.json")])
        .args(["--ig", &format!("{cases}/patient-ig-sd.json"), &bad])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&with_ig.stdout);
    assert_eq!(with_ig.status.code(), Some(2), "{text}");
    assert!(text.contains("Patient.name: minimum required = 1"), "{text}");

    let mut child = signpost().args(["validate", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(br#"{"resourceType":"Patient","gender":"robot"}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Patient.gender"));
}
