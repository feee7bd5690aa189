//! Sandbox mode (PRODUCT.md §10–11): the example directory and the public sandbox API keys,
//! embedded in the binary so that `signpost serve` works from any folder with no set-up.
//!
//! These keys are public (they are printed in the README). They are registered only in sandbox
//! mode, which listens on loopback only; production mode removes them from the database at
//! start-up, so a database that once ran as a sandbox never accepts them in production.

use crate::auth::Role;
use crate::store::Pool;

pub mod simulator;

/// The simulated webhook charity's public key.
pub const SIM_WEBHOOK_KEY: &str = "sp_sandbox_charity_sim_webhook";
/// The simulated polling charity's public key.
pub const SIM_POLLING_KEY: &str = "sp_sandbox_charity_sim_polling";

/// A public sandbox client: name, role, Organization, key.
pub struct SandboxClient {
    pub name: &'static str,
    pub role: Role,
    pub organization: &'static str,
    pub key: &'static str,
}

/// The sandbox clients, one per role (and a second charity).
pub const CLIENTS: &[SandboxClient] = &[
    SandboxClient {
        name: "sandbox-riverside-gp",
        role: Role::Referrer,
        organization: "riverside-medical-practice",
        key: "sp_sandbox_referrer_riverside",
    },
    SandboxClient {
        name: "sandbox-stroke-association",
        role: Role::Charity,
        organization: "stroke-association",
        key: "sp_sandbox_charity_stroke",
    },
    SandboxClient {
        name: "sandbox-befriending-network-leeds",
        role: Role::Charity,
        organization: "befriending-network-leeds",
        key: "sp_sandbox_charity_befriending",
    },
    SandboxClient {
        name: "sandbox-charity-webhook",
        role: Role::Charity,
        organization: simulator::WEBHOOK_CHARITY,
        key: SIM_WEBHOOK_KEY,
    },
    SandboxClient {
        name: "sandbox-charity-polling",
        role: Role::Charity,
        organization: simulator::POLLING_CHARITY,
        key: SIM_POLLING_KEY,
    },
    SandboxClient {
        name: "sandbox-operator",
        role: Role::Operator,
        organization: "signpost-operator",
        key: "sp_sandbox_operator",
    },
];

/// The id prefix of sandbox clients' database rows.
pub const CLIENT_ID_PREFIX: &str = "sandbox-";

/// The example directory (`examples/directory/`): file name and content.
pub const DIRECTORY: &[(&str, &str)] = &[
    ("age-uk-leeds.json", include_str!("../../examples/directory/age-uk-leeds.json")),
    ("alopecia-uk.json", include_str!("../../examples/directory/alopecia-uk.json")),
    ("befriending-network-leeds.json", include_str!("../../examples/directory/befriending-network-leeds.json")),
    ("blood-cancer-uk.json", include_str!("../../examples/directory/blood-cancer-uk.json")),
    ("breast-cancer-now.json", include_str!("../../examples/directory/breast-cancer-now.json")),
    ("diabetes-uk.json", include_str!("../../examples/directory/diabetes-uk.json")),
    ("fight-bladder-cancer.json", include_str!("../../examples/directory/fight-bladder-cancer.json")),
    ("kidney-care-uk.json", include_str!("../../examples/directory/kidney-care-uk.json")),
    ("macmillan.json", include_str!("../../examples/directory/macmillan.json")),
    ("meningitis-now.json", include_str!("../../examples/directory/meningitis-now.json")),
    ("migraine-trust.json", include_str!("../../examples/directory/migraine-trust.json")),
    ("mnd-association.json", include_str!("../../examples/directory/mnd-association.json")),
    ("ms-society.json", include_str!("../../examples/directory/ms-society.json")),
    ("operator.json", include_str!("../../examples/directory/operator.json")),
    ("pancreatic-cancer-uk.json", include_str!("../../examples/directory/pancreatic-cancer-uk.json")),
    ("prostate-cancer-uk.json", include_str!("../../examples/directory/prostate-cancer-uk.json")),
    ("referrers.json", include_str!("../../examples/directory/referrers.json")),
    ("rnid.json", include_str!("../../examples/directory/rnid.json")),
    ("sickle-cell-society.json", include_str!("../../examples/directory/sickle-cell-society.json")),
    ("stroke-association.json", include_str!("../../examples/directory/stroke-association.json")),
    ("young-lives-vs-cancer.json", include_str!("../../examples/directory/young-lives-vs-cancer.json")),
];

/// Load the simulated charities (their webhook Endpoint pointed at `root`, this server) and
/// give the Endpoint a new secret; returns the simulator, not yet running.
pub fn install(pool: &Pool, root: &str) -> anyhow::Result<std::sync::Arc<simulator::Simulator>> {
    const PLACEHOLDER: &str = "http://127.0.0.1:8080/sandbox/hook";
    anyhow::ensure!(
        simulator::DIRECTORY.contains(PLACEHOLDER),
        "the sandbox Endpoint's address is not the placeholder"
    );
    let text = simulator::DIRECTORY.replace(PLACEHOLDER, &format!("{root}/sandbox/hook"));
    let files = vec![("examples/sandbox/charities.json".to_string(), text)];
    crate::gateway::directory::load_files(pool, &files, true, crate::gateway::directory::Overwrite::Yes)?;
    let secret = crate::delivery::signature::new_secret();
    let mut conn = pool.get()?;
    crate::store::write_txn(&mut conn, |conn| {
        crate::store::outbox::rotate_secret(conn, simulator::ENDPOINT, &secret, crate::fhir::now_ms() + 3_600_000)
    })?;
    Ok(simulator::Simulator::new(format!("{root}/fhir"), secret))
}

/// Whether a resource (or any resource of a Bundle) carries the sandbox tag.
pub fn is_marked(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    let tags = v.pointer("/meta/tag").and_then(Value::as_array).into_iter().flatten();
    let own = tags.into_iter().any(|t| t.get("system").and_then(Value::as_str) == Some(simulator::TAG_SYSTEM));
    own || v
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| e.get("resource").is_some_and(is_marked))
}

/// The first of `files` (name, JSON text) holding a resource tagged as sandbox data, which a
/// production configuration refuses to load.
pub fn marked(files: &[(String, String)]) -> Option<&str> {
    files
        .iter()
        .find(|(_, text)| serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| is_marked(&v)))
        .map(|(n, _)| n.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_directory_is_the_example_folder() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/directory");
        let on_disk = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
            .count();
        assert_eq!(DIRECTORY.len(), on_disk, "every file of examples/directory is embedded");
    }
}
