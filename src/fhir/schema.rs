//! Structural validation against the official FHIR R4 JSON Schema (`schemas/fhir.schema.json`).
//!
//! The schema is embedded in the binary. Rather than the schema's root `oneOf` over 147
//! resource types (slow, and its errors name no element), each resource is checked against
//! its own `#/definitions/{type}`; nested resources (`contained`, `Bundle.entry.resource`,
//! `Parameters.parameter.resource`) are checked the same way by walking the instance, so every
//! issue carries a FHIRPath `expression` such as `Bundle.entry[2].resource.subject`.
//! Validators are compiled once per type and shared.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, PatternOptions, Validator};
use serde_json::{Value, json};

use super::outcome::{Issue, IssueCode};

static SCHEMA_TEXT: &str = include_str!("../../schemas/fhir.schema.json");

/// Compiled per-type validators over the embedded schema.
pub struct StructureValidator {
    definitions: Value,
    resource_types: Vec<String>,
    compiled: RwLock<HashMap<String, Arc<Validator>>>,
}

impl StructureValidator {
    /// The process-wide instance (the schema is parsed once).
    pub fn shared() -> &'static StructureValidator {
        static SHARED: OnceLock<StructureValidator> = OnceLock::new();
        SHARED.get_or_init(|| StructureValidator::new().expect("embedded FHIR schema is valid"))
    }

    fn new() -> Result<Self, String> {
        let mut schema: Value = serde_json::from_str(SCHEMA_TEXT).map_err(|e| e.to_string())?;
        let resource_types = schema["discriminator"]["mapping"]
            .as_object()
            .ok_or("schema has no resource type mapping")?
            .keys()
            .cloned()
            .collect();
        let mut definitions = schema["definitions"].take();
        // Nested resources are validated by type from `validate`, not through a 147-way oneOf.
        definitions["ResourceList"] = json!({
            "type": "object",
            "required": ["resourceType"],
            "properties": { "resourceType": { "type": "string" } }
        });
        Ok(Self { definitions, resource_types, compiled: RwLock::new(HashMap::new()) })
    }

    /// Every resource type R4 defines.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    /// Whether R4 defines this resource type.
    pub fn is_resource_type(&self, ty: &str) -> bool {
        self.resource_types.iter().any(|t| t == ty)
    }

    /// Compile the validators for `types` now (start-up), instead of on first use.
    pub fn warm(&self, types: &[&str]) -> Result<(), String> {
        for ty in types {
            self.validator(ty)?;
        }
        Ok(())
    }

    fn validator(&self, ty: &str) -> Result<Arc<Validator>, String> {
        if let Some(v) = self.compiled.read().map_err(|e| e.to_string())?.get(ty) {
            return Ok(v.clone());
        }
        let root = json!({ "$ref": format!("#/definitions/{ty}"), "definitions": self.definitions });
        let validator = jsonschema::options()
            .with_draft(Draft::Draft6)
            .with_pattern_options(PatternOptions::regex())
            .should_validate_formats(false)
            .build(&root)
            .map_err(|e| format!("cannot compile schema for {ty}: {e}"))?;
        let validator = Arc::new(validator);
        self.compiled.write().map_err(|e| e.to_string())?.insert(ty.to_string(), validator.clone());
        Ok(validator)
    }

    /// Validate one resource (and the resources nested in it). `path` is the FHIRPath of the
    /// resource itself: its type for a top-level resource, or e.g. `Bundle.entry[0].resource`.
    pub fn validate(&self, resource: &Value, path: &str, issues: &mut Vec<Issue>) {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            issues.push(Issue::error(IssueCode::NotAResource, "the object has no resourceType").at(path));
            return;
        };
        if !self.is_resource_type(ty) {
            issues.push(Issue::error(IssueCode::NotAResource, "resourceType is not an R4 resource type").at(path));
            return;
        }
        let validator = match self.validator(ty) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(resource_type = ty, error = %e, "schema compilation failed");
                issues.push(Issue::error(IssueCode::Internal, "structure check unavailable").at(path));
                return;
            }
        };
        for error in validator.iter_errors(resource) {
            let mut expr = String::from(path);
            for seg in error.instance_path().iter() {
                match seg {
                    LocationSegment::Property(p) => {
                        expr.push('.');
                        expr.push_str(&p);
                    }
                    LocationSegment::Index(i) => {
                        expr.push('[');
                        expr.push_str(&i.to_string());
                        expr.push(']');
                    }
                }
            }
            push_issue(error.kind(), expr, issues);
        }
        self.validate_nested(resource, ty, path, issues);
    }

    fn validate_nested(&self, resource: &Value, ty: &str, path: &str, issues: &mut Vec<Issue>) {
        if let Some(contained) = resource.get("contained").and_then(Value::as_array) {
            for (i, r) in contained.iter().enumerate() {
                if r.is_object() {
                    self.validate(r, &format!("{path}.contained[{i}]"), issues);
                }
            }
        }
        match ty {
            "Bundle" => {
                if let Some(entries) = resource.get("entry").and_then(Value::as_array) {
                    for (i, e) in entries.iter().enumerate() {
                        if let Some(r) = e.get("resource").filter(|r| r.is_object()) {
                            self.validate(r, &format!("{path}.entry[{i}].resource"), issues);
                        }
                        if let Some(r) = e.pointer("/response/outcome").filter(|r| r.is_object()) {
                            self.validate(r, &format!("{path}.entry[{i}].response.outcome"), issues);
                        }
                    }
                }
            }
            "Parameters" => {
                if let Some(params) = resource.get("parameter").and_then(Value::as_array) {
                    self.validate_parameters(params, &format!("{path}.parameter"), issues);
                }
            }
            _ => {}
        }
    }

    fn validate_parameters(&self, params: &[Value], path: &str, issues: &mut Vec<Issue>) {
        for (i, p) in params.iter().enumerate() {
            if let Some(r) = p.get("resource").filter(|r| r.is_object()) {
                self.validate(r, &format!("{path}[{i}].resource"), issues);
            }
            if let Some(parts) = p.get("part").and_then(Value::as_array) {
                self.validate_parameters(parts, &format!("{path}[{i}].part"), issues);
            }
        }
    }
}

fn push_issue(kind: &ValidationErrorKind, expr: String, issues: &mut Vec<Issue>) {
    let issue = match kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            // Never the names themselves: a property name can carry anything, patient data included.
            let n = unexpected.len();
            push_unique(
                issues,
                Issue::error(IssueCode::Structure, format!("{n} unknown element(s) here (names are not repeated)"))
                    .at(expr),
            );
            return;
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            Issue::error(IssueCode::Structure, format!("missing required element '{name}'"))
                .at(format!("{expr}.{name}"))
        }
        ValidationErrorKind::Type { kind } => {
            Issue::error(IssueCode::Structure, format!("wrong JSON type: expected {}", type_name(kind))).at(expr)
        }
        ValidationErrorKind::Pattern { .. } => {
            Issue::error(IssueCode::Structure, "value does not have the format FHIR requires for this element").at(expr)
        }
        ValidationErrorKind::Enum { .. } => {
            Issue::error(IssueCode::Structure, "value is not one of the codes allowed here").at(expr)
        }
        ValidationErrorKind::Constant { .. } => {
            Issue::error(IssueCode::Structure, "value differs from the fixed value required here").at(expr)
        }
        ValidationErrorKind::MinItems { .. } => Issue::error(IssueCode::Structure, "array must not be empty").at(expr),
        ValidationErrorKind::MinLength { .. } => {
            Issue::error(IssueCode::Structure, "string must not be empty").at(expr)
        }
        other => Issue::error(
            IssueCode::Structure,
            format!("does not match the FHIR R4 structure (rule '{}')", other.keyword()),
        )
        .at(expr),
    };
    push_unique(issues, issue);
}

fn push_unique(issues: &mut Vec<Issue>, issue: Issue) {
    if !issues.contains(&issue) {
        issues.push(issue);
    }
}

fn type_name(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => t.to_string(),
        jsonschema::error::TypeKind::Multiple(ts) => ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        let ty = v["resourceType"].as_str().unwrap_or("Resource").to_string();
        StructureValidator::shared().validate(&v, &ty, &mut issues);
        issues
    }

    #[test]
    fn corpus_servicerequest_is_structurally_valid() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/referrals/referral-servicerequest.json"
        ))
        .expect("corpus present beside the repo");
        let issues = check(serde_json::from_str(&text).unwrap());
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn reports_unknown_element_wrong_type_and_missing_subject_at_their_paths() {
        let issues = check(json!({
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "authoredOn": 20240314,
            "colour": "blue"
        }));
        let exprs: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert!(exprs.contains(&"ServiceRequest".to_string()), "the unknown element at its parent: {exprs:?}");
        assert!(!format!("{issues:?}").contains("colour"), "property names are never repeated");
        assert!(exprs.contains(&"ServiceRequest.authoredOn".to_string()), "{exprs:?}");
        assert!(exprs.contains(&"ServiceRequest.subject".to_string()), "{exprs:?}");
    }

    #[test]
    fn no_break_space_in_a_string_is_accepted() {
        let issues = check(json!({
            "resourceType": "Patient",
            "name": [{ "family": "O\u{a0}Brien" }]
        }));
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn nested_bundle_resources_are_checked_with_entry_paths() {
        let issues = check(json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                { "resource": { "resourceType": "Patient", "gender": 3 } }
            ]
        }));
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].expression.as_deref(), Some("Bundle.entry[0].resource.gender"));
    }
}
