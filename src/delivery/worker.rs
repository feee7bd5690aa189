//! The delivery worker: drains the outbox. Claims due events by lease (a compare-and-set on a
//! fencing token, on both backends), sends each as a signed Standard Webhooks request with no
//! transaction open, and records the outcome only if it still holds the lease. Wakes when a write
//! commits and polls as a fallback. Time is passed in (`drain_once(now)`), so tests run the whole
//! retry schedule on a fake clock.
//!
//! Outcomes (RELIABILITY.md §2): 2xx within the timeout = delivered; redirects are not followed
//! and count as failures; 410 disables the Endpoint (its events are held, not dropped);
//! 429/502/503/504 honour `Retry-After` (capped at 1 h); at most 64 KiB of a response is read;
//! after the tenth attempt the event is dead-lettered (`failed`) until an operator resends it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::sync::Notify;

use super::{schedule, signature, ssrf};
use crate::store::alerts;
use crate::store::outbox::{self, OutboxRow};
use crate::store::{Pool, StoreError, resources};

/// How soon an event held back (its Endpoint off, disabled or without a secret) is looked at
/// again.
const HELD_RECHECK_MS: i64 = 10_000;

/// The most of a response body read (the rest is dropped).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Per-attempt timeout (15 s).
    pub timeout: Duration,
    /// Lease on a claimed event; longer than the timeout.
    pub lease: Duration,
    /// Poll interval when no write wakes the worker.
    pub poll: Duration,
    /// Allow `http` and loopback addresses (tests and the sandbox).
    pub allow_loopback: bool,
    /// Events claimed per round.
    pub batch: i64,
    /// Where operator alerts are pushed (none: only stored, listed and logged).
    pub alert_url: Option<String>,
    /// Standard Webhooks secret signing the alert pushes.
    pub alert_secret: Option<String>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            allow_loopback: false,
            batch: 32,
            alert_url: None,
            alert_secret: None,
        }
    }
}

impl WorkerSettings {
    /// From the `delivery` settings.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            timeout: Duration::from_secs(s.delivery.timeout_secs),
            lease: Duration::from_secs(s.delivery.lease_secs),
            allow_loopback: s.allow_loopback_webhooks(),
            alert_url: Some(s.delivery.alert_webhook_url.clone()).filter(|u| !u.is_empty()),
            alert_secret: Some(s.delivery.alert_secret.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    pub claimed: usize,
    pub delivered: usize,
    pub retrying: usize,
    pub dead_lettered: usize,
    /// Given back without an attempt (the Endpoint is off or disabled).
    pub held: usize,
    /// Outcomes not recorded because the lease was lost meanwhile.
    pub lease_lost: usize,
    /// Operator alerts pushed to the alert address.
    pub alerts_pushed: usize,
}

/// Drains the outbox.
#[derive(Clone)]
pub struct Worker {
    pool: Pool,
    owner: String,
    settings: WorkerSettings,
    wake: Arc<Notify>,
    /// Woken when a delivery leaves a `delivered` stage owed.
    stages: Arc<Notify>,
    shared: reqwest::Client,
}

/// The most owed stages recorded in one write transaction.
const STAGE_BATCH: i64 = 64;

/// The most events one lane sends before its slot goes back to the claim loop, so that a long
/// backlog of a few Endpoints does not keep the others waiting.
const LANE_LENGTH: usize = 16;

/// What was recorded for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    Retrying,
    DeadLettered,
    Held,
    LeaseLost,
}

/// Process-wide delivery counters, for `/metrics`.
pub mod metrics {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::Recorded;

    static DELIVERED: AtomicU64 = AtomicU64::new(0);
    static RETRYING: AtomicU64 = AtomicU64::new(0);
    static DEAD: AtomicU64 = AtomicU64::new(0);
    static HELD: AtomicU64 = AtomicU64::new(0);
    static LOST: AtomicU64 = AtomicU64::new(0);

    pub(super) fn count(r: Recorded) {
        let c = match r {
            Recorded::Delivered => &DELIVERED,
            Recorded::Retrying => &RETRYING,
            Recorded::DeadLettered => &DEAD,
            Recorded::Held => &HELD,
            Recorded::LeaseLost => &LOST,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Attempts by result since the process started.
    pub fn attempts() -> [(&'static str, u64); 5] {
        [
            ("delivered", DELIVERED.load(Ordering::Relaxed)),
            ("retrying", RETRYING.load(Ordering::Relaxed)),
            ("dead_lettered", DEAD.load(Ordering::Relaxed)),
            ("held", HELD.load(Ordering::Relaxed)),
            ("lease_lost", LOST.load(Ordering::Relaxed)),
        ]
    }
}

enum Outcome {
    Delivered,
    Retry { error: String, retry_after_ms: Option<i64> },
    Gone,
    Held,
}

impl Worker {
    pub fn new(pool: Pool, settings: WorkerSettings, wake: Arc<Notify>) -> Self {
        let shared = Self::builder(&settings).build().unwrap_or_default();
        let owner = format!("worker-{}", uuid::Uuid::new_v4().simple());
        Self { pool, owner, settings, wake, stages: Default::default(), shared }
    }

    fn builder(settings: &WorkerSettings) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("Signpost/", env!("CARGO_PKG_VERSION")))
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        Self::builder(&self.settings)
    }

    /// Claim the events due at `now_ms`, send them (concurrently), record the outcomes.
    pub async fn drain_once(&self, now_ms: i64) -> Result<Drained, StoreError> {
        let claimed = self.claim(now_ms).await?;
        let mut report = Drained::default();
        let lanes = futures_util::future::join_all(claimed.into_iter().map(|row| self.lane(row, || now_ms))).await;
        for kinds in lanes {
            for kind in kinds? {
                report.claimed += 1;
                match kind {
                    Recorded::Delivered => report.delivered += 1,
                    Recorded::Retrying => report.retrying += 1,
                    Recorded::DeadLettered => report.dead_lettered += 1,
                    Recorded::Held => report.held += 1,
                    Recorded::LeaseLost => report.lease_lost += 1,
                }
            }
        }
        self.record_stages().await?;
        report.alerts_pushed = self.push_alerts(now_ms).await?;
        Ok(report)
    }

    /// Push the due operator alerts to `alert_url` (each until it answers 2xx, once a minute);
    /// how many were pushed. Nothing to do without an alert address.
    pub async fn push_alerts(&self, now_ms: i64) -> Result<usize, StoreError> {
        let Some(url) = self.settings.alert_url.clone() else { return Ok(0) };
        let pool = self.pool.clone();
        let due = blocking(move || alerts::due(&mut *pool.get()?, now_ms, 20)).await?;
        let mut pushed = 0;
        for alert in due {
            let body = serde_json::json!({
                "type": "signpost.alert",
                "timestamp": crate::fhir::instant(alert.created_at),
                "data": {
                    "alert": alert.id,
                    "kind": alert.kind,
                    "endpoint": format!("Endpoint/{}", alert.endpoint_id),
                    "event": alert.event_id,
                    "message": alert.message,
                }
            })
            .to_string();
            let mut request = self
                .shared
                .post(&url)
                .header("content-type", "application/json")
                .header("webhook-id", &alert.id)
                .header("webhook-timestamp", (now_ms / 1000).to_string());
            if let Some(sig) =
                self.settings.alert_secret.as_deref().and_then(|s| signature::sign(s, &alert.id, now_ms / 1000, &body))
            {
                request = request.header("webhook-signature", sig);
            }
            let sent = matches!(request.body(body).send().await, Ok(r) if r.status().is_success());
            let pool = self.pool.clone();
            if blocking(move || alerts::pushed(&mut *pool.get()?, &alert, sent, now_ms)).await? && sent {
                pushed += 1;
            }
        }
        Ok(pushed)
    }

    async fn claim(&self, now_ms: i64) -> Result<Vec<OutboxRow>, StoreError> {
        self.claim_up_to(now_ms, self.settings.batch).await
    }

    /// [`Self::claim`], at most `limit` events.
    async fn claim_up_to(&self, now_ms: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let pool = self.pool.clone();
        let (owner, lease, batch) = (self.owner.clone(), self.settings.lease.as_millis() as i64, limit);
        blocking(move || {
            let mut conn = pool.get()?;
            outbox::claim(&mut conn, &owner, now_ms, lease, batch)
        })
        .await
    }

    /// Send a claimed event, and after each delivery the Endpoint's next due event, claimed as
    /// the delivery is recorded, until the Endpoint has none due, an attempt fails, or the lane
    /// has sent [`LANE_LENGTH`] events (then the next is claimed in turn with every other
    /// Endpoint's); what was recorded for each. `now` is read before each attempt and again
    /// for each next claim, whose lease starts then.
    async fn lane(&self, row: OutboxRow, now: impl Fn() -> i64) -> Result<Vec<Recorded>, StoreError> {
        let mut recorded = Vec::new();
        let mut next = Some(row);
        while let Some(row) = next.take() {
            let more = recorded.len() + 1 < LANE_LENGTH;
            let (kind, follow) = self.process(row, &now, more).await?;
            recorded.push(kind);
            next = follow;
        }
        Ok(recorded)
    }

    /// Send one claimed event and record what happened (only while the lease is ours); after a
    /// delivery, the Endpoint's next due event, claimed in the same transaction.
    async fn process(
        &self,
        row: OutboxRow,
        now: &impl Fn() -> i64,
        follow_on: bool,
    ) -> Result<(Recorded, Option<OutboxRow>), StoreError> {
        let now_ms = now();
        let outcome = self.send(&row, now_ms).await?;
        let claim_at = now();
        if matches!(outcome, Outcome::Delivered) {
            crate::failpoint::hit("outbox::after_send");
        }
        let pool = self.pool.clone();
        let jitter: f64 = rand::thread_rng().gen_range(-1.0..=1.0);
        let (owner, lease) = (self.owner.clone(), self.settings.lease.as_millis() as i64);
        let (recorded, follow) = blocking(move || {
            let mut conn = pool.get()?;
            let mut follow = None;
            let (ok, kind) = match outcome {
                // The delivery, the Task's `delivered` stage owed, and the next claim in one
                // write transaction.
                Outcome::Delivered => {
                    let (done, next) = crate::store::write_txn(&mut conn, |conn| {
                        let done = outbox::complete(conn, &row, now_ms)?;
                        if done {
                            outbox::owe_stage(conn, &row)?;
                        }
                        // A failed claim only ends the lane: the delivery stands.
                        let mut next = None;
                        if done && follow_on {
                            next = crate::store::savepoint(conn, |conn| {
                                outbox::claim_next_of(conn, &row.endpoint_id, &owner, claim_at, lease)
                            })
                            .unwrap_or_else(|e| {
                                tracing::warn!(error = %e, "claiming the next webhook of a lane failed");
                                None
                            });
                        }
                        Ok::<_, StoreError>((done, next))
                    })?;
                    follow = next;
                    (done, Recorded::Delivered)
                }
                Outcome::Held => (outbox::release(&mut conn, &row, now_ms + HELD_RECHECK_MS)?, Recorded::Held),
                Outcome::Gone => (outbox::gone(&mut conn, &row, now_ms)?, Recorded::Held),
                Outcome::Retry { error, retry_after_ms } => {
                    let next = schedule::next_attempt(row.attempts + 1, now_ms, jitter, retry_after_ms);
                    let kind = if next.is_some() { Recorded::Retrying } else { Recorded::DeadLettered };
                    (outbox::fail(&mut conn, &row, next, &error, now_ms)?, kind)
                }
            };
            Ok((if ok { kind } else { Recorded::LeaseLost }, follow))
        })
        .await?;
        metrics::count(recorded);
        if recorded == Recorded::Delivered {
            self.stages.notify_one();
        }
        Ok((recorded, follow))
    }

    /// Record the owed `delivered` stages, [`STAGE_BATCH`] to a write transaction, until none
    /// are left; how many. Each stage is recorded or rolled back alone (a savepoint), and taken
    /// away either way: a stage that cannot be recorded is logged, not retried for ever.
    pub async fn record_stages(&self) -> Result<usize, StoreError> {
        let mut recorded = 0;
        loop {
            let pool = self.pool.clone();
            let n = blocking(move || {
                let mut conn = pool.get()?;
                crate::store::write_txn(&mut conn, |conn| {
                    let owed = outbox::take_owed_stages(conn, STAGE_BATCH)?;
                    for stage in &owed {
                        mark_delivered(conn, stage);
                    }
                    Ok::<_, StoreError>(owed.len())
                })
            })
            .await?;
            recorded += n;
            if (n as i64) < STAGE_BATCH {
                return Ok(recorded);
            }
        }
    }

    /// Drain until nothing is due at `now_ms` (tests); the rounds' reports added up.
    pub async fn drain_all(&self, now_ms: i64) -> Result<Drained, StoreError> {
        let mut total = Drained::default();
        for _ in 0..1000 {
            let r = self.drain_once(now_ms).await?;
            if r.claimed == 0 {
                break;
            }
            total.claimed += r.claimed;
            total.delivered += r.delivered;
            total.retrying += r.retrying;
            total.dead_lettered += r.dead_lettered;
            total.held += r.held;
            total.lease_lost += r.lease_lost;
            total.alerts_pushed += r.alerts_pushed;
            if r.held == r.claimed {
                break;
            }
        }
        Ok(total)
    }

    /// Run until the process ends. Each claimed event is sent by a task of its own, so a slow
    /// or dead Endpoint never holds up the others (its own events wait for its 4 slots), and that
    /// task goes on with the Endpoint's next due events while they are delivered (a lane, at
    /// most [`LANE_LENGTH`] long); the loop claims, never more than there are free slots,
    /// whenever a write commits, a task ends, or every poll interval.
    pub async fn run(self) {
        tokio::spawn(self.clone().run_stages());
        let slots = Arc::new(tokio::sync::Semaphore::new(64));
        let mut last_alerts = std::time::Instant::now();
        loop {
            // Only as many as there are free slots: a claimed event never waits for one while
            // its lease runs.
            let free = (slots.available_permits() as i64).min(self.settings.batch);
            let claimed = match free {
                0 => Ok(Vec::new()),
                n => self.claim_up_to(crate::fhir::now_ms(), n).await,
            };
            let claimed = claimed.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "claiming webhooks failed");
                Vec::new()
            });
            let any = !claimed.is_empty();
            for row in claimed {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let worker = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = worker.lane(row, crate::fhir::now_ms).await {
                        tracing::warn!(error = %e, "recording a webhook outcome failed");
                    }
                    drop(permit);
                    worker.wake.notify_one();
                });
            }
            if last_alerts.elapsed() >= self.settings.poll {
                last_alerts = std::time::Instant::now();
                if let Err(e) = self.push_alerts(crate::fhir::now_ms()).await {
                    tracing::warn!(error = %e, "pushing operator alerts failed");
                }
            }
            if any {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    /// Record owed stages whenever a delivery leaves one, and every poll interval (those a
    /// crash left owed).
    async fn run_stages(self) {
        loop {
            if let Err(e) = self.record_stages().await {
                tracing::warn!(error = %e, "recording delivered stages failed");
            }
            tokio::select! {
                _ = self.stages.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    async fn send(&self, row: &OutboxRow, now_ms: i64) -> Result<Outcome, StoreError> {
        let pool = self.pool.clone();
        let endpoint_id = row.endpoint_id.clone();
        let (endpoint, state) = blocking(move || {
            let mut conn = pool.get()?;
            let endpoint = resources::get(&mut conn, "Endpoint", &endpoint_id)?.map(|r| r.json()).transpose()?;
            Ok((endpoint, outbox::endpoint_status(&mut conn, &endpoint_id)?))
        })
        .await?;
        let (Some(endpoint), Some(state)) = (endpoint, state) else { return Ok(Outcome::Held) };
        if endpoint.get("status").and_then(Value::as_str) != Some("active") || state.disabled {
            return Ok(Outcome::Held);
        }
        let Some(secret) = state.secret.as_deref() else { return Ok(Outcome::Held) };
        let address = endpoint.get("address").and_then(Value::as_str).unwrap_or_default();
        let retry = |error: String| Ok(Outcome::Retry { error, retry_after_ms: None });
        // Checked again at send time: the address, and every address its name resolves to.
        let target = match ssrf::check(address, self.settings.allow_loopback) {
            Ok(t) => t,
            Err(e) => return retry(e),
        };
        let pinned = match ssrf::resolve(&target, self.settings.allow_loopback).await {
            Ok(p) => p,
            Err(e) => return retry(e),
        };
        // A name is pinned to the address just checked (a client of its own); an IP literal
        // needs no resolving and shares one client.
        let client = match (&target.domain, pinned) {
            (Some(domain), Some(addr)) => match self.client_builder().resolve(domain, addr).build() {
                Ok(c) => c,
                Err(_) => return retry("the HTTP client could not be built".into()),
            },
            _ => self.shared.clone(),
        };
        let timestamp = now_ms / 1000;
        let previous =
            state.previous_secret.as_deref().filter(|_| state.previous_until.is_some_and(|until| now_ms < until));
        let Some(signature) = signature::header(secret, previous, &row.id, timestamp, &row.body) else {
            return retry("the endpoint secret is not valid".into());
        };
        // A message's own headers (X-Request-Id, X-Correlation-Id); a message is FHIR JSON.
        let extra = row.headers.as_deref().and_then(|h| serde_json::from_str::<serde_json::Map<String, Value>>(h).ok());
        let content_type = if extra.is_some() { "application/fhir+json" } else { "application/json" };
        let mut request = client
            .post(target.url.clone())
            .header("content-type", content_type)
            .header("webhook-id", &row.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if let Some(extra) = extra {
            for (name, value) in extra {
                if let Some(v) = value.as_str() {
                    request = request.header(name, v);
                }
            }
        }
        let sent = request.body(row.body.clone()).send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return retry("timed out".into()),
            Err(_) => return retry("could not connect or send".into()),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| schedule::retry_after_ms(v, now_ms));
        // Read at most 64 KiB, within the same timeout.
        let mut response = response;
        let mut read = 0usize;
        let body_done = tokio::time::timeout(self.settings.timeout, async {
            while let Ok(Some(chunk)) = response.chunk().await {
                read += chunk.len();
                if read >= MAX_RESPONSE_BYTES {
                    break;
                }
            }
        })
        .await;
        Ok(match status {
            200..=299 if body_done.is_ok() => Outcome::Delivered,
            200..=299 => Outcome::Retry { error: "timed out reading the response".into(), retry_after_ms: None },
            410 => Outcome::Gone,
            429 | 502 | 503 | 504 => Outcome::Retry { error: format!("HTTP {status}"), retry_after_ms: retry_after },
            300..=399 => {
                Outcome::Retry { error: format!("HTTP {status} (redirects are not followed)"), retry_after_ms: None }
            }
            _ => Outcome::Retry { error: format!("HTTP {status}"), retry_after_ms: None },
        })
    }
}

/// The charity's own Endpoint got a new referral: its Task's stage becomes `delivered`. A
/// failure here is logged and rolled back alone (a savepoint); the others in the batch stand.
fn mark_delivered(conn: &mut crate::store::DbConn, stage: &outbox::OwedStage) {
    let task = stage.task_id.as_str();
    if let Err(e) =
        crate::store::savepoint(conn, |conn| crate::gateway::flow::mark_delivered(conn, &stage.endpoint_id, task))
    {
        tracing::warn!(error = %e, task, "recording the delivered stage failed");
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Unavailable(e.to_string()))?
}
