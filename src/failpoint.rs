//! Fail points for crash tests (RELIABILITY.md C3, C4): `SIGNPOST_FAILPOINTS=name[,name]` makes
//! the process abort at those points, as a power cut would. Unset, they cost one lookup.

use std::sync::OnceLock;

/// Abort the process here if the fail point `name` is switched on.
pub fn hit(name: &str) {
    static ON: OnceLock<Vec<String>> = OnceLock::new();
    let on = ON.get_or_init(|| {
        std::env::var("SIGNPOST_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    });
    if on.iter().any(|n| n == name) {
        eprintln!("fail point {name}: aborting");
        std::process::abort();
    }
}
