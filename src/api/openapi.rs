//! `GET /openapi.json`: an OpenAPI 3.1 description of the HTTP API, generated from the same
//! route table that registers the routes (and the served types), so it cannot drift from what
//! the server does. Integrators generate clients from it; fuzzers drive it.

use actix_web::{HttpResponse, web};
use serde_json::{Map, Value, json};

use super::{AppState, ROUTES};
use crate::fhir::TYPES;

const FHIR_JSON: &str = "application/fhir+json";

fn header(name: &str, description: &str, required: bool) -> Value {
    json!({ "name": name, "in": "header", "required": required, "description": description, "schema": { "type": "string" } })
}

fn fhir_body(schema: &str) -> Value {
    json!({ "content": { FHIR_JSON: { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

/// The one resource type an operation is defined on, if it is not every type.
fn only_on(code: &str) -> Option<&'static str> {
    match code {
        "$route" | "$unmatched" | "$routing" | "$timeline" => Some("ServiceRequest"),
        "$delivery" | "$alerts" | "$secret" | "$events" | "$status" | "$resend" => Some("Endpoint"),
        "$outcome-summary" => Some("Task"),
        _ => None,
    }
}

/// The OpenAPI document for a server whose FHIR base is `base` (`.../fhir`).
pub fn document(base: &str) -> Value {
    let root = base.strip_suffix("/fhir").unwrap_or(base);
    let types: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
    let mut paths = Map::new();
    for (path, method, action, code) in ROUTES {
        let full = format!("/fhir{path}");
        let mut parameters = Vec::new();
        if path.contains("{type}") {
            let only: Vec<&str> = match only_on(code) {
                Some(t) => vec![t],
                None => types.clone(),
            };
            parameters.push(json!({ "name": "type", "in": "path", "required": true,
                "description": "A resource type Signpost serves (this operation's own, where it has one)",
                "schema": { "type": "string", "enum": only } }));
        }
        if path.contains("{id}") {
            parameters.push(json!({ "name": "id", "in": "path", "required": true,
                "schema": { "type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$" } }));
        }
        if path.contains("{vid}") {
            parameters.push(json!({ "name": "vid", "in": "path", "required": true, "schema": { "type": "string" } }));
        }
        let writes = matches!(*method, "POST" | "PUT" | "PATCH");
        let is_message = *code == "$process-message";
        parameters.push(header(
            "X-Correlation-Id",
            "Echoed on the response and stamped on what the request causes (required on $process-message)",
            is_message,
        ));
        if writes {
            parameters.push(header(
                "X-Request-Id",
                "Idempotency key: a replay returns the first answer (a repeated message is 409 duplicate)",
                is_message,
            ));
            parameters.push(header("Prefer", "return=minimal | representation | OperationOutcome", false));
        }
        if matches!(*method, "PUT" | "PATCH") {
            parameters.push(header("If-Match", "The version read, W/\"n\": a stale one gets 412", false));
        }
        if *code == "create" {
            parameters.push(header("If-None-Exist", "identifier=system|value: return the existing resource", false));
        }
        let polled = matches!(*code, "search-type" | "$changes");
        if polled {
            parameters.push(header(
                "If-None-Match",
                "The ETag of the last answer: 304 Not Modified, without a body, while nothing has changed",
                false,
            ));
        }
        let mut operation = json!({
            "operationId": format!("{action:?}{}", if path.starts_with("/{type}") { "ByType" } else { "" }),
            "summary": code,
            "parameters": parameters,
            "responses": {
                "200": { "description": "OK", "content": { FHIR_JSON: { "schema": { "$ref": "#/components/schemas/Resource" } } } },
                "default": { "description": "Refused: an OperationOutcome with at least one error", "content": { FHIR_JSON: { "schema": { "$ref": "#/components/schemas/OperationOutcome" } } } }
            }
        });
        if polled {
            operation["responses"]["304"] =
                json!({ "description": "Not Modified: the answer is the one whose ETag was sent" });
        }
        if writes {
            operation["responses"]["201"] = json!({ "description": "Created", "content": { FHIR_JSON: { "schema": { "$ref": "#/components/schemas/Resource" } } } });
            operation["requestBody"] = if *method == "PATCH" {
                json!({ "required": true, "content": { "application/json-patch+json": { "schema": { "type": "array", "items": { "type": "object" } } } } })
            } else {
                let mut b = fhir_body("Resource");
                b["required"] = json!(true);
                b
            };
        }
        let entry = paths.entry(full).or_insert_with(|| json!({}));
        entry[method.to_lowercase()] = operation;
    }
    for (path, summary, auth) in [
        ("/fhir/metadata", "The CapabilityStatement", false),
        ("/livez", "The process is up", false),
        ("/readyz", "The database answers", false),
        ("/metrics", "Prometheus metrics", false),
        ("/openapi.json", "This document", false),
    ] {
        let mut op = json!({ "operationId": summary.replace(' ', ""), "summary": summary,
            "responses": { "200": { "description": "OK" } } });
        if !auth {
            op["security"] = json!([]);
        }
        paths.insert(path.to_string(), json!({ "get": op }));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Signpost — FHIR R4 referral gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Referrals from GP and hospital systems to health charities: FHIR R4 REST, transaction Bundles and BaRS-style messages; Tasks for the charities; webhooks and a change feed. Every error is a FHIR OperationOutcome."
        },
        "servers": [{ "url": root }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "An API key of a referrer, charity or operator client" } },
            "schemas": {
                "Resource": { "type": "object", "required": ["resourceType"], "properties": { "resourceType": { "type": "string" } } },
                "OperationOutcome": {
                    "type": "object", "required": ["resourceType", "issue"],
                    "properties": {
                        "resourceType": { "const": "OperationOutcome" },
                        "issue": { "type": "array", "minItems": 1, "items": { "type": "object", "required": ["severity", "code"],
                            "properties": { "severity": { "type": "string" }, "code": { "type": "string" }, "diagnostics": { "type": "string" },
                                "expression": { "type": "array", "items": { "type": "string" } } } } }
                    }
                }
            }
        }
    })
}

/// The handler.
pub async fn serve(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").json(document(&state.base))
}
