//! OperationOutcome building and the catalogue of Signpost issue codes.
//!
//! Every issue a client sees carries a FHIR `code` (the IssueType value set), an `expression`
//! where it concerns an element, a human `diagnostics` that never repeats submitted values,
//! and a stable Signpost code in `details.coding` (system [`ISSUE_SYSTEM`]). The catalogue
//! below is the single list of those codes; the README prints it.

use serde_json::{Value, json};

/// CodeSystem of Signpost's issue codes.
pub const ISSUE_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/issue";

/// Issue severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

macro_rules! catalogue {
    ($( $variant:ident => ($code:literal, $fhir:literal, $meaning:literal, $fix:literal), )*) => {
        /// A stable Signpost issue code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum IssueCode { $( $variant, )* }

        impl IssueCode {
            /// Every code, in catalogue order.
            pub const ALL: &'static [IssueCode] = &[ $( IssueCode::$variant, )* ];

            /// The code as it appears in `details.coding.code`.
            pub fn code(self) -> &'static str { match self { $( IssueCode::$variant => $code, )* } }
            /// The FHIR IssueType code used with it.
            pub fn fhir_code(self) -> &'static str { match self { $( IssueCode::$variant => $fhir, )* } }
            /// What it means.
            pub fn meaning(self) -> &'static str { match self { $( IssueCode::$variant => $meaning, )* } }
            /// How a sender fixes it.
            pub fn fix(self) -> &'static str { match self { $( IssueCode::$variant => $fix, )* } }
        }
    };
}

catalogue! {
    JsonMalformed => ("json-malformed", "structure", "The body is not well-formed JSON (or not UTF-8).", "Send one JSON object encoded as UTF-8."),
    JsonDuplicateKey => ("json-duplicate-key", "structure", "An object repeats a property name.", "Give each property once."),
    JsonTooDeep => ("json-too-deep", "too-costly", "The JSON nests deeper than the limit (32).", "Flatten the resource; real referrals nest far less."),
    StringTooLong => ("string-too-long", "too-costly", "A string is longer than the limit (64 KiB).", "Shorten the text or attach it elsewhere."),
    BodyTooLarge => ("body-too-large", "too-costly", "The body is larger than the limit (1 MiB).", "Send smaller messages; split large Bundles."),
    TooManyEntries => ("too-many-entries", "too-costly", "The Bundle has more entries than the limit (100).", "Split the Bundle."),
    NotAResource => ("not-a-resource", "structure", "The body is not a FHIR resource (no resourceType, or the wrong one for this URL).", "Send a JSON object whose resourceType matches the URL."),
    Structure => ("structure", "structure", "The resource breaks the FHIR R4 structure (JSON Schema): unknown element, wrong type, bad format or a missing required element.", "Correct the element named in expression."),
    UnknownElement => ("unknown-element", "structure", "The resource has an element R4 does not define here.", "Remove it, or carry the data in an extension."),
    Cardinality => ("cardinality", "structure", "An element occurs fewer times than its minimum or more than its maximum.", "Add the missing element, or remove the surplus repetitions."),
    WrongType => ("wrong-type", "structure", "An element has the wrong JSON form: a number for a string, an array for a single value, or the reverse.", "Send the JSON type the element's FHIR type requires."),
    EmptyElement => ("empty-element", "invalid", "An element is empty: an empty string, object or array, or a null.", "Leave the element out instead of sending it empty."),
    TextContent => ("text-content", "invalid", "A text value is only whitespace, a string starts or ends with whitespace, a value holds control characters or base64 holds whitespace, or markdown holds an HTML tag (warnings, as the HL7 Java validator gives them).", "Trim the text, drop the control characters, write markdown instead of HTML."),
    InvalidValue => ("invalid-value", "value", "A primitive value does not have its FHIR lexical form (date, code, id, uri, ...).", "Format the value as the FHIR datatype requires."),
    CodeNotInValueSet => ("code-not-in-value-set", "code-invalid", "A code is not in the value set bound to the element (required: error; extensible: warning).", "Use a code from the bound value set."),
    CodeNotChecked => ("code-not-checked", "informational", "A code is bound to a value set Signpost does not bundle (MIME types, external code systems such as SNOMED CT): it was not checked (information, not an error).", "Nothing to fix; check the code against the code system yourself if it matters."),
    ReferenceType => ("reference-type", "structure", "A reference points to a resource type the element does not allow.", "Refer to one of the allowed resource types."),
    FixedValue => ("fixed-value", "value", "A value differs from the fixed value or pattern the definition requires.", "Send the required value."),
    Invariant => ("invariant", "invariant", "A constraint of the definition (FHIRPath invariant) fails.", "Change the resource so the named constraint holds."),
    NhsNumberMissing => ("nhs-number-missing", "business-rule", "The referral's patient has no NHS number (identifier system https://fhir.nhs.uk/Id/nhs-number).", "Add the patient's NHS number to Patient.identifier (or ServiceRequest.subject.identifier)."),
    NhsNumberInvalid => ("nhs-number-invalid", "business-rule", "The NHS number is not 10 digits or fails the Modulus 11 check.", "Send the 10-digit NHS number without spaces, as recorded on the Spine."),
    ConsentMissing => ("consent-missing", "business-rule", "No Consent to share with the voluntary sector covers the referral's patient.", "Record the patient's consent as a Consent (category share-with-vcs, status active) and send it with the referral or before it."),
    ConsentNotActive => ("consent-not-active", "business-rule", "The patient's Consent to share is not active, denies sharing or is outside its period.", "Send a current, active Consent that permits sharing."),
    ReasonMissing => ("reason-missing", "business-rule", "The referral gives no reason (reasonCode or reasonReference).", "Add at least one reason for the referral."),
    ContactRouteMissing => ("contact-route-missing", "business-rule", "The patient has no current phone number, email or postal address (or the Patient is not available).", "Add a way for the charity to contact the patient."),
    ContactPreferenceUnmet => ("contact-preference-unmet", "business-rule", "The patient's stated contact preference has no matching contact detail.", "Add the contact detail the patient prefers, or correct the preference."),
    ProfileUnknown => ("profile-unknown", "not-supported", "A profile named in meta.profile or $validate is not one Signpost bundles (a warning in meta.profile: not checked), or is for another resource type.", "Use a profile listed in fhir-profiles/signpost/, or leave it out."),
    NotInSlice => ("not-in-slice", "structure", "An element matches none of the slices of a closed slicing in the profile.", "Send only the kinds of element the profile's slices describe."),
    UnknownExtension => ("unknown-extension", "structure", "An extension's definition is not one Signpost holds (R4 core, Signpost's, or one loaded with --ig). On referrals this is a warning, for extensions are safe to ignore, but an unknown modifierExtension is refused; signpost validate --base-only refuses any, as the HL7 Java validator does, except example.org and other example domains.", "Nothing to do for a plain extension; check with --ig and the extension's definition if it matters. Send no modifierExtension Signpost cannot understand."),
    ExtensionContext => ("extension-context", "structure", "A known extension is used on an element its definition does not allow (its context), or as a modifierExtension when it is a regular extension (or the reverse).", "Put the extension on the element its definition names, in extension or modifierExtension as its definition says, or use another extension."),
    DefinitionMismatch => ("definition-mismatch", "business-rule", "The resource does not match the definition it names (a QuestionnaireResponse item not in its Questionnaire, a measureScore for a cohort Measure).", "Make the resource follow its Questionnaire or Measure."),
    BundleReference => ("bundle-reference", "not-found", "A urn:uuid reference names no entry of the Bundle; a relative reference is not Type/id (or, in a transaction or batch, a Type?search), or sits in an entry without a fullUrl (outside transactions and batches); or, in a document or message Bundle, a reference matches several entries or names a version no entry has.", "Give each entry the fullUrl its references use, a distinct type and id; write relative references as Type/id; refer to versions that are in the Bundle."),
    BundleFullUrl => ("bundle-full-url", "invalid", "A Bundle entry's fullUrl is missing (outside transactions and batches), not an absolute URL, or a RESTful URL that does not end with its resource's type and id.", "Give each entry the absolute URL of its resource ([base]/Type/id, with the resource's id) or a urn:uuid."),
    UnsupportedType => ("unsupported-type", "not-supported", "Signpost does not store this resource type.", "See /fhir/metadata for the supported types."),
    IdMismatch => ("id-mismatch", "invariant", "The resource id is missing or differs from the id in the URL.", "Put the URL's id in the body's id."),
    NeedUnmatched => ("need-unmatched", "business-rule", "No service in the directory fits one of the referral's needs (condition, area, age, capacity, contact or language): the referral is kept, the need is listed for operators and explained in $routing (a warning).", "Nothing to resend; an operator or the referrer finds the patient another service, or the directory gains one."),
    SandboxData => ("sandbox-data", "security", "The resource is tagged as sandbox data (meta.tag https://signpost.example/fhir/CodeSystem/sandbox), which a production deployment never stores.", "Remove the sandbox tag: sandbox data belongs in a sandbox."),
    EndpointAddress => ("endpoint-address", "security", "A webhook Endpoint's address is not one Signpost sends to: https on port 443 to a public address, with no user name or password.", "Use the public https URL of your webhook receiver."),
    UnknownPerformer => ("unknown-performer", "business-rule", "The performer or owner is not a service or organisation in the directory.", "Refer to a HealthcareService or Organization listed in the directory."),
    InactivePerformer => ("inactive-performer", "business-rule", "The performer or owner is in the directory but not active.", "Choose another service; this one is not taking referrals."),
    FocusRequired => ("focus-required", "business-rule", "A Task sent to Signpost must have focus = a ServiceRequest and an owner.", "Set Task.focus to the ServiceRequest and Task.owner to the charity Organization."),
    UnknownReference => ("unknown-reference", "not-found", "A reference points to a resource that does not exist or that you cannot see.", "Create the target first, or send both in one transaction Bundle."),
    IllegalTransition => ("illegal-transition", "business-rule", "The Task cannot move to that status from its current status, for your role.", "Use one of the moves named in diagnostics."),
    ReasonRequired => ("reason-required", "required", "This status change needs a Task.statusReason.", "Add a statusReason coded from https://signpost.example/fhir/CodeSystem/rejection-reason."),
    OutputRequired => ("output-required", "required", "Completing a Task needs an output recording the outcome.", "Add Task.output with a valueCodeableConcept coded from https://signpost.example/fhir/CodeSystem/support-outcome."),
    MessageHeaderMissing => ("message-header-missing", "required", "A message needs the X-Request-Id and X-Correlation-Id headers (BaRS).", "Send both headers, each a UUID; keep X-Correlation-Id for the whole conversation."),
    BadMessage => ("bad-message", "invalid", "The message Bundle is not one Signpost takes.", "Send a Bundle of type message with the MessageHeader first (event servicerequest-request, reason new, update or delete) focused on the ServiceRequest entry."),
    DuplicateMessage => ("duplicate", "duplicate", "A message with this X-Request-Id was processed before (BaRS REC_CONFLICT).", "Do not resend: the first message was delivered."),
    NotFinished => ("not-finished", "business-rule", "The Task is still open: it has no outcome summary yet.", "Fetch the summary once the Task is completed, failed, rejected or cancelled (the webhook says when)."),
    UnknownLifecycleCode => ("unknown-lifecycle-code", "code-invalid", "A businessStatus, statusReason or output code is not in Signpost's lifecycle CodeSystems.", "Use a code of referral-outcome, rejection-reason or support-outcome (fhir-profiles/signpost/)."),
    FieldNotChangeable => ("field-not-changeable", "business-rule", "You changed an element your role may not change.", "Change only the elements your role may edit (a charity: status, businessStatus, statusReason, output, note, executionPeriod, lastModified)."),
    VersionConflict => ("version-conflict", "conflict", "The resource changed since the version named in If-Match.", "Read the resource again and retry with its current ETag."),
    Conflict => ("conflict", "conflict", "A concurrent request created or changed the same resource first.", "Read the resource again and retry."),
    DuplicateRequest => ("duplicate-request", "duplicate", "The request id was used before with a different body.", "Use a new X-Request-Id for a new request."),
    RequestInFlight => ("request-in-flight", "transient", "A request with this id is still being processed.", "Retry later with the same X-Request-Id."),
    ConditionalMultiple => ("conditional-multiple-matches", "multiple-matches", "If-None-Exist matched more than one resource.", "Make the identifier criteria specific."),
    BadConditional => ("bad-conditional", "invalid", "If-None-Exist must be a search on identifier (system|value).", "Send If-None-Exist: identifier=system|value."),
    UnknownSearchParam => ("unknown-search-parameter", "not-supported", "The search uses a parameter Signpost does not support for this type.", "See /fhir/metadata for the supported parameters."),
    BadSearchValue => ("bad-search-value", "invalid", "A search parameter's value cannot be understood.", "Correct the value (dates as FHIR instants, _count as a number)."),
    BadPatch => ("bad-patch", "invalid", "The JSON Patch could not be applied.", "Send a valid JSON Patch (RFC 6902) against the current version."),
    BadTransaction => ("bad-transaction", "invalid", "The Bundle is not a transaction Signpost can process.", "Send Bundle.type = transaction with POST or PUT entries, each with fullUrl and request."),
    Unauthenticated => ("unauthenticated", "login", "No valid API key was presented.", "Send Authorization: Bearer <your key>."),
    Forbidden => ("forbidden", "forbidden", "Your role may not do this.", "Use a client registered with the role this needs."),
    NotFound => ("not-found", "not-found", "No such resource, or not one you may see.", "Check the id and that it belongs to your organisation."),
    UnknownPath => ("unknown-path", "not-found", "No such endpoint.", "See /fhir/metadata."),
    MethodNotAllowed => ("method-not-allowed", "not-supported", "This endpoint does not support the HTTP method.", "See /fhir/metadata for the interactions."),
    UnsupportedMediaType => ("unsupported-media-type", "not-supported", "The Content-Type is not one Signpost accepts here.", "Send application/fhir+json (application/json-patch+json for PATCH)."),
    NotAcceptable => ("not-acceptable", "not-supported", "The requested format is not supported.", "Ask for application/fhir+json (JSON only)."),
    BadRequest => ("bad-request", "invalid", "The HTTP request is malformed: a header, the URL or the body framing cannot be read.", "Send a well-formed HTTP/1.1 request."),
    HeaderTooLarge => ("header-too-large", "too-costly", "The request's headers or URL are longer than Signpost accepts.", "Send shorter headers and URLs; search with POST-free short queries."),
    BodyTimeout => ("body-timeout", "timeout", "The request body was not received in time.", "Send the whole body promptly; retry with the same X-Request-Id."),
    Overloaded => ("overloaded", "throttled", "Signpost is busy with other writes.", "Retry after the number of seconds in Retry-After, with the same X-Request-Id."),
    TooManyIssues => ("too-many-issues", "too-costly", "The OperationOutcome was cut short: more issues were found than it lists.", "Fix the issues listed, then validate again to see the rest."),
    Unavailable => ("unavailable", "transient", "Signpost cannot reach its database right now.", "Retry later with the same X-Request-Id."),
    Internal => ("internal", "exception", "Signpost failed unexpectedly; nothing was changed.", "Retry later; report the correlation id if it persists."),
    Accepted => ("accepted", "informational", "The request succeeded.", "Nothing to fix."),
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// FHIRPath of the element, e.g. `ServiceRequest.subject` or `Bundle.entry[2].resource.status`.
    pub expression: Option<String>,
    /// Human explanation. Must never contain submitted values.
    pub diagnostics: String,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self { severity: Severity::Error, code, expression: None, diagnostics: diagnostics.into() }
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, code, expression: None, diagnostics: diagnostics.into() }
    }

    pub fn information(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self { severity: Severity::Information, code, expression: None, diagnostics: diagnostics.into() }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    /// Prefix the expression (for resources inside a Bundle).
    pub fn under(mut self, prefix: &str) -> Self {
        self.expression = Some(match self.expression.take() {
            Some(e) => match e.split_once('.') {
                Some((_, rest)) => format!("{prefix}.{rest}"),
                None => prefix.to_string(),
            },
            None => prefix.to_string(),
        });
        self
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.as_str(),
            "code": self.code.fhir_code(),
            "details": {
                "coding": [{ "system": ISSUE_SYSTEM, "code": self.code.code() }],
                "text": self.code.meaning(),
            },
            "diagnostics": self.diagnostics,
        });
        if let Some(e) = &self.expression {
            issue["expression"] = json!([e]);
        }
        issue
    }
}

/// An OperationOutcome holding `issues`.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

/// At most `max` issues, errors first, then one issue saying how many more were found (the
/// rest are left out so that one request cannot produce an unbounded response).
pub fn capped(mut issues: Vec<Issue>, max: usize) -> Vec<Issue> {
    if issues.len() <= max {
        return issues;
    }
    let more = issues.len() - max;
    // Stable: errors keep their order ahead of warnings and information.
    // A validator's own "stopped collecting" note is kept first, so the count it gives survives.
    issues.sort_by_key(|i| {
        let rank = match i.severity {
            Severity::Fatal | Severity::Error => 1,
            Severity::Warning => 2,
            Severity::Information => 3,
        };
        if i.code == IssueCode::TooManyIssues { 0 } else { rank }
    });
    issues.truncate(max);
    issues.push(Issue {
        severity: if has_errors(&issues) { Severity::Error } else { Severity::Warning },
        code: IssueCode::TooManyIssues,
        expression: None,
        diagnostics: format!("{more} more issues are not listed"),
    });
    issues
}

/// Whether any issue is an error or fatal.
pub fn has_errors(issues: &[Issue]) -> bool {
    issues.iter().any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
}

/// The catalogue as a Markdown table (used by the README and `signpost issue-codes`).
pub fn catalogue_markdown() -> String {
    let mut out = String::from("| code | FHIR issue type | meaning | fix |\n|---|---|---|---|\n");
    for c in IssueCode::ALL {
        out.push_str(&format!("| `{}` | `{}` | {} | {} |\n", c.code(), c.fhir_code(), c.meaning(), c.fix()));
    }
    out
}

/// The catalogue as a FHIR CodeSystem (kept in `fhir-profiles/CodeSystem-signpost-issue.json`).
pub fn catalogue_codesystem() -> Value {
    json!({
        "resourceType": "CodeSystem",
        "id": "signpost-issue",
        "url": ISSUE_SYSTEM,
        "name": "SignpostIssue",
        "title": "Signpost issue codes",
        "status": "active",
        "publisher": "Signpost",
        "description": "Stable codes for every issue Signpost reports in an OperationOutcome, with how to fix each.",
        "caseSensitive": true,
        "content": "complete",
        "count": IssueCode::ALL.len(),
        "concept": IssueCode::ALL.iter().map(|c| json!({
            "code": c.code(),
            "display": c.meaning(),
            "definition": format!("{} Fix: {}", c.meaning(), c.fix()),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_codes_are_unique_and_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for c in IssueCode::ALL {
            assert!(seen.insert(c.code()), "duplicate {}", c.code());
            assert!(c.code().chars().all(|ch| ch.is_ascii_lowercase() || ch == '-'));
        }
    }

    #[test]
    fn issue_under_bundle_entry_rewrites_the_root() {
        let i = Issue::error(IssueCode::Structure, "x").at("ServiceRequest.subject").under("Bundle.entry[2].resource");
        assert_eq!(i.expression.as_deref(), Some("Bundle.entry[2].resource.subject"));
        let j = operation_outcome(&[i]);
        assert_eq!(j["issue"][0]["details"]["coding"][0]["system"], ISSUE_SYSTEM);
        assert_eq!(j["issue"][0]["expression"][0], "Bundle.entry[2].resource.subject");
    }

    #[test]
    fn long_outcomes_are_capped_errors_first() {
        let mut issues: Vec<Issue> = (0..5).map(|_| Issue::warning(IssueCode::CodeNotInValueSet, "w")).collect();
        issues.extend((0..300).map(|_| Issue::error(IssueCode::UnknownElement, "e")));
        let capped = capped(issues, 100);
        assert_eq!(capped.len(), 101);
        assert!(capped[..100].iter().all(|i| i.severity == Severity::Error));
        assert_eq!(capped[100].code, IssueCode::TooManyIssues);
        assert!(capped[100].diagnostics.starts_with("205 more"));
        let few = vec![Issue::warning(IssueCode::CodeNotInValueSet, "w")];
        assert_eq!(super::capped(few.clone(), 100), few);
    }

    #[test]
    fn readme_lists_every_issue_code() {
        let readme = include_str!("../../README.md");
        assert!(readme.contains(&catalogue_markdown()), "regenerate the README table with `signpost issue-codes`");
    }

    #[test]
    fn bundled_codesystem_matches_the_catalogue() {
        let text = include_str!("../../fhir-profiles/CodeSystem-signpost-issue.json");
        let file: Value = serde_json::from_str(text).unwrap();
        assert_eq!(file, catalogue_codesystem(), "regenerate with `signpost issue-codes --fhir`");
        let mut issues = Vec::new();
        crate::fhir::schema::StructureValidator::shared().validate(&file, "CodeSystem", &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
    }
}
