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
