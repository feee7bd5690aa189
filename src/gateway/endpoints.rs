//! Operations on a webhook Endpoint (PRODUCT.md §5, RELIABILITY.md §2): its signing secret
//! (`$secret`, operators, shown once), its events since an `eventNumber` (`$events`) and its state
//! (`$status`) for its own organisation and operators, and replay of dead letters (`$resend`,
//! operators).

use serde_json::{Value, json};

use super::{Ctx, Gateway, Reply};
use crate::auth::Role;
use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode};
use crate::fhir::{instant, now_ms, reference_of};
use crate::store::outbox;
use crate::store::resources;

/// How long the previous secret keeps signing after a rotation: longer than the retry schedule
/// (75 h 35 min), so retries of events sent before the rotation still verify.
const ROTATION_OVERLAP_MS: i64 = 76 * 3_600_000;

fn only_endpoint(ty: &str) -> Result<(), ApiError> {
    if ty == "Endpoint" {
        Ok(())
    } else {
        Err(ApiError::new(404, Issue::error(IssueCode::UnknownPath, "this operation is defined on Endpoint only")))
    }
}

impl Gateway {
    /// The Endpoint's managing Organization, if it exists (404 otherwise).
    fn endpoint_org(&self, id: &str) -> Result<Option<String>, ApiError> {
        let mut conn = self.conn()?;
        let endpoint = resources::get(&mut conn, "Endpoint", id)?.ok_or_else(ApiError::not_found)?.json()?;
        Ok(endpoint.get("managingOrganization").and_then(reference_of).map(|(_, o)| o.to_string()))
    }

    /// Operators, or a client of the Endpoint's own organisation (others: 404).
    fn may_watch(&self, ctx: &Ctx, id: &str) -> Result<(), ApiError> {
        let org = self.endpoint_org(id)?;
        if ctx.principal.role == Role::Operator || org.as_deref() == Some(ctx.principal.org_id.as_str()) {
            Ok(())
        } else {
            Err(ApiError::not_found())
        }
    }

    fn operator_only(&self, ctx: &Ctx, id: &str, what: &str) -> Result<(), ApiError> {
        self.may_watch(ctx, id)?;
        if ctx.principal.role != Role::Operator {
            return Err(ApiError::forbidden(format!("only operators {what}")));
        }
        Ok(())
    }

    /// `POST /fhir/Endpoint/{id}/$secret`: a new signing secret, returned this once. The
    /// previous one keeps signing (both signatures are sent) for 76 hours.
    pub fn endpoint_secret(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        only_endpoint(ty)?;
        self.operator_only(ctx, id, "set webhook secrets")?;
        let secret = crate::delivery::signature::new_secret();
        let mut conn = self.conn()?;
        crate::store::write_txn(&mut conn, |conn| {
            outbox::rotate_secret(conn, id, &secret, now_ms() + ROTATION_OVERLAP_MS)
        })?;
        self.wake.notify_one();
        tracing::info!(endpoint = id, client = %ctx.principal.name, "webhook secret set");
        Ok(Reply::json(
            200,
            &json!({ "resourceType": "Parameters", "parameter": [
                { "name": "secret", "valueString": secret },
                { "name": "note", "valueString": "Store this secret now: it is not shown again. The previous secret, if any, still signs for 76 hours." }
            ]}),
        ))
    }

    /// `GET /fhir/Endpoint/{id}/$events?since=N`: the Endpoint's events after `eventNumber` N.
    pub fn endpoint_events(
        &self,
        ctx: &Ctx,
        ty: &str,
        id: &str,
        pairs: &[(String, String)],
    ) -> Result<Reply, ApiError> {
        only_endpoint(ty)?;
        self.may_watch(ctx, id)?;
        let mut since = 0i64;
        for (k, v) in pairs {
            match k.as_str() {
                "since" => {
                    since = v.parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(|| {
                        ApiError::new(
                            400,
                            Issue::error(IssueCode::BadSearchValue, "since must be a whole number from 0"),
                        )
                    })?
                }
                "_format" => {}
                _ => return Err(ApiError::new(400, Issue::error(IssueCode::BadSearchValue, "$events takes since"))),
            }
        }
        let mut conn = self.conn()?;
        let rows = outbox::events_since(&mut conn, id, since, 100)?;
        let params: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut part = vec![
                    json!({ "name": "webhookId", "valueString": r.id }),
                    json!({ "name": "eventNumber", "valueInteger": r.event_number }),
                    json!({ "name": "type", "valueString": r.event_type }),
                    json!({ "name": "state", "valueCode": r.state }),
                    json!({ "name": "attempts", "valueInteger": r.attempts }),
                    json!({ "name": "created", "valueInstant": instant(r.created_at) }),
                    json!({ "name": "payload", "valueString": r.body }),
                ];
                if let Some(d) = r.delivered_at {
                    part.push(json!({ "name": "delivered", "valueInstant": instant(d) }));
                }
                if let Some(e) = &r.last_error {
                    part.push(json!({ "name": "lastError", "valueString": e }));
                }
                json!({ "name": "event", "part": part })
            })
            .collect();
        Ok(Reply::json(200, &json!({ "resourceType": "Parameters", "parameter": params })))
    }

    /// `GET /fhir/Endpoint/{id}/$status`: the last `eventNumber` and the Endpoint's state.
    pub fn endpoint_status(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        only_endpoint(ty)?;
        self.may_watch(ctx, id)?;
        let mut conn = self.conn()?;
        let state = outbox::endpoint_status(&mut conn, id)?;
        let mut params = vec![
            json!({ "name": "lastEventNumber", "valueInteger": state.as_ref().map(|s| s.event_counter).unwrap_or(0) }),
            json!({ "name": "disabled", "valueBoolean": state.as_ref().is_some_and(|s| s.disabled) }),
            json!({ "name": "hasSecret", "valueBoolean": state.as_ref().is_some_and(|s| s.secret.is_some()) }),
        ];
        if let Some(t) = state.as_ref().and_then(|s| s.last_success_at) {
            params.push(json!({ "name": "lastSuccess", "valueInstant": instant(t) }));
        }
        if let Some(t) = state.as_ref().and_then(|s| s.last_failure_at) {
            params.push(json!({ "name": "lastFailure", "valueInstant": instant(t) }));
        }
        Ok(Reply::json(200, &json!({ "resourceType": "Parameters", "parameter": params })))
    }

    /// `GET /fhir/Endpoint/$delivery`: per Endpoint, events pending, delivered and dead-lettered,
    /// the age of the oldest pending one (the lag), last success and failure, disabled (operators).
    pub fn delivery_view(&self, ctx: &Ctx, ty: &str) -> Result<Reply, ApiError> {
        only_endpoint(ty)?;
        if ctx.principal.role != Role::Operator {
            return Err(ApiError::forbidden("the delivery view is for operators"));
        }
        let mut conn = self.conn()?;
        let counts = outbox::summary(&mut conn)?;
        let now = now_ms();
        let mut params = Vec::new();
        for state in outbox::endpoints(&mut conn)? {
            let of = |s: &str| counts.iter().find(|c| c.0 == state.endpoint_id && c.1 == s);
            let mut part = vec![
                json!({ "name": "endpoint", "valueReference": { "reference": format!("Endpoint/{}", state.endpoint_id) } }),
                json!({ "name": "pending", "valueInteger": of(outbox::PENDING).map(|c| c.2).unwrap_or(0) }),
                json!({ "name": "delivered", "valueInteger": of(outbox::DELIVERED).map(|c| c.2).unwrap_or(0) }),
                json!({ "name": "deadLettered", "valueInteger": of(outbox::FAILED).map(|c| c.2).unwrap_or(0) }),
                json!({ "name": "disabled", "valueBoolean": state.disabled }),
                json!({ "name": "lastEventNumber", "valueInteger": state.event_counter }),
            ];
            if let Some(oldest) = of(outbox::PENDING).and_then(|c| c.3) {
                part.push(json!({ "name": "lagSeconds", "valueDecimal": ((now - oldest).max(0) as f64) / 1000.0 }));
            }
            if let Some(t) = state.last_success_at {
                part.push(json!({ "name": "lastSuccess", "valueInstant": instant(t) }));
            }
            if let Some(t) = state.last_failure_at {
                part.push(json!({ "name": "lastFailure", "valueInstant": instant(t) }));
            }
            params.push(json!({ "name": "endpoint", "part": part }));
        }
        Ok(Reply::json(200, &json!({ "resourceType": "Parameters", "parameter": params })))
    }

    /// `GET /fhir/Endpoint/$alerts`: the latest 100 operator alerts, newest first (operators).
    pub fn alerts_view(&self, ctx: &Ctx, ty: &str) -> Result<Reply, ApiError> {
        only_endpoint(ty)?;
        if ctx.principal.role != Role::Operator {
            return Err(ApiError::forbidden("alerts are for operators"));
        }
        let mut conn = self.conn()?;
        let params: Vec<Value> = crate::store::alerts::recent(&mut conn, 100)?
            .into_iter()
            .map(|a| {
                let mut part = vec![
                    json!({ "name": "id", "valueString": a.id }),
                    json!({ "name": "kind", "valueCode": a.kind }),
                    json!({ "name": "endpoint", "valueReference": { "reference": format!("Endpoint/{}", a.endpoint_id) } }),
                    json!({ "name": "message", "valueString": a.message }),
                    json!({ "name": "raised", "valueInstant": instant(a.created_at) }),
                ];
                if let Some(e) = a.event_id {
                    part.push(json!({ "name": "webhookId", "valueString": e }));
                }
                if let Some(t) = a.notified_at {
                    part.push(json!({ "name": "pushed", "valueInstant": instant(t) }));
                }
                json!({ "name": "alert", "part": part })
            })
            .collect();
        Ok(Reply::json(200, &json!({ "resourceType": "Parameters", "parameter": params })))
    }

    /// Prometheus text for `/metrics`: outbox depth, oldest undelivered age, dead letters,
    /// disabled Endpoints, and this process's attempts by result.
    pub fn metrics_text(&self) -> Result<String, ApiError> {
        let mut conn = self.conn()?;
        let counts = outbox::summary(&mut conn)?;
        let disabled = outbox::endpoints(&mut conn)?.iter().filter(|e| e.disabled).count();
        let total = |s: &str| counts.iter().filter(|c| c.1 == s).map(|c| c.2).sum::<i64>();
        let oldest = counts.iter().filter(|c| c.1 == outbox::PENDING).filter_map(|c| c.3).min();
        let age = oldest.map(|o| ((now_ms() - o).max(0) as f64) / 1000.0).unwrap_or(0.0);
        let mut out = String::new();
        out.push_str(
            "# HELP signpost_outbox_pending Webhook events not yet delivered.\n# TYPE signpost_outbox_pending gauge\n",
        );
        out.push_str(&format!("signpost_outbox_pending {}\n", total(outbox::PENDING)));
        out.push_str("# HELP signpost_outbox_oldest_pending_age_seconds Age of the oldest undelivered event.\n# TYPE signpost_outbox_oldest_pending_age_seconds gauge\n");
        out.push_str(&format!("signpost_outbox_oldest_pending_age_seconds {age}\n"));
        out.push_str("# HELP signpost_outbox_dead_letters Events dead-lettered after their last attempt.\n# TYPE signpost_outbox_dead_letters gauge\n");
        out.push_str(&format!("signpost_outbox_dead_letters {}\n", total(outbox::FAILED)));
        out.push_str("# HELP signpost_endpoints_disabled Webhook endpoints disabled (410, or five days of failure).\n# TYPE signpost_endpoints_disabled gauge\n");
        out.push_str(&format!("signpost_endpoints_disabled {disabled}\n"));
        out.push_str("# HELP signpost_alerts_unsent Operator alerts not yet pushed to delivery.alert_webhook_url.\n# TYPE signpost_alerts_unsent gauge\n");
        out.push_str(&format!("signpost_alerts_unsent {}\n", crate::store::alerts::unsent(&mut conn)?));
        out.push_str("# HELP signpost_webhook_attempts_total Webhook attempts by result, by this process.\n# TYPE signpost_webhook_attempts_total counter\n");
        for (result, n) in crate::delivery::worker::metrics::attempts() {
            out.push_str(&format!("signpost_webhook_attempts_total{{result=\"{result}\"}} {n}\n"));
        }
        Ok(out)
    }

    /// `POST /fhir/Endpoint/{id}/$resend`: re-enable the Endpoint and put its dead-lettered
    /// events back in the queue (operators).
    pub fn endpoint_resend(&self, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, ApiError> {
        only_endpoint(ty)?;
        self.operator_only(ctx, id, "replay webhooks")?;
        let mut conn = self.conn()?;
        let requeued = crate::store::write_txn(&mut conn, |conn| {
            outbox::set_disabled(conn, id, false)?;
            outbox::resend_failed(conn, id, now_ms())
        })?;
        self.wake.notify_one();
        Ok(Reply::json(
            200,
            &json!({ "resourceType": "Parameters", "parameter": [{ "name": "requeued", "valueInteger": requeued }] }),
        ))
    }
}
