//! `signpost conformance webhook --url URL --secret S`: test a charity's own webhook receiver.
//! Sends one correctly signed event and the ways a forged or replayed one differs, and reports
//! which the receiver wrongly accepted (a 2xx) or wrongly refused.

use serde_json::json;

use crate::delivery::signature;

/// One probe and its verdict.
pub struct Probe {
    pub name: &'static str,
    pub should_accept: bool,
    pub status: Option<u16>,
}

impl Probe {
    pub fn right(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s) == self.should_accept)
    }
}

/// Send every probe to `url`; the verdicts, in order.
pub async fn probe(url: &str, secret: &str) -> anyhow::Result<Vec<Probe>> {
    signature::sign(secret, "x", 0, "").ok_or_else(|| anyhow::anyhow!("--secret is not a whsec_ base64 secret"))?;
    let other = signature::new_secret();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let now = chrono::Utc::now().timestamp();
    let id = format!("msg_conformance_{}", uuid::Uuid::new_v4().simple());
    let body = json!({
        "type": "referral.created",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "data": { "task": "Task/conformance-check", "serviceRequest": "ServiceRequest/conformance-check", "eventNumber": 1 }
    })
    .to_string();
    let sign =
        |secret: &str, id: &str, ts: i64, body: &str| signature::sign(secret, id, ts, body).expect("a usable secret");
    // (name, should accept, webhook-id, timestamp, body sent, signature header)
    type Case = (&'static str, bool, String, i64, String, Option<String>);
    let cases: Vec<Case> = vec![
        ("correctly signed", true, id.clone(), now, body.clone(), Some(sign(secret, &id, now, &body))),
        (
            "the same event again (a retry: acknowledge it)",
            true,
            id.clone(),
            now,
            body.clone(),
            Some(sign(secret, &id, now, &body)),
        ),
        ("signed with another secret", false, new_id(), now, body.clone(), Some(sign(&other, &id, now, &body))),
        (
            "body changed after signing",
            false,
            id.clone(),
            now,
            body.replace("conformance-check", "forged"),
            Some(sign(secret, &id, now, &body)),
        ),
        ("no webhook-signature header", false, new_id(), now, body.clone(), None),
        (
            "signature for another webhook-id",
            false,
            new_id(),
            now,
            body.clone(),
            Some(sign(secret, "msg_other", now, &body)),
        ),
        (
            "timestamp ten minutes old (a replay)",
            false,
            id.clone(),
            now - 600,
            body.clone(),
            Some(sign(secret, &id, now - 600, &body)),
        ),
        (
            "timestamp ten minutes ahead",
            false,
            id.clone(),
            now + 600,
            body.clone(),
            Some(sign(secret, &id, now + 600, &body)),
        ),
        (
            "only an unknown signature version (v2)",
            false,
            new_id(),
            now,
            body.clone(),
            Some(sign(secret, &id, now, &body).replacen("v1,", "v2,", 1)),
        ),
    ];
    let mut out = Vec::new();
    for (name, should_accept, wid, ts, sent, sig) in cases {
        let mut req = http
            .post(url)
            .header("Content-Type", "application/json")
            .header("webhook-id", &wid)
            .header("webhook-timestamp", ts.to_string())
            .body(sent);
        if let Some(s) = sig {
            req = req.header("webhook-signature", s);
        }
        let status = req.send().await.ok().map(|r| r.status().as_u16());
        out.push(Probe { name, should_accept, status });
    }
    Ok(out)
}

fn new_id() -> String {
    format!("msg_conformance_{}", uuid::Uuid::new_v4().simple())
}

/// Print the verdicts; true when every probe was answered rightly.
pub fn print(probes: &[Probe]) -> bool {
    println!("{:<52} {:<8} {:<7} verdict", "request", "expected", "status");
    for p in probes {
        let expected = if p.should_accept { "2xx" } else { "refusal" };
        let status = p.status.map_or("none".to_string(), |s| s.to_string());
        let verdict = match (p.right(), p.should_accept) {
            (true, _) => "ok",
            (false, true) => "WRONGLY REFUSED",
            (false, false) => "WRONGLY ACCEPTED",
        };
        println!("{:<52} {:<8} {:<7} {verdict}", p.name, expected, status);
    }
    let wrong = probes.iter().filter(|p| !p.right()).count();
    println!("{} of {} answered rightly", probes.len() - wrong, probes.len());
    wrong == 0
}
