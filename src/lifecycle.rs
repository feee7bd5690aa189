//! The Task state machine (PRODUCT.md §6, after the SDOH Clinical Care pattern).
//!
//! Pure: given the current status, the requested one and who asks, say whether the move is
//! allowed and what it needs. Anything not in the table is refused with the allowed moves.

use std::collections::HashSet;
use std::sync::LazyLock;

use serde_json::Value;

/// Who is moving the Task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The referrer that sent the referral.
    Referrer,
    /// The charity that owns the Task.
    Owner,
    /// A Signpost operator.
    Operator,
    /// Signpost itself: routing, and cancelling on revocation or consent withdrawal.
    Signpost,
}

impl Actor {
    pub const ALL: [Actor; 4] = [Actor::Referrer, Actor::Owner, Actor::Operator, Actor::Signpost];

    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Referrer => "referrer",
            Actor::Owner => "charity",
            Actor::Operator => "operator",
            Actor::Signpost => "Signpost",
        }
    }
}

/// What a move to a status requires of the Task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A `statusReason` coded from the rejection-reason CodeSystem.
    StatusReason,
    /// An `output` whose value is coded from the support-outcome CodeSystem.
    Output,
}

/// Every Task status (R4).
pub const STATUSES: &[&str] = &[
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
];

/// A resource's `status` ("" when it has none).
pub fn status_of(resource: &Value) -> &str {
    resource.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Statuses in which a charity still has work to do.
pub const OPEN: &[&str] = &["requested", "accepted", "in-progress", "on-hold"];

/// Statuses after which nothing more happens to the Task.
pub fn is_finished(status: &str) -> bool {
    matches!(status, "completed" | "rejected" | "cancelled" | "failed" | "entered-in-error")
}

/// The statuses `actor` may move a Task to from `from` (PRODUCT.md §6).
pub fn allowed_moves(from: &str, actor: Actor) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    match actor {
        Actor::Owner => out.extend(match from {
            "requested" => &["accepted", "rejected"][..],
            "accepted" => &["in-progress", "on-hold", "completed", "failed"][..],
            "in-progress" => &["on-hold", "completed", "failed"][..],
            "on-hold" => &["in-progress", "completed", "failed"][..],
            _ => &[][..],
        }),
        Actor::Referrer | Actor::Signpost => {
            if OPEN.contains(&from) {
                out.push("cancelled");
            }
            if actor == Actor::Referrer && from != "entered-in-error" {
                out.push("entered-in-error");
            }
        }
        Actor::Operator => {
            if from != "entered-in-error" {
                out.push("entered-in-error");
            }
        }
    }
    out
}

/// Check a move; on refusal, the allowed moves.
pub fn check(from: &str, to: &str, actor: Actor) -> Result<(), Vec<&'static str>> {
    if from == to {
        return Ok(());
    }
    let allowed = allowed_moves(from, actor);
    if allowed.contains(&to) { Ok(()) } else { Err(allowed) }
}

/// What a Task must carry once it is in `status`.
pub fn needs(status: &str) -> Option<Needs> {
    match status {
        "rejected" | "failed" | "cancelled" => Some(Needs::StatusReason),
        "completed" => Some(Needs::Output),
        _ => None,
    }
}

/// The Task elements each actor may change (PRODUCT.md §6); `None` = any element.
pub fn editable(actor: Actor) -> Option<&'static [&'static str]> {
    match actor {
        Actor::Owner => {
            Some(&["status", "businessStatus", "statusReason", "output", "note", "executionPeriod", "lastModified"])
        }
        Actor::Referrer | Actor::Operator => Some(&["status", "statusReason", "note", "lastModified"]),
        Actor::Signpost => None,
    }
}

/// Where a referral stands at the charity (`Task.businessStatus`).
pub const STAGE_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/referral-outcome";
/// Why a Task was rejected, failed or was cancelled (`Task.statusReason`).
pub const REASON_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/rejection-reason";
/// What came of the referral (`Task.output`).
pub const OUTCOME_SYSTEM: &str = "https://signpost.example/fhir/CodeSystem/support-outcome";

fn codes_of(text: &str) -> HashSet<String> {
    let cs: Value = serde_json::from_str(text).expect("bundled CodeSystem");
    cs["concept"].as_array().into_iter().flatten().filter_map(|c| c["code"].as_str().map(str::to_string)).collect()
}

static STAGES: LazyLock<HashSet<String>> =
    LazyLock::new(|| codes_of(include_str!("../fhir-profiles/signpost/CodeSystem-referral-outcome.json")));
static REASONS: LazyLock<HashSet<String>> =
    LazyLock::new(|| codes_of(include_str!("../fhir-profiles/signpost/CodeSystem-rejection-reason.json")));
static OUTCOMES: LazyLock<HashSet<String>> =
    LazyLock::new(|| codes_of(include_str!("../fhir-profiles/signpost/CodeSystem-support-outcome.json")));

/// The codes of one of the three lifecycle CodeSystems.
pub fn known_codes(system: &str) -> Option<&'static HashSet<String>> {
    match system {
        STAGE_SYSTEM => Some(&STAGES),
        REASON_SYSTEM => Some(&REASONS),
        OUTCOME_SYSTEM => Some(&OUTCOMES),
        _ => None,
    }
}

/// A problem with the codes of a Task: the element path (under `Task`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeProblem {
    pub path: String,
    pub message: String,
    /// A required reason or outcome is missing (rather than a code unknown).
    pub missing: bool,
}

/// The codings of a CodeableConcept in `system`.
fn codings_in<'v>(concept: Option<&'v Value>, system: &'v str) -> impl Iterator<Item = &'v str> + 'v {
    concept
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |c| c.get("system").and_then(Value::as_str) == Some(system))
        .map(|c| c.get("code").and_then(Value::as_str).unwrap_or(""))
}

/// Every lifecycle code on the Task must be one Signpost knows, and the coded reason or outcome
/// a status needs must be there. `changed` limits the check to the elements that changed (a
/// stored Task is never refused for a code list that grew).
pub fn check_codes(task: &Value, status_changed: bool, changed: &dyn Fn(&str) -> bool) -> Vec<CodeProblem> {
    let mut problems = Vec::new();
    let status = task.get("status").and_then(Value::as_str).unwrap_or("");
    let unknown = |problems: &mut Vec<CodeProblem>, path: String, system: &str, code: &str| {
        problems.push(CodeProblem { path, message: format!("'{code}' is not a code of {system}"), missing: false });
    };
    if changed("businessStatus") {
        for code in codings_in(task.get("businessStatus"), STAGE_SYSTEM) {
            if !STAGES.contains(code) {
                unknown(&mut problems, "Task.businessStatus".into(), STAGE_SYSTEM, code);
            }
        }
    }
    if changed("statusReason") || status_changed {
        let reasons: Vec<&str> = codings_in(task.get("statusReason"), REASON_SYSTEM).collect();
        for code in &reasons {
            if !REASONS.contains(*code) {
                unknown(&mut problems, "Task.statusReason".into(), REASON_SYSTEM, code);
            }
        }
        if status_changed && needs(status) == Some(Needs::StatusReason) && reasons.is_empty() {
            problems.push(CodeProblem {
                path: "Task.statusReason".into(),
                message: format!("moving a Task to '{status}' needs a statusReason coded from {REASON_SYSTEM}"),
                missing: true,
            });
        }
    }
    if changed("output") || status_changed {
        let mut outcomes = 0;
        for (i, output) in task.get("output").and_then(Value::as_array).into_iter().flatten().enumerate() {
            for code in codings_in(output.get("valueCodeableConcept"), OUTCOME_SYSTEM) {
                outcomes += 1;
                if !OUTCOMES.contains(code) {
                    unknown(
                        &mut problems,
                        format!("Task.output[{i}].value.ofType(CodeableConcept)"),
                        OUTCOME_SYSTEM,
                        code,
                    );
                }
            }
        }
        if status_changed && needs(status) == Some(Needs::Output) && outcomes == 0 {
            problems.push(CodeProblem {
                path: "Task.output".into(),
                message: format!(
                    "completing a Task needs an output whose valueCodeableConcept is coded from {OUTCOME_SYSTEM}"
                ),
                missing: true,
            });
        }
    }
    problems
}

/// A CodeableConcept with one Signpost code.
pub fn concept(system: &str, code: &str) -> Value {
    let display = known_codes(system).and_then(|_| display_of(system, code));
    let mut coding = serde_json::json!({ "system": system, "code": code });
    if let Some(d) = display {
        coding["display"] = Value::String(d);
    }
    serde_json::json!({ "coding": [coding] })
}

/// The display of a Signpost lifecycle code.
pub fn display_of(system: &str, code: &str) -> Option<String> {
    /// A code system's `(code, display)` pairs.
    type Displays = Vec<(String, String)>;
    /// Each lifecycle code system's pairs, read from its definition once.
    static DISPLAYS: std::sync::LazyLock<Vec<(&str, Displays)>> = std::sync::LazyLock::new(|| {
        [
            (STAGE_SYSTEM, include_str!("../fhir-profiles/signpost/CodeSystem-referral-outcome.json")),
            (REASON_SYSTEM, include_str!("../fhir-profiles/signpost/CodeSystem-rejection-reason.json")),
            (OUTCOME_SYSTEM, include_str!("../fhir-profiles/signpost/CodeSystem-support-outcome.json")),
        ]
        .into_iter()
        .map(|(system, text)| {
            let cs: Value = serde_json::from_str(text).unwrap_or_default();
            let concepts = crate::fhir::items(&cs, "concept")
                .filter_map(|c| Some((c["code"].as_str()?.to_string(), c["display"].as_str()?.to_string())))
                .collect();
            (system, concepts)
        })
        .collect()
    });
    let (_, concepts) = DISPLAYS.iter().find(|(s, _)| *s == system)?;
    concepts.iter().find(|(c, _)| c == code).map(|(_, d)| d.clone())
}

/// The Signpost code of a CodeableConcept in `system`, if any.
pub fn code_in<'v>(concept: Option<&'v Value>, system: &'v str) -> Option<&'v str> {
    codings_in(concept, system).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PRODUCT.md §6 written out as (from, to, who) rows; every combination not listed is refused.
    fn contract() -> Vec<(&'static str, &'static str, Actor)> {
        let mut rows = vec![
            ("requested", "accepted", Actor::Owner),
            ("requested", "rejected", Actor::Owner),
            ("accepted", "in-progress", Actor::Owner),
            ("accepted", "on-hold", Actor::Owner),
            ("in-progress", "on-hold", Actor::Owner),
            ("on-hold", "in-progress", Actor::Owner),
        ];
        for from in ["accepted", "in-progress", "on-hold"] {
            rows.push((from, "completed", Actor::Owner));
            rows.push((from, "failed", Actor::Owner));
        }
        for from in ["requested", "accepted", "in-progress", "on-hold"] {
            rows.push((from, "cancelled", Actor::Referrer));
            rows.push((from, "cancelled", Actor::Signpost));
        }
        for from in STATUSES.iter().filter(|s| **s != "entered-in-error") {
            rows.push((from, "entered-in-error", Actor::Referrer));
            rows.push((from, "entered-in-error", Actor::Operator));
        }
        rows
    }

    #[test]
    fn every_move_of_every_actor_follows_the_table() {
        let rows = contract();
        for from in STATUSES {
            for to in STATUSES.iter().filter(|t| *t != from) {
                for actor in Actor::ALL {
                    let want = rows.contains(&(from, to, actor));
                    assert_eq!(check(from, to, actor).is_ok(), want, "{from} -> {to} by {}", actor.as_str());
                }
            }
        }
    }

    #[test]
    fn refusals_name_the_allowed_moves() {
        assert_eq!(check("requested", "completed", Actor::Owner), Err(vec!["accepted", "rejected"]));
        assert_eq!(check("completed", "accepted", Actor::Owner), Err(vec![]));
        assert!(check("accepted", "accepted", Actor::Owner).is_ok(), "no move is not a move");
    }

    #[test]
    fn reasons_and_outcomes_must_be_known_codes() {
        let all = |_: &str| true;
        let task = |status: &str, reason: Option<&str>, outcome: Option<&str>| {
            let mut t = serde_json::json!({ "resourceType": "Task", "status": status });
            if let Some(r) = reason {
                t["statusReason"] = concept(REASON_SYSTEM, r);
            }
            if let Some(o) = outcome {
                t["output"] = serde_json::json!([{ "type": { "text": "outcome" }, "valueCodeableConcept": concept(OUTCOME_SYSTEM, o) }]);
            }
            t
        };
        assert!(check_codes(&task("rejected", Some("out-of-area"), None), true, &all).is_empty());
        assert_eq!(check_codes(&task("rejected", Some("too-busy"), None), true, &all)[0].path, "Task.statusReason");
        assert_eq!(check_codes(&task("rejected", None, None), true, &all).len(), 1, "a coded reason is needed");
        let mut free_text = task("failed", None, None);
        free_text["statusReason"] = serde_json::json!({ "text": "moved away" });
        assert_eq!(check_codes(&free_text, true, &all).len(), 1, "text alone is not a coded reason");
        assert!(check_codes(&task("completed", None, Some("support-completed")), true, &all).is_empty());
        assert_eq!(check_codes(&task("completed", None, Some("cured")), true, &all).len(), 1);
        assert_eq!(check_codes(&task("completed", None, None), true, &all)[0].path, "Task.output");
        let mut stage = task("accepted", None, None);
        stage["businessStatus"] = concept(STAGE_SYSTEM, "contacted");
        assert!(check_codes(&stage, false, &all).is_empty());
        stage["businessStatus"] = concept(STAGE_SYSTEM, "phoned-twice");
        assert_eq!(check_codes(&stage, false, &all)[0].path, "Task.businessStatus");
        // A code from another system is the charity's own business.
        stage["businessStatus"] =
            serde_json::json!({ "coding": [{ "system": "https://charity.example/stages", "code": "x" }] });
        assert!(check_codes(&stage, false, &all).is_empty());
        assert!(concept(OUTCOME_SYSTEM, "advice-given")["coding"][0]["display"].is_string());
    }
}
