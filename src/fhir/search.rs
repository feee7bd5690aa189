//! Search: the values indexed at write time and the parsing of search requests.
//!
//! Token and reference parameters are indexed when a resource is written (see
//! [`index_values`]); a search is parsed into [`Criteria`], which the store turns into bound
//! SQL. Unknown parameters are errors under `Prefer: handling=strict` and are otherwise
//! ignored and reported back in the Bundle.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde_json::Value;

use super::outcome::{Issue, IssueCode};
use super::{ParamKind, ParamSpec, TypeSpec, parse_reference};

/// The deepest page a search may ask for (`_offset`); deeper paging narrows the search instead
/// (by `_lastUpdated`), which also keeps every page cheap.
pub const MAX_OFFSET: i64 = 1_000_000;

/// Largest page a client may ask for.
pub const MAX_COUNT: i64 = 100;
/// Page size when the client names none.
pub const DEFAULT_COUNT: i64 = 20;

/// Comparison for `_lastUpdated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A parsed search, ready for the store.
#[derive(Debug, Clone, Default)]
pub struct Criteria {
    pub resource_type: String,
    /// `_id` values (OR).
    pub ids: Option<Vec<String>>,
    /// Indexed parameters: each entry is ANDed, its values ORed.
    pub params: Vec<(String, Vec<String>)>,
    /// `_lastUpdated` bounds in epoch milliseconds.
    pub last_updated: Vec<(Cmp, i64)>,
    /// Only resources this Organization holds a grant on (`None` = no restriction).
    pub visible_to: Option<String>,
    /// `Some(true)` newest first, `Some(false)` oldest first, `None` by id.
    pub sort_desc: Option<bool>,
    pub count: i64,
    pub offset: i64,
}

/// A search request after parsing.
#[derive(Debug, Clone)]
pub struct ParsedSearch {
    pub criteria: Criteria,
    /// The parameters that were applied, for the Bundle's `self` and paging links.
    pub applied: Vec<(String, String)>,
    /// Parameters that were ignored (lenient handling).
    pub ignored: Vec<String>,
}

/// The values of every supported search parameter of `resource`, for the search index.
pub fn index_values(spec: &TypeSpec, resource: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in spec.params.iter().filter(|p| indexed_as(spec, p.name) == p.name) {
        for element in p.elements {
            let Some(v) = resource.get(*element) else { continue };
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                match p.kind {
                    ParamKind::Token => token_values(item, &mut |s| out.push((p.name.to_string(), s))),
                    ParamKind::Reference => reference_values(p, item, &mut |s| out.push((p.name.to_string(), s))),
                }
            }
        }
    }
    out
}

/// The parameter whose search rows answer `param` on `spec`: a reference parameter limited to
/// one target type (`patient`, `subject` where it is a Patient) has no rows of its own when a
/// general parameter reads the same elements (`subject`), whose rows hold the same values and
/// more; its search values are always of its target type (`Patient/…`), so they match only those.
/// Two search rows fewer per referral and per Task. Any other parameter is answered from its own.
pub fn indexed_as<'a>(spec: &TypeSpec, param: &'a str) -> &'a str {
    let Some(p) = spec.params.iter().find(|p| p.name == param) else { return param };
    if p.kind != ParamKind::Reference || p.target.is_none() {
        return param;
    }
    spec.params
        .iter()
        .find(|g| g.kind == ParamKind::Reference && g.target.is_none() && g.elements == p.elements)
        .map_or(param, |g| g.name)
}

fn token_values(v: &Value, push: &mut dyn FnMut(String)) {
    match v {
        Value::String(code) => push(code.clone()),
        Value::Bool(b) => push(b.to_string()),
        Value::Object(o) => {
            if let Some(codings) = o.get("coding").and_then(Value::as_array) {
                for c in codings {
                    token_values(c, push);
                }
                return;
            }
            let system = o.get("system").and_then(Value::as_str);
            let code = o.get("code").or_else(|| o.get("value")).and_then(Value::as_str);
            if let Some(code) = code {
                if let Some(system) = system {
                    push(format!("{system}|{code}"));
                }
                push(code.to_string());
            }
        }
        _ => {}
    }
}

fn reference_values(p: &ParamSpec, v: &Value, push: &mut dyn FnMut(String)) {
    let Some((ty, id)) = v.get("reference").and_then(Value::as_str).and_then(parse_reference) else {
        return;
    };
    if p.target.is_some_and(|t| t != ty) {
        return;
    }
    push(format!("{ty}/{id}"));
}

fn bad(diag: impl Into<String>) -> Issue {
    Issue::error(IssueCode::BadSearchValue, diag)
}

/// Parse the query pairs of a search on `spec`.
pub fn parse(spec: &TypeSpec, pairs: &[(String, String)], strict: bool) -> Result<ParsedSearch, Issue> {
    let mut c = Criteria { resource_type: spec.name.to_string(), count: DEFAULT_COUNT, ..Default::default() };
    let mut applied = Vec::new();
    let mut ignored = Vec::new();
    for (name, value) in pairs {
        let values = || value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from).collect::<Vec<_>>();
        match name.as_str() {
            "_id" => {
                let ids = values();
                if ids.is_empty() {
                    return Err(bad("_id needs a value"));
                }
                c.ids = Some(match c.ids.take() {
                    Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
                    None => ids,
                });
            }
            "_lastUpdated" => c.last_updated.extend(parse_date_bound(value)?),
            "_count" => {
                let n: i64 = value.parse().map_err(|_| bad("_count must be a whole number"))?;
                if n < 0 {
                    return Err(bad("_count must not be negative"));
                }
                c.count = n.min(MAX_COUNT);
            }
            "_offset" => {
                c.offset = value
                    .parse()
                    .ok()
                    .filter(|n: &i64| (0..=MAX_OFFSET).contains(n))
                    .ok_or_else(|| bad("_offset must be a whole number from 0 to 1000000"))?;
                continue;
            }
            "_sort" => {
                c.sort_desc = match value.as_str() {
                    "_lastUpdated" => Some(false),
                    "-_lastUpdated" => Some(true),
                    _ => return Err(bad("_sort supports _lastUpdated and -_lastUpdated")),
                };
            }
            "_summary" if value == "count" => c.count = 0,
            "_format" => {
                continue;
            }
            other => match spec.params.iter().find(|p| p.name == other) {
                Some(p) => {
                    let given = values();
                    let vals: Vec<String> = given.iter().flat_map(|v| normalise(p, v)).collect();
                    if p.target.is_some() && !given.is_empty() && vals.is_empty() {
                        // Only references of another type than the parameter's (`patient` of a
                        // Group): nothing matches.
                        c.ids = Some(Vec::new());
                    } else if vals.is_empty() {
                        return Err(bad(format!("search parameter '{other}' needs a value")));
                    } else {
                        c.params.push((p.name.to_string(), vals));
                    }
                }
                None => {
                    if strict {
                        let safe: String = other.chars().take(64).filter(|ch| ch.is_ascii_graphic()).collect();
                        return Err(Issue::error(
                            IssueCode::UnknownSearchParam,
                            format!("search parameter '{safe}' is not supported on {}", spec.name),
                        ));
                    }
                    ignored.push(other.chars().take(64).collect());
                    continue;
                }
            },
        }
        applied.push((name.clone(), value.clone()));
    }
    Ok(ParsedSearch { criteria: c, applied, ignored })
}

/// The index values a search value stands for. A reference is indexed as `Type/id` only, so a
/// bare id stands for that id of the parameter's target type, or of any R4 resource type.
fn normalise(p: &ParamSpec, value: &str) -> Vec<String> {
    match p.kind {
        ParamKind::Token => vec![value.strip_prefix('|').unwrap_or(value).to_string()],
        ParamKind::Reference => match parse_reference(value) {
            // A parameter limited to one type (`patient`) matches no reference of another.
            Some((ty, _)) if p.target.is_some_and(|t| t != ty) => Vec::new(),
            Some((ty, id)) => vec![format!("{ty}/{id}")],
            None => match p.target {
                Some(t) => vec![format!("{t}/{value}")],
                None => super::schema::StructureValidator::shared()
                    .resource_types()
                    .iter()
                    .map(|t| format!("{t}/{value}"))
                    .collect(),
            },
        },
    }
}

/// `_lastUpdated=[prefix]date`: a date of any FHIR precision stands for its whole range.
fn parse_date_bound(value: &str) -> Result<Vec<(Cmp, i64)>, Issue> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "gt" | "ge" | "lt" | "le")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let (lo, hi) = date_range(rest).ok_or_else(|| bad("_lastUpdated must be a FHIR date or instant"))?;
    Ok(match prefix {
        "gt" => vec![(Cmp::Ge, hi)],
        "ge" => vec![(Cmp::Ge, lo)],
        "lt" => vec![(Cmp::Lt, lo)],
        "le" => vec![(Cmp::Lt, hi)],
        _ => vec![(Cmp::Ge, lo), (Cmp::Lt, hi)],
    })
}

/// The half-open millisecond range `[lo, hi)` a FHIR date/dateTime denotes.
fn date_range(s: &str) -> Option<(i64, i64)> {
    let day =
        |d: NaiveDate| -> Option<i64> { Some(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?).timestamp_millis()) };
    match s.len() {
        4 => {
            let y: i32 = s.parse().ok()?;
            Some((day(NaiveDate::from_ymd_opt(y, 1, 1)?)?, day(NaiveDate::from_ymd_opt(y + 1, 1, 1)?)?))
        }
        7 => {
            let d = NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").ok()?;
            let next = if d.month() == 12 {
                NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)?
            };
            Some((day(d)?, day(next)?))
        }
        10 => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            Some((day(d)?, day(d.succ_opt()?)?))
        }
        _ => {
            // Minutes without seconds are allowed in searches.
            let t =
                DateTime::parse_from_rfc3339(s).or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%:z")).ok()?;
            let ms = t.timestamp_millis();
            let clock = s.split('T').nth(1)?.split(['Z', '+', '-']).next()?;
            let width = if clock.contains('.') {
                1
            } else if clock.matches(':').count() == 2 {
                1000
            } else {
                60_000
            };
            Some((ms, ms + width))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::type_spec;
    use serde_json::json;

    #[test]
    fn indexes_tokens_identifiers_and_references() {
        let task = json!({
            "resourceType": "Task",
            "status": "requested",
            "identifier": [{ "system": "https://x", "value": "T1" }],
            "owner": { "reference": "Organization/charity-a" },
            "for": { "reference": "Patient/p1" },
            "basedOn": [{ "reference": "ServiceRequest/sr1" }]
        });
        let idx = index_values(type_spec("Task").unwrap(), &task);
        for want in [
            ("status", "requested"),
            ("identifier", "https://x|T1"),
            ("identifier", "T1"),
            ("owner", "Organization/charity-a"),
            ("subject", "Patient/p1"),
            ("based-on", "ServiceRequest/sr1"),
        ] {
            assert!(idx.contains(&(want.0.to_string(), want.1.to_string())), "missing {want:?} in {idx:?}");
        }
        // `patient` is answered from `subject`'s rows, and has none of its own.
        assert!(!idx.iter().any(|(p, _)| p == "patient"), "{idx:?}");
    }

    /// A reference is indexed once, as `Type/id`; a search by the bare id still finds it, for a
    /// parameter with a target type (`patient`) and one without (`owner`), and only that id.
    /// `patient` finds only a Patient, though it is answered from `subject`'s rows.
    #[test]
    fn references_are_indexed_once_and_found_by_bare_id() {
        let spec = type_spec("Task").unwrap();
        let task = json!({
            "resourceType": "Task",
            "owner": { "reference": "Organization/charity-a" },
            "for": { "reference": "Patient/p1" }
        });
        let idx = index_values(spec, &task);
        assert_eq!(idx.iter().filter(|(p, _)| p == "owner").count(), 1, "{idx:?}");
        let finds = |idx: &[(String, String)], param: &str, value: &str| {
            let c = parse(spec, &[(param.to_string(), value.to_string())], true).unwrap().criteria;
            let (name, values) = &c.params[0];
            idx.iter().any(|(p, v)| p == indexed_as(spec, name) && values.contains(v))
        };
        let matches = |param: &str, value: &str| finds(&idx, param, value);
        let for_a_group = index_values(spec, &json!({ "resourceType": "Task", "for": { "reference": "Group/p1" } }));
        assert!(finds(&for_a_group, "subject", "p1"));
        assert!(!finds(&for_a_group, "patient", "p1"), "patient=p1 finds a Task for Group/p1");
        // A reference of another type than `patient`'s matches nothing, rather than being looked
        // up among `subject`'s rows.
        let other = parse(spec, &[("patient".to_string(), "Group/p1".to_string())], false).unwrap().criteria;
        assert_eq!((other.ids, other.params.len()), (Some(Vec::new()), 0));
        let mixed = parse(spec, &[("patient".to_string(), "Group/p1,Patient/p1".to_string())], false).unwrap();
        assert_eq!(mixed.criteria.params, vec![("patient".to_string(), vec!["Patient/p1".to_string()])]);
        // Only a target-limited parameter shares another's rows, and only on the same elements.
        assert_eq!(indexed_as(spec, "patient"), "subject");
        assert_eq!(indexed_as(type_spec("Consent").unwrap(), "patient"), "patient");
        assert_eq!(indexed_as(spec, "owner"), "owner");
        for (param, value) in
            [("owner", "charity-a"), ("owner", "Organization/charity-a"), ("patient", "p1"), ("subject", "p1")]
        {
            assert!(matches(param, value), "{param}={value} finds nothing");
        }
        for (param, value) in
            [("owner", "charity-b"), ("owner", "HealthcareService/charity-a"), ("patient", "charity-a")]
        {
            assert!(!matches(param, value), "{param}={value} finds the Task");
        }
    }

    #[test]
    fn unknown_parameters_are_errors_only_when_strict() {
        let spec = type_spec("Task").unwrap();
        let pairs = vec![("colour".to_string(), "blue".to_string())];
        assert_eq!(parse(spec, &pairs, true).unwrap_err().code, IssueCode::UnknownSearchParam);
        assert_eq!(parse(spec, &pairs, false).unwrap().ignored, vec!["colour".to_string()]);
    }

    #[test]
    fn last_updated_prefixes_cover_the_whole_precision() {
        let (lo, hi) = date_range("2024-03-14").unwrap();
        assert_eq!(hi - lo, 86_400_000);
        assert_eq!(parse_date_bound("gt2024-03-14").unwrap(), vec![(Cmp::Ge, hi)]);
        assert_eq!(parse_date_bound("le2024").unwrap().len(), 1);
        assert!(parse_date_bound("2024-03-14T10:15:00.123Z").is_ok());
        assert!(parse_date_bound("yesterday").is_err());
    }
}
