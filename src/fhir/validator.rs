//! The FHIR R4 validator: one walk of the instance against the base definitions
//! ([`Definitions`]), reporting every issue with the element's FHIRPath in the syntax of the
//! HL7 Java reference validator (`Bundle.entry[2].resource.subject`).
//!
//! Checked now: JSON representation (arrays exactly where max > 1, no empty arrays, objects or
//! strings, nulls only in primitive arrays with a `_element` twin, choice types, `resourceType`),
//! unknown elements, cardinality, JSON types of primitives and their lexical forms (FHIR's
//! regexes and real calendar dates), required bindings (error) and extensible bindings
//! (warning) against the bundled expansions (external code systems are not checked), reference
//! target types, fixed and pattern values, nested and contained resources, every FHIRPath
//! invariant of the definitions that the engine ([`super::fhirpath`]) can evaluate (compiled
//! once with the index), and natively `ext-1`, `dom-3` and the narrative rules `txt-1`/`txt-2`.
//! Not yet: slicing, profiles beyond the base definitions.
//!
//! As in the Java reference, a missing or surplus element is reported at its parent
//! (`Patient`, "Patient.name: minimum required = 1, but only found 0"), everything else at the
//! element itself.

use rustc_hash::FxHashMap;
use serde_json::{Map, Value};

use super::definitions::{Constraint, Definitions, ElementDef, TypeClass, TypeDef, TypeRef};
use super::outcome::{Issue, IssueCode};
use super::parse_reference;
use super::{fhirpath, narrative};

/// Whether `s` is an absolute URL as the reference validator decides it (`isAbsoluteUrl`): a
/// scheme that is `http`, `https` or `urn`, or a lowercase token (a letter, then letters, digits,
/// `_`, `[`, `]`), then a colon and something without a space.
pub(super) fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else { return false };
    let mut chars = scheme.chars();
    let token = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '[' | ']'));
    token && !rest.is_empty() && !rest.contains(' ')
}

/// What is wrong with a uri, url, canonical, oid or uuid value beyond its lexical form, as the
/// reference validator's type-specific checks have it (TYPE_SPECIFIC_CHECKS_DT_URI_OID / _UUID,
/// _OID_START, _UUID_STRAT, CANONICAL_ABSOLUTE, _UUID_VALID, _OID_VALID).
fn uri_fault(ty: &str, url: &str) -> Option<String> {
    if url.starts_with("oid:") {
        return Some("URI values cannot start with oid: (use urn:oid:)".into());
    }
    if url.starts_with("uuid:") {
        return Some("URI values cannot start with uuid: (use urn:uuid:)".into());
    }
    if ty == "oid" && !url.starts_with("urn:oid:") {
        return Some("an oid must start with urn:oid:".into());
    }
    if ty == "uuid" && !url.starts_with("urn:uuid:") {
        return Some("a uuid must start with urn:uuid:".into());
    }
    if ty == "canonical" && !url.starts_with('#') && !is_absolute_uri(url) {
        return Some("a canonical URL must be absolute unless it is a fragment reference (#...)".into());
    }
    if let Some(rest) = url.strip_prefix("urn:uuid:") {
        let mut u = rest.split('#').next().unwrap_or(rest);
        if ty == "canonical" {
            u = u.rsplit_once('|').map_or(u, |(head, _)| head);
        }
        let groups: Vec<&str> = u.split('-').collect();
        let shape = [8, 4, 4, 4, 12];
        let valid = groups.len() == 5
            && groups
                .iter()
                .zip(shape)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if !valid {
            return Some("the text after urn:uuid: is not a UUID (8-4-4-4-12 lowercase hexadecimal digits)".into());
        }
    }
    if let Some(rest) = url.strip_prefix("urn:oid:") {
        let oid = if ty == "canonical" { rest.split('|').next().unwrap_or(rest) } else { rest };
        let b = oid.as_bytes();
        let arcs: Vec<&str> = oid.split('.').collect();
        let lexical = b.len() >= 2
            && (b'0'..=b'2').contains(&b[0])
            && b[1] == b'.'
            && arcs.len() >= 2
            && arcs
                .iter()
                .all(|a| a == &"0" || (!a.is_empty() && !a.starts_with('0') && a.bytes().all(|c| c.is_ascii_digit())));
        let rooted = oid.rfind('.').is_some_and(|i| i >= 4) || oid.starts_with("1.3");
        if !(lexical && rooted) {
            return Some("the text after urn:oid: is not a usable OID (dot-separated numbers from a 0, 1 or 2 root, more than a bare root)".into());
        }
    }
    None
}

/// The (type, id) of a URL shaped like a RESTful resource URL, as the reference validator's
/// pattern has it: optionally `http(s)://` and path segments of letters, digits and `\ . : % $`,
/// then a resource type, an id of 1–64 letters, digits, `-` and `.`, and optionally
/// `/_history/` and a version of the same form; the whole string.
fn restful_type_id<'u>(url: &'u str, defs: &Definitions) -> Option<(&'u str, &'u str)> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    let mut parts: Vec<&str> = rest.split('/').collect();
    let token =
        |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
        if !token(parts[parts.len() - 1]) {
            return None;
        }
        parts.truncate(parts.len() - 2);
    }
    let n = parts.len();
    if n < 2 || !token(parts[n - 1]) || !defs.is_resource(parts[n - 2]) {
        return None;
    }
    let base = &parts[..n - 2];
    if rest.len() == url.len() && !base.is_empty() {
        return None; // without a scheme the pattern allows no base
    }
    let segment_ok =
        |s: &&str| s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'\\' | b'.' | b':' | b'%' | b'$'));
    base.iter().all(segment_ok).then_some((parts[n - 2], parts[n - 1]))
}

/// Whether `url` names a value set rather than a code system: an R4 value set Signpost holds,
/// or a URL under the value-set paths of the FHIR and HL7 terminology canonicals, where no code
/// system lives.
pub(super) fn is_value_set_url(url: &str, defs: &Definitions) -> bool {
    let url = url.split('|').next().unwrap_or(url);
    url.starts_with("http://hl7.org/fhir/ValueSet/")
        || url.starts_with("http://terminology.hl7.org/ValueSet/")
        || defs.valuesets.contains_key(url)
}

/// The resource types a search URL asks for, as the reference's BundleValidator reads them
/// (readSearchResourceTypes): the last path segment when it is a resource type
/// (`[base]/Patient?name=x`), else the `_type` parameter's list; none when neither says.
fn search_result_types<'u>(url: &'u str, defs: &Definitions) -> Vec<&'u str> {
    let (head, query) = url.split_once('?').map_or((url, None), |(h, q)| (h, Some(q)));
    match head.rsplit('/').next() {
        Some(last) if defs.is_resource(last) => vec![last],
        _ => query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|p| p.strip_prefix("_type="))
            .flat_map(|t| t.split(','))
            .collect(),
    }
}

/// Whether `url` names a cross-version extension
/// (`http://hl7.org/fhir/5.0/StructureDefinition/extension-ValueSet.compose.include.filter.op`).
pub(super) fn is_cross_version_extension(url: &str) -> bool {
    url.strip_prefix("http://hl7.org/fhir/")
        .and_then(|rest| rest.split_once("/StructureDefinition/extension-"))
        .is_some_and(|(version, _)| !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// The contained resource of `root` with `id`.
fn contained_by_id<'v>(root: &'v Value, id: &str) -> Option<&'v Value> {
    super::items(root, "contained").find(|c| c.get("id").and_then(Value::as_str) == Some(id))
}

/// Whether a Coding or Identifier system is an absolute reference as the Java reference's
/// isSystemReferenceValid has it (`http:`, `https:`, `urn:`; an Identifier may also use `ldap:`).
fn is_system_reference(system: &str) -> bool {
    ["http:", "https:", "urn:"].iter().any(|p| system.starts_with(p))
}

/// The longest string FHIR allows, in UTF-16 units as the Java reference counts them.
const STRING_MAX_UNITS: usize = 1_048_576;

/// Whether `url` ends with `/{ty}/{id}`.
fn ends_with_type_and_id(url: &str, ty: &str, id: &str) -> bool {
    url.strip_suffix(id)
        .and_then(|u| u.strip_suffix('/'))
        .and_then(|u| u.strip_suffix(ty))
        .is_some_and(|u| u.ends_with('/'))
}

/// Whether `query` (after `Type?`) is a search query as the reference validator reads one
/// (BaseValidator.isSearchUrl): one or more `name=value` pairs separated by `&` or `;`, each name
/// `[_a-zA-Z][_a-zA-Z0-9.:-]*`, each value present and without `=` or `&`.
pub(super) fn is_search_query(query: &str) -> bool {
    let pairs: Vec<&str> = query.split(['&', ';']).filter(|p| !p.is_empty()).collect();
    !pairs.is_empty()
        && pairs.iter().all(|pair| {
            let Some((name, value)) = pair.split_once('=') else { return false };
            let mut chars = name.chars();
            chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
                && !value.contains('=')
        })
}

/// Validate one resource; `path` is its FHIRPath root (`Patient`, `Bundle.entry[0].resource`).
pub fn validate_resource(resource: &Value, path: &str, issues: &mut Vec<Issue>) {
    let mut path = path.to_string();
    let start = issues.len();
    let mut walker = Walker {
        defs: Definitions::shared(),
        issues,
        frames: Vec::new(),
        twin_host: None,
        start,
        dropped: 0,
        element_ids: Vec::new(),
        twin_children: false,
    };
    walker.resource(resource, &mut path);
    if walker.dropped > 0 {
        let dropped = walker.dropped;
        walker.issues.push(Issue::error(
            IssueCode::TooManyIssues,
            format!("validation stopped collecting after {MAX_COLLECTED} issues; {dropped} more were found"),
        ));
    }
}

/// The most issues one validation keeps (the rest are counted).
pub const MAX_COLLECTED: usize = 1000;

/// Validate a top-level resource, returning its issues.
pub fn validate(resource: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    let root = resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource").to_string();
    validate_resource(resource, &root, &mut issues);
    issues
}

struct Walker<'a, 'v> {
    defs: &'static Definitions,
    issues: &'a mut Vec<Issue>,
    /// The resources being walked, innermost last: (`%resource`, `%rootResource`, length of
    /// the resource's own path in the path buffer).
    frames: Vec<(&'v Value, &'v Value, usize)>,
    /// Inside a primitive's `_element` twin: that primitive's element (`HumanName.family`)
    /// and type (`string`), the host of the extensions in the twin.
    twin_host: Option<(String, String)>,
    /// Where this validation's issues start in `issues`.
    start: usize,
    /// Issues found past [`MAX_COLLECTED`].
    dropped: usize,
    /// The element ids seen in each resource being walked (innermost last): an element id is
    /// unique within its resource (the reference's DUPLICATE_ID).
    element_ids: Vec<Vec<&'v str>>,
    /// The primitive about to be checked has a `_twin` with an id or extensions.
    twin_children: bool,
}

/// The diagnostic for an unknown property. Its name is never repeated: a property name can
/// carry anything, patient data included.
const UNRECOGNIZED: &str = "Unrecognized property (its name is not repeated: names can carry patient data)";

/// Whether a choice element's suffix names `code` (`valueString` → `string`).
fn is_type_suffix(suffix: &str, code: &str) -> bool {
    let (s, c) = (suffix.as_bytes(), code.as_bytes());
    s.len() == c.len() && !s.is_empty() && s[0] == c[0].to_ascii_uppercase() && s[1..] == c[1..]
}

impl<'v> Walker<'_, 'v> {
    /// Keep an issue; past [`MAX_COLLECTED`] only count it, so that a body built to produce
    /// a flood of issues costs bounded memory.
    fn push(&mut self, issue: Issue) {
        if self.issues.len() - self.start < MAX_COLLECTED {
            self.issues.push(issue);
        } else {
            self.dropped += 1;
        }
    }

    fn error(&mut self, code: IssueCode, at: String, diag: impl Into<String>) {
        self.push(Issue::error(code, diag).at(at));
    }

    fn resource(&mut self, value: &'v Value, path: &mut String) {
        let Some(obj) = value.as_object() else {
            self.error(IssueCode::NotAResource, path.to_string(), "a resource must be a JSON object");
            return;
        };
        let Some(ty) = obj.get("resourceType").and_then(Value::as_str) else {
            self.error(IssueCode::NotAResource, path.to_string(), "the resource has no resourceType");
            return;
        };
        if !self.defs.is_resource(ty) {
            self.error(IssueCode::NotAResource, path.to_string(), "resourceType is not an R4 resource type");
            return;
        }
        let defs = self.defs;
        let td = defs.type_def(ty).expect("checked above");
        let contained = path.rsplit('.').next().is_some_and(|last| last.starts_with("contained["));
        let root = match self.frames.last() {
            Some((parent, _, _)) if contained => parent,
            _ => value,
        };
        self.frames.push((value, root, path.len()));
        self.element_ids.push(Vec::new());
        self.object(obj, td, ty, path, true);
        if ty == "Bundle" {
            self.bundle_links(obj, path);
            self.bundle_full_urls(obj, path);
            super::definitional::bundle_references(value, path, self.issues);
            super::definitional::document_links(value, path, self.issues);
        }
        if let Some(root_el) = td.elements.first() {
            self.invariants(&root_el.constraints, value, Some(td.name.as_str()), path);
        }
        self.contained_referenced(obj, path);
        self.frames.pop();
        self.element_ids.pop();
    }

    /// Evaluate the FHIRPath invariants of an element on its value `focus` at `at`.
    fn invariants(&mut self, constraints: &[Constraint], focus: &'v Value, ty: Option<&'static str>, at: &str) {
        let Some(&(resource, root, _)) = self.frames.last() else { return };
        let env = fhirpath::Env { resource, root, context: focus, choices: &self.defs.choice_names };
        for c in constraints {
            if let Some(issue) = c.check(focus, ty, env, at) {
                self.push(issue);
            }
        }
    }

    /// `dom-3`: each contained resource is referenced from elsewhere in the resource (any
    /// `#id` reference or canonical) or refers to its container (`#`).
    fn contained_referenced(&mut self, obj: &Map<String, Value>, path: &str) {
        let Some(contained) = obj.get("contained").and_then(Value::as_array) else { return };
        // dom-2, dom-4, dom-5: what a contained resource may not carry.
        for (key, rule, what) in [
            (
                "dom-2",
                "If the resource is contained in another resource, it SHALL NOT contain nested Resources",
                &["/contained"][..],
            ),
            (
                "dom-4",
                "If a resource is contained in another resource, it SHALL NOT have a meta.versionId or a meta.lastUpdated",
                &["/meta/versionId", "/meta/lastUpdated"][..],
            ),
            (
                "dom-5",
                "If a resource is contained in another resource, it SHALL NOT have a security label",
                &["/meta/security"][..],
            ),
        ] {
            if contained.iter().any(|c| what.iter().any(|p| c.pointer(p).is_some())) {
                self.error(IssueCode::Invariant, path.to_string(), format!("Constraint failed: {key}: '{rule}'"));
            }
        }
        for (i, c) in contained.iter().enumerate() {
            let Some(id) = c.get("id").and_then(Value::as_str) else {
                self.error(
                    IssueCode::Cardinality,
                    format!("{path}.contained[{i}]"),
                    "A contained resource requires an id, but none is present",
                );
                continue;
            };
            if contained[..i].iter().any(|o| o.get("id").and_then(Value::as_str) == Some(id)) {
                self.error(
                    IssueCode::Invariant,
                    format!("{path}.contained[{i}]"),
                    "Duplicate contained resource id: each contained resource needs its own id",
                );
            }
            let target = format!("#{id}");
            let referenced = obj.iter().any(|(k, v)| {
                if k == "contained" {
                    contained.iter().enumerate().any(|(j, o)| j != i && has_string(o, &target))
                } else {
                    has_string(v, &target)
                }
            });
            if !referenced && !has_string(c, "#") {
                self.error(
                    IssueCode::Invariant,
                    format!("{path}.contained[{i}]"),
                    "Constraint failed: dom-3: 'If the resource is contained in another resource, it SHALL be referred to from elsewhere in the resource or SHALL refer to the containing resource'",
                );
            }
        }
    }

    /// A searchset as the reference's BundleValidator checks it (checkSearchSet). It should say
    /// what the search was (a `self` link), which gives the result types: the type the URL
    /// ends with, or its `_type` list. Each entry has a resource. When the entries carry search
    /// modes (all, or some: then each should), a `match` has an id and a result type, an
    /// `include` an id, and an `outcome` is an OperationOutcome (errors). When none does, a
    /// result of another type, or without an id (an OperationOutcome aside), is a warning, and
    /// so is the lack of modes when the types are mixed or cannot be told.
    fn search_set(&mut self, bundle: &Map<String, Value>, path: &str) {
        let entries = bundle.get("entry").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        let self_url = bundle
            .get("link")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|l| l.get("relation").and_then(Value::as_str) == Some("self"))
            .map(|l| l.get("url").and_then(Value::as_str).unwrap_or_default());
        if self_url.is_none() {
            self.warn(
                IssueCode::Cardinality,
                path,
                "SearchSet Bundles should have a self link that specifies what the search was",
            );
        }
        let types = self_url.map(|u| search_result_types(u, self.defs)).unwrap_or_default();
        fn mode(e: &Value) -> Option<&str> {
            e.pointer("/search/mode").and_then(Value::as_str)
        }
        let moded = entries.iter().any(|e| mode(e).is_some());
        let (mut mixed, mut first_type) = (types.is_empty(), None);
        for (i, entry) in entries.iter().enumerate() {
            // Paths are built only for an issue.
            let at = || format!("{path}.entry[{i}]");
            let res_at = || format!("{path}.entry[{i}].resource");
            if moded && mode(entry).is_none() {
                self.warn(IssueCode::Cardinality, &at(), "SearchSet bundles should have search modes on the entries");
            }
            let Some(resource) = entry.get("resource") else {
                self.error(IssueCode::Cardinality, at(), "A search result entry must have a resource");
                continue;
            };
            let rt = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            let has_id = resource.get("id").is_some();
            let of_type = types.is_empty() || types.contains(&rt);
            const NO_ID: &str = "Search results must have ids";
            const WRONG_TYPE: &str = "This is not a matching resource type for the specified search";
            match mode(entry) {
                _ if !moded => {
                    if !of_type {
                        mixed = true;
                        self.warn(IssueCode::Cardinality, &at(), &format!("{WRONG_TYPE} (is a search mode needed?)"));
                    } else {
                        if !has_id && rt != "OperationOutcome" {
                            self.warn(IssueCode::Cardinality, &res_at(), NO_ID);
                        }
                        if rt != "OperationOutcome" && *first_type.get_or_insert(rt) != rt {
                            mixed = true;
                        }
                    }
                }
                None => {}
                Some("match") => {
                    if !has_id {
                        self.error(IssueCode::Cardinality, res_at(), NO_ID);
                    }
                    if !of_type {
                        self.error(IssueCode::Cardinality, res_at(), WRONG_TYPE);
                    }
                }
                Some("include") if !has_id => self.error(IssueCode::Cardinality, res_at(), NO_ID),
                Some("include") => {}
                Some(_) if rt != "OperationOutcome" => self.error(
                    IssueCode::Cardinality,
                    res_at(),
                    "This is not an OperationOutcome (search mode outcome)",
                ),
                Some(_) => {}
            }
        }
        if !moded && mixed && !entries.is_empty() {
            self.warn(IssueCode::Cardinality, path, "SearchSet bundles should have search modes on the entries");
        }
    }

    /// Each entry's `fullUrl`, as the reference validator's BundleValidator checks it: outside
    /// transactions and batches every entry has one; it is an absolute URI; and one shaped like a
    /// RESTful URL (`[http(s)://base/]Type/id`, see [`restful_type_id`]) ends with the type and id
    /// of the entry's resource, which must then have an id. (A `urn:uuid` fullUrl is not compared
    /// with the id: Java does not either.)
    fn bundle_full_urls(&mut self, bundle: &Map<String, Value>, path: &str) {
        let kind = bundle.get("type").and_then(Value::as_str).unwrap_or_default();
        let optional = matches!(kind, "transaction" | "transaction-response" | "batch" | "batch-response");
        let Some(entries) = bundle.get("entry").and_then(Value::as_array) else { return };
        for (i, entry) in entries.iter().enumerate() {
            // The path is built only for an issue: this runs for every entry of every Bundle.
            let at = || format!("{path}.entry[{i}]");
            let resource = entry.get("resource");
            let rtype = resource.and_then(|r| r.get("resourceType")).and_then(Value::as_str);
            let id = resource.and_then(|r| r.get("id")).and_then(Value::as_str);
            match entry.get("fullUrl").and_then(Value::as_str) {
                None if !optional && entry.get("fullUrl").is_none() => self.error(
                    IssueCode::BundleFullUrl,
                    at(),
                    "Except in transactions and batches, each Bundle entry must have a fullUrl, the identity of its resource",
                ),
                None => {}
                Some(url) if !is_absolute_uri(url) => {
                    self.error(IssueCode::BundleFullUrl, at(), "The fullUrl must be an absolute URL (a relative reference is not)")
                }
                Some(url) => {
                    let Some(rtype) = rtype.filter(|t| self.defs.is_resource(t)) else { continue };
                    let restful = restful_type_id(url, self.defs).is_some();
                    // A canonical resource identified by its own canonical URL: only where that
                    // URL is the resource's RESTful address (BUNDLE_BUNDLE_ENTRY_MISMATCHIDURL);
                    // HL7's v2 and v3 code system URLs are known exceptions.
                    let canonical = resource.and_then(|r| r.get("url")).and_then(Value::as_str);
                    let at_own_address = || restful && id.is_some_and(|id| url.ends_with(&format!("/{id}")));
                    let v2_or_v3 = || url.starts_with("http://hl7.org/fhir/v3/") || url.starts_with("http://hl7.org/fhir/v2/");
                    if canonical == Some(url) && !at_own_address() && !v2_or_v3() {
                        self.error(
                            IssueCode::BundleFullUrl,
                            at(),
                            "The canonical URL cannot be the fullUrl unless the resource's id ends it (a RESTful URL of the resource)",
                        );
                    }
                    if !restful {
                        continue;
                    }
                    match id {
                        None => self.error(
                            IssueCode::BundleFullUrl,
                            at(),
                            "The fullUrl looks like a RESTful server URL, so the entry's resource must have an id",
                        ),
                        Some(id) if !ends_with_type_and_id(url, rtype, id) => self.error(
                            IssueCode::BundleFullUrl,
                            at(),
                            format!(
                                "The fullUrl looks like a RESTful server URL, so it must end with the resource's type and id (/{rtype}/{id})"
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// The links of a Bundle by its type, as the reference validator's BundleValidator checks
    /// them: in a searchset or history each of self, first, previous, next and last at most once;
    /// in every other Bundle the paging relations (first, previous, next, last) are not allowed
    /// and self at most once (BUNDLE_LINK_SEARCH_PROHIBITED, BUNDLE_LINK_SEARCH_NO_DUPLICATES). A
    /// searchset's entries are checked by [`Self::search_set`].
    fn bundle_links(&mut self, bundle: &Map<String, Value>, path: &str) {
        let kind = bundle.get("type").and_then(Value::as_str).unwrap_or_default();
        let search = matches!(kind, "searchset" | "history");
        let known = search
            || matches!(
                kind,
                "document"
                    | "message"
                    | "collection"
                    | "subscription-notification"
                    | "transaction"
                    | "transaction-response"
                    | "batch"
                    | "batch-response"
            );
        if kind == "searchset" {
            self.search_set(bundle, path);
        }
        let Some(links) = bundle.get("link").and_then(Value::as_array) else { return };
        if !known {
            return;
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, link) in links.iter().enumerate() {
            let Some(rel) = link.get("relation").and_then(Value::as_str) else { continue };
            let paging = matches!(rel, "first" | "previous" | "next" | "last");
            if paging && !search {
                self.error(
                    IssueCode::Invariant,
                    format!("{path}.link[{i}].relation"),
                    format!("The link relationship type '{rel}' is only allowed in a searchset or history Bundle"),
                );
                continue;
            }
            if !(paging || rel == "self") {
                continue;
            }
            if seen.contains(&rel) {
                self.error(
                    IssueCode::Invariant,
                    format!("{path}.link[{i}]"),
                    format!("The link relationship type '{rel}' can only occur once"),
                );
            } else {
                seen.push(rel);
            }
        }
    }

    /// Check the properties of `obj` against the children of `elem_path` in `td`.
    /// `expr` is the FHIRPath of `obj`; children extend it in place and restore it (one buffer
    /// for the whole walk, so a valid resource costs no path allocations).
    fn object(
        &mut self,
        obj: &'v Map<String, Value>,
        td: &'static TypeDef,
        elem_path: &str,
        expr: &mut String,
        is_resource: bool,
    ) {
        if obj.is_empty() {
            self.error(IssueCode::EmptyElement, expr.to_string(), "an element must have a value or children");
        }
        if !is_resource
            && let Some(id) = obj.get("id").and_then(Value::as_str)
            && let Some(seen) = self.element_ids.last_mut()
        {
            if seen.contains(&id) {
                self.error(
                    IssueCode::Invariant,
                    expr.to_string(),
                    "Duplicate id value: an element id is unique within its resource",
                );
            } else {
                seen.push(id);
            }
        }
        // A snapshot repeats its differential's element ids, so it opens a scope of its own, as
        // the Java reference's validateElement resets its id map at `StructureDefinition.snapshot`.
        let own_scope = elem_path == "StructureDefinition.snapshot";
        if own_scope {
            self.element_ids.push(Vec::new());
        }
        let kids = td.children_of(elem_path);
        let named = td.named.get(elem_path);
        // Occurrences per child element; on the stack for all but the widest definitions.
        let mut small = [0usize; 96];
        let mut large = Vec::new();
        let counts: &mut [usize] = if kids.len() <= small.len() {
            &mut small[..kids.len()]
        } else {
            large.resize(kids.len(), 0);
            &mut large
        };
        let has_twins = obj.keys().any(|k| k.starts_with('_'));
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            // `fhir_comments` (DSTU2's JSON comments) is not R4 JSON: an unknown property, as the
            // Java reference's parser reports it (UNRECOGNISED_PROPERTY_).
            let (name, twin) = match key.strip_prefix('_') {
                Some(n) => (n, true),
                None => (key.as_str(), false),
            };
            let Some((k, ty)) = self.find_child(td, kids, named, name) else {
                self.error(IssueCode::UnknownElement, expr.to_string(), UNRECOGNIZED);
                continue;
            };
            let el = &td.elements[kids[k]];
            let primitive = ty.class == TypeClass::Primitive;
            if twin && !primitive {
                self.error(IssueCode::UnknownElement, expr.to_string(), UNRECOGNIZED);
                continue;
            }
            // A primitive and its `_twin` are one element: count it once.
            if !(twin && obj.contains_key(name)) {
                counts[k] += match value {
                    Value::Array(a) => a.len(),
                    Value::Null => 0,
                    _ => 1,
                };
            }
            let base_len = expr.len();
            expr.push('.');
            if el.choice {
                // A choice element as FHIRPath (and the Java reference) names it:
                // `Observation.value.ofType(Quantity)`, not `Observation.valueQuantity`.
                expr.push_str(&el.name);
                expr.push_str(".ofType(");
                expr.push_str(&ty.code);
                expr.push(')');
            } else {
                expr.push_str(name);
            }
            match (value, el.repeats()) {
                (Value::Array(items), true) => {
                    if items.is_empty() {
                        self.error(
                            IssueCode::EmptyElement,
                            expr.clone(),
                            "Array cannot be empty - the property should not be present if it has no values",
                        );
                    }
                    let other = obj.get(&if twin { name.to_string() } else { format!("_{name}") });
                    let at_len = expr.len();
                    for (i, item) in items.iter().enumerate() {
                        push_index(expr, i);
                        let partner = other.and_then(|o| o.get(i)).filter(|p| !p.is_null());
                        if item.is_null() {
                            // A null is a placeholder only where the other array has this item.
                            if !primitive || partner.is_none() {
                                self.error(IssueCode::EmptyElement, expr.clone(), "null is not allowed here");
                            }
                        } else {
                            if twin && partner.is_none() {
                                self.value_only_in_twin(el, expr, item);
                            }
                            self.twin_children = primitive && !twin && partner.is_some_and(has_children);
                            self.value(item, td, el, ty, expr, twin);
                        }
                        expr.truncate(at_len);
                    }
                }
                (Value::Array(_), false) => {
                    self.error(
                        IssueCode::WrongType,
                        expr.clone(),
                        "this element does not repeat: it must not be an array",
                    );
                }
                (_, true) => {
                    self.error(IssueCode::WrongType, expr.clone(), "this element repeats: it must be an array");
                }
                (Value::Null, false) => self.error(IssueCode::EmptyElement, expr.clone(), "null is not allowed here"),
                (v, false) => {
                    if twin && !obj.contains_key(name) {
                        self.value_only_in_twin(el, expr, v);
                    }
                    self.twin_children =
                        primitive && !twin && has_twins && obj.get(&format!("_{name}")).is_some_and(has_children);
                    self.value(v, td, el, ty, expr, twin)
                }
            }
            expr.truncate(base_len);
        }
        for (k, &i) in kids.iter().enumerate() {
            let el = &td.elements[i];
            // A choice element's path already ends with `[x]` (`MedicationRequest.medication[x]`).
            let display = || el.path.as_str();
            if (counts[k] as u32) < el.min {
                self.error(
                    IssueCode::Cardinality,
                    expr.to_string(),
                    format!("{}: minimum required = {}, but only found {}", display(), el.min, counts[k]),
                );
            }
            if let Some(max) = el.max
                && counts[k] as u32 > max
            {
                self.error(
                    IssueCode::Cardinality,
                    expr.to_string(),
                    format!("{}: max allowed = {max}, but found {}", display(), counts[k]),
                );
            }
        }
        if own_scope {
            self.element_ids.pop();
        }
    }

    /// The child definition a JSON property names, and the type it takes.
    fn find_child<'t>(
        &self,
        td: &'t TypeDef,
        kids: &[usize],
        named: Option<&FxHashMap<String, usize>>,
        name: &str,
    ) -> Option<(usize, &'t TypeRef)> {
        if let Some(&k) = named.and_then(|m| m.get(name)) {
            return Some((k, td.elements[kids[k]].types.first().unwrap_or(&BACKBONE)));
        }
        for (k, &i) in kids.iter().enumerate() {
            let el = &td.elements[i];
            if el.choice
                && let Some(suffix) = name.strip_prefix(el.name.as_str())
                && let Some(t) = el.types.iter().find(|t| is_type_suffix(suffix, &t.code))
            {
                return Some((k, t));
            }
        }
        None
    }

    fn value(
        &mut self,
        v: &'v Value,
        td: &'static TypeDef,
        el: &ElementDef,
        ty: &'static TypeRef,
        at: &mut String,
        twin: bool,
    ) {
        if twin {
            // `_element`: only id and extensions.
            match v.as_object() {
                Some(o) => {
                    let defs = self.defs;
                    let element = defs.type_def("Element").expect("Element is defined");
                    let outer = self.twin_host.replace((el.path.clone(), ty.code.clone()));
                    self.object(o, element, "Element", at, false);
                    self.twin_host = outer;
                }
                None => {
                    self.error(IssueCode::WrongType, at.to_string(), "a primitive's extension part must be an object")
                }
            }
            return;
        }
        let defs = self.defs;
        let ty_name = Some(ty.code.as_str()).filter(|c| !c.is_empty());
        if ty.class == TypeClass::Primitive {
            self.primitive(v, &ty.code, at.as_str());
            if ty.code == "xhtml"
                && let Some(div) = v.as_str()
            {
                self.narrative(div, at.as_str());
            }
            self.invariants(&el.constraints, v, ty_name, at.as_str());
        } else if ty.class == TypeClass::Resource {
            self.resource(v, at);
        } else if let Some(cr) = &el.content_reference {
            match v.as_object() {
                Some(o) => {
                    let target = cr.clone();
                    self.object(o, td, &target, at, false);
                    if let Some(target_el) = td.element(&target) {
                        self.invariants(&target_el.constraints, v, None, at.as_str());
                    }
                }
                None => self.error(IssueCode::WrongType, at.to_string(), "expected a JSON object"),
            }
        } else if el.has_children {
            match v.as_object() {
                Some(o) => {
                    self.object(o, td, &el.path, at, false);
                    self.invariants(&el.constraints, v, None, at.as_str());
                }
                None => self.error(IssueCode::WrongType, at.to_string(), "expected a JSON object"),
            }
        } else if let Some(dt) = defs.type_def(&ty.code) {
            match v.as_object() {
                Some(o) => {
                    self.object(o, dt, &dt.name, at, false);
                    if let Some(root_el) = dt.elements.first() {
                        self.invariants(&root_el.constraints, v, ty_name, at.as_str());
                    }
                    self.invariants(&el.constraints, v, ty_name, at.as_str());
                    if dt.name == "Extension" {
                        self.extension(o, at.as_str());
                        self.extension_context(o, el, at.as_str());
                    }
                    if dt.name == "Reference" {
                        self.reference(o, ty, at.as_str());
                    }
                    if dt.name == "Identifier" {
                        self.identifier(o, at.as_str());
                    }
                    if dt.name == "Coding" {
                        self.coding(o, at.as_str());
                    }
                    if dt.name == "Attachment" {
                        self.attachment(o, at.as_str());
                    }
                }
                None => self.error(IssueCode::WrongType, at.to_string(), format!("expected a {} object", ty.code)),
            }
        }
        if let Some(fixed) = &el.fixed
            && v != fixed
        {
            self.error(IssueCode::FixedValue, at.to_string(), "the value differs from the fixed value required here");
        }
        if let Some(pattern) = &el.pattern
            && !matches_pattern(v, pattern)
        {
            self.error(IssueCode::FixedValue, at.to_string(), "the value does not match the pattern required here");
        }
        self.binding(v, el, ty, at.as_str());
    }

    fn warn(&mut self, code: IssueCode, at: &str, diag: &str) {
        self.push(Issue::warning(code, diag).at(at.to_string()));
    }

    /// A primitive given only by its `_twin` (extensions, no value): Java counts the element as
    /// present, but a required binding then has no code (Terminology_TX_Code_ValueSet_MISSING),
    /// unless a cross-version extension carries another version's code: then a warning
    /// (Terminology_TX_Code_ValueSet_XVER_SOURCE).
    fn value_only_in_twin(&mut self, el: &ElementDef, at: &str, twin: &Value) {
        if el.binding.as_ref().is_none_or(|b| b.strength != "required") {
            return;
        }
        let cross_version = super::items(twin, "extension")
            .filter_map(|e| e.get("url").and_then(Value::as_str))
            .any(is_cross_version_extension);
        if cross_version {
            self.warn(
                IssueCode::CodeNotInValueSet,
                at,
                "Though a code is required, no code has been provided; instead, another FHIR version's code is given in a cross-version extension, which many systems will not support",
            );
        } else {
            self.error(
                IssueCode::CodeNotInValueSet,
                at.to_string(),
                "No code provided, and a code is required from the value set",
            );
        }
    }

    fn primitive(&mut self, v: &Value, ty: &str, at: &str) {
        // Set by `object` for this primitive only: taken before any early return.
        let twin_children = std::mem::take(&mut self.twin_children);
        let ok_json = match ty {
            "boolean" => v.is_boolean(),
            "integer" | "positiveInt" | "unsignedInt" => v.as_i64().is_some() || v.as_u64().is_some(),
            "decimal" => v.is_number(),
            _ => v.is_string(),
        };
        if !ok_json {
            let want = match ty {
                "boolean" => "a JSON boolean",
                "integer" | "positiveInt" | "unsignedInt" | "decimal" => "a JSON number",
                _ => "a JSON string",
            };
            self.error(IssueCode::WrongType, at.to_string(), format!("a {ty} must be {want}"));
            return;
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return,
        };
        if let Value::String(s) = v {
            // Blank values, as the Java reference checks them (checkPrimitive): empty is an error
            // unless extensions carry the element; only whitespace is a warning; nothing more is
            // checked of either (a required binding still reports the missing code).
            if s.is_empty() {
                if !twin_children {
                    self.error(IssueCode::EmptyElement, at.to_string(), "@value cannot be empty");
                }
                return;
            }
            if ty != "xhtml" && s.chars().all(is_java_whitespace) {
                if !twin_children {
                    self.warn(IssueCode::TextContent, at, "Primitive types should not only be whitespace");
                }
                return;
            }
            if ty != "xhtml" && s.chars().any(|c| c < ' ' && !matches!(c, '\r' | '\n' | '\t')) {
                self.warn(
                    IssueCode::TextContent,
                    at,
                    "This content includes control characters, which are illegal in the XML version of FHIR",
                );
            }
            // A string is at most 1 MB, counted as Java counts it (UTF-16 units; a UTF-8 byte
            // count is never smaller), TYPE_SPECIFIC_CHECKS_DT_STRING_LENGTH.
            if ty == "string" && s.len() > STRING_MAX_UNITS && s.encode_utf16().count() > STRING_MAX_UNITS {
                self.error(
                    IssueCode::InvalidValue,
                    at.to_string(),
                    "value is longer than permitted maximum length of 1 MB (1048576 bytes)",
                );
            }
            match ty {
                "string" if s.trim_matches(is_java_whitespace) != s => {
                    self.warn(IssueCode::TextContent, at, "value should not start or finish with whitespace")
                }
                "markdown" if markdown_has_html(s) => self.warn(
                    IssueCode::TextContent,
                    at,
                    "The markdown contains content that appears to be an embedded HTML tag; it will (or SHOULD) be escaped by the presentation layer",
                ),
                "base64Binary" if s.chars().any(is_java_whitespace) => self.warn(
                    IssueCode::TextContent,
                    at,
                    "Base64 encoded values SHOULD not contain any whitespace (per RFC 4648)",
                ),
                _ => {}
            }
            if s.trim() != s && !matches!(ty, "string" | "markdown" | "xhtml" | "base64Binary") {
                self.error(
                    IssueCode::InvalidValue,
                    at.to_string(),
                    format!("a {ty} must not have leading or trailing whitespace"),
                );
                return;
            }
        }
        match ty {
            "integer" => {
                if v.as_i64().is_none_or(|n| n < i32::MIN as i64 || n > i32::MAX as i64) {
                    self.error(IssueCode::InvalidValue, at.to_string(), "an integer must be a 32-bit whole number");
                }
                return;
            }
            "positiveInt" => {
                if v.as_i64().is_none_or(|n| n < 1 || n > i32::MAX as i64) {
                    self.error(IssueCode::InvalidValue, at.to_string(), "a positiveInt must be at least 1");
                }
                return;
            }
            "unsignedInt" => {
                if v.as_i64().is_none_or(|n| n < 0 || n > i32::MAX as i64) {
                    self.error(IssueCode::InvalidValue, at.to_string(), "an unsignedInt must not be negative");
                }
                return;
            }
            "xhtml" => return,
            _ => {}
        }
        let valid = match lexical_fast_path(ty, &text) {
            Some(ok) => ok,
            None => self.defs.regexes.get(ty).is_none_or(|rx| rx.is_match(&text)),
        };
        if !valid {
            self.error(IssueCode::InvalidValue, at.to_string(), format!("the value is not a valid {ty}"));
            return;
        }
        if matches!(ty, "date" | "dateTime" | "instant") && text.get(..10).is_some_and(|d| !real_date(d)) {
            self.error(IssueCode::InvalidValue, at.to_string(), format!("the value is not a valid {ty}: no such day"));
        }
        // TYPE_SPECIFIC_CHECKS_DT_DATETIME_REASONABLE: a year before 1800 or more than 80 years
        // ahead is probably a data entry error.
        if matches!(ty, "date" | "dateTime" | "instant")
            && let Some(year) = text.get(..4).and_then(|y| y.parse::<i64>().ok())
            && (year < 1800 || year > this_year() + 80)
        {
            self.warn(
                IssueCode::InvalidValue,
                at,
                "The value is outside the range of reasonable years - check for data entry error",
            );
        }
        if matches!(ty, "uri" | "url" | "canonical" | "oid" | "uuid")
            && let Some(why) = uri_fault(ty, &text)
        {
            self.error(IssueCode::InvalidValue, at.to_string(), why);
        }
    }

    fn extension(&mut self, o: &Map<String, Value>, at: &str) {
        // A value carried only by its `_value[x]` twin (extensions on the primitive) still counts.
        let has_value = o.keys().any(|k| k.starts_with("value") || k.starts_with("_value"));
        let has_ext = o.get("extension").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if has_value == has_ext {
            self.push(
                Issue::error(
                    IssueCode::Invariant,
                    "Constraint failed: ext-1: 'Must have either extensions or value[x], not both'",
                )
                .at(at.to_string()),
            );
        }
    }

    /// A known extension (R4 core or Signpost's) is used only on the elements its definition
    /// names as its context: the host element's type-relative path (`HumanName.family`) or
    /// its path in the resource (`Patient.name`), a datatype name, or `Element` for any.
    fn extension_context(&mut self, o: &Map<String, Value>, el: &ElementDef, at: &str) {
        let Some(url) = o.get("url").and_then(Value::as_str) else { return };
        let Some(def) = super::profiles::Profiles::shared().get(url) else { return };
        if def.contexts.is_empty() {
            return;
        }
        let Some(&(resource, _, root_len)) = self.frames.last() else { return };
        // The host: `at` without its last step (`.extension[i]`).
        let host_at = at.rsplit_once('.').map_or(at, |(h, _)| h);
        let host_el = el.path.rsplit_once('.').map_or("", |(h, _)| h);
        let (typed, host_type) = match &self.twin_host {
            Some((path, ty)) if host_el == "Element" => (Some(path.clone()), Some(ty.clone())),
            _ => (Some(host_el.to_string()), None),
        };
        let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        let mut in_resource = String::from(ty);
        let mut depth = 0;
        for c in host_at.get(root_len..).unwrap_or("").chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                c if depth == 0 => in_resource.push(c),
                _ => {}
            }
        }
        let is_resource = !in_resource.contains('.');
        let fits = |c: &str| {
            c == "Element"
                || typed.as_deref() == Some(c)
                || host_type.as_deref() == Some(c)
                || in_resource == c
                || (is_resource && matches!(c, "Resource" | "DomainResource"))
                || (!is_resource && c == "BackboneElement")
                || c.strip_suffix("[x]").is_some_and(|stem| {
                    in_resource.starts_with(stem) || typed.as_deref().is_some_and(|t| t.starts_with(stem))
                })
        };
        if !def.contexts.iter().any(|c| fits(c)) {
            let diag = format!(
                "The extension {url} is not allowed to be used at this point (allowed: {})",
                def.contexts.join(", ")
            );
            // R4's own conformance resources use core extensions outside their 4.0.1 contexts
            // (translation on ValueSet.expansion.contains, fhir-type on ElementDefinition.type):
            // a warning there, an error on instance data.
            let issue = if DEFINITIONAL.contains(&ty) {
                Issue::warning(IssueCode::ExtensionContext, diag)
            } else {
                Issue::error(IssueCode::ExtensionContext, diag)
            };
            self.push(issue.at(host_at.to_string()));
        }
    }

    /// `txt-1` and `txt-2` on a narrative `div`, and its internal hyperlinks (`#x`), which
    /// must resolve to an anchor of the div or an id in the resource.
    fn narrative(&mut self, div: &str, at: &str) {
        let (links, anchors) = narrative::links_and_anchors(div);
        if let Some(&(resource, _, _)) = self.frames.last() {
            // R4's own code systems link to anchors they lack: a warning in definitions.
            let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
            for link in links {
                if !anchors.contains(&link) && !has_id(resource, link) {
                    let diag = "a hyperlink in the narrative (href=\"#...\") does not resolve to an anchor in the narrative or an id in the resource";
                    let issue = if DEFINITIONAL.contains(&ty) {
                        Issue::warning(IssueCode::Invariant, diag)
                    } else {
                        Issue::error(IssueCode::Invariant, diag)
                    };
                    self.push(issue.at(at.to_string()));
                }
            }
        }
        match narrative::check(div) {
            Ok(()) => {}
            Err(narrative::Fault::Markup(why)) => self.error(
                IssueCode::Invariant,
                at.to_string(),
                format!("Constraint failed: txt-1: 'The narrative SHALL contain only the basic html formatting elements and attributes described in chapters 7-11 (except section 4 of chapter 9) and 15 of the HTML 4.0 standard, <a> elements (either name or href), images and internally contained style attributes' ({why})"),
            ),
            // An error, as txt-2 is in R4 and in the HL7 reference validator (htmlChecks).
            Err(narrative::Fault::Malformed(why)) => self.error(
                IssueCode::InvalidValue,
                at.to_string(),
                format!("The narrative is not well-formed XHTML: {why}"),
            ),
            Err(narrative::Fault::NoContent) => self.push(
                Issue::error(
                    IssueCode::Invariant,
                    "Constraint failed: txt-2: 'The narrative SHALL have some non-whitespace content'",
                )
                .at(at.to_string()),
            ),
        }
    }

    /// `Attachment.size` must be the size of the decoded `data`, when both are given.
    fn attachment(&mut self, o: &Map<String, Value>, at: &str) {
        let (Some(size), Some(data)) = (o.get("size").and_then(Value::as_u64), o.get("data").and_then(Value::as_str))
        else {
            return;
        };
        let b64: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !b64.len().is_multiple_of(4) {
            return; // reported as an invalid base64Binary already
        }
        let padding = b64.iter().rev().take_while(|b| **b == b'=').count() as u64;
        let actual = (b64.len() as u64 / 4) * 3 - padding.min(2);
        if actual != size {
            self.error(
                IssueCode::InvalidValue,
                at.to_string(),
                format!("Stated Attachment Size {size} does not match actual attachment size {actual}"),
            );
        }
    }

    /// Coding rules of the Java reference (checkTerminologyCoding): the system is absolute
    /// (`http:`, `https:` or `urn:`, Terminology_TX_System_Relative), and a coded Coding names a
    /// code system, not a value set (Terminology_TX_System_ValueSet2). Both are errors, reported
    /// at the system.
    fn coding(&mut self, o: &Map<String, Value>, at: &str) {
        let Some(system) = o.get("system").and_then(Value::as_str) else { return };
        if !is_system_reference(system) {
            self.error(
                IssueCode::InvalidValue,
                format!("{at}.system"),
                "Coding.system must be an absolute reference, not a local reference",
            );
        } else if o.contains_key("code") && is_value_set_url(system, self.defs) {
            self.error(
                IssueCode::InvalidValue,
                format!("{at}.system"),
                "The Coding references a value set, not a code system",
            );
        }
    }

    /// Identifier rules of the Java reference (checkIdentifier): the system is absolute
    /// (`http:`, `https:`, `urn:` or `ldap:`); under `urn:ietf:rfc:3986` the value is a URI; the
    /// RFC 4122 page is not a system for UUIDs.
    fn identifier(&mut self, o: &Map<String, Value>, at: &str) {
        let Some(system) = o.get("system").and_then(Value::as_str) else { return };
        if !(is_system_reference(system) || system.starts_with("ldap:")) {
            self.error(
                IssueCode::InvalidValue,
                at.to_string(),
                "Identifier.system must be an absolute reference, not a local reference",
            );
        }
        let value = o.get("value").and_then(Value::as_str);
        let has_scheme = |v: &str| {
            v.split_once(':').is_some_and(|(scheme, _)| {
                scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '[' | ']'))
            })
        };
        match (system, value) {
            ("urn:ietf:rfc:3986", Some(v)) if !has_scheme(v) => self.error(
                IssueCode::InvalidValue,
                at.to_string(),
                "if identifier.system is 'urn:ietf:rfc:3986', then the identifier.value must be a full URI (e.g. start with a scheme)",
            ),
            ("https://tools.ietf.org/html/rfc4122", Some(v)) => {
                let uuid = v.strip_prefix("urn:uuid:").unwrap_or(v);
                let text = "The URL 'https://tools.ietf.org/html/rfc4122' should not be used with a UUID: use the system 'urn:ietf:rfc:3986' and the value 'urn:uuid:...'";
                if uuid::Uuid::parse_str(uuid).is_ok() && uuid.len() == 36 {
                    self.warn(IssueCode::InvalidValue, at, text);
                } else {
                    self.error(
                        IssueCode::InvalidValue,
                        at.to_string(),
                        "The URL 'https://tools.ietf.org/html/rfc4122' is not correct for the identifier",
                    );
                }
            }
            _ => {}
        }
    }

    fn reference(&mut self, o: &Map<String, Value>, ty: &TypeRef, at: &str) {
        // Nothing to follow and nothing to show (REFERENCE_REF_NODISPLAY).
        let blank = |v: Option<&Value>| v.and_then(Value::as_str).is_none_or(str::is_empty);
        let identifier = o.get("identifier");
        if blank(o.get("reference"))
            && blank(identifier.and_then(|i| i.get("system")))
            && blank(identifier.and_then(|i| i.get("value")))
            && blank(o.get("display"))
        {
            self.push(
                Issue::warning(
                    IssueCode::EmptyElement,
                    "A Reference without an actual reference or identifier should have a display",
                )
                .at(at.to_string()),
            );
        }
        // The reference's own form, as the reference validator checks it: no whitespace
        // (REFERENCE_REF_INVALID_REF); a conditional reference (`Type?query`) is a search URL
        // (REFERENCE_REF_QUERY_INVALID).
        if let Some(r) = o.get("reference").and_then(Value::as_str) {
            if r.chars().any(char::is_whitespace) {
                self.error(
                    IssueCode::InvalidValue,
                    format!("{at}.reference"),
                    "a reference must not contain whitespace",
                );
            } else if let Some((target, query)) = r.split_once('?')
                && self.defs.is_resource(target)
                && !is_search_query(query)
            {
                self.error(
                    IssueCode::InvalidValue,
                    format!("{at}.reference"),
                    "a conditional reference must be a search URL: Type?name=value[&name=value...]",
                );
            }
        }
        // ref-1: a local reference (`#id`) names a contained resource of the root resource
        // (`#` alone, from a contained resource, names its container).
        if let Some(id) = o.get("reference").and_then(Value::as_str).and_then(|r| r.strip_prefix('#'))
            && let Some(&(_, root, _)) = self.frames.last()
        {
            let found = contained_by_id(root, id).is_some();
            let container = id.is_empty() && self.frames.len() > 1;
            if !(found || container) {
                self.error(
                    IssueCode::Invariant,
                    at.to_string(),
                    "Constraint failed: ref-1: 'SHALL have a contained resource if a local reference is provided'",
                );
            }
        }
        if ty.targets.is_empty() || ty.targets.iter().any(|t| t == "Resource") {
            return;
        }
        let Some(reference) = o.get("reference").and_then(Value::as_str) else { return };
        let Some(target) = parse_reference(reference).map(|(t, _)| t).or_else(|| self.resolved_type(reference)) else {
            return;
        };
        // An error, as the HL7 reference validator reports it when the type is known from the
        // reference, or from the resource it resolves to (REFERENCE_REF_BADTARGETTYPE).
        if self.defs.is_resource(target) && !ty.targets.iter().any(|t| t == target) {
            self.push(
                Issue::error(
                    IssueCode::ReferenceType,
                    format!("a reference to {target} is not allowed here (allowed: {})", ty.targets.join(", ")),
                )
                .at(format!("{at}.reference")),
            );
        }
    }

    /// The type of the resource a reference resolves to without a server, as the reference
    /// validator resolves it (localResolve): `#id` to a contained resource of the root, a
    /// `urn:` or absolute URL to the entry of the nearest enclosing Bundle with that fullUrl.
    fn resolved_type(&self, reference: &str) -> Option<&'v str> {
        let type_of = |r: &'v Value| r.get("resourceType").and_then(Value::as_str);
        if let Some(id) = reference.strip_prefix('#') {
            let &(_, root, _) = self.frames.last()?;
            return contained_by_id(root, id).and_then(type_of);
        }
        let (_, current, _) = self.frames.last()?;
        let bundle = self
            .frames
            .iter()
            .rev()
            .map(|f| f.0)
            .find(|v| !std::ptr::eq(*v, *current) && type_of(v) == Some("Bundle"))?;
        super::items(bundle, "entry")
            .find(|e| e.get("fullUrl").and_then(Value::as_str) == Some(reference))
            .and_then(|e| e.get("resource"))
            .and_then(type_of)
    }

    fn binding(&mut self, v: &Value, el: &ElementDef, ty: &TypeRef, at: &str) {
        let Some(b) = &el.binding else { return };
        let required = match b.strength.as_str() {
            "required" => true,
            "extensible" | "preferred" => false,
            _ => return,
        };
        let defs = self.defs;
        let (Some(members), Some(codes)) = (defs.valuesets.get(&b.value_set), defs.valueset_codes.get(&b.value_set))
        else {
            // A value set Signpost cannot hold (MIME types, external code systems such as
            // SNOMED CT): said, not guessed.
            if required || b.strength == "extensible" {
                let vs_name = b.value_set.rsplit('/').next().unwrap_or("");
                self.push(Issue {
                    severity: super::outcome::Severity::Information,
                    code: IssueCode::CodeNotChecked,
                    expression: Some(at.to_string()),
                    diagnostics: format!("the code was not checked: the value set {vs_name} is not bundled"),
                });
            }
            return;
        };
        let vs_name = b.value_set.rsplit('/').next().unwrap_or("");
        let ok = match ty.code.as_str() {
            "code" => match v.as_str() {
                Some(c) => codes.contains(c),
                None => return,
            },
            "Coding" => match coding_key(v) {
                Some(k) => members.contains(&k),
                None => return,
            },
            "CodeableConcept" => {
                let keys: Vec<String> =
                    v.get("coding").and_then(Value::as_array).into_iter().flatten().filter_map(coding_key).collect();
                if keys.is_empty() {
                    return;
                }
                keys.iter().any(|k| members.contains(k))
            }
            _ => return,
        };
        if !ok {
            let issue = if required {
                Issue::error(
                    IssueCode::CodeNotInValueSet,
                    format!("the code is not in the required value set {vs_name}"),
                )
            } else {
                Issue::warning(
                    IssueCode::CodeNotInValueSet,
                    format!("no code is from the {} value set {vs_name}", b.strength),
                )
            };
            self.push(issue.at(at.to_string()));
        }
    }
}

/// Conformance and terminology resources (definitions rather than instance data).
const DEFINITIONAL: &[&str] = &[
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "ConceptMap",
    "NamingSystem",
    "OperationDefinition",
    "SearchParameter",
    "CapabilityStatement",
    "CompartmentDefinition",
    "ImplementationGuide",
    "StructureMap",
    "GraphDefinition",
    "MessageDefinition",
    "TerminologyCapabilities",
];

static BACKBONE: TypeRef = TypeRef { code: String::new(), targets: Vec::new(), class: TypeClass::Complex };

/// The FHIR regexes of the commonest primitives, as byte checks (the regex engine costs more
/// than the rest of a string's validation). `None`: use the regex. Equivalent to R4's regexes
/// with ASCII classes, for a non-empty value: string and markdown `[ \r\n\t\S]+` exclude only
/// vertical tab and form feed; uri, url and canonical `\S*` exclude ASCII whitespace; code
/// `[^\s]+(\s[^\s]+)*` is single spaces between runs; id `[A-Za-z0-9\-\.]{1,64}`.
fn lexical_fast_path(ty: &str, text: &str) -> Option<bool> {
    let b = text.as_bytes();
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C);
    Some(match ty {
        "string" | "markdown" => !b.iter().any(|c| matches!(c, 0x0B | 0x0C)),
        "uri" | "url" | "canonical" => !b.iter().any(ws),
        "code" => !b.is_empty() && !ws(&b[0]) && !ws(&b[b.len() - 1]) && !b.windows(2).any(|w| ws(&w[0]) && ws(&w[1])),
        "id" => (1..=64).contains(&b.len()) && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.'),
        _ => return None,
    })
}

/// The current year (UTC), read once: the reasonable-years bound moves by a year a year.
fn this_year() -> i64 {
    static YEAR: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *YEAR.get_or_init(|| i64::from(chrono::Datelike::year(&chrono::Utc::now())))
}

/// Whitespace as the Java reference counts it (`Utilities.isWhitespace`): ASCII whitespace and
/// the Unicode spaces, no-break space included.
fn is_java_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{09}'..='\u{0D}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// A `_twin` that gives the primitive an id or extensions.
fn has_children(twin: &Value) -> bool {
    twin.as_object().is_some_and(|o| {
        o.contains_key("id") || o.get("extension").is_some_and(|e| e.as_array().is_some_and(|a| !a.is_empty()))
    })
}

/// Markdown holding what looks like an HTML tag, as the Java reference's MarkDownProcessor sees
/// it: an unescaped `<` followed by a tag name (a letter, then letters, digits or `-`) and
/// whitespace or `>`, or by `/` and such a name, or by `!` or `?`.
fn markdown_has_html(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len()).any(|i| {
        if b[i] != b'<' || (i > 0 && b[i - 1] == b'\\') {
            return false;
        }
        let rest = &b[i + 1..];
        if matches!(rest.first(), Some(b'!' | b'?')) {
            return true;
        }
        let name = rest.strip_prefix(b"/").unwrap_or(rest);
        if !name.first().is_some_and(u8::is_ascii_alphabetic) {
            return false;
        }
        let end = name.iter().position(|c| !(c.is_ascii_alphanumeric() || *c == b'-')).unwrap_or(name.len());
        name.get(end).is_some_and(|c| c.is_ascii_whitespace() || *c == b'>')
    })
}

/// Append `[i]` to a path without the formatting machinery (it runs once per array item).
pub(super) fn push_index(path: &mut String, i: usize) {
    path.push('[');
    let start = path.len();
    let mut n = i;
    loop {
        path.insert(start, char::from(b'0' + (n % 10) as u8));
        n /= 10;
        if n == 0 {
            break;
        }
    }
    path.push(']');
}

/// Whether any `id` property inside `v` (element or contained resource ids) equals `id`.
fn has_id(v: &Value, id: &str) -> bool {
    match v {
        Value::Array(a) => a.iter().any(|x| has_id(x, id)),
        Value::Object(o) => o.iter().any(|(k, x)| (k == "id" && x.as_str() == Some(id)) || has_id(x, id)),
        _ => false,
    }
}

/// Whether any string inside `v` equals `s`.
fn has_string(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Array(a) => a.iter().any(|x| has_string(x, s)),
        Value::Object(o) => o.values().any(|x| has_string(x, s)),
        _ => false,
    }
}

pub(super) fn coding_key(v: &Value) -> Option<String> {
    let code = v.get("code").and_then(Value::as_str)?;
    let system = v.get("system").and_then(Value::as_str).unwrap_or("");
    Some(format!("{system}|{code}"))
}

/// Whether `v` contains everything in `pattern` (FHIR pattern[x] semantics).
pub(super) fn matches_pattern(v: &Value, pattern: &Value) -> bool {
    match (v, pattern) {
        (Value::Object(o), Value::Object(p)) => {
            p.iter().all(|(k, pv)| o.get(k).is_some_and(|ov| matches_pattern(ov, pv)))
        }
        (Value::Array(a), Value::Array(p)) => p.iter().all(|pv| a.iter().any(|av| matches_pattern(av, pv))),
        _ => v == pattern,
    }
}

/// Only a full date (`YYYY-MM-DD`) can name a day that does not exist.
fn real_date(ymd: &str) -> bool {
    ymd.as_bytes().get(4) != Some(&b'-') || chrono::NaiveDate::parse_from_str(ymd, "%Y-%m-%d").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::outcome::Severity;
    use serde_json::json;

    fn codes(v: Value) -> Vec<(IssueCode, String)> {
        validate(&v).into_iter().map(|i| (i.code, i.expression.unwrap_or_default())).collect()
    }

    fn corpus(f: &str) -> Value {
        let path = format!("{}/tests/fixtures/referrals/{f}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn corpus_referrals_are_valid() {
        for f in ["referral-servicerequest.json", "referral-task.json", "referral-bundle.json"] {
            let issues = validate(&corpus(f));
            assert!(issues.iter().all(|i| i.severity != super::super::outcome::Severity::Error), "{f}: {issues:?}");
        }
        assert_eq!(codes(corpus("referral-servicerequest.json")), vec![]);
        // R4's Annotation.authorReference does not allow PractitionerRole (R5 does): an error, as in
        // the Java reference (the type is known from the reference).
        let mut sr = corpus("referral-servicerequest.json");
        sr["note"][0] = json!({ "authorReference": { "reference": "PractitionerRole/gp" }, "text": "x" });
        assert_eq!(
            codes(sr),
            vec![(IssueCode::ReferenceType, "ServiceRequest.note[0].author.ofType(Reference).reference".into())]
        );
    }

    #[test]
    fn reports_each_family_at_java_paths() {
        let found = codes(json!({
            "resourceType": "ServiceRequest",
            "status": "finished",
            "authoredOn": 20240314,
            "subject": { "reference": "Practitioner/x" },
            "identifier": { "value": "x" },
            "colour": "blue"
        }));
        for want in [
            (IssueCode::CodeNotInValueSet, "ServiceRequest.status"),
            (IssueCode::WrongType, "ServiceRequest.authoredOn"),
            (IssueCode::ReferenceType, "ServiceRequest.subject.reference"),
            (IssueCode::WrongType, "ServiceRequest.identifier"),
            (IssueCode::UnknownElement, "ServiceRequest"),
            (IssueCode::Cardinality, "ServiceRequest"),
        ] {
            assert!(found.contains(&(want.0, want.1.to_string())), "missing {want:?} in {found:?}");
        }
    }

    #[test]
    fn ext_1_holds_for_values_carried_by_their_twin_and_fails_for_both_or_neither() {
        let twin_only = json!({ "resourceType": "Patient", "extension": [{ "url": "http://x", "_valueString": { "extension": [{ "url": "http://y", "valueCode": "nl" }] } }] });
        assert!(validate(&twin_only).is_empty(), "{:?}", validate(&twin_only));
        let both = json!({ "resourceType": "Patient", "extension": [{ "url": "http://x", "valueString": "a", "extension": [{ "url": "http://y", "valueCode": "nl" }] }] });
        assert_eq!(codes(both), vec![(IssueCode::Invariant, "Patient.extension[0]".to_string())]);
        let neither = json!({ "resourceType": "Patient", "extension": [{ "url": "http://x" }] });
        assert_eq!(codes(neither), vec![(IssueCode::Invariant, "Patient.extension[0]".to_string())]);
    }

    #[test]
    fn fhirpath_invariants_are_reported_at_the_element_with_their_key() {
        let keys = |v: Value| -> Vec<(String, String)> {
            validate(&v)
                .into_iter()
                .filter(|i| i.code == IssueCode::Invariant)
                .map(|i| {
                    (i.expression.unwrap_or_default(), i.diagnostics.split(':').nth(1).unwrap_or("").trim().to_string())
                })
                .collect()
        };
        // per-1 on a datatype, inside a choice element; with time zones compared as instants.
        let sr = json!({ "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": { "reference": "Patient/1" },
            "occurrencePeriod": { "start": "2024-03-14T11:00:00+01:00", "end": "2024-03-14T09:30:00Z" } });
        assert_eq!(keys(sr), vec![("ServiceRequest.occurrence.ofType(Period)".to_string(), "per-1".to_string())]);
        let ok = json!({ "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": { "reference": "Patient/1" },
            "occurrencePeriod": { "start": "2024-03-14T10:00:00+01:00", "end": "2024-03-14T09:30:00+00:00" } });
        assert_eq!(keys(ok), vec![]);
        // A resource invariant (Task inv-1) and a backbone one (Patient pat-1).
        let task = json!({ "resourceType": "Task", "status": "requested", "intent": "order",
            "authoredOn": "2024-03-14", "lastModified": "2024-03-13" });
        assert_eq!(keys(task), vec![("Task".to_string(), "inv-1".to_string())]);
        let patient = json!({ "resourceType": "Patient", "contact": [{ "gender": "female" }] });
        assert_eq!(keys(patient), vec![("Patient.contact[0]".to_string(), "pat-1".to_string())]);
        // dom-3: an unreferenced contained resource; txt-1: a script in the narrative.
        let contained = json!({ "resourceType": "Condition", "subject": { "reference": "Patient/1" },
            "contained": [{ "resourceType": "Practitioner", "id": "p1" }] });
        assert_eq!(keys(contained), vec![("Condition.contained[0]".to_string(), "dom-3".to_string())]);
        let referenced = json!({ "resourceType": "Condition", "subject": { "reference": "Patient/1" },
            "contained": [{ "resourceType": "Practitioner", "id": "p1" }], "asserter": { "reference": "#p1" } });
        assert_eq!(keys(referenced), vec![]);
        let versioned = json!({ "resourceType": "Condition", "subject": { "reference": "#p1" },
            "contained": [{ "resourceType": "Patient", "id": "p1", "meta": { "versionId": "2" } }] });
        assert_eq!(keys(versioned), vec![("Condition".to_string(), "dom-4".to_string())]);
        let dangling = json!({ "resourceType": "Condition", "subject": { "reference": "#nobody" } });
        assert_eq!(keys(dangling), vec![("Condition.subject".to_string(), "ref-1".to_string())]);
        let script = json!({ "resourceType": "Patient", "text": { "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script>x</div>" } });
        assert_eq!(keys(script), vec![("Patient.text.div".to_string(), "txt-1".to_string())]);
    }

    #[test]
    fn lexical_fast_paths_agree_with_the_fhir_regexes() {
        let defs = Definitions::shared();
        let samples = [
            "a",
            "abc def",
            "a  b",
            " a",
            "a ",
            "a\u{b}b",
            "a\u{c}",
            "x\ty",
            "line\nbreak",
            "é-ü",
            "A.b-9",
            "http://x/y z",
            "urn:uuid:1",
            "a\u{a0}b",
            &"x".repeat(64),
            &"x".repeat(65),
            "-",
            "a..b",
        ];
        for ty in ["string", "markdown", "uri", "url", "canonical", "code", "id"] {
            let rx = defs.regexes.get(ty).unwrap();
            for s in samples {
                assert_eq!(lexical_fast_path(ty, s), Some(rx.is_match(s)), "{ty} {s:?}");
            }
        }
    }

    #[test]
    fn preferred_bindings_warn() {
        let lang = |code: &str| json!({ "resourceType": "Patient", "communication": [{ "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": code }] } }] });
        assert!(validate(&lang("en-GB")).is_empty());
        let issues = validate(&lang("xx-QQ"));
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].severity, crate::fhir::outcome::Severity::Warning);
        assert_eq!(issues[0].expression.as_deref(), Some("Patient.communication[0].language"));
    }

    #[test]
    fn known_extensions_only_in_their_context() {
        let mothers = json!({ "url": "http://hl7.org/fhir/StructureDefinition/humanname-mothers-family", "valueString": "Mothers family" });
        let on_name = json!({ "resourceType": "Patient", "name": [{ "family": "F", "extension": [mothers] }] });
        assert_eq!(codes(on_name), vec![(IssueCode::ExtensionContext, "Patient.name[0]".to_string())]);
        let on_family =
            json!({ "resourceType": "Patient", "name": [{ "family": "F", "_family": { "extension": [mothers] } }] });
        assert_eq!(codes(on_family), vec![]);
        // A context naming a datatype admits the extension on any element of that type.
        let translation = json!({ "url": "http://hl7.org/fhir/StructureDefinition/translation", "extension": [
            { "url": "lang", "valueCode": "nl" }, { "url": "content", "valueString": "x" }] });
        let on_string = json!({ "resourceType": "Patient", "name": [{ "_family": { "extension": [translation] } }] });
        assert_eq!(codes(on_string), vec![]);
    }

    #[test]
    fn narrative_hyperlinks_resolve_to_anchors_or_ids() {
        let div = |body: &str| format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{body}</div>");
        let with = |body: &str| {
            json!({ "resourceType": "List", "status": "current", "mode": "working",
            "text": { "status": "generated", "div": div(body) }, "entry": [{ "id": "e1", "item": { "reference": "Patient/1" } }] })
        };
        assert_eq!(codes(with("<a href=\"#top\">x</a><p id=\"top\">y</p>")), vec![]);
        assert_eq!(codes(with("<a href=\"#e1\">entry</a>")), vec![]);
        assert_eq!(
            codes(with("<a href=\"#nowhere/else\">x</a>")),
            vec![(IssueCode::Invariant, "List.text.div".to_string())]
        );
    }

    /// uri, url, canonical, oid and uuid values as the reference validator's type-specific
    /// checks have them.
    #[test]
    fn uri_family_values_follow_the_reference_validator() {
        use super::uri_fault;
        for (ty, ok) in [
            ("uri", "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01"),
            ("uri", "urn:oid:2.16.840.1.113883.4.1"),
            ("uri", "urn:oid:1.3.6"),
            ("uri", "http://example.org/a"),
            ("uri", "Patient/1"),
            ("url", "https://x.org/a#frag"),
            ("canonical", "http://hl7.org/fhir/ValueSet/x|4.0.1"),
            ("canonical", "#local"),
            ("canonical", "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01|1"),
            ("oid", "urn:oid:2.16.840.1"),
            ("uuid", "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01"),
        ] {
            assert_eq!(uri_fault(ty, ok), None, "{ty} {ok}");
        }
        for (ty, bad) in [
            ("uri", "oid:1.2.3.4"),
            ("uri", "uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01"),
            ("uri", "urn:uuid:not-a-uuid"),
            ("uri", "urn:uuid:0B3C6C9E-3F0A-4F57-9A3E-1D6A2F1C9A01"),
            ("uri", "urn:oid:1.2.x"),
            ("uri", "urn:oid:3.1.2.3.4"),
            ("uri", "urn:oid:1.2.3"),
            ("uri", "urn:oid:2.16.0840"),
            ("oid", "2.16.840.1"),
            ("uuid", "0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01"),
            ("canonical", "ValueSet/x"),
        ] {
            assert!(uri_fault(ty, bad).is_some(), "{ty} {bad}");
        }
        // Reported at the element, as invalid-value.
        let v = json!({ "resourceType": "Patient", "identifier": [{ "system": "urn:oid:1.2.x", "value": "1" }] });
        assert_eq!(codes(v), vec![(IssueCode::InvalidValue, "Patient.identifier[0].system".to_string())]);
    }

    /// Ids as the reference validator requires them: element ids unique within their resource
    /// (DUPLICATE_ID), a snapshot's ids a scope of their own, contained resources with an id each,
    /// unique (RESOURCE_RES_ID_MISSING, RESOURCE_DUPLICATE_CONTAINED_ID); a Bundle entry's
    /// resource needs no id (validateContains makes BUNDLE_ENTRY ids optional), but a search
    /// result without one is a warning unless it is an OperationOutcome
    /// (BUNDLE_SEARCH_ENTRY_NO_RESOURCE_ID).
    #[test]
    fn element_contained_and_entry_ids_follow_the_reference_validator() {
        let dup =
            json!({ "resourceType": "Patient", "name": [{ "id": "n", "family": "a" }, { "id": "n", "family": "b" }] });
        assert_eq!(codes(dup), vec![(IssueCode::Invariant, "Patient.name[1]".into())]);
        let scoped = json!({ "resourceType": "Patient", "id": "n", "name": [{ "id": "n", "family": "a" }],
            "contained": [{ "resourceType": "Organization", "id": "o", "name": "x", "telecom": [{ "id": "n", "system": "phone", "value": "1" }] }],
            "managingOrganization": { "reference": "#o" } });
        assert_eq!(codes(scoped), vec![], "the resource id and a contained resource's element ids are other scopes");
        let element = |id: &str| json!({ "id": id, "path": "Basic.code" });
        let sd = |snapshot: &str| {
            json!({ "resourceType": "StructureDefinition", "url": "http://x.org/sd", "name": "X",
            "status": "draft", "kind": "resource", "abstract": false, "type": "Basic",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Basic", "derivation": "constraint",
            "snapshot": { "element": [element(snapshot)] }, "differential": { "element": [element("Basic.code")] } })
        };
        let duplicates = |v: Value| {
            validate(&v)
                .into_iter()
                .filter(|i| i.diagnostics.starts_with("Duplicate id"))
                .map(|i| i.expression.unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(duplicates(sd("Basic.code")), Vec::<String>::new(), "a snapshot repeats its differential's ids");
        let mut twice_in_differential = sd("Basic");
        twice_in_differential["differential"]["element"] = json!([element("Basic.code"), element("Basic.code")]);
        assert_eq!(duplicates(twice_in_differential), vec!["StructureDefinition.differential.element[1]".to_string()]);
        let no_id =
            json!({ "resourceType": "Patient", "contained": [{ "resourceType": "Organization", "name": "x" }] });
        assert!(codes(no_id).contains(&(IssueCode::Cardinality, "Patient.contained[0]".into())));
        let twice = json!({ "resourceType": "Patient", "contained": [
            { "resourceType": "Organization", "id": "o", "name": "x" }, { "resourceType": "Organization", "id": "o", "name": "y" }],
            "managingOrganization": { "reference": "#o" } });
        assert!(codes(twice).contains(&(IssueCode::Invariant, "Patient.contained[1]".into())));
        let entry = |kind: &str, e: Value| validate(&json!({ "resourceType": "Bundle", "type": kind, "entry": [e] }));
        let patient = json!({ "resourceType": "Patient" });
        for (kind, e) in [
            ("collection", json!({ "fullUrl": "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01", "resource": patient })),
            ("collection", json!({ "fullUrl": "http://x.org/nothing", "resource": patient })),
            ("transaction", json!({ "resource": patient, "request": { "method": "PUT", "url": "Patient/1" } })),
            ("transaction", json!({ "resource": patient, "request": { "method": "POST", "url": "Patient" } })),
        ] {
            assert_eq!(entry(kind, e.clone()), vec![], "{e}");
        }
        assert_eq!(entry("searchset", json!({ "fullUrl": "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01", "resource": { "resourceType": "Basic", "code": { "text": "x" } } })).len(), 3,
            "a searchset without a self link, of unknown types, with a result without an id: three warnings");
    }

    /// Searchsets as the reference's BundleValidator checks them (checkSearchSet): with search
    /// modes, a match has an id and the searched type, an include an id, an outcome is an
    /// OperationOutcome (errors); without modes, the same faults are warnings; the self link
    /// says what was searched for (BUNDLE_SEARCH_NOSELF).
    #[test]
    fn search_sets_follow_the_reference_bundle_validator() {
        let basic = |id: Option<&str>| {
            let mut b = json!({ "resourceType": "Basic", "code": { "text": "x" } });
            if let Some(id) = id {
                b["id"] = json!(id);
            }
            b
        };
        let outcome =
            json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error", "code": "code-invalid" }] });
        let search = |self_url: Option<&str>, entries: Vec<(Value, Option<&str>)>| {
            let entries: Vec<Value> = entries
                .into_iter()
                .enumerate()
                .map(|(i, (resource, mode))| {
                    let mut e = json!({ "fullUrl": format!("urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a0{i}"), "resource": resource });
                    if let Some(m) = mode {
                        e["search"] = json!({ "mode": m });
                    }
                    e
                })
                .collect();
            let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset", "entry": entries });
            if let Some(url) = self_url {
                bundle["link"] = json!([{ "relation": "self", "url": url }]);
            }
            validate(&bundle).into_iter().map(|i| (i.severity, i.expression.unwrap_or_default())).collect::<Vec<_>>()
        };
        let at = |i: usize| format!("Bundle.entry[{i}].resource");
        let (error, warning) = (Severity::Error, Severity::Warning);
        let by_type = Some("http://x.org/fhir/Basic?code=x");
        let by_type_list = Some("http://x.org/fhir?code=x&_type=Basic,Patient");
        // With modes.
        let good = vec![
            (basic(Some("1")), Some("match")),
            (basic(Some("2")), Some("include")),
            (outcome.clone(), Some("outcome")),
        ];
        assert_eq!(search(by_type, good.clone()), vec![]);
        assert_eq!(search(by_type_list, good), vec![]);
        assert_eq!(search(by_type, vec![(basic(None), Some("match"))]), vec![(error, at(0))]);
        assert_eq!(search(by_type, vec![(basic(None), Some("include"))]), vec![(error, at(0))]);
        let patient = json!({ "resourceType": "Patient", "id": "p" });
        assert_eq!(
            search(by_type, vec![(patient.clone(), Some("match"))]),
            vec![(error, at(0))],
            "not the searched type"
        );
        assert_eq!(search(by_type, vec![(basic(Some("1")), Some("outcome"))]), vec![(error, at(0))]);
        assert_eq!(
            search(by_type, vec![(basic(Some("1")), Some("match")), (basic(Some("2")), None)]),
            vec![(warning, "Bundle.entry[1]".to_string())],
            "once some entries have modes, each should"
        );
        // Without modes: warnings.
        assert_eq!(search(by_type, vec![(basic(Some("1")), None), (basic(Some("2")), None)]), vec![]);
        assert_eq!(search(by_type, vec![(basic(None), None)]), vec![(warning, at(0))]);
        assert_eq!(
            search(by_type, vec![(basic(Some("1")), None), (patient, None)]),
            vec![(warning, "Bundle.entry[1]".to_string()), (warning, "Bundle".to_string())],
            "a result of another type, and then the lack of modes"
        );
        assert_eq!(
            search(None, vec![(outcome, None)]),
            vec![(warning, "Bundle".to_string()), (warning, "Bundle".to_string())]
        );
    }

    /// A reference's own form (REFERENCE_REF_INVALID_REF, REFERENCE_REF_QUERY_INVALID).
    #[test]
    fn reference_strings_have_no_whitespace_and_conditional_ones_are_searches() {
        let at = |r: &str| {
            codes(json!({ "resourceType": "Patient", "managingOrganization": { "reference": r } }))
                .into_iter()
                .filter(|(c, _)| *c == IssueCode::InvalidValue)
                .map(|(_, p)| p)
                .collect::<Vec<_>>()
        };
        let flagged = vec!["Patient.managingOrganization.reference".to_string()];
        for ok in [
            "Organization/1",
            "http://x.org/fhir/Organization/1",
            "Organization?identifier=http://x|1",
            "Organization?name=a&_id=b",
        ] {
            assert!(at(ok).is_empty(), "{ok}");
        }
        for bad in
            ["Organization/ 1", "Organization?", "Organization?identifier", "Organization?1x=a", "Organization?a=b=c"]
        {
            assert_eq!(at(bad), flagged, "{bad}");
        }
    }

    /// R4 JSON has no `fhir_comments` (DSTU2 had): an unknown property wherever it appears.
    #[test]
    fn fhir_comments_are_not_r4_json() {
        let at_root = json!({ "resourceType": "Patient", "fhir_comments": ["a comment"] });
        assert_eq!(codes(at_root), vec![(IssueCode::UnknownElement, "Patient".to_string())]);
        let nested = json!({ "resourceType": "Patient", "name": [{ "fhir_comments": ["x"], "family": "Doe" }] });
        assert_eq!(codes(nested), vec![(IssueCode::UnknownElement, "Patient.name[0]".to_string())]);
        let on_primitive =
            json!({ "resourceType": "Patient", "birthDate": "2000-01-01", "_birthDate": { "fhir_comments": ["x"] } });
        assert!(codes(on_primitive).iter().any(|(c, _)| *c == IssueCode::UnknownElement));
    }

    /// Severity as the HL7 Java validator gives it: a reference whose type is known and not
    /// allowed (REFERENCE_REF_BADTARGETTYPE) and an empty narrative (txt-2) are errors.
    #[test]
    fn reference_target_types_and_empty_narratives_are_errors() {
        let severity_of = |v: Value, code: IssueCode| {
            validate(&v).into_iter().find(|i| i.code == code).map(|i| i.severity).expect("reported")
        };
        let bad_target = json!({ "resourceType": "Patient", "managingOrganization": { "reference": "Patient/1" } });
        use crate::fhir::outcome::Severity;
        assert_eq!(severity_of(bad_target, IssueCode::ReferenceType), Severity::Error);
        let empty = json!({ "resourceType": "Patient", "text": { "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">  </div>" } });
        assert_eq!(severity_of(empty, IssueCode::Invariant), Severity::Error);
        // An unknown type in the reference says nothing of the target: not checked.
        let unknown = json!({ "resourceType": "Patient", "managingOrganization": { "reference": "http://x.org/1" } });
        assert!(validate(&unknown).iter().all(|i| i.code != IssueCode::ReferenceType));
        let image = json!({ "resourceType": "Patient", "text": { "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"#a\"/></div>" } });
        assert!(validate(&image).iter().all(|i| !i.diagnostics.contains("txt-2")), "an image is content");
    }

    /// A reference's target type is also known from what it resolves to without a server, as
    /// the reference's localResolve finds it: a contained resource (`#id`), or the entry of the
    /// enclosing Bundle with that fullUrl (`urn:uuid:`, absolute URLs); REFERENCE_REF_BADTARGETTYPE.
    #[test]
    fn resolved_references_have_an_allowed_target_type() {
        let wrong = |v: Value| {
            validate(&v)
                .into_iter()
                .filter(|i| i.code == IssueCode::ReferenceType)
                .map(|i| (i.severity, i.expression.unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        let contained = |ty: &str| {
            json!({ "resourceType": "Patient", "contained": [{ "resourceType": ty, "id": "o", "name": [{ "text": "x" }] }],
                "managingOrganization": { "reference": "#o" } })
        };
        assert_eq!(wrong(contained("Organization")), vec![]);
        assert_eq!(
            wrong(contained("Practitioner")),
            vec![(Severity::Error, "Patient.managingOrganization.reference".into())]
        );
        let uuid = |i: u8| format!("urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a0{i}");
        let bundle = |target: &str| {
            json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
                { "fullUrl": uuid(1), "resource": { "resourceType": "Organization", "name": "x" }, "request": { "method": "POST", "url": "Organization" } },
                { "fullUrl": uuid(2), "resource": { "resourceType": "Patient" }, "request": { "method": "POST", "url": "Patient" } },
                { "fullUrl": "http://x.org/fhir/Group/g", "resource": { "resourceType": "Group", "id": "g", "type": "person", "actual": true }, "request": { "method": "PUT", "url": "Group/g" } },
                { "fullUrl": uuid(3), "resource": { "resourceType": "ServiceRequest", "status": "active", "intent": "order",
                    "subject": { "reference": target } }, "request": { "method": "POST", "url": "ServiceRequest" } }
            ] })
        };
        assert_eq!(wrong(bundle(&uuid(2))), vec![]);
        assert_eq!(wrong(bundle("http://x.org/fhir/Group/g")), vec![]);
        assert_eq!(
            wrong(bundle(&uuid(1))),
            vec![(Severity::Error, "Bundle.entry[3].resource.subject.reference".into())]
        );
    }

    /// Bundle entry fullUrls, as the HL7 Java validator's BundleValidator checks them
    /// (BUNDLE_BUNDLE_ENTRY_FULLURL_REQUIRED, BUNDLE_ENTRY_URL_ABSOLUTE,
    /// BUNDLE_ENTRY_URL_MATCHES_NO_ID, BUNDLE_ENTRY_URL_MATCHES_TYPE_ID).
    #[test]
    fn bundle_entry_full_urls_follow_the_reference_validator() {
        let entry = |full_url: Option<&str>, id: Option<&str>| {
            let mut e = json!({ "resource": { "resourceType": "Patient" } });
            if let Some(u) = full_url {
                e["fullUrl"] = json!(u);
            }
            if let Some(i) = id {
                e["resource"]["id"] = json!(i);
            }
            e
        };
        let check = |kind: &str, e: Value| {
            let mut b = json!({ "resourceType": "Bundle", "type": kind, "entry": [e] });
            if kind == "transaction" {
                b["entry"][0]["request"] = json!({ "method": "POST", "url": "Patient" });
            }
            codes(b).into_iter().filter(|(c, _)| *c == IssueCode::BundleFullUrl).map(|(_, at)| at).collect::<Vec<_>>()
        };
        let flagged = vec!["Bundle.entry[0]".to_string()];
        let fine: Vec<String> = vec![];
        // Valid: RESTful URL with its type and id; urn:uuid (not compared with the id, as in
        // Java); a base whose segments the pattern does not cover (a hyphen) is not RESTful-shaped;
        // a transaction needs no fullUrl.
        assert_eq!(check("collection", entry(Some("http://x.org/fhir/Patient/1"), Some("1"))), fine);
        assert_eq!(check("collection", entry(Some("https://x.org/Patient/a.b-1"), Some("a.b-1"))), fine);
        assert_eq!(check("collection", entry(Some("urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01"), Some("1"))), fine);
        assert_eq!(check("collection", entry(Some("http://my-host.org/Patient/9"), Some("1"))), fine);
        assert_eq!(check("transaction", entry(None, None)), fine);
        // Errors.
        assert_eq!(check("collection", entry(None, Some("1"))), flagged, "fullUrl required outside transactions");
        assert_eq!(check("searchset", entry(None, Some("1"))), flagged);
        assert_eq!(check("collection", entry(Some("Patient/1"), Some("1"))), flagged, "relative");
        assert_eq!(check("transaction", entry(Some("Patient/1"), None)), flagged, "relative, even in a transaction");
        assert_eq!(check("collection", entry(Some("http://x.org/fhir/Patient/1"), Some("2"))), flagged, "another id");
        assert_eq!(
            check("collection", entry(Some("http://x.org/fhir/Observation/1"), Some("1"))),
            flagged,
            "another type"
        );
        assert_eq!(check("collection", entry(Some("http://x.org/fhir/Patient/1"), None)), flagged, "no id");
        assert_eq!(check("document", entry(Some("Patient/1"), Some("1"))).len(), 1);
        // A canonical resource whose fullUrl is its canonical URL: only as its RESTful address
        // (BUNDLE_BUNDLE_ENTRY_MISMATCHIDURL).
        let code_system = |url: &str, full_url: &str| {
            check(
                "collection",
                json!({ "fullUrl": full_url, "resource": { "resourceType": "CodeSystem", "id": "cs",
                "url": url, "status": "active", "content": "not-present" } }),
            )
        };
        assert_eq!(code_system("http://x.org/fhir/CodeSystem/cs", "http://x.org/fhir/CodeSystem/cs"), fine);
        assert_eq!(code_system("http://x.org/cs", "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01"), fine);
        assert_eq!(code_system("http://x.org/codes", "http://x.org/codes"), flagged);
        assert_eq!(
            code_system("http://x.org/fhir/CodeSystem/other", "http://x.org/fhir/CodeSystem/other").len(),
            2,
            "and the id"
        );
    }

    #[test]
    fn attachment_size_and_bundle_link_relations() {
        let media = |size: u64| json!({ "resourceType": "Media", "status": "completed", "content": { "contentType": "text/plain", "data": "aGVscCBpJ20gYSBidWc=", "size": size } });
        // contentType is bound to MIME types, which Signpost cannot hold: information, not an error.
        let not_checked = (IssueCode::CodeNotChecked, "Media.content.contentType".to_string());
        assert_eq!(codes(media(14)), vec![not_checked.clone()]);
        assert_eq!(codes(media(100)), vec![not_checked, (IssueCode::InvalidValue, "Media.content".to_string())]);
        let bundle = json!({ "resourceType": "Bundle", "type": "searchset", "link": [
            { "relation": "self", "url": "http://x/a" }, { "relation": "next", "url": "http://x/b" }, { "relation": "self", "url": "http://x/c" }
        ]});
        assert_eq!(codes(bundle), vec![(IssueCode::Invariant, "Bundle.link[2]".to_string())]);
    }

    /// Links by Bundle type and searchset entries, as the reference's BundleValidator has them.
    #[test]
    fn bundle_links_by_type_and_search_entries() {
        let with_links = |kind: &str, rels: &[&str]| {
            let links: Vec<Value> =
                rels.iter().map(|r| json!({ "relation": r, "url": "http://x.org/fhir/a" })).collect();
            codes(json!({ "resourceType": "Bundle", "type": kind, "link": links }))
        };
        assert_eq!(with_links("searchset", &["self", "first", "next", "last", "alternate", "alternate"]), vec![]);
        assert_eq!(with_links("history", &["next", "next"]), vec![(IssueCode::Invariant, "Bundle.link[1]".into())]);
        assert_eq!(with_links("collection", &["self", "alternate"]), vec![]);
        assert_eq!(with_links("collection", &["next"]), vec![(IssueCode::Invariant, "Bundle.link[0].relation".into())]);
        assert_eq!(with_links("transaction", &["self", "self"]), vec![(IssueCode::Invariant, "Bundle.link[1]".into())]);
        let no_resource = json!({ "resourceType": "Bundle", "type": "searchset", "entry": [
            { "fullUrl": "http://x.org/fhir/Patient/1", "search": { "mode": "match" } }] });
        assert!(codes(no_resource).contains(&(IssueCode::Cardinality, "Bundle.entry[0]".into())));
    }

    #[test]
    fn primitives_twins_and_dates() {
        let ok = json!({ "resourceType": "Patient", "birthDate": "1948-07-02", "_birthDate": { "extension": [{ "url": "http://x", "valueString": "y" }] }, "name": [{ "given": ["A", null], "_given": [null, { "id": "g2" }] }] });
        assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));
        let bad = codes(json!({ "resourceType": "Patient", "birthDate": "1948-02-31", "active": "yes", "gender": "" }));
        assert!(bad.contains(&(IssueCode::InvalidValue, "Patient.birthDate".into())), "{bad:?}");
        assert!(bad.contains(&(IssueCode::WrongType, "Patient.active".into())), "{bad:?}");
        assert!(bad.contains(&(IssueCode::EmptyElement, "Patient.gender".into())), "{bad:?}");
    }

    #[test]
    fn blank_and_text_content_follow_the_reference_check_primitive() {
        let found = |v: Value| -> Vec<(Severity, IssueCode, String)> {
            validate(&v).into_iter().map(|i| (i.severity, i.code, i.expression.unwrap_or_default())).collect()
        };
        let dar = json!({ "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown" }] });
        // Empty: an error unless extensions carry the element (TYPE_SPECIFIC_CHECKS_DT_PRIMITIVE_NOTEMPTY).
        let carried = found(json!({ "resourceType": "Patient", "name": [{ "family": "", "_family": dar }] }));
        assert_eq!(carried, vec![]);
        let empty = found(json!({ "resourceType": "Patient", "name": [{ "family": "" }] }));
        assert_eq!(empty, vec![(Severity::Error, IssueCode::EmptyElement, "Patient.name[0].family".into())]);
        // Only whitespace, any type: a warning and nothing more (TYPE_SPECIFIC_CHECKS_DT_PRIMITIVE_WS).
        for (patient, at) in [
            (json!({ "resourceType": "Patient", "birthDate": " \u{a0} " }), "Patient.birthDate"),
            (
                json!({ "resourceType": "Patient", "telecom": [{ "system": "phone", "value": "\u{2003}" }] }),
                "Patient.telecom[0].value",
            ),
        ] {
            assert_eq!(found(patient), vec![(Severity::Warning, IssueCode::TextContent, at.to_string())]);
        }
        let given = found(json!({ "resourceType": "Patient", "name": [{ "given": ["\t"] }] }));
        assert_eq!(given, vec![(Severity::Warning, IssueCode::TextContent, "Patient.name[0].given[0]".into())]);
        // A string that starts or ends with whitespace: a warning (TYPE_SPECIFIC_CHECKS_DT_STRING_WS);
        // a code that does: an error (its regex).
        let padded = found(json!({ "resourceType": "Patient", "name": [{ "family": "Smith\n" }], "gender": "male " }));
        assert!(
            padded.contains(&(Severity::Warning, IssueCode::TextContent, "Patient.name[0].family".into())),
            "{padded:?}"
        );
        assert!(padded.iter().any(|(s, _, at)| *s == Severity::Error && at == "Patient.gender"), "{padded:?}");
        // Control characters: a warning (UNICODE_XML_BAD_CHARS).
        let ctl = found(json!({ "resourceType": "Patient", "name": [{ "family": "Sm\u{1}ith" }] }));
        assert_eq!(ctl, vec![(Severity::Warning, IssueCode::TextContent, "Patient.name[0].family".into())]);
        // Strings, element ids included, are at most 1 MB of UTF-16 units (DT_STRING_LENGTH).
        let long = |text: String| {
            found(json!({ "resourceType": "Location", "position": { "id": text, "longitude": 0, "latitude": 0 } }))
        };
        assert_eq!(
            long("a".repeat(1 << 20 | 1)),
            vec![(Severity::Error, IssueCode::InvalidValue, "Location.position.id".into())]
        );
        assert_eq!(long("a".repeat(1 << 20)), vec![]);
        assert_eq!(long("é".repeat(600_000)), vec![], "1.2 MB of UTF-8 is 600,000 UTF-16 units");
        // base64 with whitespace: a warning in R4 (BASE64_NO_WS_WARNING), not an error.
        let b64 = found(
            json!({ "resourceType": "Patient", "photo": [{ "contentType": "text/plain", "data": " aGVs bG8= " }] }),
        );
        let b64: Vec<_> = b64.into_iter().filter(|(s, ..)| *s != Severity::Information).collect();
        assert_eq!(b64, vec![(Severity::Warning, IssueCode::TextContent, "Patient.photo[0].data".into())]);
        // A required binding with the value only in extensions has no code (Terminology_TX_Code_ValueSet_MISSING);
        // an unbound or non-required one is fine.
        let no_code = found(json!({ "resourceType": "Patient", "_gender": dar }));
        assert_eq!(no_code, vec![(Severity::Error, IssueCode::CodeNotInValueSet, "Patient.gender".into())]);
        // In a repeating element, the item whose value is only in the twin array is the one.
        let days = found(
            json!({ "resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": { "reference": "Patient/1" },
            "occurrenceTiming": { "repeat": { "dayOfWeek": ["mon", null], "_dayOfWeek": [null, dar] } } }),
        );
        assert_eq!(
            days,
            vec![(
                Severity::Error,
                IssueCode::CodeNotInValueSet,
                "ServiceRequest.occurrence.ofType(Timing).repeat.dayOfWeek[1]".into()
            )]
        );
        // Another FHIR version's code in a cross-version extension: a warning (_XVER_SOURCE).
        let xver = json!({ "extension": [{ "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Patient.gender", "valueCode": "other" }] });
        let other_version = found(json!({ "resourceType": "Patient", "_gender": xver }));
        assert_eq!(other_version, vec![(Severity::Warning, IssueCode::CodeNotInValueSet, "Patient.gender".into())]);
        assert_eq!(found(json!({ "resourceType": "Patient", "_birthDate": dar })), vec![]);
        let twin_items = found(
            json!({ "resourceType": "Patient", "communication": [{ "language": { "text": "Welsh" } }],
            "contact": [{ "telecom": [{ "system": "phone", "value": "0113 496 0000" }] }], "name": [{ "given": [null], "_given": [dar] }] }),
        );
        assert_eq!(twin_items, vec![]);
    }

    /// Codings wherever they occur (a CodeableConcept, a choice element, a bare Coding such as
    /// Meta.tag) name their code system absolutely (Terminology_TX_System_Relative) and do not
    /// name a value set (Terminology_TX_System_ValueSet2).
    #[test]
    fn codings_name_absolute_code_systems_not_value_sets() {
        let found = |coding: Value| {
            let errors = |v: Value| -> Vec<String> {
                validate(&v)
                    .into_iter()
                    .filter(|i| i.severity == Severity::Error)
                    .map(|i| i.expression.unwrap_or_default())
                    .collect()
            };
            let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "coding": [coding.clone()] },
                "valueCodeableConcept": { "coding": [coding.clone()] } });
            let tagged = json!({ "resourceType": "Basic", "meta": { "tag": [coding] }, "code": { "text": "x" } });
            [errors(observation), errors(tagged)].concat()
        };
        for system in ["http://snomed.info/sct", "https://fhir.nhs.uk/CodeSystem/x", "urn:iso:std:iso:3166"] {
            assert_eq!(found(json!({ "system": system, "code": "a" })), Vec::<String>::new(), "{system}");
        }
        let all = vec![
            "Observation.code.coding[0].system".to_string(),
            "Observation.value.ofType(CodeableConcept).coding[0].system".to_string(),
            "Basic.meta.tag[0].system".to_string(),
        ];
        for system in [
            "Location1",
            "snomed",
            "ldap:o=nhs",
            "http://hl7.org/fhir/ValueSet/measure-type",
            "http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1",
        ] {
            assert_eq!(found(json!({ "system": system, "code": "a" })), all, "{system}");
        }
        // Without a code there is nothing to look up, so a value set URL is not refused (Java
        // checks it only for a coded Coding); a relative one still is.
        assert_eq!(
            found(json!({ "system": "http://hl7.org/fhir/ValueSet/measure-type", "display": "x" })),
            Vec::<String>::new()
        );
        assert_eq!(found(json!({ "system": "local", "display": "x" })), all);
    }

    /// Cardinality messages name the element as its definition does, a choice element with one
    /// `[x]` (Java: "MedicationRequest.medication[x]: minimum required = 1, but only found 0").
    #[test]
    fn cardinality_names_the_element_as_its_definition_does() {
        let diags = |v: Value| validate(&v).into_iter().map(|i| i.diagnostics).collect::<Vec<_>>();
        let request = json!({ "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": { "reference": "Patient/1" } });
        assert_eq!(diags(request), vec!["MedicationRequest.medication[x]: minimum required = 1, but only found 0"]);
        let patient = json!({ "resourceType": "Patient", "link": [{ "type": "seealso" }] });
        assert_eq!(diags(patient), vec!["Patient.link.other: minimum required = 1, but only found 0"]);
    }

    #[test]
    fn identifiers_references_and_years_follow_the_reference_type_checks() {
        let found = |v: Value| -> Vec<(Severity, String)> {
            validate(&v).into_iter().map(|i| (i.severity, i.expression.unwrap_or_default())).collect()
        };
        let ids = |system: &str, value: &str| {
            found(json!({ "resourceType": "Patient", "identifier": [{ "system": system, "value": value }] }))
        };
        // TYPE_SPECIFIC_CHECKS_DT_IDENTIFIER_SYSTEM: an absolute system (http, https, urn, ldap).
        for system in ["https://fhir.nhs.uk/Id/nhs-number", "urn:oid:2.16.840.1.113883.2.1.4.1", "ldap:o=nhs"] {
            assert_eq!(ids(system, "9000000009"), vec![], "{system}");
        }
        for system in ["local-mrn", "nhs-number", "Id/nhs-number"] {
            assert_eq!(ids(system, "1"), vec![(Severity::Error, "Patient.identifier[0]".into())], "{system}");
        }
        // Under urn:ietf:rfc:3986 the value is itself a URI (…_IETF_SYSTEM_VALUE).
        assert_eq!(ids("urn:ietf:rfc:3986", "urn:oid:1.2.3"), vec![]);
        assert_eq!(ids("urn:ietf:rfc:3986", "1.2.3"), vec![(Severity::Error, "Patient.identifier[0]".into())]);
        // The RFC 4122 page is not a system: a warning for a UUID, an error for anything else.
        let uuid = "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0";
        assert_eq!(
            ids("https://tools.ietf.org/html/rfc4122", uuid),
            vec![(Severity::Warning, "Patient.identifier[0]".into())]
        );
        assert_eq!(
            ids("https://tools.ietf.org/html/rfc4122", "abc"),
            vec![(Severity::Error, "Patient.identifier[0]".into())]
        );
        // REFERENCE_REF_NODISPLAY: a Reference with nothing to follow should say what it means.
        let gp = |r: Value| found(json!({ "resourceType": "Patient", "generalPractitioner": [r] }));
        assert_eq!(gp(json!({ "display": "Dr A Patel" })), vec![]);
        assert_eq!(
            gp(json!({ "identifier": { "system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "G1" } })),
            vec![]
        );
        let dar =
            json!([{ "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown" }]);
        assert_eq!(gp(json!({ "extension": dar })), vec![(Severity::Warning, "Patient.generalPractitioner[0]".into())]);
        // TYPE_SPECIFIC_CHECKS_DT_DATETIME_REASONABLE: before 1800 or 80 years ahead.
        let born = |d: &str| found(json!({ "resourceType": "Patient", "birthDate": d }));
        assert_eq!(born("1801-01-01"), vec![]);
        assert_eq!(born("1799-12-31"), vec![(Severity::Warning, "Patient.birthDate".into())]);
        assert_eq!(born(&format!("{}", this_year() + 81)), vec![(Severity::Warning, "Patient.birthDate".into())]);
    }

    #[test]
    fn markdown_html_tags_are_flagged_like_the_reference_markdown_processor() {
        for (text, html) in [
            ("Take <b>two</b> tablets", true),
            ("see </p>", true),
            ("<!-- note -->", true),
            ("a < b and 3<4", false),
            ("escaped \\<b> tag", false),
            ("<2 hours", false),
            ("x <b", false),
            ("<br>", true),
            ("<custom-tag attr>", true),
        ] {
            assert_eq!(markdown_has_html(text), html, "{text}");
        }
        let plan = |text: &str| {
            json!({ "resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": { "reference": "Patient/1" }, "note": [{ "text": text }] })
        };
        assert_eq!(codes(plan("Take <b>two</b>")), vec![(IssueCode::TextContent, "CarePlan.note[0].text".into())]);
        assert_eq!(codes(plan("Take 2 <3 times")), vec![]);
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|f| json!(f)),
                "[a-zA-Z0-9 _:/.|-]{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec(
                        (
                            prop_oneof![
                                Just("id".to_string()),
                                Just("extension".to_string()),
                                Just("valueString".to_string()),
                                Just("_status".to_string()),
                                Just("status".to_string()),
                                Just("subject".to_string()),
                                Just("reference".to_string()),
                                Just("coding".to_string()),
                                Just("contained".to_string()),
                                Just("entry".to_string()),
                                Just("resource".to_string()),
                                Just("resourceType".to_string()),
                                Just("identifier".to_string()),
                                Just("system".to_string()),
                                Just("url".to_string()),
                                Just("telecom".to_string()),
                                Just("item".to_string()),
                                Just("linkId".to_string()),
                                Just("differential".to_string()),
                                Just("slicing".to_string()),
                                Just("div".to_string()),
                                "[a-z_]{1,8}"
                            ],
                            inner
                        ),
                        0..6
                    )
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
            #[test]
            fn validation_never_panics_on_arbitrary_json(
                ty in prop_oneof![Just("ServiceRequest"), Just("Task"), Just("Bundle"), Just("Patient"), Just("Questionnaire"),
                                  Just("Consent"), Just("StructureDefinition"), Just("QuestionnaireResponse"), Just("Nope")],
                body in json()
            ) {
                let mut v = body;
                if let Value::Object(o) = &mut v {
                    o.insert("resourceType".into(), json!(ty));
                }
                // Every layer a write goes through: base, profiles, referral rules.
                let mut issues = validate(&v);
                crate::fhir::profiles::Profiles::shared().check(&v, ty, true, &[], &mut issues);
                let mode = crate::fhir::ValidationMode::Enforce;
                let Ok(()) = crate::fhir::check_referral_rules(&v, ty, mode, &mut crate::fhir::referral_rules::Offline, &mut issues);
            }
        }
    }
}
