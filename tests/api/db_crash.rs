//! C7 (RELIABILITY.md §4, goal G9): PostgreSQL stopped with `pg_ctl stop -m immediate` under load
//! and started again. Runs in the PostgreSQL suite, on a cluster of its own (the shared one serves
//! the other tests): during the outage Signpost answers only 503 OperationOutcomes without
//! internals, it resumes by itself when the database is back (no restart), every referral that got
//! a 201 is stored, and every one reaches the charity's webhook.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::delivery::{Receiver, post_referral, prepare_process, serve_process};

/// A PostgreSQL cluster in a temporary folder, on a free port, run by the `postgres` user when
/// the tests run as root (PostgreSQL refuses to run as root).
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("the PostgreSQL suite needs the server binaries in /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = PrivatePostgres { dir, bin, port };
        if is_root() {
            assert!(Command::new("chown").args(["-R", "postgres"]).arg(pg.dir.path()).status().unwrap().success());
        }
        let data = pg.data();
        pg.run("initdb", &["-A", "trust", "-U", "postgres", "-D", &data]);
        pg.run_start();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let out = cmd.args(args).current_dir(self.dir.path()).output().unwrap();
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn run_start(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["start", "-w", "-D", &self.data(), "-l", &log, "-o", &options]);
    }

    fn stop_immediately(&self) {
        self.run("pg_ctl", &["stop", "-m", "immediate", "-D", &self.data()]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D", &self.data()])
            .output();
        if !is_root() {
            let _ =
                Command::new(self.bin.join("pg_ctl")).args(["stop", "-m", "immediate", "-D", &self.data()]).output();
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// What one request got.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    status: u16,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_answers_503_and_resumes_without_a_restart() {
    if std::env::var("SIGNPOST_TEST_DATABASE_URL").map(|u| u.is_empty()).unwrap_or(true) {
        return; // The SQLite suite has no database server to stop.
    }
    let pg = PrivatePostgres::start();
    let home = tempfile::tempdir().unwrap();
    let charity = Receiver::start().await;
    let gateway = serve_process(&pg.url(), Path::new(home.path()));
    let port = gateway.port;
    let pid = prepare_process(port, &charity.url).await;

    // A steady stream of referrals, one at a time, each with its own request id.
    let sent: Arc<Mutex<Vec<Sent>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (sent, stop, pid) = (sent.clone(), stop.clone(), pid.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let at = Instant::now();
                let (status, body) = match post_referral(port, &pid, &format!("c7-{n}")).await {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                sent.lock().unwrap().push(Sent { at, status, body });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = Instant::now();
    pg.stop_immediately();
    // Longer than the pool's 10 s wait for a connection, so requests meet the outage.
    tokio::time::sleep(Duration::from_secs(15)).await;
    pg.run_start();
    let restarted = Instant::now();
    // Load goes on until referrals are accepted again (bounded), and a little after.
    let deadline = restarted + Duration::from_secs(60);
    while Instant::now() < deadline && !sent.lock().unwrap().iter().any(|s| s.at > restarted && s.status == 201) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    let sent = sent.lock().unwrap().clone();

    let before = sent.iter().filter(|s| s.at < stopped && s.status == 201).count();
    assert!(before > 0, "referrals were accepted before the outage");
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status != 201).collect();
    assert!(!refused.is_empty(), "the outage was noticed");
    for s in &refused {
        assert_eq!(s.status, 503, "only 503 while the database is down: {} {}", s.status, s.body);
        assert!(s.body.contains("OperationOutcome") && s.body.contains("retry later"), "{}", s.body);
        for internal in ["terminat", "postgres", "connection refused", "server closed", "5432", "diesel"] {
            assert!(!s.body.to_lowercase().contains(internal), "{internal} in {}", s.body);
        }
    }
    let resumed = sent.iter().find(|s| s.at > restarted && s.status == 201).expect("accepted again without a restart");
    eprintln!(
        "C7: {} requests, {} refused with 503; first 201 {:.1} s after the database came back",
        sent.len(),
        refused.len(),
        resumed.at.duration_since(restarted).as_secs_f64()
    );

    // N1: every 201 is stored; N4: every one reaches the charity.
    let accepted: Vec<String> = sent
        .iter()
        .filter(|s| s.status == 201)
        .map(|s| serde_json::from_str::<serde_json::Value>(&s.body).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let http = reqwest::Client::new();
    for id in &accepted {
        let r = http
            .get(format!("http://127.0.0.1:{port}/fhir/ServiceRequest/{id}"))
            .bearer_auth("sp_sandbox_referrer_riverside")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "ServiceRequest/{id} got a 201 and must be stored");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = |r: &Receiver| -> std::collections::HashSet<String> {
        r.hits()
            .iter()
            .map(|h| serde_json::from_slice::<serde_json::Value>(&h.body).unwrap())
            .map(|b| {
                b["data"]["serviceRequest"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("ServiceRequest/")
                    .to_string()
            })
            .collect()
    };
    while Instant::now() < deadline && !accepted.iter().all(|id| delivered(&charity).contains(id)) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing: Vec<&String> = accepted.iter().filter(|id| !delivered(&charity).contains(*id)).collect();
    assert!(missing.is_empty(), "accepted but never delivered: {missing:?}");
    drop(gateway);
}
