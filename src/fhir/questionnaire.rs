//! A QuestionnaireResponse checked against its Questionnaire, as the HL7 Java validator's
//! `QuestionnaireValidator` checks it (messages in its `Messages.properties`, quoted below).
//!
//! The Questionnaire is the response's contained one (`#id`) or a loaded conformance resource
//! (an implementation guide given with `--ig`); one that cannot be found is a warning
//! (information for an example.org canonical) and nothing more is checked. Items are matched
//! level by level: each response item names a linkId of the Questionnaire items at the same
//! level, in their order, once unless the item repeats; required items that are enabled are
//! answered (an error once the response is completed or amended, a warning before); answers
//! have the item's type, come from its answerOptions (of any item type) and are given once
//! unless it repeats, within the item's min/maxOccurs; attachments, references and quantities
//! keep to the item's mime types and size, resource types, and units and bounds; groups,
//! R4's abstract questions and display items have no answers; disabled items (enableWhen)
//! have no answers.
//! Issues about which items are present are reported at the parent, as Java reports them.

use serde_json::Value;

use super::items;
use super::outcome::{Issue, IssueCode};

const MISMATCH: IssueCode = IssueCode::DefinitionMismatch;

/// Check `qr` (at `path`) against the Questionnaire it names.
pub fn questionnaire_response<'a>(
    qr: &'a Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<&'a Value>,
    issues: &mut Vec<Issue>,
) {
    let Some(canonical) = qr.get("questionnaire").and_then(Value::as_str) else { return };
    let resolved = super::definitional::resolve(qr, canonical, lookup);
    // What the canonical names: the resource found, or a value set Signpost knows by its URL.
    let value_set = super::validator::is_value_set_url(canonical, super::definitions::Definitions::shared());
    let found =
        resolved.and_then(|r| r.get("resourceType")).and_then(Value::as_str).or(value_set.then_some("ValueSet"));
    if let Some(found) = found
        && found != "Questionnaire"
    {
        // A canonical(Questionnaire) that names another kind of resource (TYPE_SPECIFIC_CHECKS_
        // DT_CANONICAL_TYPE): an error, and nothing to check the response against.
        issues.push(
            Issue::error(
                MISMATCH,
                format!("Canonical URL '{canonical}' refers to a resource that has the wrong type. Found {found} expecting one of [Questionnaire]"),
            )
            .at(format!("{path}.questionnaire")),
        );
        return;
    }
    let Some(q) = resolved else {
        let text = format!(
            "The questionnaire '{canonical}' could not be resolved, so no validation can be performed against the base questionnaire"
        );
        let example = canonical.starts_with("http://example.org") || canonical.starts_with("https://example.org");
        let issue = if example { Issue::information(MISMATCH, text) } else { Issue::warning(MISMATCH, text) };
        issues.push(issue.at(path.to_string()));
        return;
    };
    let completed = matches!(qr.get("status").and_then(Value::as_str), Some("completed" | "amended"));
    let mut check = Check { q, qr, completed, issues };
    check.level(qr, items(q, "item").collect(), path);
}

struct Check<'a, 'i> {
    q: &'a Value,
    qr: &'a Value,
    completed: bool,
    issues: &'i mut Vec<Issue>,
}

fn link_id(v: &Value) -> Option<&str> {
    v.get("linkId").and_then(Value::as_str)
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool) == Some(true)
}

/// The Questionnaire item with `id`, anywhere in `v`.
fn find_item<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    items(v, "item").find_map(|i| if link_id(i) == Some(id) { Some(i) } else { find_item(i, id) })
}

/// The answers given to the item `id`, anywhere in the response.
fn answers_to<'a>(v: &'a Value, id: &str, out: &mut Vec<&'a Value>) {
    for item in items(v, "item") {
        if link_id(item) == Some(id) {
            out.extend(items(item, "answer"));
        }
        answers_to(item, id, out);
        for answer in items(item, "answer") {
            answers_to(answer, id, out);
        }
    }
}

fn coding_key(c: &Value) -> (Option<&str>, Option<&str>) {
    (c.get("system").and_then(Value::as_str), c.get("code").and_then(Value::as_str))
}

/// The FHIR type name of a `value[x]` suffix: `Integer` is `integer`, `Coding` stays `Coding`.
fn type_name(suffix: &str) -> String {
    match suffix {
        "Coding" | "Attachment" | "Reference" | "Quantity" => suffix.to_string(),
        t => {
            let mut c = t.chars();
            c.next().map(|f| f.to_ascii_lowercase().to_string() + c.as_str()).unwrap_or_default()
        }
    }
}

/// The value of the core extension `name` (`http://hl7.org/fhir/StructureDefinition/{name}`) on `v`.
fn extension<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    extensions(v, name).next()
}

/// The values of every core extension `name` on `v` (`mimeType` may be given several times).
fn extensions<'a>(v: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    items(v, "extension")
        .filter(move |e| {
            e.get("url")
                .and_then(Value::as_str)
                .and_then(|u| u.strip_prefix("http://hl7.org/fhir/StructureDefinition/"))
                == Some(name)
        })
        .filter_map(|e| typed(e, "value").map(|(_, v)| v))
}

/// Compare a quantity answer with a limit: in the same system and code directly; two UCUM
/// units that are metric prefixes of one base unit (`m` and `km`) after conversion. An error
/// names why they cannot be compared: a side without a formal unit (system and code), or
/// units Signpost cannot convert.
fn compare_quantities(q: &Value, limit: &Value) -> Result<std::cmp::Ordering, &'static str> {
    let num = |v: &Value| v.get("value").and_then(Value::as_f64);
    fn unit(v: &Value) -> Option<(&str, &str)> {
        Some((v.get("system")?.as_str()?, v.get("code")?.as_str()?))
    }
    let (Some(a), Some(b)) = (num(q), num(limit)) else { return Err("") };
    let (Some((qs, qc)), Some((ls, lc))) = (unit(q), unit(limit)) else {
        return Err(" because no formal units are specified");
    };
    let (a, b) = if (qs, qc) == (ls, lc) {
        (a, b)
    } else {
        const UCUM: &str = "http://unitsofmeasure.org";
        match (qs == UCUM && ls == UCUM, ucum_metric(qc), ucum_metric(lc)) {
            (true, Some((fa, base_a)), Some((fb, base_b))) if base_a == base_b => (a * fa, b * fb),
            _ => return Err(""),
        }
    };
    // Equal within rounding: 700 mL is 0.7 L though 700 × 0.001 is 0.7000000000000001.
    if (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) {
        return Ok(std::cmp::Ordering::Equal);
    }
    a.partial_cmp(&b).ok_or("")
}

/// A UCUM code that is a metric prefix and one base unit (`km`, `mg`, `mL`): its factor to the
/// base unit, and the base unit.
fn ucum_metric(code: &str) -> Option<(f64, &str)> {
    const BASES: &[&str] = &["m", "g", "L", "l", "s", "mol", "Pa", "J", "W", "Hz", "N", "V", "A", "K", "eq", "U"];
    const PREFIXES: &[(&str, f64)] = &[
        ("", 1.0),
        ("da", 1e1),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("h", 1e2),
        ("d", 1e-1),
        ("c", 1e-2),
        ("m", 1e-3),
        ("u", 1e-6),
        ("n", 1e-9),
        ("p", 1e-12),
    ];
    PREFIXES.iter().find_map(|&(p, f)| {
        let base = code.strip_prefix(p)?;
        // UCUM's litre is `L` or `l`.
        BASES.contains(&base).then_some((f, if base == "l" { "L" } else { base }))
    })
}

/// The `value[x]` of an answer or an answerOption / enableWhen `answer[x]`: (type suffix, value).
fn typed<'a>(v: &'a Value, prefix: &str) -> Option<(&'a str, &'a Value)> {
    v.as_object()?.iter().find_map(|(k, val)| k.strip_prefix(prefix).filter(|t| !t.is_empty()).map(|t| (t, val)))
}

impl<'a> Check<'a, '_> {
    fn error(&mut self, at: &str, text: String) {
        self.issues.push(Issue::error(MISMATCH, text).at(at.to_string()));
    }

    /// The response items `parent` holds (at `at`) against the Questionnaire items `defined`.
    fn level(&mut self, parent: &'a Value, defined: Vec<&'a Value>, at: &str) {
        let mut last_index: Option<usize> = None;
        let mut seen: Vec<(&str, usize)> = Vec::new();
        for (i, item) in items(parent, "item").enumerate() {
            let here = format!("{at}.item[{i}]");
            let Some(id) = link_id(item) else {
                self.error(at, "No LinkId, so can't be validated".into());
                continue;
            };
            let definition = match defined.iter().position(|d| link_id(d) == Some(id)) {
                Some(index) => {
                    if last_index.is_some_and(|l| index < l) {
                        self.error(at, "Structural Error: items are out of order".into());
                    }
                    last_index = Some(index);
                    Some(defined[index])
                }
                None => match find_item(self.q, id) {
                    Some(elsewhere) => {
                        self.error(at, format!("Structural Error: item with linkid {id} is in the wrong place"));
                        Some(elsewhere)
                    }
                    None => {
                        self.error(at, format!("LinkId '{id}' not found in questionnaire"));
                        None
                    }
                },
            };
            match seen.iter_mut().find(|(s, _)| *s == id) {
                Some((_, n)) => *n += 1,
                None => seen.push((id, 1)),
            }
            if let Some(d) = definition {
                self.item(item, d, &here);
            }
        }
        for (id, n) in &seen {
            let repeats = defined.iter().find(|d| link_id(d) == Some(id)).is_some_and(|d| flag(d, "repeats"));
            if *n > 1 && !repeats {
                self.error(at, format!("Only one response item with the linkId {id} allowed - found {n} items"));
            }
        }
        for d in &defined {
            let Some(id) = link_id(d) else { continue };
            if flag(d, "required") && !seen.iter().any(|(s, _)| *s == id) && self.enabled(d) {
                self.missing(at, id);
            }
        }
    }

    fn missing(&mut self, at: &str, id: &str) {
        let text = format!("No response answer found for required item '{id}'");
        let issue = if self.completed { Issue::error(MISMATCH, text) } else { Issue::warning(MISMATCH, text) };
        self.issues.push(issue.at(at.to_string()));
    }

    fn item(&mut self, item: &'a Value, d: &'a Value, at: &str) {
        let id = link_id(d).unwrap_or_default();
        let ty = d.get("type").and_then(Value::as_str).unwrap_or_default();
        if let (Some(text), Some(expected)) = (item.get("text"), d.get("text"))
            && text != expected
        {
            self.error(at, format!("If text exists, it must match the questionnaire definition for linkId {id}"));
        }
        let answers: Vec<&Value> = items(item, "answer").collect();
        let enabled = self.enabled(d);
        if !enabled && (!answers.is_empty() || item.get("item").is_some()) {
            self.error(at, format!("Item has answer, even though it is not enabled (item id = '{id}')"));
        }
        match ty {
            // R4's abstract `question` type takes no answers either (QUESTIONNAIRE_QR_ITEM_GROUP).
            "group" | "question" => {
                if !answers.is_empty() {
                    self.error(at, "Items of type question should not have answers".into());
                }
                if flag(d, "required") && item.get("item").is_none() {
                    self.error(at, "No sub-items found for required group".into());
                }
                self.level(item, items(d, "item").collect(), at);
                return;
            }
            "display" => {
                if !answers.is_empty() {
                    self.error(at, "Items of type 'display' cannot have answers".into());
                }
                if item.get("item").is_some() {
                    self.error(at, format!("Items not of type DISPLAY should not have items - linkId {id}"));
                }
                return;
            }
            _ => {}
        }
        if answers.is_empty() && flag(d, "required") {
            if self.completed && enabled {
                self.error(at, format!("No response answer found for required item '{id}'"));
            } else {
                self.issues.push(
                    Issue::warning(MISMATCH, format!("No response answer found for required item '{id}'"))
                        .at(at.to_string()),
                );
            }
        }
        if answers.len() > 1 && !flag(d, "repeats") {
            self.error(at, "Only one response answer item with this linkId allowed".into());
        }
        // The questionnaire-minOccurs / -maxOccurs extensions bound the number of answers
        // (QUESTIONNAIRE_QR_ITEM_MIN_OCCURS / _MAX_OCCURS).
        let n = answers.len() as i64;
        if let Some(min) = extension(d, "questionnaire-minOccurs").and_then(Value::as_i64)
            && n < min
        {
            // Like a required item: an error once the response is completed, a warning before.
            let text = format!("The minimum number of answers is {min} but this has {n} answers");
            let issue = if self.completed { Issue::error(MISMATCH, text) } else { Issue::warning(MISMATCH, text) };
            self.issues.push(issue.at(at.to_string()));
        }
        if let Some(max) = extension(d, "questionnaire-maxOccurs").and_then(Value::as_i64)
            && n > max
        {
            self.error(at, format!("The maximum number of answers is {max} but this has {n} answers"));
        }
        if item.get("item").is_some() {
            self.error(
                at,
                "Items not of type group should not have items outside answers (use answer.item not .item)".into(),
            );
        }
        for (j, answer) in answers.iter().enumerate() {
            let here = format!("{at}.answer[{j}]");
            self.answer(answer, d, ty, answers.len(), &here);
            // Items nested under an answer are matched against the question's child items,
            // and reported (as Java does) at the question.
            if answer.get("item").is_some() {
                self.level(answer, items(d, "item").collect(), at);
            }
        }
    }

    fn answer(&mut self, answer: &Value, d: &Value, ty: &str, count: usize, at: &str) {
        let Some((got, value)) = typed(answer, "value") else { return };
        let expected: &[&str] = match ty {
            "boolean" => &["Boolean"],
            "decimal" => &["Decimal"],
            "integer" => &["Integer"],
            "date" => &["Date"],
            "dateTime" => &["DateTime"],
            "time" => &["Time"],
            "string" | "text" => &["String"],
            "url" => &["Uri"],
            "attachment" => &["Attachment"],
            "reference" => &["Reference"],
            "quantity" => &["Quantity"],
            "choice" | "open-choice" => &["Coding", "Date", "Time", "Integer", "String"],
            _ => return,
        };
        let value_at = format!("{at}.value.ofType({})", type_name(got));
        if !expected.contains(&got) {
            let names: Vec<String> = expected.iter().map(|t| type_name(t)).collect();
            let text = if names.len() == 1 {
                format!("Answer value must be of the type {} not {}", names[0], type_name(got))
            } else {
                format!(
                    "Answer value must be one of the {} types {} not {}",
                    names.len(),
                    names.join(", "),
                    type_name(got)
                )
            };
            self.error(&value_at, text);
            return;
        }
        self.limits(d, ty, got, value, &value_at);
        if got == "Coding"
            && let Some(vs) = d.get("answerValueSet").and_then(Value::as_str)
            && let Some(members) = self.options_value_set(vs)
            && coding_key(value).1.is_some()
        {
            let (system, code) = coding_key(value);
            let key = match system {
                Some(s) => format!("{s}|{}", code.unwrap_or_default()),
                None => code.unwrap_or_default().to_string(),
            };
            if !members.contains(&key) {
                // The code itself is not repeated: answers can carry patient data.
                self.error(
                    at,
                    format!("The answer's code is not in the options value set ({vs}) specified by the questionnaire"),
                );
            }
        }
        self.kind_limits(d, got, value, &value_at);
        self.options(d, ty, got, value, count, at);
    }

    /// An answer against the item's answerOptions (QuestionnaireValidator's checkOption and
    /// its per-type checks, which apply to any item type with options): a coded answer is one
    /// of the coded options, and alone when that option is exclusive (questionnaire-optionExclusive);
    /// any other answer equals an option of its own type, and an item whose options have none
    /// of that type cannot take it; an open-choice item also takes free text (a warning when
    /// it spells an option's code or display). The answer itself is never repeated.
    fn options(&mut self, d: &Value, ty: &str, got: &str, value: &Value, count: usize, at: &str) {
        let options: Vec<(&Value, &str, &Value)> =
            items(d, "answerOption").filter_map(|o| typed(o, "value").map(|(t, v)| (o, t, v))).collect();
        if options.is_empty() {
            return;
        }
        match got {
            "Coding" => match options.iter().find(|(_, t, o)| *t == "Coding" && coding_key(o) == coding_key(value)) {
                None => self.error(
                    at,
                    "The answer's code is not in the set of permitted values (the item's answerOptions)".into(),
                ),
                Some((option, ..))
                    if count > 1 && extension(option, "questionnaire-optionExclusive") == Some(&Value::Bool(true)) =>
                {
                    self.error(
                        at,
                        "Selected answer is an exclusive option - can't select anything else at the same time".into(),
                    )
                }
                Some(_) => {}
            },
            "String" if ty == "open-choice" => {
                let text = value.as_str().unwrap_or_default();
                let spelled = options.iter().filter(|(_, t, _)| *t == "Coding").any(|(_, _, o)| {
                    ["code", "display"]
                        .iter()
                        .any(|k| o.get(k).and_then(Value::as_str).is_some_and(|c| c.eq_ignore_ascii_case(text)))
                });
                if spelled {
                    self.issues.push(
                        Issue::warning(MISMATCH, "The string answer matches the code or display of one of the coded options; use the option instead")
                            .at(at.to_string()),
                    );
                }
            }
            t => {
                let same_type: Vec<&Value> = options.iter().filter(|(_, o, _)| *o == t).map(|(_, _, v)| *v).collect();
                // A Reference option is the resource it names, whatever display it carries.
                let same = |o: &&Value| match t {
                    "Reference" => o.get("reference").is_some() && o.get("reference") == value.get("reference"),
                    _ => *o == value,
                };
                // Paths and messages are built only for a fault: this runs for every answer.
                let kind = || type_name(t);
                let text = if same_type.is_empty() {
                    format!("Cannot validate {} answer option because no option list is provided", kind())
                } else if !same_type.iter().any(same) {
                    format!("The {} answer is not in the set of permitted values", kind())
                } else {
                    return;
                };
                self.error(&format!("{at}.value.ofType({})", kind()), text);
            }
        }
    }

    /// Limits for attachment, reference and quantity answers (QuestionnaireValidator's
    /// ...Attachment, ...Reference and ...Quantity checks): an attachment's contentType is one
    /// of the item's mimeType extensions and its data at most maxSize bytes; a reference names
    /// an R4 resource type, one of the item's questionnaire-referenceResource types when it
    /// lists them; a quantity has one of the item's questionnaire-unitOption units and lies
    /// within its sdc minQuantity / maxQuantity, compared only in the same units (UCUM metric
    /// prefixes of one base unit convert), else it cannot be compared (an error, as in Java).
    fn kind_limits(&mut self, d: &Value, got: &str, value: &Value, at: &str) {
        match got {
            "Attachment" => {
                let allowed: Vec<&str> = extensions(d, "mimeType").filter_map(Value::as_str).collect();
                if !allowed.is_empty() {
                    match value.get("contentType").and_then(Value::as_str) {
                        None => self.error(at, "A mime type is required for this answer".into()),
                        Some(m) if !allowed.iter().any(|a| m.starts_with(a)) => self.error(
                            at,
                            format!("The mime type is not valid for this answer (allowed = {})", allowed.join(", ")),
                        ),
                        Some(_) => {}
                    }
                }
                if let Some(max) = extension(d, "maxSize").and_then(Value::as_f64)
                    && let Some(data) = value.get("data").and_then(Value::as_str)
                {
                    use base64::Engine;
                    let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(clean)
                        && bytes.len() as f64 > max
                    {
                        self.error(
                            at,
                            format!("The attachment is too large (allowed = {max}, found = {})", bytes.len()),
                        );
                    }
                }
            }
            "Reference" => {
                // The type named by a `Type/id` reference (the reference itself is never repeated).
                let Some((rt, _)) = value.get("reference").and_then(Value::as_str).and_then(super::parse_reference)
                else {
                    return;
                };
                let allowed: Vec<&str> =
                    extensions(d, "questionnaire-referenceResource").filter_map(Value::as_str).collect();
                if !super::definitions::Definitions::shared().is_resource(rt) {
                    self.error(at, "The reference does not name an R4 resource type".into());
                } else if !allowed.is_empty() && !allowed.contains(&rt) {
                    self.error(
                        at,
                        format!(
                            "The resource type '{rt}' in the reference is not allowed (allowed = {})",
                            allowed.join(",")
                        ),
                    );
                }
            }
            "Quantity" => {
                let units: Vec<&Value> = extensions(d, "questionnaire-unitOption").collect();
                if !units.is_empty() {
                    let text = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
                    let fits = units.iter().any(|u| {
                        [("system", "system"), ("code", "code"), ("display", "unit")]
                            .iter()
                            .all(|(uk, qk)| text(u, uk).is_none_or(|want| text(value, qk) == Some(want)))
                    });
                    if !fits {
                        self.error(
                            at,
                            "The answer has a unit that is not valid (not one of the item's unitOptions)".into(),
                        );
                    }
                }
                for (bound, min) in [("minQuantity", true), ("maxQuantity", false)] {
                    let url = format!("http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-{bound}");
                    let Some(limit) = items(d, "extension")
                        .find(|e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
                        .and_then(|e| e.get("valueQuantity"))
                    else {
                        continue;
                    };
                    let which = if min { "minimum" } else { "maximum" };
                    match compare_quantities(value, limit) {
                        Err(why) => {
                            self.error(at, format!("The quantity cannot be compared to the allowed {which}{why}"))
                        }
                        Ok(ord) if (min && ord.is_lt()) || (!min && ord.is_gt()) => {
                            let side = if min { "less than" } else { "greater than" };
                            self.error(at, format!("The quantity is {side} the allowed {which}"))
                        }
                        Ok(_) => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// The limits a Questionnaire item sets on its answers (QuestionnaireValidator's string,
    /// integer, decimal and date checks): `maxLength` and the minLength, regex, minValue,
    /// maxValue and maxDecimalPlaces extensions (errors); a newline in a `string` answer
    /// (warning). The answer itself is never repeated.
    fn limits(&mut self, d: &Value, ty: &str, got: &str, value: &Value, at: &str) {
        let ext = |name: &str| extension(d, name);
        match (got, value) {
            ("String", Value::String(text)) => {
                let length = text.chars().count() as i64;
                if let Some(min) = ext("minLength").and_then(Value::as_i64)
                    && length < min
                {
                    self.error(at, format!("The answer is shorter than the allowed minimum length of {min}"));
                }
                if let Some(max) = d.get("maxLength").and_then(Value::as_i64)
                    && length > max
                {
                    self.error(at, format!("The answer is longer than the allowed maximum length of {max}"));
                }
                if let Some(pattern) = ext("regex").and_then(Value::as_str)
                    && let Ok(rx) = regex::Regex::new(&format!("^(?:{pattern})$"))
                    && !rx.is_match(text)
                {
                    self.error(at, format!("The answer does not match the regex {pattern}"));
                }
                if ty == "string" && (text.contains('\n') || text.contains('\r')) {
                    self.issues.push(
                        Issue::warning(MISMATCH, "The answer should not contain new line characters")
                            .at(at.to_string()),
                    );
                }
            }
            ("Integer" | "Decimal", Value::Number(n)) => {
                let v = n.as_f64().unwrap_or_default();
                if let Some(min) = ext("minValue").and_then(Value::as_f64)
                    && v < min
                {
                    self.error(at, format!("The value is less than the allowed minimum of {min}"));
                }
                if let Some(max) = ext("maxValue").and_then(Value::as_f64)
                    && v > max
                {
                    self.error(at, format!("The value is greater than the allowed maximum of {max}"));
                }
                let decimals = n.to_string().split_once('.').map_or(0, |(_, f)| f.len()) as i64;
                if got == "Decimal"
                    && let Some(max) = ext("maxDecimalPlaces").and_then(Value::as_i64)
                    && decimals > max
                {
                    self.error(at, format!("The value has more than the allowed {max} decimal places"));
                }
            }
            ("Date" | "DateTime", Value::String(v)) => {
                // Dates of the same precision compare as text.
                let comparable = |bound: &str| bound.len() == v.len() || (bound.len() >= 10 && v.len() >= 10);
                let date = |b: &Value| b.as_str().map(|b| b.get(..10.min(b.len())).unwrap_or(b).to_string());
                let mine = v.get(..10.min(v.len())).unwrap_or(v);
                if let Some(min) = ext("minValue").and_then(date)
                    && comparable(&min)
                    && mine < min.as_str()
                {
                    self.error(at, format!("The value is before the allowed minimum of {min}"));
                }
                if let Some(max) = ext("maxValue").and_then(date)
                    && comparable(&max)
                    && mine > max.as_str()
                {
                    self.error(at, format!("The value is after the allowed maximum of {max}"));
                }
            }
            _ => {}
        }
    }

    /// The members of an item's answerValueSet: one contained in the Questionnaire (`#id`) or an
    /// R4 value set with a bundled expansion; `None` when it cannot be enumerated.
    fn options_value_set(&self, url: &str) -> Option<rustc_hash::FxHashSet<String>> {
        match url.strip_prefix('#') {
            Some(id) => {
                let vs = items(self.q, "contained").find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
                super::profiles::enumerate_value_set(vs, &Default::default(), &Default::default(), 0)
            }
            None => super::profiles::r4_value_set_members(url),
        }
    }

    /// Whether a Questionnaire item is enabled by its `enableWhen` conditions for this response:
    /// any (one condition, or `enableBehavior` any) or all of them; several conditions without
    /// `enableBehavior` leave it enabled, as the reference does.
    fn enabled(&self, d: &Value) -> bool {
        let conditions: Vec<&Value> = items(d, "enableWhen").collect();
        if conditions.is_empty() {
            return true;
        }
        let behaviour = d.get("enableBehavior").and_then(Value::as_str);
        if conditions.len() > 1 && behaviour.is_none() {
            return true;
        }
        let holds = |c: &&Value| {
            let Some(question) = c.get("question").and_then(Value::as_str) else { return true };
            let mut given = Vec::new();
            answers_to(self.qr, question, &mut given);
            let op = c.get("operator").and_then(Value::as_str).unwrap_or("=");
            let Some((_, expected)) = typed(c, "answer") else { return true };
            if op == "exists" {
                return expected.as_bool() == Some(!given.is_empty());
            }
            let values: Vec<&Value> = given.iter().filter_map(|a| typed(a, "value").map(|(_, v)| v)).collect();
            let equal = |v: &Value| match (v.get("code"), expected.get("code")) {
                (Some(code), Some(want)) => {
                    code == want && (expected.get("system").is_none() || v.get("system") == expected.get("system"))
                }
                _ => v == expected,
            };
            let order = |v: &Value| match (v.as_f64(), expected.as_f64(), v.as_str(), expected.as_str()) {
                (Some(a), Some(b), ..) => a.partial_cmp(&b),
                (_, _, Some(a), Some(b)) => Some(a.cmp(b)),
                _ => None,
            };
            use std::cmp::Ordering::*;
            match op {
                "=" => values.iter().any(|v| equal(v)),
                "!=" => values.iter().any(|v| !equal(v)),
                ">" => values.iter().any(|v| order(v) == Some(Greater)),
                "<" => values.iter().any(|v| order(v) == Some(Less)),
                ">=" => values.iter().any(|v| matches!(order(v), Some(Greater | Equal))),
                "<=" => values.iter().any(|v| matches!(order(v), Some(Less | Equal))),
                _ => true,
            }
        };
        match behaviour {
            Some("all") => conditions.iter().all(holds),
            _ => conditions.iter().any(holds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::outcome::Severity;
    use serde_json::json;

    fn questionnaire() -> Value {
        json!({ "resourceType": "Questionnaire", "id": "q", "status": "active", "item": [
            { "linkId": "smoker", "type": "choice", "required": true, "text": "Do you smoke?",
              "answerOption": [{ "valueCoding": { "system": "http://loinc.org", "code": "LA33-6" } },
                               { "valueCoding": { "system": "http://loinc.org", "code": "LA32-8" } }] },
            { "linkId": "how-many", "type": "integer", "enableWhen": [{ "question": "smoker", "operator": "=",
              "answerCoding": { "system": "http://loinc.org", "code": "LA33-6" } }] },
            { "linkId": "about", "type": "group", "item": [{ "linkId": "about.name", "type": "string" },
                                                           { "linkId": "about.note", "type": "display" }] }
        ] })
    }

    /// (severity, path, message start) of each issue for a response with these items.
    fn check(status: &str, items: Value) -> Vec<(Severity, String, String)> {
        let qr = json!({ "resourceType": "QuestionnaireResponse", "status": status, "questionnaire": "#q",
            "contained": [questionnaire()], "item": items });
        let mut issues = Vec::new();
        questionnaire_response(&qr, "QuestionnaireResponse", &|_| None, &mut issues);
        issues
            .into_iter()
            .map(|i| (i.severity, i.expression.unwrap_or_default(), i.diagnostics.chars().take(40).collect()))
            .collect()
    }

    fn yes() -> Value {
        json!({ "linkId": "smoker", "text": "Do you smoke?", "answer": [{ "valueCoding": { "system": "http://loinc.org", "code": "LA33-6" } }] })
    }

    #[test]
    fn a_response_that_follows_its_questionnaire_has_no_issues() {
        let items = json!([yes(), { "linkId": "how-many", "answer": [{ "valueInteger": 10 }] },
            { "linkId": "about", "item": [{ "linkId": "about.name", "answer": [{ "valueString": "A" }] }] }]);
        assert_eq!(check("completed", items), vec![]);
    }

    #[test]
    fn items_are_matched_level_by_level_and_reported_at_the_parent() {
        let e = |at: &str, text: &str| (Severity::Error, at.to_string(), text.chars().take(40).collect::<String>());
        // Unknown linkId, wrong level, wrong order, repeated without `repeats`.
        let got = check("in-progress", json!([{ "linkId": "nope" }]));
        assert!(got.contains(&e("QuestionnaireResponse", "LinkId 'nope' not found in questionnaire")), "{got:?}");
        let got = check("in-progress", json!([yes(), { "linkId": "about.name", "answer": [{ "valueString": "A" }] }]));
        assert!(got.contains(&e("QuestionnaireResponse", "Structural Error: item with linkid about.name")), "{got:?}");
        let got = check("in-progress", json!([{ "linkId": "about" }, yes()]));
        assert!(got.contains(&e("QuestionnaireResponse", "Structural Error: items are out of order")), "{got:?}");
        let got = check("in-progress", json!([yes(), yes()]));
        assert!(got.contains(&e("QuestionnaireResponse", "Only one response item with the linkId sm")), "{got:?}");
        // Nested items are checked against the group's items, at the group.
        let got = check("in-progress", json!([yes(), { "linkId": "about", "item": [{ "linkId": "x" }] }]));
        assert!(got.contains(&e("QuestionnaireResponse.item[1]", "LinkId 'x' not found in questionnaire")), "{got:?}");
    }

    #[test]
    fn required_items_are_errors_once_completed_and_warnings_before() {
        let missing = |s| check(s, json!([]));
        assert_eq!(missing("completed")[0].0, Severity::Error);
        assert_eq!(missing("in-progress")[0].0, Severity::Warning);
        assert_eq!(missing("completed")[0].1, "QuestionnaireResponse");
    }

    #[test]
    fn answers_follow_the_item_type_options_repeats_and_enable_when() {
        let text = |v: Vec<(Severity, String, String)>| {
            v.into_iter().map(|(_, at, t)| format!("{at}: {t}")).collect::<Vec<_>>()
        };
        // Not an answerOption; wrong text; two answers to a non-repeating item.
        let other = json!([{ "linkId": "smoker", "text": "Smoker", "answer": [
            { "valueCoding": { "system": "http://loinc.org", "code": "LA99-9" } },
            { "valueCoding": { "system": "http://loinc.org", "code": "LA33-6" } }] }]);
        let got = text(check("completed", other));
        assert!(got.iter().any(|t| t.starts_with("QuestionnaireResponse.item[0]: If text exists")), "{got:?}");
        assert!(
            got.iter().any(|t| t.starts_with("QuestionnaireResponse.item[0]: Only one response answer")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|t| t.starts_with("QuestionnaireResponse.item[0].answer[0]: The answer's code is not")),
            "{got:?}"
        );
        // An integer item answered with a string, at Java's path.
        let typed = json!([yes(), { "linkId": "how-many", "answer": [{ "valueString": "ten" }] }]);
        let got = text(check("completed", typed));
        assert_eq!(
            got,
            vec![
                "QuestionnaireResponse.item[1].answer[0].value.ofType(string): Answer value must be of the type integer"
            ]
        );
        // Disabled by enableWhen (the smoker answered no), yet answered.
        let no = json!({ "linkId": "smoker", "answer": [{ "valueCoding": { "system": "http://loinc.org", "code": "LA32-8" } }] });
        let got = text(check("completed", json!([no, { "linkId": "how-many", "answer": [{ "valueInteger": 3 }] }])));
        assert_eq!(got, vec!["QuestionnaireResponse.item[1]: Item has answer, even though it is not e"]);
        // A group with an answer, a display item with one.
        let got = text(check(
            "completed",
            json!([yes(), { "linkId": "about", "answer": [{ "valueString": "x" }],
            "item": [{ "linkId": "about.note", "answer": [{ "valueString": "x" }] }] }]),
        ));
        assert!(got.iter().any(|t| t.starts_with("QuestionnaireResponse.item[1]: Items of type question")), "{got:?}");
        assert!(
            got.iter().any(|t| t.starts_with("QuestionnaireResponse.item[1].item[0]: Items of type 'display'")),
            "{got:?}"
        );
    }

    #[test]
    fn coded_answers_come_from_the_items_answer_value_set() {
        let q = json!({ "resourceType": "Questionnaire", "id": "q", "status": "active",
            "contained": [{ "resourceType": "ValueSet", "id": "yn", "status": "active", "compose": { "include": [
                { "system": "http://loinc.org", "concept": [{ "code": "LA33-6" }, { "code": "LA32-8" }] }] } }],
            "item": [{ "linkId": "1", "type": "choice", "answerValueSet": "#yn" },
                     { "linkId": "2", "type": "choice", "answerValueSet": "http://hl7.org/fhir/ValueSet/administrative-gender" }] });
        let answer = |link: &str, system: &str, code: &str| {
            let qr = json!({ "resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": "#q", "contained": [q.clone()],
                "item": [{ "linkId": link, "answer": [{ "valueCoding": { "system": system, "code": code } }] }] });
            let mut issues = Vec::new();
            questionnaire_response(&qr, "QuestionnaireResponse", &|_| None, &mut issues);
            issues.into_iter().map(|i| i.expression.unwrap_or_default()).collect::<Vec<_>>()
        };
        assert_eq!(answer("1", "http://loinc.org", "LA33-6"), Vec::<String>::new());
        assert_eq!(answer("1", "http://loinc.org", "LA99-9"), vec!["QuestionnaireResponse.item[0].answer[0]"]);
        assert_eq!(answer("2", "http://hl7.org/fhir/administrative-gender", "female"), Vec::<String>::new());
        assert_eq!(
            answer("2", "http://hl7.org/fhir/administrative-gender", "woman"),
            vec!["QuestionnaireResponse.item[0].answer[0]"]
        );
    }

    #[test]
    fn answers_keep_within_the_items_limits() {
        let ext = |name: &str, key: &str, v: Value| {
            let mut e = json!({ "url": format!("http://hl7.org/fhir/StructureDefinition/{name}") });
            e[key] = v;
            e
        };
        let q = json!({ "resourceType": "Questionnaire", "id": "q", "status": "active", "item": [
            { "linkId": "code", "type": "string", "maxLength": 5, "extension": [ext("minLength", "valueInteger", json!(2)), ext("regex", "valueString", json!("[A-Z]+"))] },
            { "linkId": "count", "type": "integer", "extension": [ext("minValue", "valueInteger", json!(1)), ext("maxValue", "valueInteger", json!(10))] },
            { "linkId": "dose", "type": "decimal", "extension": [ext("maxDecimalPlaces", "valueInteger", json!(1))] },
            { "linkId": "when", "type": "date", "extension": [ext("minValue", "valueDate", json!("2020-01-01"))] }] });
        let answer = |link: &str, value: Value| {
            let qr = json!({ "resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": "#q", "contained": [q.clone()],
                "item": [{ "linkId": link, "answer": [value] }] });
            let mut issues = Vec::new();
            questionnaire_response(&qr, "QuestionnaireResponse", &|_| None, &mut issues);
            issues.into_iter().map(|i| (i.severity, i.expression.unwrap_or_default())).collect::<Vec<_>>()
        };
        let at =
            |t: &str| vec![(Severity::Error, format!("QuestionnaireResponse.item[0].answer[0].value.ofType({t})"))];
        assert_eq!(answer("code", json!({ "valueString": "ABC" })), vec![]);
        assert_eq!(answer("code", json!({ "valueString": "A" })), at("string"), "below minLength");
        assert_eq!(answer("code", json!({ "valueString": "ABCDEF" })), at("string"), "above maxLength");
        assert_eq!(answer("code", json!({ "valueString": "abc" })), at("string"), "regex");
        assert_eq!(answer("count", json!({ "valueInteger": 10 })), vec![]);
        assert_eq!(answer("count", json!({ "valueInteger": 11 })), at("integer"));
        assert_eq!(answer("count", json!({ "valueInteger": 0 })), at("integer"));
        assert_eq!(answer("dose", json!({ "valueDecimal": 2.5 })), vec![]);
        assert_eq!(answer("dose", json!({ "valueDecimal": 2.55 })), at("decimal"));
        assert_eq!(answer("when", json!({ "valueDate": "2021-06-01" })), vec![]);
        assert_eq!(answer("when", json!({ "valueDate": "2019-12-31" })), at("date"));
    }

    /// Answer options and answer limits for every item type, as QuestionnaireValidator checks
    /// them: options of the answer's own type (QUESTIONNAIRE_QR_ITEM_NO<type>,
    /// _NOOPTIONS<type>), exclusive options (_EXCLUSIVE), min/maxOccurs (_MIN_OCCURS,
    /// _MAX_OCCURS), attachment mime types and size (_BAD_ATTACHMENT_*), reference types
    /// (_REF_INVALID, _REF_INVALID_GENERAL), quantity units and bounds (_QUANTITY_*,
    /// _DECIMAL_CANNOT_COMPARE_*, _DECIMAL_INVALID_UNITS), and no answers to R4's abstract
    /// `question` items (_GROUP).
    #[test]
    fn answers_keep_to_the_options_and_limits_of_every_item_type() {
        let ext = |name: &str, key: &str, v: Value| {
            let mut e = json!({ "url": format!("http://hl7.org/fhir/StructureDefinition/{name}") });
            e[key] = v;
            e
        };
        let sdc = |name: &str, v: Value| json!({ "url": format!("http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-{name}"), "valueQuantity": v });
        let ucum =
            |value: f64, code: &str| json!({ "value": value, "system": "http://unitsofmeasure.org", "code": code });
        let coding = |code: &str| json!({ "system": "http://example.org", "code": code });
        let q = json!({ "resourceType": "Questionnaire", "id": "q", "status": "active", "item": [
            { "linkId": "time", "type": "time", "repeats": true, "answerOption": [{ "valueTime": "10:00:00" }, { "valueTime": "11:00:00" }] },
            { "linkId": "size", "type": "integer", "answerOption": [{ "valueInteger": 1 }, { "valueInteger": 2 }] },
            { "linkId": "text", "type": "string", "answerOption": [{ "valueCoding": coding("a") }] },
            { "linkId": "pick", "type": "choice", "repeats": true, "answerOption": [{ "valueCoding": coding("a") },
                { "valueCoding": coding("none"), "extension": [ext("questionnaire-optionExclusive", "valueBoolean", json!(true))] }] },
            { "linkId": "names", "type": "string", "repeats": true,
              "extension": [ext("questionnaire-minOccurs", "valueInteger", json!(2)), ext("questionnaire-maxOccurs", "valueInteger", json!(3))] },
            { "linkId": "scan", "type": "attachment", "extension": [ext("mimeType", "valueCode", json!("image/")), ext("maxSize", "valueDecimal", json!(4))] },
            { "linkId": "who", "type": "reference", "extension": [ext("questionnaire-referenceResource", "valueCode", json!("Patient"))] },
            { "linkId": "where", "type": "reference" },
            { "linkId": "distance", "type": "quantity", "extension": [sdc("minQuantity", ucum(1.0, "km")), sdc("maxQuantity", ucum(5.0, "km")),
                ext("questionnaire-unitOption", "valueCoding", json!({ "system": "http://unitsofmeasure.org", "code": "km" })),
                ext("questionnaire-unitOption", "valueCoding", json!({ "system": "http://unitsofmeasure.org", "code": "m" }))] },
            { "linkId": "abstract", "type": "question" },
            { "linkId": "volume", "type": "quantity", "extension": [sdc("maxQuantity", ucum(0.7, "L"))] },
            { "linkId": "clinic", "type": "reference", "answerOption": [{ "valueReference": { "reference": "Location/a" } }] }] });
        let issues = |status: &str, link: &str, answers: Vec<Value>, severity: Severity| {
            let qr = json!({ "resourceType": "QuestionnaireResponse", "status": status, "questionnaire": "#q", "contained": [q.clone()],
                "item": [{ "linkId": link, "answer": answers }] });
            let mut issues = Vec::new();
            questionnaire_response(&qr, "QuestionnaireResponse", &|_| None, &mut issues);
            issues
                .into_iter()
                .filter(|i| i.severity == severity)
                .map(|i| i.expression.unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let errors = |link: &str, answers: Vec<Value>| issues("completed", link, answers, Severity::Error);
        let none: Vec<String> = vec![];
        let at = |path: &str| vec![format!("QuestionnaireResponse.item[0]{path}")];
        assert_eq!(errors("time", vec![json!({ "valueTime": "10:00:00" }), json!({ "valueTime": "11:00:00" })]), none);
        assert_eq!(errors("time", vec![json!({ "valueTime": "09:00:00" })]), at(".answer[0].value.ofType(time)"));
        assert_eq!(errors("size", vec![json!({ "valueInteger": 2 })]), none);
        assert_eq!(errors("size", vec![json!({ "valueInteger": 3 })]), at(".answer[0].value.ofType(integer)"));
        assert_eq!(
            errors("text", vec![json!({ "valueString": "a" })]),
            at(".answer[0].value.ofType(string)"),
            "no string options"
        );
        assert_eq!(errors("pick", vec![json!({ "valueCoding": coding("none") })]), none);
        assert_eq!(
            errors("pick", vec![json!({ "valueCoding": coding("a") }), json!({ "valueCoding": coding("none") })]),
            at(".answer[1]")
        );
        let names = |n: usize| (0..n).map(|i| json!({ "valueString": format!("n{i}") })).collect::<Vec<_>>();
        assert_eq!(errors("names", names(1)), at(""));
        assert_eq!(errors("names", names(2)), none);
        assert_eq!(errors("names", names(3)), none);
        assert_eq!(errors("names", names(4)), at(""));
        assert_eq!(
            issues("in-progress", "names", names(1), Severity::Error),
            none,
            "too few, before completion: a warning"
        );
        assert_eq!(issues("in-progress", "names", names(1), Severity::Warning), at(""));
        let scan = |content_type: Option<&str>, data: &str| {
            let mut a = json!({ "data": data });
            if let Some(c) = content_type {
                a["contentType"] = json!(c);
            }
            errors("scan", vec![json!({ "valueAttachment": a })])
        };
        let scan_at = at(".answer[0].value.ofType(Attachment)");
        assert_eq!(scan(Some("image/png"), "aGVs"), none, "3 bytes");
        assert_eq!(scan(Some("application/pdf"), "aGVs"), scan_at);
        assert_eq!(scan(None, "aGVs"), scan_at);
        assert_eq!(scan(Some("image/png"), "aGVsbG8="), scan_at, "5 bytes, more than maxSize 4");
        let who = |link: &str, r: &str| errors(link, vec![json!({ "valueReference": { "reference": r } })]);
        let who_at = at(".answer[0].value.ofType(Reference)");
        assert_eq!(who("who", "Patient/1"), none);
        assert_eq!(who("who", "Organization/1"), who_at);
        assert_eq!(who("where", "https://x.org/fhir/Chicken/1"), who_at);
        assert_eq!(who("where", "Location/1"), none);
        assert_eq!(who("where", "https://x.org/abc"), none, "no type named: nothing to check");
        let clinic = |r: Value| errors("clinic", vec![json!({ "valueReference": r })]);
        assert_eq!(
            clinic(json!({ "reference": "Location/a", "display": "Leeds clinic" })),
            none,
            "an option is the resource it names"
        );
        assert_eq!(clinic(json!({ "reference": "Location/b" })), at(".answer[0].value.ofType(Reference)"));
        let distance = |q: Value| errors("distance", vec![json!({ "valueQuantity": q })]);
        let d_at = at(".answer[0].value.ofType(Quantity)");
        assert_eq!(distance(ucum(2.0, "km")), none);
        assert_eq!(distance(ucum(2500.0, "m")), none, "metres convert to kilometres");
        assert_eq!(distance(ucum(500.0, "m")), d_at, "below the minimum");
        assert_eq!(distance(ucum(6.0, "km")), d_at, "above the maximum");
        assert_eq!(
            distance(json!({ "value": 2, "unit": "km" })),
            vec![d_at[0].clone(); 3],
            "no formal unit: not an option, not comparable twice"
        );
        assert_eq!(errors("abstract", vec![json!({ "valueString": "x" })]), at(""));
        let volume = |q: Value| errors("volume", vec![json!({ "valueQuantity": q })]);
        assert_eq!(volume(ucum(700.0, "mL")), none, "700 mL is 0.7 L, not a rounding error above it");
        assert_eq!(volume(ucum(701.0, "mL")), at(".answer[0].value.ofType(Quantity)"));
        assert_eq!(volume(ucum(0.5, "l")), none, "UCUM's litre is L or l");
    }

    #[test]
    fn a_questionnaire_that_cannot_be_found_is_a_warning_and_nothing_more() {
        for (canonical, severity) in [
            ("http://acme.org/Questionnaire/x", Severity::Warning),
            ("http://example.org/Questionnaire/x", Severity::Information),
        ] {
            let qr = json!({ "resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": canonical,
                "item": [{ "linkId": "anything" }] });
            let mut issues = Vec::new();
            questionnaire_response(&qr, "QuestionnaireResponse", &|_| None, &mut issues);
            assert_eq!(issues.len(), 1);
            assert_eq!(
                (issues[0].severity, issues[0].expression.as_deref()),
                (severity, Some("QuestionnaireResponse"))
            );
        }
    }

    /// A questionnaire canonical that names another kind of resource (a value set, loaded or
    /// known by its URL) is an error at the canonical, and nothing more is checked.
    #[test]
    fn a_questionnaire_canonical_naming_another_resource_type_is_an_error() {
        let vs = json!({ "resourceType": "ValueSet", "url": "http://acme.org/vs", "status": "active" });
        for canonical in ["http://hl7.org/fhir/ValueSet/example-extensional", "http://acme.org/vs"] {
            let qr = json!({ "resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": canonical,
                "item": [{ "linkId": "anything" }] });
            let mut issues = Vec::new();
            questionnaire_response(
                &qr,
                "QuestionnaireResponse",
                &|u| (u == "http://acme.org/vs").then_some(&vs),
                &mut issues,
            );
            let found: Vec<_> = issues.iter().map(|i| (i.severity, i.expression.as_deref())).collect();
            assert_eq!(found, vec![(Severity::Error, Some("QuestionnaireResponse.questionnaire"))], "{canonical}");
        }
    }
}
