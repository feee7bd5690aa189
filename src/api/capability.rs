//! `GET /fhir/metadata`: the CapabilityStatement, generated from the route table and the
//! served types, so it always says what the server really does.

use actix_web::{HttpRequest, HttpResponse};
use serde_json::{Value, json};

use super::{Action, FHIR_JSON, ROUTES};
use crate::fhir::{ParamKind, TYPES, TypeClass, instant, now_ms};

/// Build the CapabilityStatement for the server at `base`.
pub fn capability_statement(base: &str) -> Value {
    // Interaction codes only: operations ($validate) are listed under `operation`.
    let type_level: Vec<&str> =
        ROUTES.iter().filter(|r| r.2 != Action::Transaction && !r.2.is_operation()).map(|r| r.3).collect();
    let resources: Vec<Value> = TYPES
        .iter()
        .map(|t| {
            let mut params: Vec<Value> = vec![
                json!({ "name": "_id", "type": "token" }),
                json!({ "name": "_lastUpdated", "type": "date" }),
            ];
            params.extend(t.params.iter().map(|p| {
                json!({ "name": p.name, "type": match p.kind { ParamKind::Token => "token", ParamKind::Reference => "reference" } })
            }));
            let mut resource = json!({
                "type": t.name,
                "interaction": type_level.iter().map(|c| json!({ "code": c })).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": t.class == TypeClass::Directory,
                "conditionalCreate": true,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": params,
                "operation": [{ "name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate" }],
            });
            if t.name == "Endpoint" {
                for (name, doc) in [
                    ("secret", "Operators: a new webhook signing secret, shown once (the previous one signs for 76 hours more)"),
                    ("events", "The Endpoint's events after an eventNumber (its organisation and operators)"),
                    ("status", "The Endpoint's last eventNumber and delivery state"),
                    ("resend", "Operators: re-enable the Endpoint and requeue its dead-lettered events"),
                ] {
                    resource["operation"].as_array_mut().expect("an array").push(json!({
                        "name": name,
                        "definition": format!("https://signpost.example/fhir/OperationDefinition/Endpoint-{name}"),
                        "documentation": doc,
                    }));
                }
            }
            if t.name == "ServiceRequest" {
                for (name, doc) in [
                    ("route", "Dry run: how a ServiceRequest (or each one of a transaction Bundle) would be routed, with no side effects"),
                    ("routing", "How a stored referral was routed: the candidates per need, why each was excluded or chosen"),
                    ("unmatched", "Operators: referrals with needs no service in the directory fits"),
                ] {
                    resource["operation"].as_array_mut().expect("an array").push(json!({
                        "name": name,
                        "definition": format!("https://signpost.example/fhir/OperationDefinition/ServiceRequest-{name}"),
                        "documentation": doc,
                    }));
                }
            }
            // The profile every write of this type is checked against.
            if let Some(p) = crate::fhir::profiles::Profiles::shared().route_profile(t.name) {
                resource["supportedProfile"] = json!([p.url]);
            }
            resource
        })
        .collect();
    let system: Vec<Value> =
        ROUTES.iter().filter(|r| r.2 == Action::Transaction).map(|r| json!({ "code": r.3 })).collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now_ms()),
        "publisher": "Signpost",
        "kind": "instance",
        "software": { "name": "Signpost", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Signpost FHIR R4 referral gateway", "url": base },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{ "text": "API key" }],
                "description": "Every request except this one sends Authorization: Bearer <API key>."
            },
            "resource": resources,
            "interaction": system,
            "operation": [
                { "name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate" },
                {
                    "name": "changes",
                    "definition": "https://signpost.example/fhir/OperationDefinition/changes",
                    "documentation": "The change feed: every change you may see after a cursor, in commit order, with the cursor to ask from next (gap-free; a page reads at most 500 changes, so follow next until it stays the same)"
                }
            ],
            "searchParam": [
                { "name": "_count", "type": "number" },
                { "name": "_sort", "type": "string" }
            ]
        }]
    })
}

pub async fn metadata(req: HttpRequest, state: actix_web::web::Data<super::AppState>) -> HttpResponse {
    if let Err(e) = super::request::check_format(&req) {
        return super::error_response(&req, e);
    }
    let body = capability_statement(&state.base);
    HttpResponse::Ok().content_type(FHIR_JSON).body(body.to_string())
}
