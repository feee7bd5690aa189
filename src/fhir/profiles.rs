//! Signpost's profiles (`fhir-profiles/signpost/`), applied on top of the base validation.
//!
//! Every Signpost profile derives directly from an R4 resource, so an instance conforms when
//! it passes the base definition (the validator) and the profile's differential, which is what
//! this module checks: cardinality, fixed and pattern values, bindings (required: error,
//! extensible and preferred: warning) against Signpost's and R4's value sets, allowed types and
//! reference targets, FHIRPath constraints, and slicing with `value`, `pattern` and `type`
//! (on `$this`) discriminators (slice cardinality; `closed` slicing refuses items no slice
//! matches; slices of other discriminators are not checked).
//!
//! Which profiles apply: those the resource claims in `meta.profile` (an unknown one is a
//! warning, not checked), the profile Signpost requires for the resource type (the route
//! profile: referral ServiceRequest, Task, Patient, Consent, charity HealthcareService,
//! Endpoint) and any named by `$validate`'s `profile` parameter. The profiles, code systems and
//! value sets are embedded and compiled once.

use std::sync::{Arc, OnceLock};

use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::Value;

use super::definitions::{Constraint, Definitions};
use super::fhirpath;
use super::items;
use super::outcome::{Issue, IssueCode, Severity};
use super::validator::{coding_key, matches_pattern};

/// The R4 core profiles and extension definitions (differentials), from `regenerate.py`.
static R4_PROFILES: &str = include_str!("../../fhir-profiles/r4/profiles.json");

static FILES: &[&str] = &[
    include_str!("../../fhir-profiles/signpost/StructureDefinition-signpost-referral-servicerequest.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-signpost-referral-task.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-signpost-patient.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-signpost-consent-vcs.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-signpost-charity-healthcareservice.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-signpost-endpoint.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-contact-preference.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-service-capacity.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-service-contact-mode.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-service-age-range.json"),
    include_str!("../../fhir-profiles/signpost/StructureDefinition-coverage-postcode.json"),
    include_str!("../../fhir-profiles/signpost/CodeSystem-service-capacity.json"),
    include_str!("../../fhir-profiles/signpost/CodeSystem-contact-mode.json"),
    include_str!("../../fhir-profiles/signpost/ValueSet-service-capacity.json"),
    include_str!("../../fhir-profiles/signpost/ValueSet-contact-mode.json"),
    include_str!("../../fhir-profiles/signpost/CodeSystem-referral-outcome.json"),
    include_str!("../../fhir-profiles/signpost/CodeSystem-rejection-reason.json"),
    include_str!("../../fhir-profiles/signpost/CodeSystem-support-outcome.json"),
    include_str!("../../fhir-profiles/signpost/CodeSystem-contact-preference.json"),
    include_str!("../../fhir-profiles/signpost/CodeSystem-consent-category.json"),
    include_str!("../../fhir-profiles/signpost/ValueSet-referral-outcome.json"),
    include_str!("../../fhir-profiles/signpost/ValueSet-rejection-reason.json"),
    include_str!("../../fhir-profiles/signpost/ValueSet-support-outcome.json"),
    include_str!("../../fhir-profiles/signpost/ValueSet-contact-preference.json"),
    include_str!("../../fhir-profiles/signpost/ValueSet-consent-category.json"),
];

const BASE: &str = "https://signpost.example/fhir/StructureDefinition/";

/// R4 §8.8 (Observation, vital signs): an Observation whose code is one of the vital signs
/// SHALL conform to the matching core profile, claimed or not. The codes per profile, LOINC
/// first and then SNOMED CT, the first match winning, are those the HL7 Java validator applies
/// (`BasePolicyAdvisorForFullValidation.getImpliedProfilesForObservation`).
const VITAL_SIGNS: &[(&str, &str, &[&str])] = &[
    ("http://loinc.org", "http://hl7.org/fhir/StructureDefinition/vitalspanel", &["85353-1"]),
    (
        "http://loinc.org",
        "http://hl7.org/fhir/StructureDefinition/resprate",
        &["9279-1", "76170-0", "76172-6", "76171-8", "19840-8", "33438-3", "76270-8", "11291-2"],
    ),
    (
        "http://loinc.org",
        "http://hl7.org/fhir/StructureDefinition/heartrate",
        &[
            "60978-4", "73795-7", "73799-9", "76476-1", "76477-9", "8867-4", "8889-8", "8890-6", "8891-4", "8892-2",
            "8893-0", "40443-4", "55425-3", "68999-2", "11328-2", "69000-8", "8886-4",
        ],
    ),
    (
        "http://loinc.org",
        "http://hl7.org/fhir/StructureDefinition/oxygensat",
        &[
            "2708-6", "19224-5", "20564-1", "2709-4", "2710-2", "2713-6", "51733-4", "59408-5", "59417-6", "89276-0",
            "97549-0",
        ],
    ),
    (
        "http://loinc.org",
        "http://hl7.org/fhir/StructureDefinition/bodytemp",
        &[
            "8310-5", "60834-9", "60835-6", "60836-4", "60838-0", "60955-2", "61009-7", "75539-7", "75987-8",
            "76010-8", "76011-6", "76278-1", "8309-7", "8328-7", "8329-5", "8330-3", "8331-1", "8332-9", "8333-7",
            "8334-5", "91371-5", "98657-0", "98663-8",
        ],
    ),
    (
        "http://loinc.org",
        "http://hl7.org/fhir/StructureDefinition/bodyheight",
        &["8302-2", "3137-7", "3138-5", "8306-3", "8308-9"],
    ),
    ("http://loinc.org", "http://hl7.org/fhir/StructureDefinition/headcircum", &["9843-4", "8287-5"]),
    (
        "http://loinc.org",
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
        &["29463-7", "3141-9", "3142-7", "75292-3", "79348-9", "8350-1", "8351-9"],
    ),
    ("http://loinc.org", "http://hl7.org/fhir/StructureDefinition/bmi", &["39156-5", "89270-3"]),
    (
        "http://loinc.org",
        "http://hl7.org/fhir/StructureDefinition/bp",
        &["85354-9", "35094-2", "8459-0", "76534-7", "55284-4", "8480-6"],
    ),
    ("http://snomed.info/sct", "http://hl7.org/fhir/StructureDefinition/vitalspanel", &["46680005"]),
    (
        "http://snomed.info/sct",
        "http://hl7.org/fhir/StructureDefinition/resprate",
        &["86290005", "271625008", "271306003"],
    ),
    (
        "http://snomed.info/sct",
        "http://hl7.org/fhir/StructureDefinition/heartrate",
        &["271306003", "249043002", "444981005", "399017001", "251670001", "429525003", "429614003"],
    ),
    ("http://snomed.info/sct", "http://hl7.org/fhir/StructureDefinition/oxygensat", &["442476006", "431314004"]),
    (
        "http://snomed.info/sct",
        "http://hl7.org/fhir/StructureDefinition/bodytemp",
        &[
            "386725007",
            "276885007",
            "300076005",
            "1222808002",
            "364246006",
            "307047009",
            "708499008",
            "431598003",
            "698831002",
            "698832009",
            "415882003",
            "415974002",
            "415929009",
            "415945006",
        ],
    ),
    (
        "http://snomed.info/sct",
        "http://hl7.org/fhir/StructureDefinition/bodyheight",
        &["1153637007", "1162419008", "50373000", "1162418000", "1230278008", "1162392001", "1162417005"],
    ),
    (
        "http://snomed.info/sct",
        "http://hl7.org/fhir/StructureDefinition/headcircum",
        &["363812007", "169876006", "1269262007", "363811000"],
    ),
    (
        "http://snomed.info/sct",
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
        &["735395000", "425024002", "424927000", "784399000", "1162416001", "1162415002"],
    ),
    ("http://snomed.info/sct", "http://hl7.org/fhir/StructureDefinition/bmi", &["60621009"]),
    (
        "http://snomed.info/sct",
        "http://hl7.org/fhir/StructureDefinition/bp",
        &[
            "251076008",
            "163033001",
            "163035008",
            "386534000",
            "386536003",
            "271649006",
            "271650006",
            "407556006",
            "407554009",
            "716579001",
            "399304008",
        ],
    ),
];

/// The members of an R4 value set with a bundled expansion, as `system|code` and bare `code`.
pub(super) fn r4_value_set_members(url: &str) -> Option<FxHashSet<String>> {
    let members = Definitions::shared().valuesets.get(url.split('|').next().unwrap_or(url))?;
    Some(members.iter().flat_map(|k| [k.clone(), k.rsplit('|').next().unwrap_or(k).to_string()]).collect())
}

/// Every code of a loaded value set, as `system|code` and bare `code`, or `None` when it cannot
/// be enumerated: its expansion if it has one; else its `compose`: each include's listed
/// concepts, or every code of a code system Signpost holds, or the members of the value sets it
/// includes by reference (a loaded one, or an R4 value set with a bundled expansion), restricted
/// to the include's system when it names one; less the excluded concepts.
pub(super) fn enumerate_value_set(
    vs: &Value,
    systems: &FxHashMap<String, Vec<String>>,
    loaded: &FxHashMap<&str, &Value>,
    depth: usize,
) -> Option<FxHashSet<String>> {
    if depth > 8 {
        return None;
    }
    let mut set = FxHashSet::default();
    let add = |set: &mut FxHashSet<String>, system: &str, code: &str| {
        set.insert(format!("{system}|{code}"));
        set.insert(code.to_string());
    };
    if let Some(contains) = vs.pointer("/expansion/contains").and_then(Value::as_array) {
        fn walk(c: &[Value], set: &mut FxHashSet<String>) {
            for e in c {
                if let (Some(s), Some(code)) =
                    (e.get("system").and_then(Value::as_str), e.get("code").and_then(Value::as_str))
                {
                    set.insert(format!("{s}|{code}"));
                    set.insert(code.to_string());
                }
                walk(e.get("contains").and_then(Value::as_array).map_or(&[], Vec::as_slice), set);
            }
        }
        walk(contains, &mut set);
        return Some(set);
    }
    let includes: Vec<&Value> = items(vs.get("compose")?, "include").collect();
    if includes.is_empty() {
        return None;
    }
    for inc in includes {
        let system = inc.get("system").and_then(Value::as_str);
        if inc.get("filter").is_some() {
            return None;
        }
        let listed: Vec<&str> = items(inc, "concept").filter_map(|c| c.get("code")?.as_str()).collect();
        let referenced: Vec<&str> = items(inc, "valueSet").filter_map(Value::as_str).collect();
        if !referenced.is_empty() {
            // The members of every referenced value set (their intersection, as R4 says, taken
            // as the first one's members that the others also hold).
            let mut members: Option<FxHashSet<String>> = None;
            for url in referenced {
                let url = url.split('|').next().unwrap_or(url);
                let these = match loaded.get(url) {
                    Some(other) => enumerate_value_set(other, systems, loaded, depth + 1)?,
                    None => r4_value_set_members(url)?,
                };
                members = Some(match members {
                    None => these,
                    Some(m) => m.intersection(&these).cloned().collect(),
                });
            }
            for key in members.unwrap_or_default() {
                match (system, key.split_once('|')) {
                    (Some(s), Some((ks, code))) if ks == s => add(&mut set, s, code),
                    (None, Some((ks, code))) => add(&mut set, ks, code),
                    _ => {}
                }
            }
            continue;
        }
        let system = system?;
        if listed.is_empty() {
            for code in systems.get(system)? {
                add(&mut set, system, code);
            }
        } else {
            for code in listed {
                add(&mut set, system, code);
            }
        }
    }
    for exc in vs.pointer("/compose/exclude").and_then(Value::as_array).into_iter().flatten() {
        let system = exc.get("system").and_then(Value::as_str).unwrap_or_default();
        for code in items(exc, "concept").filter_map(|c| c.get("code")?.as_str()) {
            set.remove(&format!("{system}|{code}"));
            if !set.iter().any(|k| k.ends_with(&format!("|{code}"))) {
                set.remove(code);
            }
        }
    }
    Some(set)
}

/// The FHIR type code of a choice property's JSON suffix: `Quantity` stays, `String` is
/// `string` (primitive types are lower case).
fn choice_type_code(suffix: &str) -> String {
    let mut chars = suffix.chars();
    let lower = chars.next().map(|c| c.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default();
    if Definitions::shared().regexes.contains_key(&lower)
        || matches!(lower.as_str(), "boolean" | "integer" | "decimal" | "xhtml")
    {
        lower
    } else {
        suffix.to_string()
    }
}

/// The type a path's last step names: `Quantity` in `Observation.value.ofType(Quantity)`.
fn choice_type_in(path: &str) -> &str {
    if let Some(start) = path.rfind(".ofType(") {
        let rest = &path[start + 8..];
        return rest.split(')').next().unwrap_or(rest);
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    last.trim_start_matches(|c: char| c.is_ascii_lowercase())
}

/// The values at a dotted path below `item`, through repeating elements; a choice step
/// (`value`) finds its typed property (`valueQuantity`).
fn values_at<'v>(item: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut values = vec![item];
    for k in path.split('.') {
        values = values
            .into_iter()
            .filter_map(|v| {
                v.get(k).or_else(|| {
                    v.as_object()?.iter().find_map(|(key, x)| {
                        key.strip_prefix(k).filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase())).map(|_| x)
                    })
                })
            })
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                v => vec![v],
            })
            .collect();
    }
    values
}

/// The core vital signs profile an Observation's code implies, if any (see [`VITAL_SIGNS`]).
fn implied_vital_signs_profile(observation: &Value) -> Option<&'static str> {
    let codings: Vec<(&str, &str)> = items(observation.get("code").unwrap_or(&Value::Null), "coding")
        .filter_map(|c| Some((c.get("system")?.as_str()?, c.get("code")?.as_str()?)))
        .collect();
    VITAL_SIGNS
        .iter()
        .find(|(system, _, codes)| codings.iter().any(|(s, c)| s == system && codes.contains(c)))
        .map(|(_, url, _)| *url)
}

/// The profile Signpost requires for each resource type it takes referrals and directory
/// entries in.
const ROUTE_PROFILES: &[(&str, &str)] = &[
    ("ServiceRequest", "signpost-referral-servicerequest"),
    ("Task", "signpost-referral-task"),
    ("Patient", "signpost-patient"),
    ("Consent", "signpost-consent-vcs"),
    ("HealthcareService", "signpost-charity-healthcareservice"),
    ("Endpoint", "signpost-endpoint"),
];

/// One path step of an element id: `identifier:nhsNumber` or `value[x]`.
#[derive(Debug, Clone)]
struct Step {
    name: String,
    choice: bool,
    slice: Option<String>,
    /// For a slice step: the sliced element's id and the slice's id, built once.
    ids: Option<(String, String)>,
}

#[derive(Debug, Clone)]
enum Discriminator {
    /// The item's value at the path equals the slice's fixed value (or matches its pattern).
    Value(String),
    /// The item matches the slice's pattern at the path (`$this`: the item itself).
    Pattern(String),
    /// `type` on `$this`: the item's type (a choice element's type suffix, or a resource's
    /// `resourceType`) is the slice's type.
    Type,
    /// `type` on another path (`resource`): the resource there is of the slice's type.
    TypeAt(String),
    /// `profile` on a path: the resource there is of the slice's type and conforms to one of
    /// its profiles (when Signpost holds one; else the type decides).
    Profile(String),
    /// `exists` and `position` discriminators, which Signpost does not evaluate: slices of
    /// such a slicing are not checked (rather than guessed).
    Unsupported,
}

#[derive(Debug, Clone)]
struct Element {
    id: String,
    steps: Vec<Step>,
    min: Option<u32>,
    max: Option<Option<u32>>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    binding: Option<(bool, String)>,
    types: Vec<(String, Vec<String>)>,
    /// The profiles of its types (`type.profile`), which a `profile` discriminator applies.
    type_profiles: Vec<String>,
    constraints: Vec<Constraint>,
    slicing: Option<(Vec<Discriminator>, bool)>,
}

/// A compiled profile.
#[derive(Debug)]
pub struct Profile {
    pub url: String,
    pub type_name: String,
    /// `baseDefinition`: a profile it constrains further, or the base type.
    base: Option<String>,
    /// For an extension definition: the elements it may be used on (`element` contexts).
    pub contexts: Vec<String>,
    /// For an extension definition: whether it is a modifier extension, when its root element
    /// says (`isModifier`, in the differential or the snapshot); `None` when it does not.
    modifier: Option<bool>,
    elements: Vec<Element>,
    by_id: FxHashMap<String, usize>,
}

impl Profile {
    /// The value this profile fixes for an element id, if any.
    pub fn fixed_value(&self, id: &str) -> Option<&Value> {
        self.by_id.get(id).and_then(|&i| self.elements[i].fixed.as_ref())
    }
}

/// Profiles and terminology: Signpost's, the R4 core profiles and extension definitions, and
/// any an integrator loads (an implementation guide's StructureDefinitions, ValueSets,
/// CodeSystems and the global profiles of its ImplementationGuide).
pub struct Profiles {
    by_url: FxHashMap<String, Arc<Profile>>,
    /// Value set URL → `system|code` and bare codes.
    codes: FxHashMap<String, FxHashSet<String>>,
    /// Profiles that apply to every resource of a type (`ImplementationGuide.global`).
    globals: Vec<(String, String)>,
    /// The resources it was built from, to extend it ([`Profiles::with`]).
    sources: Vec<Value>,
    /// Questionnaires and Measures among them, by canonical URL.
    definitions: FxHashMap<String, usize>,
}

fn parse_steps(id: &str) -> Vec<Step> {
    let mut steps = id
        .split('.')
        .map(|s| {
            let (name, slice) = match s.split_once(':') {
                Some((n, sl)) => (n, Some(sl.to_string())),
                None => (s, None),
            };
            let choice = name.ends_with("[x]");
            Step { name: name.trim_end_matches("[x]").to_string(), choice, slice, ids: None }
        })
        .collect::<Vec<_>>();
    for k in 0..steps.len() {
        if let Some(slice) = &steps[k].slice {
            let sliced = id_of(&steps[..=k], false);
            let slice_id = format!("{sliced}:{slice}");
            steps[k].ids = Some((sliced, slice_id));
        }
    }
    steps
}

fn compile_element(raw: &Value) -> Option<Element> {
    let o = raw.as_object()?;
    // Some differentials give only the path (no slices then): the id is the path.
    let id = o.get("id").or_else(|| o.get("path"))?.as_str()?.to_string();
    let get = |prefix: &str| o.iter().find(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone());
    let constraints = items(raw, "constraint")
        .filter_map(|c| {
            let expression = c.get("expression")?.as_str()?.to_string();
            Some(Constraint {
                key: c.get("key")?.as_str()?.to_string(),
                severity: c.get("severity").and_then(Value::as_str).unwrap_or("error").to_string(),
                human: c.get("human").and_then(Value::as_str).unwrap_or_default().to_string(),
                compiled: fhirpath::parse(&expression).ok().map(Arc::new),
                expression,
            })
        })
        .collect();
    let slicing = o.get("slicing").map(|s| {
        let discs = items(s, "discriminator")
            .filter_map(|d| {
                // `$this.name` is `name`: FHIRPath starts at the sliced item either way; a choice
                // step may be written `value[x]`. A path with a function (`resolve()`,
                // `ofType(..)`) cannot be followed in the JSON: its slices are not checked.
                let path = d.get("path")?.as_str()?;
                let path = path.strip_prefix("$this.").unwrap_or(path).replace("[x]", "");
                let plain = path == "$this"
                    || path
                        .split('.')
                        .all(|step| !step.is_empty() && step.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                if !plain {
                    return Some(Discriminator::Unsupported);
                }
                match d.get("type")?.as_str()? {
                    "value" => Some(Discriminator::Value(path)),
                    "pattern" => Some(Discriminator::Pattern(path)),
                    "type" if path == "$this" => Some(Discriminator::Type),
                    "type" => Some(Discriminator::TypeAt(path)),
                    "profile" => Some(Discriminator::Profile(path)),
                    _ => Some(Discriminator::Unsupported),
                }
            })
            .collect();
        (discs, s.get("rules").and_then(Value::as_str) == Some("closed"))
    });
    Some(Element {
        steps: parse_steps(&id),
        min: o.get("min").and_then(Value::as_u64).map(|m| m as u32),
        max: o.get("max").and_then(Value::as_str).map(|m| if m == "*" { None } else { m.parse().ok() }),
        fixed: get("fixed"),
        pattern: get("pattern"),
        binding: o.get("binding").and_then(|b| {
            let strength = b.get("strength")?.as_str()?;
            let vs = b.get("valueSet")?.as_str()?.to_string();
            match strength {
                "required" => Some((true, vs)),
                "extensible" | "preferred" => Some((false, vs)),
                _ => None,
            }
        }),
        types: items(raw, "type")
            .filter_map(|t| {
                let code = t.get("code")?.as_str()?.to_string();
                let targets = items(t, "targetProfile").filter_map(|p| p.as_str().map(str::to_string)).collect();
                Some((code, targets))
            })
            .collect(),
        type_profiles: items(raw, "type")
            .flat_map(|t| items(t, "profile"))
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect(),
        constraints,
        slicing,
        id,
    })
}

impl Profiles {
    pub fn shared() -> &'static Profiles {
        static SHARED: OnceLock<Profiles> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut resources: Vec<Value> = serde_json::from_str(R4_PROFILES).expect("bundled R4 profiles are JSON");
            resources
                .extend(FILES.iter().map(|t| serde_json::from_str::<Value>(t).expect("bundled profiles are JSON")));
            Profiles::load(resources).expect("bundled profiles are valid")
        })
    }

    /// These profiles plus `extra` conformance resources (an implementation guide's).
    pub fn with(&self, extra: Vec<Value>) -> Result<Profiles, String> {
        let mut all = self.sources.clone();
        all.extend(extra);
        Profiles::load(all)
    }

    /// Compile StructureDefinitions (differentials), CodeSystems and ValueSets.
    fn load(resources: Vec<Value>) -> Result<Self, String> {
        let mut by_url = FxHashMap::default();
        let mut systems: FxHashMap<String, Vec<String>> = FxHashMap::default();
        let mut valuesets = Vec::new();
        let mut globals = Vec::new();
        for v in &resources {
            let url = v.get("url").and_then(Value::as_str).unwrap_or_default().to_string();
            match v.get("resourceType").and_then(Value::as_str) {
                Some("StructureDefinition") => {
                    let elements: Vec<Element> = v
                        .pointer("/differential/element")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(compile_element)
                        .collect();
                    let by_id = elements.iter().enumerate().map(|(i, e)| (e.id.clone(), i)).collect();
                    let type_name = v.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
                    let base = v.get("baseDefinition").and_then(Value::as_str).map(str::to_string);
                    let contexts = items(v, "context")
                        .filter(|c| c.get("type").and_then(Value::as_str) == Some("element"))
                        .filter_map(|c| c.get("expression")?.as_str().map(str::to_string))
                        .collect();
                    let modifier = ["/differential/element/0", "/snapshot/element/0"]
                        .iter()
                        .filter_map(|p| v.pointer(p))
                        .filter(|root| root.get("path").and_then(Value::as_str) == Some("Extension"))
                        .find_map(|root| root.get("isModifier").and_then(Value::as_bool));
                    by_url.insert(
                        url.clone(),
                        Arc::new(Profile { url, type_name, base, contexts, modifier, elements, by_id }),
                    );
                }
                Some("CodeSystem") => {
                    let codes =
                        items(v, "concept").filter_map(|c| c.get("code")?.as_str().map(str::to_string)).collect();
                    systems.insert(url, codes);
                }
                Some("ValueSet") => valuesets.push(v),
                Some("ImplementationGuide") => {
                    for g in items(v, "global") {
                        if let (Some(t), Some(p)) =
                            (g.get("type").and_then(Value::as_str), g.get("profile").and_then(Value::as_str))
                        {
                            globals.push((t.to_string(), p.to_string()));
                        }
                    }
                }
                _ => {}
            }
        }
        let by_vs_url: FxHashMap<&str, &Value> =
            valuesets.iter().filter_map(|vs| Some((vs.get("url")?.as_str()?, *vs))).collect();
        let mut codes = FxHashMap::default();
        for vs in &valuesets {
            let url = vs.get("url").and_then(Value::as_str).unwrap_or_default().to_string();
            // A value set Signpost cannot enumerate whole (a system it does not hold, a value
            // set it cannot find) is not checked, rather than checked against part of itself.
            if let Some(set) = enumerate_value_set(vs, &systems, &by_vs_url, 0) {
                codes.insert(url, set);
            }
        }
        let definitions = resources
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.get("resourceType").and_then(Value::as_str), Some("Questionnaire" | "Measure")))
            .filter_map(|(i, r)| Some((r.get("url")?.as_str()?.to_string(), i)))
            .collect();
        Ok(Self { by_url, codes, globals, sources: resources, definitions })
    }

    pub fn get(&self, url: &str) -> Option<&Profile> {
        self.by_url.get(url.split('|').next().unwrap_or(url)).map(Arc::as_ref)
    }

    /// The profile Signpost requires for a resource type, if any.
    pub fn route_profile(&self, resource_type: &str) -> Option<&Profile> {
        let name = ROUTE_PROFILES.iter().find(|(t, _)| *t == resource_type)?.1;
        self.get(&format!("{BASE}{name}"))
    }

    /// A profile and the loaded profiles it derives from, nearest first.
    fn lineage<'p>(&'p self, p: &'p Profile) -> Vec<&'p Profile> {
        let mut out = vec![p];
        let mut next = p.base.as_deref();
        while let Some(url) = next
            && let Some(b) = self.get(url)
            && out.len() < 16
        {
            out.push(b);
            next = b.base.as_deref();
        }
        out
    }

    /// Apply the profiles that concern `resource` (at `path`): the ones in `meta.profile`, the
    /// route profile when `route`, and `extra`; and the same for each entry of a Bundle.
    pub fn check(&self, resource: &Value, path: &str, route: bool, extra: &[&Profile], issues: &mut Vec<Issue>) {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else { return };
        let mut applied: Vec<&Profile> = Vec::new();
        for (k, claimed) in
            resource.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            let Some(url) = claimed.as_str() else { continue };
            match self.get(url) {
                Some(p) => applied.push(p),
                None => issues.push(
                    Issue::warning(
                        IssueCode::ProfileUnknown,
                        "this profile is not one Signpost bundles, so the resource was not checked against it",
                    )
                    .at(format!("{path}.meta.profile[{k}]")),
                ),
            }
        }
        if route && let Some(p) = self.route_profile(ty) {
            applied.push(p);
        }
        if ty == "Observation"
            && let Some(url) = implied_vital_signs_profile(resource)
            && let Some(p) = self.get(url)
        {
            applied.push(p);
        }
        for (t, url) in &self.globals {
            if t == ty
                && let Some(p) = self.get(url)
            {
                applied.push(p);
            }
        }
        applied.extend(extra.iter().copied());
        let applied: Vec<&Profile> = applied.into_iter().flat_map(|p| self.lineage(p)).collect();
        let mut seen = FxHashSet::default();
        for p in applied.into_iter().filter(|p| seen.insert(p.url.as_str())) {
            if p.type_name == ty {
                ProfileCheck { profile: p, terms: self, resource, issues, depth: 0 }.run(path);
            } else {
                issues.push(
                    Issue::error(IssueCode::ProfileUnknown, format!("the profile is for {}, not {ty}", p.type_name))
                        .at(path.to_string()),
                );
            }
        }
        self.extensions(resource, &mut path.to_string(), route, issues);
        let lookup = |url: &str| self.definitions.get(url).map(|&i| &self.sources[i]);
        match ty {
            "QuestionnaireResponse" => super::questionnaire::questionnaire_response(resource, path, &lookup, issues),
            "MeasureReport" => super::definitional::measure_report(resource, path, &lookup, issues),
            "Observation" => super::definitional::observation_best_practice(resource, path, issues),
            "SearchParameter" => super::definitional::search_parameter(resource, path, issues),
            "StructureDefinition" => {
                let base = resource.get("baseDefinition").and_then(Value::as_str).and_then(|u| self.get(u));
                super::definitional::structure_definition(resource, path, base, issues)
            }
            _ => {}
        }
        if ty == "Bundle" {
            for (i, e) in items(resource, "entry").enumerate() {
                if let Some(r) = e.get("resource") {
                    self.check(r, &format!("{path}.entry[{i}].resource"), route, &[], issues);
                }
            }
        }
    }
}

impl Profiles {
    /// Check each extension whose definition is loaded against it, anywhere in `v` and its
    /// contained resources (but not inside Bundle entries, which are checked as resources), and
    /// report those whose definition is not loaded ([`Profiles::unknown_extension`]). `path` is
    /// one buffer for the whole walk, extended and restored in place.
    fn extensions(&self, v: &Value, path: &mut String, gateway: bool, issues: &mut Vec<Issue>) {
        let base = path.len();
        match v {
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    if x.is_object() {
                        super::validator::push_index(path, i);
                        self.extensions(x, path, gateway, issues);
                        path.truncate(base);
                    }
                }
            }
            Value::Object(o) => {
                for (k, x) in o {
                    if k == "resource" || !(x.is_object() || x.is_array()) {
                        continue;
                    }
                    path.push('.');
                    path.push_str(k.strip_prefix('_').unwrap_or(k));
                    let modifier = k == "modifierExtension";
                    if (modifier || k == "extension")
                        && let Some(list) = x.as_array()
                    {
                        let at = path.len();
                        for (i, ext) in list.iter().enumerate() {
                            super::validator::push_index(path, i);
                            let url = ext.get("url").and_then(Value::as_str);
                            match url.and_then(|u| self.get(u)) {
                                Some(def) if def.type_name == "Extension" => {
                                    // A modifier extension only in modifierExtension, and the
                                    // reverse (EXTENSION_EXT_MODIFIER_N / _Y).
                                    let declared = self.lineage(def).iter().find_map(|p| p.modifier);
                                    if declared.is_some_and(|m| m != modifier) {
                                        let text = if modifier {
                                            format!(
                                                "The Extension '{}' must not be used as a modifierExtension (it's a regular extension)",
                                                def.url
                                            )
                                        } else {
                                            format!(
                                                "The Extension '{}' must not be used as an extension (it's a modifierExtension)",
                                                def.url
                                            )
                                        };
                                        issues.push(Issue::error(IssueCode::ExtensionContext, text).at(path.clone()));
                                    }
                                    for p in self.lineage(def) {
                                        ProfileCheck { profile: p, terms: self, resource: ext, issues, depth: 0 }
                                            .run(path);
                                    }
                                }
                                Some(_) => {}
                                None => {
                                    if let Some(url) = url {
                                        Self::unknown_extension(url, modifier, gateway, path, issues);
                                    }
                                }
                            }
                            self.extensions(ext, path, gateway, issues);
                            path.truncate(at);
                        }
                    } else {
                        self.extensions(x, path, gateway, issues);
                    }
                    path.truncate(base);
                }
            }
            _ => {}
        }
    }

    /// An extension whose definition is not loaded, as the Java reference's checkExtension
    /// treats it: an error (EXTENSION_EXT_UNKNOWN_NOTHERE) unless its URL is one it lets pass
    /// unchecked (allowUnknownExtension: example.org, acme.com and nema.org, HL7's tooling and
    /// cross-version extensions). A sub-extension's relative name (`ombCategory`) is its parent's
    /// business. On the `gateway` (referrals, not `--base-only`) an unknown extension is a
    /// warning: extensions are safe to ignore, and EHRs send UK Core and vendor extensions
    /// Signpost does not bundle; an unknown modifierExtension changes the meaning of what it
    /// sits on, so it is refused there too.
    fn unknown_extension(url: &str, modifier: bool, gateway: bool, at: &str, issues: &mut Vec<Issue>) {
        if !super::validator::is_absolute_uri(url) || lets_unknown_extension_pass(url) {
            return;
        }
        let issue = if gateway && !modifier {
            Issue::warning(
                IssueCode::UnknownExtension,
                format!("The extension {url} is not one Signpost knows, so it was not checked"),
            )
        } else {
            Issue::error(
                IssueCode::UnknownExtension,
                format!("The extension {url} could not be found so is not allowed here"),
            )
        };
        issues.push(issue.at(at.to_string()));
    }
}

/// Extension URLs that pass without a definition: those the Java reference accepts unchecked
/// (allowUnknownExtension, with examples allowed as in its default mode: example domains and
/// DICOM's), and HL7's own namespace outside its implementation guides. Directly under
/// `http://hl7.org/fhir/` HL7 publishes the core and extensions-pack extensions
/// (`organization-brand`, ...), its tooling and cross-version extensions, which the reference
/// carries and Signpost does not bundle, so Signpost cannot tell a real one from a made-up one.
/// Implementation guides live under a realm (`http://hl7.org/fhir/uv/sdc/...`,
/// `.../us/core/...`): the reference needs their package too, and refuses their extensions
/// without it.
fn lets_unknown_extension_pass(url: &str) -> bool {
    let in_guide = |rest: &str| {
        let realm = rest.split('/').next().unwrap_or_default();
        realm == "uv" || (realm.len() == 2 && realm.chars().all(|c| c.is_ascii_lowercase()))
    };
    ["example.org", "acme.com", "nema.org"].iter().any(|d| url.contains(d))
        || url.strip_prefix("http://hl7.org/fhir/").is_some_and(|rest| !in_guide(rest))
}

/// Stands for a primitive that has only its `_element` twin.
static TWIN_ONLY: Value = Value::Null;

/// A node of the instance with its FHIRPath.
type Node<'v> = (String, &'v Value);

struct ProfileCheck<'a, 'v> {
    profile: &'a Profile,
    terms: &'a Profiles,
    resource: &'v Value,
    issues: &'a mut Vec<Issue>,
    /// How many `profile` discriminators this check is nested in (see `conforms_to_any`).
    depth: usize,
}

impl<'v> ProfileCheck<'_, 'v> {
    fn run(&mut self, root: &str) {
        let p = self.profile;
        for el in &p.elements {
            if !self.evaluable(el) {
                continue;
            }
            if el.steps.len() == 1 {
                self.values(el, &[(root.to_string(), self.resource)]);
                continue;
            }
            for (ppath, parent) in self.select(&el.steps[..el.steps.len() - 1], root) {
                let last = &el.steps[el.steps.len() - 1];
                let items = self.children(&ppath, parent, last);
                let n = items.len() as u32;
                let shown = el.id.as_str();
                if let Some(min) = el.min
                    && n < min
                {
                    self.issues.push(
                        Issue::error(
                            IssueCode::Cardinality,
                            format!("{shown}: minimum required = {min}, but only found {n} (from {})", p.url),
                        )
                        .at(ppath.clone()),
                    );
                }
                if let Some(Some(max)) = el.max
                    && n > max
                {
                    self.issues.push(
                        Issue::error(
                            IssueCode::Cardinality,
                            format!("{shown}: max allowed = {max}, but found {n} (from {})", p.url),
                        )
                        .at(ppath.clone()),
                    );
                }
                if let Some((discs, true)) = &el.slicing
                    && self.slicing_evaluable(&el.id, discs)
                {
                    for (ipath, item) in &items {
                        if !self.in_any_slice(&el.id, ipath, item) {
                            self.issues.push(
                                Issue::error(
                                    IssueCode::NotInSlice,
                                    format!(
                                        "this element matches none of the slices of {shown}, and the slicing is closed"
                                    ),
                                )
                                .at(ipath.clone()),
                            );
                        }
                    }
                }
                self.values(el, &items);
            }
        }
    }

    /// The nodes an id's steps lead to from the root.
    fn select(&self, steps: &[Step], root: &str) -> Vec<Node<'v>> {
        let mut nodes: Vec<Node<'v>> = vec![(root.to_string(), self.resource)];
        for step in steps.iter().skip(1) {
            let mut next = Vec::new();
            for (path, v) in &nodes {
                next.extend(self.children(path, v, step));
            }
            nodes = next;
        }
        nodes
    }

    /// The children of `v` a step names (in its slice, if the step is a slice).
    fn children(&self, path: &str, v: &'v Value, step: &Step) -> Vec<Node<'v>> {
        let Some(o) = v.as_object() else { return Vec::new() };
        let mut out: Vec<Node<'v>> = Vec::new();
        // A primitive carried only by its `_twin` (extensions, no value) still counts, as a
        // value-less node (`null`) that only cardinality looks at.
        let mut found = Vec::new();
        if step.choice {
            for (k, x) in o {
                let bare = k.strip_prefix('_').unwrap_or(k);
                if bare
                    .strip_prefix(step.name.as_str())
                    .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
                    && (k == bare || !o.contains_key(bare))
                {
                    found.push((k.as_str(), bare, x));
                }
            }
        } else if let Some(x) = o.get(&step.name) {
            found.push((step.name.as_str(), step.name.as_str(), x));
        } else if let Some(t) = fhirpath::twin_of(o, &step.name) {
            found.push(("_", step.name.as_str(), t));
        }
        for (k, bare, x) in found {
            // A choice property is named as FHIRPath names it: `value.ofType(Quantity)`.
            let segment = match bare.strip_prefix(step.name.as_str()).filter(|_| step.choice) {
                Some(suffix) => format!("{}.ofType({})", step.name, choice_type_code(suffix)),
                None => bare.to_string(),
            };
            match x {
                _ if k != bare => {
                    let n = x.as_array().map_or(1, |a| a.iter().filter(|t| !t.is_null()).count());
                    out.extend((0..n).map(|_| (format!("{path}.{segment}"), &TWIN_ONLY)));
                }
                Value::Array(items) => {
                    out.extend(items.iter().enumerate().map(|(i, item)| (format!("{path}.{segment}[{i}]"), item)))
                }
                x => out.push((format!("{path}.{segment}"), x)),
            }
        }
        // A slice step (its ids built in `parse_steps`) keeps only the slice's items.
        if let Some((sliced_id, slice_id)) = &step.ids {
            out.retain(|(at, item)| self.in_slice(sliced_id, slice_id, at, item));
        }
        out
    }

    /// Whether every slicing an element's id passes through can be evaluated.
    fn evaluable(&self, el: &Element) -> bool {
        let p = self.profile;
        (0..el.steps.len()).filter(|&k| el.steps[k].slice.is_some()).all(|k| {
            let sliced = id_of(&el.steps[..=k], false);
            p.by_id
                .get(&sliced)
                .and_then(|&i| p.elements[i].slicing.as_ref())
                .is_none_or(|(discs, _)| self.slicing_evaluable(&sliced, discs))
        })
    }

    /// Whether the slicing of `sliced_id` can be evaluated: its discriminators are supported,
    /// and each slice says what a `type` or `profile` discriminator on a path looks at (an
    /// element `{slice}.{path}`); otherwise its slices are not checked rather than guessed.
    fn slicing_evaluable(&self, sliced_id: &str, discs: &[Discriminator]) -> bool {
        let p = self.profile;
        let prefix = format!("{sliced_id}:");
        discs.iter().all(|d| match d {
            Discriminator::Unsupported => false,
            Discriminator::TypeAt(path) | Discriminator::Profile(path) if path != "$this" => p
                .elements
                .iter()
                .filter(|e| e.id.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('.')))
                .all(|slice| p.by_id.contains_key(&format!("{}.{path}", slice.id))),
            _ => true,
        })
    }

    fn in_any_slice(&self, sliced_id: &str, at: &str, item: &Value) -> bool {
        let prefix = format!("{sliced_id}:");
        self.profile
            .elements
            .iter()
            .filter(|e| e.id.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('.')))
            .any(|e| self.in_slice(sliced_id, &e.id, at, item))
    }

    /// Whether `item` (at `at`) belongs to the slice `slice_id` of the element `sliced_id`.
    fn in_slice(&self, sliced_id: &str, slice_id: &str, at: &str, item: &Value) -> bool {
        let p = self.profile;
        // Extensions are sliced by url even where a differential leaves the slicing implicit.
        static BY_URL: OnceLock<Vec<Discriminator>> = OnceLock::new();
        let discs = match p.by_id.get(sliced_id).and_then(|&i| p.elements[i].slicing.as_ref()) {
            Some((discs, _)) => discs,
            None if sliced_id.ends_with("extension") || sliced_id.ends_with("Extension") => {
                BY_URL.get_or_init(|| vec![Discriminator::Value("url".into())])
            }
            None => return false,
        };
        discs.iter().all(|d| {
            if let Discriminator::Type = d {
                let Some(want) = p.by_id.get(slice_id).and_then(|&i| p.elements[i].types.first()) else { return false };
                // A resource's type, or the type suffix of a choice property (`valueQuantity`).
                let have = match item.get("resourceType").and_then(Value::as_str) {
                    Some(t) => t,
                    None => choice_type_in(at),
                };
                return want.0.eq_ignore_ascii_case(have);
            }
            if let Discriminator::TypeAt(path) | Discriminator::Profile(path) = d {
                let (el_id, values) = if path == "$this" {
                    (slice_id.to_string(), vec![item])
                } else {
                    (format!("{slice_id}.{path}"), values_at(item, path))
                };
                let Some(el) = p.by_id.get(&el_id).map(|&i| &p.elements[i]) else { return false };
                return values.into_iter().any(|v| {
                    let ty = v.get("resourceType").and_then(Value::as_str);
                    let of_type = el.types.is_empty()
                        || el.types.iter().any(|(code, _)| code == "Resource" || Some(code.as_str()) == ty);
                    of_type && (matches!(d, Discriminator::TypeAt(_)) || self.conforms_to_any(v, &el.type_profiles))
                });
            }
            let (Discriminator::Value(path) | Discriminator::Pattern(path)) = d else { return false };
            // The values at the discriminator path (through repeating elements).
            let (el_id, values) = if path == "$this" {
                (std::borrow::Cow::Borrowed(slice_id), vec![item])
            } else {
                (std::borrow::Cow::Owned(format!("{slice_id}.{path}")), values_at(item, path))
            };
            let Some(el) = p.by_id.get(&*el_id).map(|&i| &p.elements[i]) else { return false };
            values.iter().any(|value| match (&el.fixed, &el.pattern) {
                (Some(f), _) => *value == f,
                (None, Some(pat)) => matches_pattern(value, pat),
                _ => false,
            })
        })
    }

    /// Whether `resource` conforms to one of `urls` (no errors against it and the profiles it
    /// derives from), for a `profile` discriminator. A profile Signpost does not hold cannot be
    /// checked, so it does not decide; nor does one nested too deep (a profile whose slices
    /// refer back to it).
    fn conforms_to_any(&self, resource: &Value, urls: &[String]) -> bool {
        let held: Vec<&Profile> = urls.iter().filter_map(|u| self.terms.get(u)).collect();
        if held.is_empty() || self.depth >= 4 {
            return true;
        }
        let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        held.into_iter().any(|p| {
            let mut issues = Vec::new();
            for q in self.terms.lineage(p) {
                let depth = self.depth + 1;
                ProfileCheck { profile: q, terms: self.terms, resource, issues: &mut issues, depth }.run(ty);
            }
            !issues.iter().any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
        })
    }

    /// Fixed, pattern, binding, type and constraint checks on each node of an element.
    fn values(&mut self, el: &Element, nodes: &[Node<'v>]) {
        for (path, v) in nodes {
            if v.is_null() {
                continue;
            }
            if let Some(f) = &el.fixed
                && *v != f
            {
                self.issues.push(
                    Issue::error(IssueCode::FixedValue, format!("the value differs from the fixed value of {}", el.id))
                        .at(path.clone()),
                );
            }
            if let Some(pat) = &el.pattern
                && !matches_pattern(v, pat)
                && el.steps.last().is_none_or(|s| s.slice.is_none())
            {
                self.issues.push(
                    Issue::error(IssueCode::FixedValue, format!("the value does not match the pattern of {}", el.id))
                        .at(path.clone()),
                );
            }
            if let Some((required, vs)) = &el.binding {
                self.binding(*required, vs, v, path);
            }
            self.types(el, path, v);
            let env = fhirpath::Env {
                resource: self.resource,
                root: self.resource,
                context: v,
                choices: &Definitions::shared().choice_names,
            };
            for c in &el.constraints {
                if let Some(issue) = c.check(v, None, env, path) {
                    self.issues.push(issue);
                }
            }
        }
    }

    fn types(&mut self, el: &Element, path: &str, v: &Value) {
        if el.types.is_empty() {
            return;
        }
        // A choice element: the property's type suffix must be one the profile allows.
        if el.steps.last().is_some_and(|s| s.choice) {
            let suffix = choice_type_in(path);
            if !el.types.iter().any(|(code, _)| code.eq_ignore_ascii_case(suffix)) {
                let allowed: Vec<&str> = el.types.iter().map(|(c, _)| c.as_str()).collect();
                self.issues.push(
                    Issue::error(
                        IssueCode::WrongType,
                        format!("{} allows only the types {}", el.id, allowed.join(", ")),
                    )
                    .at(path.to_string()),
                );
            }
        }
        // Target profiles name a resource type, or a profile of one.
        let targets: Vec<&str> = el
            .types
            .iter()
            .flat_map(|(_, t)| t.iter())
            .map(|url| match self.terms.get(url) {
                Some(p) => p.type_name.as_str(),
                None => url.rsplit('/').next().unwrap_or(url),
            })
            .collect();
        if targets.is_empty() || targets.contains(&"Resource") {
            return;
        }
        if let Some((target, _)) = v.get("reference").and_then(Value::as_str).and_then(super::parse_reference)
            && Definitions::shared().is_resource(target)
            && !targets.contains(&target)
        {
            self.issues.push(
                Issue::error(
                    IssueCode::ReferenceType,
                    format!("{} must refer to {} (by {})", el.id, targets.join(" or "), self.profile.url),
                )
                .at(format!("{path}.reference")),
            );
        }
    }

    fn binding(&mut self, required: bool, vs: &str, v: &Value, path: &str) {
        let defs = Definitions::shared();
        // Bare codes (a `code` element) against the codes, codings against `system|code`.
        let vs = vs.split('|').next().unwrap_or(vs);
        let r4 = if v.is_string() { defs.valueset_codes.get(vs) } else { defs.valuesets.get(vs) };
        let Some(members) = self.terms.codes.get(vs).or(r4) else { return };
        let keys: Vec<String> = match v {
            Value::String(code) => vec![code.clone()],
            Value::Object(o) if o.contains_key("coding") => {
                o["coding"].as_array().into_iter().flatten().filter_map(coding_key).collect()
            }
            Value::Object(o) => coding_key(&Value::Object(o.clone())).into_iter().collect(),
            _ => return,
        };
        if keys.is_empty() || keys.iter().any(|k| members.contains(k)) {
            return;
        }
        let name = vs.rsplit('/').next().unwrap_or(vs);
        let issue = if required {
            Issue::error(IssueCode::CodeNotInValueSet, format!("the code is not in the required value set {name}"))
        } else {
            Issue::warning(IssueCode::CodeNotInValueSet, format!("no code is from the extensible value set {name}"))
        };
        self.issues.push(issue.at(path.to_string()));
    }
}

/// The element id of steps (with slice names, or without when `slices` is false for the last).
fn id_of(steps: &[Step], slices: bool) -> String {
    let n = steps.len();
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = if s.choice { format!("{}[x]", s.name) } else { s.name.clone() };
            match &s.slice {
                Some(sl) if slices || i + 1 < n => format!("{name}:{sl}"),
                _ => name,
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::outcome::Severity;
    use serde_json::json;

    fn check(resource: Value) -> Vec<(IssueCode, String)> {
        let mut issues = Vec::new();
        let ty = resource["resourceType"].as_str().unwrap().to_string();
        Profiles::shared().check(&resource, &ty, false, &[], &mut issues);
        issues.into_iter().map(|i| (i.code, i.expression.unwrap_or_default())).collect()
    }

    /// Extensions whose definition Signpost does not hold, as the Java reference's
    /// checkExtension treats them (EXTENSION_EXT_UNKNOWN_NOTHERE), in the resource, on a
    /// primitive, in a contained resource and nested in another extension: refused in the
    /// reference mode (`route` false, `signpost validate --base-only`) unless HL7's own or an
    /// example domain; on the gateway a warning, but an unknown modifierExtension refused.
    #[test]
    fn unknown_extensions_are_refused_as_the_reference_does_and_warned_on_the_gateway() {
        let found = |url: &str, gateway: bool| {
            let ext = json!([{ "url": url, "valueString": "x" }]);
            let patient = json!({ "resourceType": "Patient", "extension": ext, "_birthDate": { "extension": ext },
                "birthDate": "1970-01-01", "managingOrganization": { "reference": "#o" },
                "contained": [{ "resourceType": "Organization", "id": "o", "extension": ext }],
                "modifierExtension": [{ "url": url, "valueBoolean": true }],
                "name": [{ "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix", "valueString": "x", "extension": ext }] }] });
            let mut issues = Vec::new();
            Profiles::shared().check(&patient, "Patient", gateway, &[], &mut issues);
            let mut found: Vec<(Severity, String)> = issues
                .into_iter()
                .filter(|i| i.code == IssueCode::UnknownExtension)
                .map(|i| (i.severity, i.expression.unwrap_or_default()))
                .collect();
            found.sort_by(|a, b| a.1.cmp(&b.1));
            found
        };
        let (error, warning) = (Severity::Error, Severity::Warning);
        let everywhere = |plain: Severity, modifier: Severity| {
            vec![
                (plain, "Patient.birthDate.extension[0]".to_string()),
                (plain, "Patient.contained[0].extension[0]".to_string()),
                (plain, "Patient.extension[0]".to_string()),
                (modifier, "Patient.modifierExtension[0]".to_string()),
                (plain, "Patient.name[0].extension[0].extension[0]".to_string()),
            ]
        };
        for url in [
            "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-Made-Up",
            "http://validitron.example.com/fhir/StructureDefinition/age",
            "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-questionnaireAdaptive",
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
        ] {
            assert_eq!(found(url, false), everywhere(error, error), "{url}");
            assert_eq!(found(url, true), everywhere(warning, error), "{url}");
        }
        for url in [
            "http://example.org/fhir/StructureDefinition/something",
            "http://hl7.org/fhir/StructureDefinition/organization-brand",
            "http://hl7.org/fhir/5.0/StructureDefinition/extension-Patient.name",
            "http://hl7.org/fhir/tools/StructureDefinition/json-name",
            "ownPrefix",
        ] {
            assert_eq!(found(url, false), vec![], "{url}");
        }
    }

    /// A modifier extension only in modifierExtension, a regular one only in extension
    /// (EXTENSION_EXT_MODIFIER_N / _Y), whichever way the definition says it.
    #[test]
    fn modifier_extensions_only_as_modifiers_and_regular_ones_only_as_extensions() {
        let definition = |url: &str, modifier: bool| {
            json!({ "resourceType": "StructureDefinition", "url": url, "type": "Extension",
                "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension", "context": [{ "type": "element", "expression": "Element" }],
                "differential": { "element": [{ "id": "Extension", "path": "Extension", "isModifier": modifier }] } })
        };
        let (modifier, regular) = ("http://x.org/ext/not-done", "http://x.org/ext/reason");
        let profiles = Profiles::shared().with(vec![definition(modifier, true), definition(regular, false)]).unwrap();
        let found = |key: &str, url: &str| {
            let patient = json!({ "resourceType": "Patient", key: [{ "url": url, "valueBoolean": true }] });
            let mut issues = Vec::new();
            profiles.check(&patient, "Patient", false, &[], &mut issues);
            issues.into_iter().map(|i| (i.code, i.expression.unwrap_or_default())).collect::<Vec<_>>()
        };
        assert_eq!(found("modifierExtension", modifier), vec![]);
        assert_eq!(found("extension", regular), vec![]);
        assert_eq!(
            found("extension", modifier),
            vec![(IssueCode::ExtensionContext, "Patient.extension[0]".to_string())]
        );
        assert_eq!(
            found("modifierExtension", regular),
            vec![(IssueCode::ExtensionContext, "Patient.modifierExtension[0]".to_string())]
        );
        // R4's own modifier extension, bundled: right only as a modifierExtension.
        let core = "http://hl7.org/fhir/StructureDefinition/request-doNotPerform";
        assert_eq!(found("modifierExtension", core), vec![]);
        assert_eq!(found("extension", core), vec![(IssueCode::ExtensionContext, "Patient.extension[0]".to_string())]);
        // A definition that does not say is not judged.
        let silent = json!({ "resourceType": "StructureDefinition", "url": "http://x.org/ext/silent", "type": "Extension",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
            "differential": { "element": [{ "id": "Extension.value[x]", "path": "Extension.value[x]" }] } });
        let profiles = Profiles::shared().with(vec![silent]).unwrap();
        for key in ["extension", "modifierExtension"] {
            let patient =
                json!({ "resourceType": "Patient", key: [{ "url": "http://x.org/ext/silent", "valueBoolean": true }] });
            let mut issues = Vec::new();
            profiles.check(&patient, "Patient", false, &[], &mut issues);
            assert!(issues.iter().all(|i| i.code != IssueCode::ExtensionContext), "{key}: {issues:?}");
        }
    }

    #[test]
    fn claimed_profiles_apply_and_unknown_ones_warn() {
        let nhs = |v: &str| json!([{ "system": "https://fhir.nhs.uk/Id/nhs-number", "value": v }]);
        let claims = json!({ "profile": ["https://signpost.example/fhir/StructureDefinition/signpost-patient"] });
        let good = json!({ "resourceType": "Patient", "meta": claims, "identifier": nhs("9000000009") });
        assert_eq!(check(good), vec![]);
        let spaced = json!({ "resourceType": "Patient", "meta": claims, "identifier": nhs("900 000 0009") });
        assert_eq!(check(spaced), vec![(IssueCode::Invariant, "Patient.identifier[0].value".to_string())]);
        let unknown = json!({ "resourceType": "Patient", "meta": { "profile": ["http://example.org/fhir/StructureDefinition/other"] } });
        let mut issues = Vec::new();
        Profiles::shared().check(&unknown, "Patient", false, &[], &mut issues);
        assert_eq!(issues.len(), 1);
        assert_eq!(
            (issues[0].code, issues[0].severity),
            (IssueCode::ProfileUnknown, super::super::outcome::Severity::Warning)
        );
        let wrong_type = json!({ "resourceType": "Task", "meta": claims, "status": "draft", "intent": "order" });
        assert_eq!(check(wrong_type), vec![(IssueCode::ProfileUnknown, "Task".to_string())]);
    }

    #[test]
    fn vital_signs_codes_imply_their_core_profile_as_r4_section_8_8_requires() {
        // R4 §8.8 / Java's getImpliedProfilesForObservation: the code alone brings the profile.
        let obs = |system: &str, code: &str, with_category: bool| {
            let mut o = json!({ "resourceType": "Observation", "status": "final",
                "code": { "coding": [{ "system": system, "code": code }] }, "subject": { "reference": "Patient/p" },
                "performer": [{ "reference": "Practitioner/1" }],
                "effectiveDateTime": "2024-05-01T10:00:00Z" });
            if with_category {
                o["category"] = json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }]);
            }
            o
        };
        let mut temp = obs("http://loinc.org", "8310-5", true);
        temp["valueQuantity"] =
            json!({ "value": 37.2, "unit": "C", "system": "http://unitsofmeasure.org", "code": "Cel" });
        assert_eq!(check(temp.clone()), vec![]);
        temp.as_object_mut().unwrap().remove("category");
        assert!(!check(temp).is_empty(), "body temperature without the vital-signs category");
        let mut rate = obs("http://snomed.info/sct", "364075005", false);
        assert_eq!(check(rate.clone()), vec![], "a code that is not a vital sign brings no profile");
        rate = obs("http://snomed.info/sct", "249043002", false);
        rate["valueQuantity"] =
            json!({ "value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min" });
        assert!(!check(rate).is_empty(), "heart rate (SNOMED CT) without the vital-signs category");
        // A LOINC code under another system is not a vital sign.
        assert_eq!(check(obs("http://example.org/codes", "8310-5", false)), vec![]);
    }

    #[test]
    fn required_bindings_reach_value_sets_through_their_value_set_references() {
        let sd = |vs: &str| {
            json!({ "resourceType": "StructureDefinition", "url": format!("http://example.org/sd/{vs}"), "type": "Patient",
            "differential": { "element": [{ "id": "Patient.maritalStatus", "path": "Patient.maritalStatus",
                "binding": { "strength": "required", "valueSet": format!("http://example.org/vs/{vs}|1.0.0") } }] } })
        };
        let cs = json!({ "resourceType": "CodeSystem", "url": "http://example.org/cs", "concept": [{ "code": "a" }, { "code": "b" }, { "code": "c" }] });
        let vs = |name: &str, compose: Value| json!({ "resourceType": "ValueSet", "url": format!("http://example.org/vs/{name}"), "compose": compose });
        let profiles = Profiles::load(vec![
            cs,
            // All of a held code system but one code.
            vs("most", json!({ "include": [{ "system": "http://example.org/cs" }], "exclude": [{ "system": "http://example.org/cs", "concept": [{ "code": "c" }] }] })),
            // Another loaded value set and an R4 one (with its bundled expansion), by reference.
            vs("nested", json!({ "include": [{ "valueSet": ["http://example.org/vs/most"] },
                                             { "valueSet": ["http://hl7.org/fhir/ValueSet/marital-status"] }] })),
            // A code system Signpost does not hold: not enumerable, so not checked.
            vs("external", json!({ "include": [{ "system": "http://snomed.info/sct" }] })),
            sd("most"), sd("nested"), sd("external"),
        ])
        .unwrap();
        let errors = |profile: &str, system: &str, code: &str| {
            let p = profiles.get(&format!("http://example.org/sd/{profile}")).unwrap();
            let patient = json!({ "resourceType": "Patient", "maritalStatus": { "coding": [{ "system": system, "code": code }] } });
            let mut issues = Vec::new();
            profiles.check(&patient, "Patient", false, &[p], &mut issues);
            issues.iter().filter(|i| i.code == IssueCode::CodeNotInValueSet).count()
        };
        assert_eq!(errors("most", "http://example.org/cs", "a"), 0);
        assert_eq!(errors("most", "http://example.org/cs", "c"), 1, "excluded");
        assert_eq!(errors("nested", "http://example.org/cs", "b"), 0);
        assert_eq!(errors("nested", "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M"), 0);
        assert_eq!(errors("nested", "http://example.org/cs", "c"), 1);
        assert_eq!(errors("nested", "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "Q"), 1);
        assert_eq!(errors("external", "http://snomed.info/sct", "22298006"), 0);
    }

    #[test]
    fn type_discriminators_on_choice_elements() {
        let sd = json!({ "resourceType": "StructureDefinition", "url": "http://example.org/sd/typed", "type": "Observation",
            "differential": { "element": [
                { "id": "Observation.value[x]", "path": "Observation.value[x]", "slicing": { "discriminator": [{ "type": "type", "path": "$this" }], "rules": "closed" } },
                { "id": "Observation.value[x]:valueQuantity", "path": "Observation.value[x]", "sliceName": "valueQuantity", "min": 1, "type": [{ "code": "Quantity" }] }
            ] } });
        let profiles = Profiles::load(vec![sd]).unwrap();
        let p = profiles.get("http://example.org/sd/typed").unwrap();
        let run = |obs: Value| {
            let mut issues = Vec::new();
            profiles.check(&obs, "Observation", false, &[p], &mut issues);
            // The profile's issues (not the best-practice warnings every Observation gets).
            issues
                .into_iter()
                .filter(|i| !i.diagnostics.starts_with("Best Practice"))
                .map(|i| (i.code, i.expression.unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(json!({ "resourceType": "Observation", "valueQuantity": { "value": 1 } })), vec![]);
        assert_eq!(
            run(json!({ "resourceType": "Observation", "valueString": "high" })),
            vec![
                (IssueCode::NotInSlice, "Observation.value.ofType(string)".to_string()),
                (IssueCode::Cardinality, "Observation".to_string()),
            ]
        );
    }

    /// Bundle entries sliced by the type of their resource (`type` on `resource`) and by the
    /// profile it conforms to (`profile` on `resource`), as IPS-style document profiles slice
    /// them: a required slice with no entry is a cardinality error, and a closed slicing
    /// refuses an entry no slice takes.
    #[test]
    fn entries_sliced_by_the_type_and_profile_of_their_resource() {
        let patient_with_gender = json!({ "resourceType": "StructureDefinition", "url": "http://example.org/sd/patient-gender",
            "type": "Patient", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "differential": { "element": [{ "id": "Patient.gender", "path": "Patient.gender", "min": 1 }] } });
        let bundle_profile = |discriminator: &str| {
            json!({ "resourceType": "StructureDefinition", "url": format!("http://example.org/sd/bundle-{discriminator}"), "type": "Bundle",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Bundle",
            "differential": { "element": [
                { "id": "Bundle.entry", "path": "Bundle.entry", "slicing": { "discriminator": [{ "type": discriminator, "path": "resource" }], "rules": "closed" } },
                { "id": "Bundle.entry:patient", "path": "Bundle.entry", "sliceName": "patient", "min": 1, "max": "1" },
                { "id": "Bundle.entry:patient.resource", "path": "Bundle.entry.resource", "type": [{ "code": "Patient", "profile": ["http://example.org/sd/patient-gender"] }] }
            ] } })
        };
        let profiles =
            Profiles::load(vec![patient_with_gender, bundle_profile("type"), bundle_profile("profile")]).unwrap();
        let found = |discriminator: &str, resources: Vec<Value>| {
            let p = profiles.get(&format!("http://example.org/sd/bundle-{discriminator}")).unwrap();
            let entries: Vec<Value> = resources.into_iter().map(|r| json!({ "resource": r })).collect();
            let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": entries });
            let mut issues = Vec::new();
            ProfileCheck { profile: p, terms: &profiles, resource: &bundle, issues: &mut issues, depth: 0 }
                .run("Bundle");
            issues.into_iter().map(|i| (i.code, i.expression.unwrap_or_default())).collect::<Vec<_>>()
        };
        let with_gender = json!({ "resourceType": "Patient", "gender": "female" });
        let without = json!({ "resourceType": "Patient" });
        let org = json!({ "resourceType": "Organization", "name": "x" });
        assert_eq!(found("type", vec![without.clone()]), vec![], "the type alone decides");
        assert_eq!(found("profile", vec![with_gender.clone()]), vec![]);
        let missing = vec![
            (IssueCode::NotInSlice, "Bundle.entry[0]".to_string()),
            (IssueCode::Cardinality, "Bundle".to_string()),
        ];
        assert_eq!(found("profile", vec![without]), missing, "a Patient that breaks the slice's profile");
        assert_eq!(found("type", vec![org.clone()]), missing);
        assert_eq!(
            found("profile", vec![with_gender, org.clone()]),
            vec![(IssueCode::NotInSlice, "Bundle.entry[1]".to_string())]
        );
        // A discriminator path Signpost cannot follow in the JSON (a function), or a slice that
        // does not say what the path holds: the slices are not checked, rather than guessed.
        let unfollowable = |path: &str, say_type: bool| {
            let mut sd = bundle_profile("type");
            sd["url"] = json!("http://example.org/sd/bundle-other");
            sd["differential"]["element"][0]["slicing"]["discriminator"][0]["path"] = json!(path);
            if !say_type {
                sd["differential"]["element"].as_array_mut().unwrap().pop();
            }
            let profiles = Profiles::load(vec![sd]).unwrap();
            let p = profiles.get("http://example.org/sd/bundle-other").unwrap();
            let bundle =
                json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": org.clone() }] });
            let mut issues = Vec::new();
            ProfileCheck { profile: p, terms: &profiles, resource: &bundle, issues: &mut issues, depth: 0 }
                .run("Bundle");
            issues.into_iter().map(|i| i.code).collect::<Vec<_>>()
        };
        assert_eq!(unfollowable("resource.resolve()", true), vec![]);
        assert_eq!(unfollowable("resource", false), vec![]);
        assert_eq!(
            unfollowable("resource", true),
            vec![IssueCode::NotInSlice, IssueCode::Cardinality],
            "and followable, checked"
        );
    }

    /// A discriminator path may start at the item (`$this.system`, as FHIRPath allows); it
    /// slices as `system` does.
    #[test]
    fn closed_slicing_and_value_discriminators_inside_bundles() {
        for discriminator in ["system", "$this.system"] {
            let sd = json!({ "resourceType": "StructureDefinition", "url": "http://example.org/sd/closed", "type": "Patient",
                "differential": { "element": [
                    { "id": "Patient.telecom", "path": "Patient.telecom", "slicing": { "discriminator": [{ "type": "value", "path": discriminator }], "rules": "closed" } },
                    { "id": "Patient.telecom:phone", "path": "Patient.telecom", "sliceName": "phone", "max": "2" },
                    { "id": "Patient.telecom:phone.system", "path": "Patient.telecom.system", "fixedCode": "phone" },
                    { "id": "Patient.telecom:phone.use", "path": "Patient.telecom.use", "min": 1 }
                ] } });
            let profiles = Profiles::load(vec![sd]).unwrap();
            let p = profiles.get("http://example.org/sd/closed").unwrap();
            let patient = json!({ "resourceType": "Patient", "telecom": [
                { "system": "phone", "value": "1", "use": "home" }, { "system": "email", "value": "a@b" }, { "system": "phone", "value": "2" }
            ] });
            let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": patient }] });
            let mut issues = Vec::new();
            profiles.check(&bundle["entry"][0]["resource"], "Bundle.entry[0].resource", false, &[p], &mut issues);
            let found: Vec<(IssueCode, String)> =
                issues.into_iter().map(|i| (i.code, i.expression.unwrap_or_default())).collect();
            assert_eq!(
                found,
                vec![
                    (IssueCode::NotInSlice, "Bundle.entry[0].resource.telecom[1]".to_string()),
                    (IssueCode::Cardinality, "Bundle.entry[0].resource.telecom[2]".to_string()),
                ],
                "{discriminator}"
            );
        }
    }
}
