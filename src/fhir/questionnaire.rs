//! A QuestionnaireResponse checked against its Questionnaire, as the HL7 Java validator's
//! `QuestionnaireValidator` checks it (messages in its `Messages.properties`, quoted below).
//!
//! The Questionnaire is the response's contained one (`#id`) or a loaded conformance resource
//! (an implementation guide given with `--ig`); one that cannot be found is a warning
//! (information for an example.org canonical) and nothing more is checked. Items are matched
//! level by level: each response item names a linkId of the Questionnaire items at the same
//! level, in their order, once unless the item repeats; required items that are enabled are
//! answered (an error once the response is completed or amended, a warning before); answers
//! have the item's type, come from its answerOptions and are given once unless it repeats;
//! groups and display items have no answers; disabled items (enableWhen) have no answers.
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
    let Some(q) = super::definitional::resolve(qr, canonical, lookup)
        .filter(|q| q.get("resourceType").and_then(Value::as_str) == Some("Questionnaire"))
    else {
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
            "group" => {
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
        if item.get("item").is_some() {
            self.error(
                at,
                "Items not of type group should not have items outside answers (use answer.item not .item)".into(),
            );
        }
        for (j, answer) in answers.iter().enumerate() {
            let here = format!("{at}.answer[{j}]");
            self.answer(answer, d, ty, &here);
            // Items nested under an answer are matched against the question's child items,
            // and reported (as Java does) at the question.
            if answer.get("item").is_some() {
                self.level(answer, items(d, "item").collect(), at);
            }
        }
    }

    fn answer(&mut self, answer: &Value, d: &Value, ty: &str, at: &str) {
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
        let lower = |t: &str| match t {
            "Coding" | "Attachment" | "Reference" | "Quantity" => t.to_string(),
            t => {
                let mut c = t.chars();
                c.next().map(|f| f.to_ascii_lowercase().to_string() + c.as_str()).unwrap_or_default()
            }
        };
        if !expected.contains(&got) {
            let names: Vec<String> = expected.iter().map(|t| lower(t)).collect();
            let text = if names.len() == 1 {
                format!("Answer value must be of the type {} not {}", names[0], lower(got))
            } else {
                format!("Answer value must be one of the {} types {} not {}", names.len(), names.join(", "), lower(got))
            };
            self.error(&format!("{at}.value.ofType({})", lower(got)), text);
            return;
        }
        self.limits(d, ty, got, value, &format!("{at}.value.ofType({})", lower(got)));
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
        let options: Vec<(&str, &Value)> = items(d, "answerOption").filter_map(|o| typed(o, "value")).collect();
        if options.is_empty() || !matches!(ty, "choice" | "open-choice") {
            return;
        }
        match got {
            "Coding" => {
                if !options.iter().any(|(t, o)| *t == "Coding" && coding_key(o) == coding_key(value)) {
                    // The code itself is not repeated: answers can carry patient data.
                    self.error(
                        at,
                        "The answer's code is not in the set of permitted values (the item's answerOptions)".into(),
                    );
                }
            }
            "String" if ty == "open-choice" => {}
            t => {
                let same_type: Vec<&Value> = options.iter().filter(|(o, _)| *o == t).map(|(_, v)| *v).collect();
                let kind = lower(t);
                if same_type.is_empty() && ty == "choice" {
                    self.error(at, format!("Option list has no option values of type {kind}"));
                } else if !same_type.contains(&value) && !same_type.is_empty() {
                    self.error(at, format!("The {kind} answer is not in the set of permitted values"));
                }
            }
        }
    }

    /// The limits a Questionnaire item sets on its answers (QuestionnaireValidator's string,
    /// integer, decimal and date checks): `maxLength` and the minLength, regex, minValue,
    /// maxValue and maxDecimalPlaces extensions (errors); a newline in a `string` answer
    /// (warning). The answer itself is never repeated.
    fn limits(&mut self, d: &Value, ty: &str, got: &str, value: &Value, at: &str) {
        let ext = |name: &str| {
            items(d, "extension")
                .find(|e| {
                    e.get("url").and_then(Value::as_str)
                        == Some(&format!("http://hl7.org/fhir/StructureDefinition/{name}"))
                })
                .and_then(|e| typed(e, "value").map(|(_, v)| v))
        };
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
}
