//! Rules that compare a resource with the definition it names: a MeasureReport with its
//! Measure's scoring (a QuestionnaireResponse's are in [`super::questionnaire`]). The definitions
//! come from the loaded conformance resources ([`super::profiles::Profiles`]: an
//! implementation guide given with `--ig`) or from the resource's contained resources; an
//! unknown definition is not checked.

use rustc_hash::FxHashSet;
use serde_json::Value;

use super::definitions::Definitions;
use super::items;
use super::outcome::{Issue, IssueCode};

/// Find a canonical resource: `#id` among `resource`'s contained ones, else by `lookup`.
pub(super) fn resolve<'a>(
    resource: &'a Value,
    canonical: &str,
    lookup: &dyn Fn(&str) -> Option<&'a Value>,
) -> Option<&'a Value> {
    match canonical.strip_prefix('#') {
        Some(id) => resource
            .get("contained")
            .and_then(Value::as_array)?
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id)),
        None => lookup(canonical.split('|').next().unwrap_or(canonical)),
    }
}

/// A MeasureReport follows its Measure, as the Java reference's MeasureValidator checks it: the
/// Measure is found (a warning when it cannot be, and nothing more is checked); the report's
/// groups match the Measure's by code (or one to one), and each Measure group is reported unless
/// the report is a data collection; each group's populations match the Measure group's by code
/// and are all reported; the measureScore follows the Measure's scoring (none for a cohort or a
/// data collection; required for proportion, ratio and continuous-variable; a proportion
/// between 0 and 1 without units); and the stratifiers match by code.
pub fn measure_report<'a>(
    report: &'a Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<&'a Value>,
    issues: &mut Vec<Issue>,
) {
    let Some(canonical) = report.get("measure").and_then(Value::as_str) else { return };
    let Some(measure) = resolve(report, canonical, lookup) else {
        issues.push(
            Issue::warning(
                IssueCode::DefinitionMismatch,
                format!("The Measure '{canonical}' could not be resolved, so no validation can be performed against the Measure"),
            )
            .at(path.to_string()),
        );
        return;
    };
    let scoring = measure.pointer("/scoring/coding/0/code").and_then(Value::as_str).unwrap_or_default();
    let data_collection = report.get("type").and_then(Value::as_str) == Some("data-collection");
    let error = |issues: &mut Vec<Issue>, at: String, text: &str| {
        issues.push(Issue::error(IssueCode::DefinitionMismatch, text.to_string()).at(at))
    };
    let measure_groups: Vec<&Value> = items(measure, "group").collect();
    let report_groups: Vec<&Value> = items(report, "group").collect();
    let mut matched = vec![false; measure_groups.len()];
    for (i, group) in report_groups.iter().enumerate() {
        let at = format!("{path}.group[{i}]");
        let defined = if report_groups.len() == 1 && measure_groups.len() == 1 {
            if group.get("code").is_some()
                && measure_groups[0].get("code").is_some()
                && !same_code(group.get("code"), measure_groups[0].get("code"))
            {
                error(issues, at.clone(), "The code provided does not match the code specified in the measure");
            }
            Some(0)
        } else if group.get("code").is_none() {
            error(issues, at.clone(), "Group should have a code that matches the group definition in the measure");
            None
        } else {
            let found = measure_groups.iter().position(|g| same_code(group.get("code"), g.get("code")));
            match found {
                None => error(issues, at.clone(), "The code for this group has no match in the measure definition"),
                Some(k) if matched[k] => {
                    error(issues, at.clone(), "The code for this group is duplicated with another group")
                }
                Some(_) => {}
            }
            found
        };
        let Some(k) = defined else { continue };
        matched[k] = true;
        let defined = measure_groups[k];
        populations(group, defined, &at, issues);
        measure_score(group, scoring, data_collection, &at, issues);
        stratifiers(group, defined, &at, issues);
    }
    let one_to_one = report_groups.len() == 1 && measure_groups.len() == 1;
    if !data_collection && !one_to_one {
        for (k, _) in matched.iter().enumerate().filter(|(_, m)| !**m) {
            if measure_groups[k].get("code").is_some() {
                error(
                    issues,
                    path.to_string(),
                    "The MeasureReport does not include a group for a group of the Measure",
                );
            }
        }
    }
}

/// The Java reference's best-practice recommendations for every Observation (warnings by
/// default): a subject, a performer and an effective[x].
pub fn observation_best_practice(observation: &Value, path: &str, issues: &mut Vec<Issue>) {
    let has = |prefix: &str| observation.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with(prefix)));
    for (present, what) in
        [(has("subject"), "a subject"), (has("performer"), "a performer"), (has("effective"), "an effective[x]")]
    {
        if !present {
            issues.push(
                Issue::warning(
                    IssueCode::Invariant,
                    format!("Best Practice Recommendation: In general, all observations should have {what}"),
                )
                .at(path.to_string()),
            );
        }
    }
}

/// Two CodeableConcepts share a coding (system and code).
fn same_code(a: Option<&Value>, b: Option<&Value>) -> bool {
    let key = |c: &Value| (c.get("system").cloned(), c.get("code").cloned());
    let (Some(a), Some(b)) = (a, b) else { return false };
    items(a, "coding").any(|x| x.get("code").is_some() && items(b, "coding").any(|y| key(x) == key(y)))
}

/// A report group's populations: each has a code the Measure group defines, once; each the
/// Measure group defines is reported; counts and subject lists as the report type needs.
fn populations(group: &Value, defined: &Value, at: &str, issues: &mut Vec<Issue>) {
    let wanted: Vec<&Value> = items(defined, "population").collect();
    let mut seen = vec![false; wanted.len()];
    for (j, p) in items(group, "population").enumerate() {
        let here = format!("{at}.population[{j}]");
        if p.get("code").is_none() {
            issues.push(
                Issue::error(
                    IssueCode::DefinitionMismatch,
                    "Population should have a code that matches the population definition in the measure",
                )
                .at(here),
            );
            continue;
        }
        match wanted.iter().position(|w| same_code(p.get("code"), w.get("code"))) {
            None => issues.push(
                Issue::error(
                    IssueCode::DefinitionMismatch,
                    "The code for this group population has no match in the measure definition",
                )
                .at(here.clone()),
            ),
            Some(k) if seen[k] => issues.push(
                Issue::error(
                    IssueCode::DefinitionMismatch,
                    "The code for this group population is duplicated with another population",
                )
                .at(here.clone()),
            ),
            Some(k) => seen[k] = true,
        }
    }
    for (k, w) in wanted.iter().enumerate() {
        let observation = items(w.get("code").unwrap_or(&Value::Null), "coding")
            .any(|c| c.get("code").and_then(Value::as_str) == Some("measure-observation"));
        if !seen[k] && !observation && w.get("code").is_some() {
            issues.push(
                Issue::error(
                    IssueCode::DefinitionMismatch,
                    "The MeasureReport does not include a population the Measure's group defines",
                )
                .at(at.to_string()),
            );
        }
    }
}

/// The group's measureScore against the Measure's scoring and the report type.
fn measure_score(group: &Value, scoring: &str, data_collection: bool, at: &str, issues: &mut Vec<Issue>) {
    let score = group.get("measureScore");
    let mut error =
        |at: String, text: &str| issues.push(Issue::error(IssueCode::DefinitionMismatch, text.to_string()).at(at));
    match (score, scoring) {
        (Some(_), _) if data_collection => {
            error(format!("{at}.measureScore"), "No measureScore when the type of the report is 'data-collection'")
        }
        (Some(_), "cohort") => {
            error(format!("{at}.measureScore"), "No measureScore when the scoring of the message is 'cohort'")
        }
        (None, "proportion" | "ratio" | "continuous-variable") if !data_collection => {
            error(at.to_string(), &format!("A measureScore is required when the Measure.scoring={scoring}"))
        }
        (Some(score), "proportion" | "ratio" | "continuous-variable") => {
            let value = score.get("value").and_then(Value::as_f64);
            if value.is_none() {
                error(
                    format!("{at}.measureScore"),
                    &format!("A value is required when the Measure.scoring = {scoring}"),
                );
            }
            if scoring == "proportion" {
                for unit in ["unit", "system", "code"] {
                    if score.get(unit).is_some() {
                        error(
                            format!("{at}.measureScore.{unit}"),
                            "A measureScore for this Measure Scoring (proportion) should not have units",
                        );
                    }
                }
                if value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                    error(format!("{at}.measureScore.value"), "The value is invalid - it must be between 0 and 1");
                }
            }
        }
        _ => {}
    }
}

/// A report group's stratifiers match its Measure group's, by code: each reported one is
/// defined, and each defined one is reported.
fn stratifiers(group: &Value, defined: &Value, at: &str, issues: &mut Vec<Issue>) {
    let wanted: Vec<&Value> = items(defined, "stratifier").collect();
    if wanted.is_empty() {
        return;
    }
    let reported: Vec<&Value> = items(group, "stratifier").collect();
    let matches = |r: &Value, w: &Value| {
        w.get("code").is_some_and(|code| r.get("code").and_then(Value::as_array).is_some_and(|cs| cs.contains(code)))
    };
    for (k, r) in reported.iter().enumerate() {
        if !wanted.iter().any(|w| matches(r, w)) {
            issues.push(
                Issue::error(
                    IssueCode::DefinitionMismatch,
                    "the stratifier's code matches no stratifier of the Measure's group",
                )
                .at(format!("{at}.stratifier[{k}]")),
            );
        }
    }
    for w in &wanted {
        if !reported.iter().any(|r| matches(r, w)) {
            issues.push(
                Issue::error(IssueCode::DefinitionMismatch, "a stratifier the Measure's group defines is not reported")
                    .at(at.to_string()),
            );
        }
    }
}

/// Rules for a StructureDefinition's differential against the profile it derives from
/// (`base`, when loaded): a fixed value may not contradict the base's; and each slicing
/// discriminator's path must name an element of the sliced element's type.
pub fn structure_definition(sd: &Value, path: &str, base: Option<&super::profiles::Profile>, issues: &mut Vec<Issue>) {
    let defs = super::definitions::Definitions::shared();
    let elements: Vec<&Value> =
        sd.pointer("/differential/element").and_then(Value::as_array).into_iter().flatten().collect();
    for (i, el) in elements.iter().enumerate() {
        let Some(id) = el.get("id").or_else(|| el.get("path")).and_then(Value::as_str) else { continue };
        if let Some(base) = base {
            for (k, v) in el.as_object().into_iter().flatten() {
                if k.starts_with("fixed")
                    && let Some(theirs) = base.fixed_value(id)
                    && theirs != v
                {
                    issues.push(
                        Issue::error(
                            IssueCode::FixedValue,
                            format!("the fixed value differs from the one {} fixes for this element", base.url),
                        )
                        .at(id.to_string()),
                    );
                }
            }
        }
        if let Some(el_path) = el.get("path").and_then(Value::as_str)
            && let Some(fault) = element_path_fault(defs, el_path)
        {
            issues.push(
                Issue::error(IssueCode::Invariant, format!("differential element {i}: {fault}")).at(path.to_string()),
            );
        }
        let Some(discs) = el.pointer("/slicing/discriminator").and_then(Value::as_array) else { continue };
        // The children of the sliced element: Extension's for extensions, a backbone
        // element's own (in the resource definition), else its datatype's.
        let el_path = el.get("path").and_then(Value::as_str).unwrap_or(id);
        let root = el_path.split('.').next().unwrap_or_default();
        let (td, parent) = if el_path.ends_with(".extension") || el_path.ends_with(".modifierExtension") {
            (defs.type_def("Extension"), "Extension".to_string())
        } else {
            let Some(rtd) = defs.type_def(root) else { continue };
            let Some(t) = rtd.element(el_path).and_then(|e| e.types.first()) else { continue };
            if matches!(t.code.as_str(), "BackboneElement" | "Element") {
                (Some(rtd), el_path.to_string())
            } else {
                (defs.type_def(&t.code), t.code.clone())
            }
        };
        let Some(td) = td else { continue };
        let children: Vec<&str> = td.children_of(&parent).iter().map(|&c| td.elements[c].name.as_str()).collect();
        for (k, d) in discs.iter().enumerate() {
            let Some(dpath) = d.get("path").and_then(Value::as_str) else { continue };
            let first = dpath.split('.').next().unwrap_or(dpath);
            if first == "$this" || first.contains('(') || children.contains(&first.trim_end_matches("[x]")) {
                continue;
            }
            issues.push(
                Issue::error(
                    IssueCode::Invariant,
                    format!("the discriminator path is not an element of the sliced element ({parent})"),
                )
                .at(format!("{path}.differential.element[{i}].slicing.discriminator[{k}]")),
            );
        }
    }
}

/// A SearchParameter as the reference's SearchParameterValidator checks it without the
/// parameters it derives from: a composite parameter defines two or more components
/// (SEARCHPARAMETER_MISSING_COMPONENTS).
pub fn search_parameter(sp: &Value, path: &str, issues: &mut Vec<Issue>) {
    if sp.get("type").and_then(Value::as_str) == Some("composite") && items(sp, "component").count() < 2 {
        issues.push(
            Issue::error(
                IssueCode::Invariant,
                "When the SearchParameter has a type of 'composite', then the SearchParameter must define two or more components",
            )
            .at(path.to_string()),
        );
    }
}

/// What is wrong with a differential element's path, as the reference's snapshot generator
/// finds it: each step names an element of the type reached so far (a backbone element's own
/// children, a datatype's, or those of the element a `contentReference` names), and a choice
/// element may be named for one of its types (`Observation.valueQuantity`), not for anything
/// else (`Observation.valueBla`). `None` when the path is sound, or its root is not an R4 type
/// (a logical model), which Signpost cannot follow.
fn element_path_fault(defs: &Definitions, path: &str) -> Option<String> {
    let mut steps = path.split('.');
    let root = steps.next()?;
    let mut td = defs.type_def(root)?;
    let mut at = root.to_string();
    for step in steps {
        // At most a datatype and a content reference to step through before the child.
        let mut hops = 0;
        loop {
            let named = format!("{at}.{step}");
            if td.element(&named).is_some() {
                at = named;
                break;
            }
            let children = td.children_of(&at).iter().map(|&i| &td.elements[i]);
            if let Some(choice) =
                children.clone().find(|e| e.choice && step.len() > e.name.len() && step.starts_with(&e.name))
            {
                let suffix = &step[choice.name.len()..];
                let Some(ty) = choice.types.iter().find(|t| t.code.eq_ignore_ascii_case(suffix)) else {
                    return Some(format!(
                        "the path must be '{}' not '{path}' when the type list is not constrained",
                        choice.path
                    ));
                };
                td = defs.type_def(&ty.code)?;
                at = td.name.clone();
                break;
            }
            let here = td.element(&at)?;
            hops += 1;
            if hops > 2 {
                return Some(format!("'{path}' names no element ({step} is not an element of {at})"));
            }
            if let Some(target) = &here.content_reference {
                at = target.trim_start_matches('#').to_string();
                if td.element(&at).is_none() {
                    td = defs.type_def(at.split('.').next().unwrap_or_default())?;
                }
            } else if let [only] = here.types.as_slice()
                && !here.has_children
                && let Some(datatype) = defs.type_def(&only.code)
            {
                td = datatype;
                at = td.name.clone();
            } else if here.types.len() > 1 {
                // A step below a choice of several types (`Observation.value[x].value`, as
                // type-slicing tools write): the child of whichever type has it.
                let datatype = here.types.iter().filter_map(|t| defs.type_def(&t.code)).find(|d| {
                    let child = format!("{}.{step}", d.name);
                    d.element(&child).is_some()
                })?;
                td = datatype;
                at = td.name.clone();
            } else {
                return Some(format!("'{path}' names no element ({step} is not an element of {at})"));
            }
        }
    }
    None
}

/// References inside a Bundle: a `urn:uuid:` or `urn:oid:` reference names the `fullUrl` of an
/// entry (an error in a transaction or batch, which could not be stored otherwise; a warning
/// elsewhere, as the HL7 reference says); in a document or message Bundle, a relative reference (`Type/id`,
/// `Type/id/_history/v`) resolves to one entry: several entries with that type and id make it
/// ambiguous, and a versioned one must match an entry's `meta.versionId`.
///
/// A relative reference is resolved against its entry's fullUrl, as the reference's
/// getFromBundle does: so it has the form `Type/id` or `Type/id/_history/v` (REFERENCE_REF_FORMAT2;
/// in a transaction or batch a conditional `Type?search` too, REFERENCE_REF_FORMAT1), and its
/// entry has a fullUrl (BUNDLE_BUNDLE_FULLURL_MISSING). Signpost leaves the fullUrl rule out
/// of transactions and batches, where a POSTed entry needs no fullUrl and its relative
/// references name resources already stored; responses are exempt in Java too.
pub fn bundle_references(bundle: &Value, path: &str, issues: &mut Vec<Issue>) {
    let kind = bundle.get("type").and_then(Value::as_str);
    let document = matches!(kind, Some("document" | "message"));
    let processed = matches!(kind, Some("transaction" | "batch"));
    let no_base_needed = matches!(kind, Some("transaction" | "batch" | "transaction-response" | "batch-response"));
    let entries: Vec<(usize, &Value, Option<&str>)> = items(bundle, "entry")
        .enumerate()
        .filter_map(|(i, e)| Some((i, e.get("resource")?, e.get("fullUrl").and_then(Value::as_str))))
        .collect();
    let full_urls: FxHashSet<&str> = entries.iter().filter_map(|e| e.2).collect();
    fn key(r: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
        let text = |p: &str| r.pointer(p).and_then(Value::as_str);
        (text("/resourceType"), text("/id"), text("/meta/versionId"))
    }
    /// Every `reference` string under `v` (not inside nested resources), with its path; one
    /// path buffer for the walk, copied only for a reference.
    fn references<'v>(v: &'v Value, at: &mut String, out: &mut Vec<(String, &'v str)>) {
        let base = at.len();
        match v {
            Value::Object(o) => {
                // Only a Reference's `reference`: DetectedIssue.reference, Expression.reference
                // and Immunization.education.reference are uris, in objects with other keys.
                let reference_shaped = o.keys().all(|k| {
                    matches!(
                        k.trim_start_matches('_'),
                        "reference" | "type" | "identifier" | "display" | "id" | "extension"
                    )
                });
                for (k, x) in o {
                    if k == "reference"
                        && reference_shaped
                        && let Some(r) = x.as_str()
                    {
                        out.push((at.clone(), r));
                    } else if k != "resource" && k != "contained" && (x.is_object() || x.is_array()) {
                        at.push('.');
                        at.push_str(k);
                        references(x, at, out);
                        at.truncate(base);
                    }
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    super::validator::push_index(at, i);
                    references(x, at, out);
                    at.truncate(base);
                }
            }
            _ => {}
        }
    }
    for &(i, resource, full_url) in &entries {
        let mut refs = Vec::new();
        references(resource, &mut format!("{path}.entry[{i}].resource"), &mut refs);
        for (at, reference) in refs {
            if !reference.starts_with('#') && !super::validator::is_absolute_uri(reference) {
                let slashes = reference.matches('/').count();
                let search = || {
                    reference.split_once('?').is_some_and(|(ty, query)| {
                        Definitions::shared().is_resource(ty) && super::validator::is_search_query(query)
                    })
                };
                let fault = if full_url.is_none() && !no_base_needed {
                    "Relative Reference appears inside Bundle whose entry is missing a fullUrl"
                } else if slashes == 1 || slashes == 3 || (processed && search()) {
                    ""
                } else {
                    "Relative URLs must be of the form [ResourceName]/[id] (or a search, [type]?parameters, in a transaction or batch)"
                };
                if !fault.is_empty() {
                    issues.push(Issue::error(IssueCode::BundleReference, fault).at(at));
                    continue;
                }
            }
            if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
                if !full_urls.contains(reference) {
                    let diag = "the reference names no entry of the Bundle (no entry has it as fullUrl)";
                    let issue = if processed {
                        Issue::error(IssueCode::BundleReference, diag)
                    } else {
                        Issue::warning(IssueCode::BundleReference, diag)
                    };
                    issues.push(issue.at(at));
                }
                continue;
            }
            if !document {
                continue;
            }
            let parts: Vec<&str> = reference.split('/').collect();
            let (ty, id, version) = match parts.as_slice() {
                [ty, id] => (*ty, *id, None),
                [ty, id, "_history", v] => (*ty, *id, Some(*v)),
                _ => continue,
            };
            if !ty.starts_with(|c: char| c.is_ascii_uppercase()) {
                continue;
            }
            let same: Vec<_> =
                entries.iter().map(|e| key(e.1)).filter(|k| k.0 == Some(ty) && k.1 == Some(id)).collect();
            let diag = match version {
                None if same.len() > 1 => "the reference matches several entries of the Bundle (same type and id)",
                Some(v) if !same.is_empty() && !same.iter().any(|k| k.2 == Some(v)) => {
                    "no entry of the Bundle has the version this reference names"
                }
                _ => continue,
            };
            issues.push(Issue::error(IssueCode::BundleReference, diag).at(at));
        }
    }
}

/// The entry a reference inside the entry with `source` fullUrl names, by the Bundle resolution
/// rules (R4 §2.36.4, as the Java reference's `getFromBundle` applies them): an absolute or
/// `urn:` reference is a fullUrl (a version part is ignored); a relative `Type/id` is resolved
/// against the source's RESTful base, or is `urn:uuid:id` when the source is itself a urn.
fn resolve_in_bundle(full_urls: &[(usize, &str)], source: Option<&str>, reference: &str) -> Vec<usize> {
    let unversioned = reference.split("/_history/").next().unwrap_or(reference);
    let target = if unversioned.contains("://") || unversioned.starts_with("urn:") {
        unversioned.to_string()
    } else {
        let parts: Vec<&str> = unversioned.split('/').collect();
        let [ty, id] = parts.as_slice() else { return vec![] };
        match source {
            Some(s) if s.starts_with("urn:") => format!("urn:uuid:{id}"),
            Some(s) if s.contains("://") => {
                let segments: Vec<&str> = s.split('/').collect();
                if segments.len() < 3 {
                    return vec![];
                }
                format!("{}/{ty}/{id}", segments[..segments.len() - 2].join("/"))
            }
            _ => return vec![],
        }
    };
    full_urls.iter().filter(|(_, u)| *u == target).map(|(i, _)| *i).collect()
}

/// `of.key` (one Reference or a list of them) into `must`, each with its path.
fn listed<'v>(key: &str, must: &mut Vec<(String, &'v Value)>, of: &'v Value, at: &str) {
    match of.get(key) {
        Some(Value::Array(a)) => {
            for (k, r) in a.iter().enumerate() {
                must.push((format!("{at}.{key}[{k}]"), r));
            }
        }
        Some(r) => must.push((format!("{at}.{key}"), r)),
        None => {}
    }
}

/// Every `reference` string under `v` (inside nested resources too, but not `Bundle.entry`
/// resources of a nested Bundle), for the interlinking of a document or message.
fn all_references<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("reference", Value::String(r)) if !r.starts_with('#') => out.push(r),
                    _ => all_references(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| all_references(x, out)),
        _ => {}
    }
}

/// Document and message Bundles as the Java reference's BundleValidator checks them: the
/// Composition's subject, authors, encounter, custodian, attesters, event details and section
/// authors, focuses and entries, and the MessageHeader's focus, each name an entry of the Bundle
/// (error); and every entry is reachable from the first by references, forwards or backwards
/// (an error in a document, a warning in a message).
pub fn document_links(bundle: &Value, path: &str, issues: &mut Vec<Issue>) {
    let kind = bundle.get("type").and_then(Value::as_str);
    let (head, document) = match kind {
        Some("document") => ("Composition", true),
        Some("message") => ("MessageHeader", false),
        _ => return,
    };
    let entries: Vec<(usize, &Value, Option<&str>)> = items(bundle, "entry")
        .enumerate()
        .filter_map(|(i, e)| Some((i, e.get("resource")?, e.get("fullUrl").and_then(Value::as_str))))
        .collect();
    let Some(&(first, root, root_url)) = entries.first() else { return };
    if first != 0 || root.get("resourceType").and_then(Value::as_str) != Some(head) {
        return;
    }
    let full_urls: Vec<(usize, &str)> = entries.iter().filter_map(|(i, _, u)| Some((*i, (*u)?))).collect();
    // The head's own references that must resolve.
    let mut must: Vec<(String, &Value)> = Vec::new();
    let at = format!("{path}.entry[0].resource");
    if document {
        for key in ["subject", "author", "encounter", "custodian"] {
            listed(key, &mut must, root, &at);
        }
        for (k, a) in items(root, "attester").enumerate() {
            listed("party", &mut must, a, &format!("{at}.attester[{k}]"));
        }
        for (k, e) in items(root, "event").enumerate() {
            listed("detail", &mut must, e, &format!("{at}.event[{k}]"));
        }
        fn sections<'v>(v: &'v Value, at: &str, must: &mut Vec<(String, &'v Value)>) {
            for (k, s) in items(v, "section").enumerate() {
                let here = format!("{at}.section[{k}]");
                for key in ["author", "focus", "entry"] {
                    listed(key, must, s, &here);
                }
                sections(s, &here, must);
            }
        }
        sections(root, &at, &mut must);
    } else {
        listed("focus", &mut must, root, &at);
    }
    for (at, r) in must {
        let Some(reference) = r.get("reference").and_then(Value::as_str) else { continue };
        if reference.starts_with('#') {
            continue;
        }
        if resolve_in_bundle(&full_urls, root_url, reference).is_empty() {
            issues.push(
                Issue::error(
                    IssueCode::BundleReference,
                    format!("the reference names no entry of the Bundle by the Bundle resolution rules (the {head} must refer to entries of its Bundle)"),
                )
                .at(format!("{at}.reference")),
            );
        }
    }
    // Every entry reachable from the first, following references both ways.
    let mut links: Vec<Vec<usize>> = vec![Vec::new(); items(bundle, "entry").count()];
    for &(i, resource, url) in &entries {
        let mut refs = Vec::new();
        all_references(resource, &mut refs);
        for r in refs {
            for j in resolve_in_bundle(&full_urls, url, r) {
                links[i].push(j);
                links[j].push(i);
            }
        }
    }
    let mut reached = vec![false; links.len()];
    let mut queue = vec![0];
    reached[0] = true;
    while let Some(i) = queue.pop() {
        for &j in &links[i] {
            if !reached[j] {
                reached[j] = true;
                queue.push(j);
            }
        }
    }
    for &(i, _, _) in &entries {
        if reached[i] {
            continue;
        }
        let text = format!("the entry is not reachable by references (forward or backward) from the {head}");
        let issue = if document {
            Issue::error(IssueCode::BundleReference, text)
        } else {
            Issue::warning(IssueCode::BundleReference, text)
        };
        issues.push(issue.at(format!("{path}.entry[{i}]")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn measure_reports_follow_the_scoring_groups_and_populations_of_their_measure() {
        let pop = |code: &str| json!({ "code": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/measure-population", "code": code }] }, "count": 3 });
        let measure = |scoring: &str| {
            json!({ "resourceType": "Measure", "id": "m", "status": "active",
            "scoring": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": scoring }] },
            "group": [{ "population": [
                { "code": pop("initial-population")["code"] }, { "code": pop("numerator")["code"] }, { "code": pop("denominator")["code"] }] }] })
        };
        let report = |scoring: &str, ty: &str, group: Value| {
            json!({ "resourceType": "MeasureReport", "status": "complete", "type": ty,
            "measure": "#m", "contained": [measure(scoring)], "period": { "start": "2024-01-01", "end": "2024-12-31" }, "group": [group] })
        };
        let at = |r: Value| {
            let mut issues = Vec::new();
            measure_report(&r, "MeasureReport", &|_| None, &mut issues);
            issues.into_iter().map(|i| i.expression.unwrap_or_default()).collect::<Vec<_>>()
        };
        let all = json!([pop("initial-population"), pop("numerator"), pop("denominator")]);
        let good = json!({ "population": all, "measureScore": { "value": 0.5 } });
        assert_eq!(at(report("proportion", "summary", good.clone())), Vec::<String>::new());
        // A proportion above 1 with a unit; a missing population; no score at all.
        let bad = json!({ "population": [pop("numerator")], "measureScore": { "value": 1.5, "unit": "%" } });
        assert_eq!(
            at(report("proportion", "summary", bad)),
            vec![
                "MeasureReport.group[0]",
                "MeasureReport.group[0]",
                "MeasureReport.group[0].measureScore.unit",
                "MeasureReport.group[0].measureScore.value"
            ]
        );
        let unscored = json!({ "population": all });
        assert_eq!(at(report("ratio", "summary", unscored.clone())), vec!["MeasureReport.group[0]"]);
        // A data collection carries no score and need not.
        assert_eq!(at(report("ratio", "data-collection", unscored)), Vec::<String>::new());
        assert_eq!(
            at(report("proportion", "data-collection", good.clone())),
            vec!["MeasureReport.group[0].measureScore"]
        );
        assert_eq!(at(report("cohort", "summary", good)), vec!["MeasureReport.group[0].measureScore"]);
        // A Measure that cannot be found: one warning at the report, nothing more.
        let mut issues = Vec::new();
        let lost = json!({ "resourceType": "MeasureReport", "measure": "http://acme.org/Measure/x", "group": [{ "measureScore": { "value": 7 } }] });
        measure_report(&lost, "MeasureReport", &|_| None, &mut issues);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].severity, crate::fhir::outcome::Severity::Warning);
    }

    #[test]
    fn documents_and_messages_resolve_their_head_references_and_reach_every_entry() {
        use crate::fhir::outcome::Severity;
        let u = |n: u8| format!("urn:uuid:{n}{n}{n}{n}{n}{n}{n}{n}-1111-1111-1111-111111111111");
        let document = |subject: &str, extra: Value| {
            let mut entries = vec![
                json!({ "fullUrl": u(1), "resource": { "resourceType": "Composition", "subject": { "reference": subject },
                    "author": [{ "reference": u(2) }], "section": [{ "entry": [{ "reference": u(4) }] }] } }),
                json!({ "fullUrl": u(2), "resource": { "resourceType": "Practitioner" } }),
                json!({ "fullUrl": u(3), "resource": { "resourceType": "Patient", "id": "p1" } }),
                json!({ "fullUrl": u(4), "resource": { "resourceType": "Observation", "subject": { "reference": u(3) } } }),
            ];
            if !extra.is_null() {
                entries.push(extra);
            }
            json!({ "resourceType": "Bundle", "type": "document", "entry": entries })
        };
        let found = |b: Value| {
            let mut issues = Vec::new();
            document_links(&b, "Bundle", &mut issues);
            issues.into_iter().map(|i| (i.severity, i.expression.unwrap_or_default())).collect::<Vec<_>>()
        };
        assert_eq!(found(document(&u(3), Value::Null)), vec![]);
        // `Patient/p1` from a urn:uuid Composition means urn:uuid:p1, which no entry is (Java's
        // BUNDLE_BUNDLE_ENTRY_NOTFOUND_CANNOT), even though a Patient with id p1 is present.
        assert_eq!(
            found(document("Patient/p1", Value::Null)),
            vec![(Severity::Error, "Bundle.entry[0].resource.subject.reference".into())]
        );
        // An entry nothing links to or from is an orphan: an error in a document.
        let orphan = json!({ "fullUrl": u(5), "resource": { "resourceType": "Organization" } });
        assert_eq!(found(document(&u(3), orphan.clone())), vec![(Severity::Error, "Bundle.entry[4]".into())]);
        // An entry that only points back at a reachable one is reached.
        let provenance =
            json!({ "fullUrl": u(6), "resource": { "resourceType": "Provenance", "target": [{ "reference": u(1) }] } });
        assert_eq!(found(document(&u(3), provenance)), vec![]);
        // RESTful fullUrls resolve relative references against their base.
        let restful = json!({ "resourceType": "Bundle", "type": "document", "entry": [
            { "fullUrl": "http://a.example/fhir/Composition/c", "resource": { "resourceType": "Composition", "subject": { "reference": "Patient/p1" } } },
            { "fullUrl": "http://a.example/fhir/Patient/p1", "resource": { "resourceType": "Patient", "id": "p1" } }] });
        assert_eq!(found(restful), vec![]);
        // A message: the focus must resolve; an orphan is a warning.
        let message = json!({ "resourceType": "Bundle", "type": "message", "entry": [
            { "fullUrl": u(1), "resource": { "resourceType": "MessageHeader", "focus": [{ "reference": u(9) }] } },
            { "fullUrl": u(2), "resource": { "resourceType": "ServiceRequest" } }] });
        assert_eq!(
            found(message),
            vec![
                (Severity::Error, "Bundle.entry[0].resource.focus[0].reference".into()),
                (Severity::Warning, "Bundle.entry[1]".into())
            ]
        );
    }

    #[test]
    fn observations_without_subject_performer_or_effective_get_best_practice_warnings() {
        let mut issues = Vec::new();
        observation_best_practice(
            &json!({ "resourceType": "Observation", "subject": { "reference": "Patient/1" } }),
            "Observation",
            &mut issues,
        );
        let texts: Vec<_> = issues.iter().map(|i| (i.severity, i.diagnostics.clone())).collect();
        assert_eq!(texts.len(), 2);
        assert!(texts.iter().all(|(s, _)| *s == crate::fhir::outcome::Severity::Warning));
        assert!(texts[0].1.ends_with("a performer") && texts[1].1.ends_with("an effective[x]"), "{texts:?}");
        issues.clear();
        let full = json!({ "resourceType": "Observation", "subject": { "reference": "Patient/1" },
            "performer": [{ "reference": "Practitioner/1" }], "effectivePeriod": { "start": "2024-01-01" } });
        observation_best_practice(&full, "Observation", &mut issues);
        assert!(issues.is_empty());
    }

    #[test]
    fn discriminators_name_children_of_the_sliced_element() {
        let sd = json!({ "resourceType": "StructureDefinition", "differential": { "element": [
            { "id": "Observation.component", "path": "Observation.component", "slicing": { "discriminator": [{ "type": "pattern", "path": "code" }] } },
            { "id": "Observation.extension", "path": "Observation.extension", "slicing": { "discriminator": [{ "type": "value", "path": "type" }] } },
            { "id": "Observation.code.coding", "path": "Observation.code.coding", "slicing": { "discriminator": [{ "type": "value", "path": "system" }] } }
        ] } });
        let mut issues = Vec::new();
        structure_definition(&sd, "StructureDefinition", None, &mut issues);
        let at: Vec<_> = issues.iter().map(|i| i.expression.clone().unwrap_or_default()).collect();
        assert_eq!(at, vec!["StructureDefinition.differential.element[1].slicing.discriminator[0]"]);
    }

    /// Differential paths as the reference's snapshot generator follows them: through
    /// backbone elements, datatypes and content references, a choice named for one of its types.
    #[test]
    fn differential_paths_name_elements_of_the_base_type() {
        let defs = Definitions::shared();
        for sound in [
            "Observation",
            "Observation.code.coding.system",
            "Observation.value[x]",
            "Observation.valueQuantity.value",
            "Observation.component.code.text",
            "Questionnaire.item.item.linkId",
            "Questionnaire.item.item.item.answerOption.value[x]",
            "Observation.value[x].value",
            "Extension.value[x].coding.system",
            "Patient.birthDate.extension",
            "Extension.extension.value[x]",
            "Bundle.entry.resource",
            "MyLogicalModel.anything",
        ] {
            assert_eq!(element_path_fault(defs, sound), None, "{sound}");
        }
        for wrong in
            ["Observation.valueBla", "Observation.codee", "Patient.name.familyName", "Observation.code.coding.system.x"]
        {
            assert!(element_path_fault(defs, wrong).is_some(), "{wrong}");
        }
    }

    #[test]
    fn composite_search_parameters_define_two_or_more_components() {
        let sp = |components: usize| {
            let component: Vec<Value> = (0..components)
                .map(|i| json!({ "definition": format!("http://x.org/SearchParameter/p{i}"), "expression": "code" }))
                .collect();
            let mut issues = Vec::new();
            search_parameter(
                &json!({ "resourceType": "SearchParameter", "type": "composite", "component": component }),
                "SearchParameter",
                &mut issues,
            );
            issues.len()
        };
        assert_eq!((sp(0), sp(1), sp(2), sp(3)), (1, 1, 0, 0));
        let mut issues = Vec::new();
        search_parameter(
            &json!({ "resourceType": "SearchParameter", "type": "token" }),
            "SearchParameter",
            &mut issues,
        );
        assert!(issues.is_empty(), "only composites have components");
    }

    #[test]
    fn urn_references_name_an_entry() {
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            { "fullUrl": "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01", "resource": { "resourceType": "Patient" } },
            { "resource": { "resourceType": "ServiceRequest",
                "subject": { "reference": "urn:uuid:0b3c6c9e-3f0a-4f57-9a3e-1d6a2f1c9a01" },
                "requester": { "reference": "urn:uuid:5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c05" } } }
        ] });
        let mut issues = Vec::new();
        bundle_references(&bundle, "Bundle", &mut issues);
        let at: Vec<_> = issues.iter().map(|i| i.expression.clone().unwrap_or_default()).collect();
        assert_eq!(at, vec!["Bundle.entry[1].resource.requester"]);
    }

    /// Relative references inside a Bundle as the reference's getFromBundle resolves them:
    /// `Type/id` or `Type/id/_history/v` (REFERENCE_REF_FORMAT2; a conditional `Type?search`
    /// only in a transaction or batch, FORMAT1), from an entry with a fullUrl
    /// (BUNDLE_BUNDLE_FULLURL_MISSING) except in transactions, batches and their responses.
    #[test]
    fn relative_references_in_bundles_are_type_and_id_from_an_entry_with_a_full_url() {
        let faults = |kind: &str, full_url: Option<&str>, reference: &str| {
            let mut entry =
                json!({ "resource": { "resourceType": "Observation", "subject": { "reference": reference } } });
            if let Some(u) = full_url {
                entry["fullUrl"] = json!(u);
            }
            let mut issues = Vec::new();
            bundle_references(
                &json!({ "resourceType": "Bundle", "type": kind, "entry": [entry] }),
                "Bundle",
                &mut issues,
            );
            issues.into_iter().map(|i| i.expression.unwrap_or_default()).collect::<Vec<_>>()
        };
        let flagged = vec!["Bundle.entry[0].resource.subject".to_string()];
        let base = Some("http://x.org/fhir/Observation/1");
        for kind in ["collection", "searchset", "transaction", "batch-response"] {
            for ok in ["Patient/1", "Patient/1/_history/2", "http://x.org/fhir/Patient/1", "#p"] {
                assert_eq!(faults(kind, base, ok), Vec::<String>::new(), "{kind} {ok}");
            }
            for bad in ["denom-EXM104", "fhir/Patient/1", "a/b/c/d/e"] {
                assert_eq!(faults(kind, base, bad), flagged, "{kind} {bad}");
            }
        }
        // A uri named `reference` (DetectedIssue.reference) is not a Reference.
        let mut issue = json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "fullUrl": "http://x.org/fhir/DetectedIssue/1",
            "resource": { "resourceType": "DetectedIssue", "id": "1", "status": "final", "reference": "guidance.html" } }] });
        let mut issues = Vec::new();
        bundle_references(&issue, "Bundle", &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        issue["entry"][0]["resource"]["patient"] = json!({ "reference": "guidance.html" });
        bundle_references(&issue, "Bundle", &mut issues);
        assert_eq!(issues.len(), 1, "a Reference beside it is checked");
        let search = "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009";
        assert_eq!(faults("transaction", None, search), Vec::<String>::new());
        assert_eq!(faults("collection", base, search), flagged);
        assert_eq!(faults("collection", None, "Patient/1"), flagged, "no fullUrl to resolve against");
        assert_eq!(faults("collection", None, "http://x.org/fhir/Patient/1"), Vec::<String>::new());
        for kind in ["transaction", "batch", "transaction-response"] {
            assert_eq!(faults(kind, None, "Patient/1"), Vec::<String>::new(), "{kind}");
        }
    }

    #[test]
    fn document_references_must_resolve_to_one_entry_and_version() {
        let obs =
            |v: &str| json!({ "resource": { "resourceType": "Observation", "id": "o", "meta": { "versionId": v } } });
        let comp = json!({ "fullUrl": "http://x.org/fhir/Composition/c", "resource": { "resourceType": "Composition", "section": [{ "entry": [
            { "reference": "Observation/o/_history/3" }, { "reference": "Observation/o" }, { "reference": "Observation/o/_history/2" }
        ] }] } });
        let bundle = json!({ "resourceType": "Bundle", "type": "document", "entry": [comp, obs("1"), obs("2")] });
        let mut issues = Vec::new();
        bundle_references(&bundle, "Bundle", &mut issues);
        let at: Vec<_> = issues.iter().map(|i| i.expression.clone().unwrap_or_default()).collect();
        assert_eq!(
            at,
            vec!["Bundle.entry[0].resource.section[0].entry[0]", "Bundle.entry[0].resource.section[0].entry[1]"]
        );
    }
}
