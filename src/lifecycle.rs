//! The Task state machine (PRODUCT.md §6, after the SDOH Clinical Care pattern).
//!
//! Pure: given the current status, the requested one and who asks, say whether the move is
//! allowed and what it needs. Anything not in the table is refused with the allowed moves.

/// Who is moving the Task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The referrer that sent the referral.
    Referrer,
    /// The charity that owns the Task.
    Owner,
    /// A Signpost operator.
    Operator,
}

/// What a move to a status requires of the Task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    StatusReason,
    Output,
}

const OPEN: &[&str] = &["requested", "accepted", "in-progress", "on-hold"];

/// The statuses `actor` may move a Task to from `from`.
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
        Actor::Referrer | Actor::Operator => {
            if OPEN.contains(&from) {
                out.push("cancelled");
            }
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
        Actor::Referrer => Some(&["status", "statusReason", "note", "lastModified"]),
        Actor::Operator => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charity_moves_follow_the_table() {
        assert!(check("requested", "accepted", Actor::Owner).is_ok());
        assert!(check("requested", "rejected", Actor::Owner).is_ok());
        assert!(check("accepted", "completed", Actor::Owner).is_ok());
        assert!(check("in-progress", "on-hold", Actor::Owner).is_ok());
        assert!(check("on-hold", "in-progress", Actor::Owner).is_ok());
        assert_eq!(check("requested", "completed", Actor::Owner), Err(vec!["accepted", "rejected"]));
        assert_eq!(check("completed", "accepted", Actor::Owner), Err(vec![]));
        assert!(check("requested", "cancelled", Actor::Owner).is_err());
    }

    #[test]
    fn referrer_may_cancel_open_tasks_and_mark_errors_only() {
        assert!(check("requested", "cancelled", Actor::Referrer).is_ok());
        assert!(check("on-hold", "cancelled", Actor::Referrer).is_ok());
        assert!(check("completed", "cancelled", Actor::Referrer).is_err());
        assert!(check("completed", "entered-in-error", Actor::Referrer).is_ok());
        assert!(check("requested", "accepted", Actor::Referrer).is_err());
    }

    #[test]
    fn requirements() {
        assert_eq!(needs("rejected"), Some(Needs::StatusReason));
        assert_eq!(needs("completed"), Some(Needs::Output));
        assert_eq!(needs("accepted"), None);
        assert!(check("accepted", "accepted", Actor::Owner).is_ok());
    }
}
