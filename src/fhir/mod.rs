//! FHIR R4 knowledge: which resource types Signpost serves, their search parameters,
//! references, instants, the JSON limits, structural validation and OperationOutcomes.
//! Resources travel as `serde_json::Value`; typed views exist only for what Signpost acts on.

pub mod definitional;
pub mod definitions;
pub mod fhirpath;
pub mod json;
pub mod narrative;
pub mod outcome;
pub mod profiles;
pub mod questionnaire;
pub mod referral_rules;
pub mod schema;
pub mod search;
pub mod validator;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How strictly writes are validated (PRODUCT.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// Only the R4 JSON Schema structure check.
    Off,
    /// The full validator runs; its errors are logged and returned as warnings, not refused.
    Log,
    /// Every error refuses the write.
    #[default]
    Enforce,
}

/// Validate a resource as every write is validated (PRODUCT.md §3, layers 2–3): the R4
/// validator over the bundled definitions, which names every fault in one pass; then, when it
/// found no error, the official R4 JSON Schema as an independent cross-check. `path` is the
/// resource's FHIRPath root.
pub fn validate_resource(resource: &Value, path: &str, issues: &mut Vec<outcome::Issue>) {
    validate_with_mode(resource, path, ValidationMode::Enforce, issues);
}

/// [`validate_resource`] under a validation mode: `Log` turns the validator's errors into
/// warnings (the JSON Schema check still refuses), `Off` runs the JSON Schema check only.
pub fn validate_with_mode(resource: &Value, path: &str, mode: ValidationMode, issues: &mut Vec<outcome::Issue>) {
    validate_with_profiles(resource, path, mode, &[], issues);
}

/// [`validate_with_mode`], also against `extra` profiles (`$validate`'s `profile`). Besides
/// the base definitions, a resource is checked against the profiles it claims in
/// `meta.profile` and the one Signpost requires for its type ([`profiles`]).
pub fn validate_with_profiles(
    resource: &Value,
    path: &str,
    mode: ValidationMode,
    extra: &[&profiles::Profile],
    issues: &mut Vec<outcome::Issue>,
) {
    let start = issues.len();
    if mode != ValidationMode::Off {
        validator::validate_resource(resource, path, issues);
        profiles::Profiles::shared().check(resource, path, true, extra, issues);
    }
    if mode == ValidationMode::Log {
        accept_for_log(&mut issues[start..]);
    }
    if !outcome::has_errors(&issues[start..]) {
        schema::StructureValidator::shared().validate(resource, path, issues);
    }
}

/// Under `validation.mode = log`: errors become warnings, and are logged (codes only).
fn accept_for_log(issues: &mut [outcome::Issue]) {
    let mut downgraded = 0;
    for issue in issues.iter_mut() {
        if matches!(issue.severity, outcome::Severity::Error | outcome::Severity::Fatal) {
            issue.severity = outcome::Severity::Warning;
            downgraded += 1;
        }
    }
    if downgraded > 0 {
        let codes: Vec<&str> = issues.iter().map(|i| i.code.code()).collect();
        tracing::warn!(issues = downgraded, codes = ?codes, "validation errors accepted (validation.mode = log)");
    }
}

/// The referral business rules (PRODUCT.md §3, layer 4) for a submission, under a validation
/// mode: `Off` skips them, `Log` reports their errors as warnings. `records` finds the stored
/// Patient and Consents a referral points to.
pub fn check_referral_rules<R: referral_rules::Records>(
    resource: &Value,
    path: &str,
    mode: ValidationMode,
    records: &mut R,
    issues: &mut Vec<outcome::Issue>,
) -> Result<(), R::Error> {
    if mode == ValidationMode::Off {
        return Ok(());
    }
    let start = issues.len();
    issues.extend(referral_rules::check_submission(resource, path, records, Utc::now())?);
    if mode == ValidationMode::Log {
        accept_for_log(&mut issues[start..]);
    }
    Ok(())
}

/// The items of an array property (none when it is absent or not an array).
pub fn items<'v>(v: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// How a search parameter's values are read from a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// code, Coding, CodeableConcept or Identifier: indexed as `system|code` and `code`.
    Token,
    /// Reference: indexed as `Type/id` (a search by bare id asks for it under each type it may have).
    Reference,
}

/// A search parameter Signpost supports on a type.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    /// Top-level element(s) holding the value.
    pub elements: &'static [&'static str],
    /// For references: the only target type this parameter matches (e.g. `patient`).
    pub target: Option<&'static str>,
}

const fn token(name: &'static str, elements: &'static [&'static str]) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Token, elements, target: None }
}
const fn reference(name: &'static str, elements: &'static [&'static str]) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Reference, elements, target: None }
}
const fn reference_to(name: &'static str, elements: &'static [&'static str], target: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Reference, elements, target: Some(target) }
}

const IDENTIFIER: ParamSpec = token("identifier", &["identifier"]);

/// Who may write a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// Directory entries (charities and their services): every client reads them, operators write.
    Directory,
    /// Referral data: visible to the sender's Organization and to charities through their Tasks.
    Referral,
}

/// A resource type Signpost stores and serves.
#[derive(Debug, Clone, Copy)]
pub struct TypeSpec {
    pub name: &'static str,
    pub class: TypeClass,
    pub params: &'static [ParamSpec],
}

/// Every type Signpost serves under `/fhir`: the route table and the CapabilityStatement both
/// come from this list.
pub const TYPES: &[TypeSpec] = &[
    TypeSpec {
        name: "ServiceRequest",
        class: TypeClass::Referral,
        params: &[
            IDENTIFIER,
            token("status", &["status"]),
            reference("subject", &["subject"]),
            reference_to("patient", &["subject"], "Patient"),
            reference("requester", &["requester"]),
            reference("performer", &["performer"]),
            reference("based-on", &["basedOn"]),
        ],
    },
    TypeSpec {
        name: "Task",
        class: TypeClass::Referral,
        params: &[
            IDENTIFIER,
            token("status", &["status"]),
            token("business-status", &["businessStatus"]),
            reference("subject", &["for"]),
            reference_to("patient", &["for"], "Patient"),
            reference("requester", &["requester"]),
            reference("owner", &["owner"]),
            reference("based-on", &["basedOn"]),
            reference("focus", &["focus"]),
            token("performer", &["performerType"]),
        ],
    },
    TypeSpec { name: "Patient", class: TypeClass::Referral, params: &[IDENTIFIER] },
    TypeSpec {
        name: "Consent",
        class: TypeClass::Referral,
        params: &[IDENTIFIER, token("status", &["status"]), reference_to("patient", &["patient"], "Patient")],
    },
    TypeSpec {
        name: "Condition",
        class: TypeClass::Referral,
        params: &[IDENTIFIER, reference("subject", &["subject"]), reference_to("patient", &["subject"], "Patient")],
    },
    TypeSpec {
        name: "QuestionnaireResponse",
        class: TypeClass::Referral,
        params: &[
            IDENTIFIER,
            token("status", &["status"]),
            reference("subject", &["subject"]),
            reference_to("patient", &["subject"], "Patient"),
        ],
    },
    TypeSpec { name: "Practitioner", class: TypeClass::Referral, params: &[IDENTIFIER] },
    TypeSpec {
        name: "PractitionerRole",
        class: TypeClass::Referral,
        params: &[
            IDENTIFIER,
            reference("organization", &["organization"]),
            reference("practitioner", &["practitioner"]),
        ],
    },
    TypeSpec { name: "Organization", class: TypeClass::Directory, params: &[IDENTIFIER] },
    TypeSpec {
        name: "HealthcareService",
        class: TypeClass::Directory,
        params: &[
            IDENTIFIER,
            reference("organization", &["providedBy"]),
            reference("endpoint", &["endpoint"]),
            token("specialty", &["specialty"]),
            token("service-category", &["category"]),
            reference("coverage-area", &["coverageArea"]),
        ],
    },
    TypeSpec {
        name: "Location",
        class: TypeClass::Directory,
        params: &[IDENTIFIER, reference("organization", &["managingOrganization"])],
    },
    TypeSpec {
        name: "Endpoint",
        class: TypeClass::Directory,
        params: &[IDENTIFIER, token("status", &["status"]), reference("organization", &["managingOrganization"])],
    },
];

/// The spec of a served type.
pub fn type_spec(name: &str) -> Option<&'static TypeSpec> {
    TYPES.iter().find(|t| t.name == name)
}

/// A reference split into type and id (`Organization/abc`), from a relative reference or an
/// absolute URL ending in `Type/id`. `urn:` and contained (`#`) references give `None`.
pub fn parse_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with("urn:") || reference.starts_with('#') {
        return None;
    }
    let trimmed = reference.trim_end_matches('/');
    let trimmed = match trimmed.find("/_history/") {
        Some(i) => &trimmed[..i],
        None => trimmed,
    };
    let mut parts = trimmed.rsplitn(3, '/');
    let id = parts.next()?;
    let ty = parts.next()?;
    if ty.is_empty() || !ty.chars().next()?.is_ascii_uppercase() || !is_valid_id(id) {
        return None;
    }
    Some((ty, id))
}

/// The `Type/id` that `value.reference` points to, if it is a plain reference.
pub fn reference_of(value: &Value) -> Option<(&str, &str)> {
    value.get("reference").and_then(Value::as_str).and_then(parse_reference)
}

/// FHIR id syntax: 1–64 of `[A-Za-z0-9\-\.]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// An epoch-millisecond time as a FHIR instant (`2026-11-24T09:30:00.000Z`).
pub fn instant(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An epoch-millisecond time as an HTTP date (`Last-Modified`).
pub fn http_date(ms: i64) -> String {
    let t: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Set `meta.versionId` and `meta.lastUpdated`, keeping the client's other meta elements.
pub fn stamp_meta(resource: &mut Value, version: i64, last_updated_ms: i64) {
    let Some(obj) = resource.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(instant(last_updated_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_relative_and_absolute_forms() {
        assert_eq!(parse_reference("Organization/abc"), Some(("Organization", "abc")));
        assert_eq!(parse_reference("https://x.example/fhir/Task/t1/_history/2"), Some(("Task", "t1")));
        assert_eq!(parse_reference("urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01"), None);
        assert_eq!(parse_reference("#contained"), None);
        assert_eq!(parse_reference("abc"), None);
    }

    #[test]
    fn instants_and_http_dates() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
