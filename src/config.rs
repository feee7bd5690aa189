//! Settings: defaults, then an optional TOML file (`--config FILE` or `SIGNPOST_CONFIG`; no file is
//! ever picked up from the working folder), then `SIGNPOST__...` environment variables
//! (`SIGNPOST__DATABASE__URL` sets `database.url`). Unknown keys and bad values fail start-up
//! with the key named.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `mode` | `sandbox` without a config file, `production` with one | `sandbox` loads the example directory and the public sandbox keys embedded in the binary and listens on loopback only; `production` never loads either |
//! | `server.host` | `127.0.0.1` | address to listen on (sandbox mode: a loopback address) |
//! | `server.port` | `8080` | port (0 = any free port) |
//! | `server.workers` | `2` | HTTP worker threads |
//! | `server.public_base_url` | `http://{host}:{port}` | the base URL clients reach Signpost at (behind a proxy: its public URL); `Location`, `fullUrl` and paging links are built from it, never from `Host` or `Forwarded` headers |
//! | `database.url` | `sqlite://$XDG_DATA_HOME/signpost/signpost.db` (`~/.local/share/signpost/signpost.db`) | `sqlite://PATH` or `postgres://...` |
//! | `database.pool_size` | `8` | connections in the pool |
//! | `directory.path` | none | folder of directory files loaded at start; it must exist (sandbox mode without it: the embedded example directory) |
//! | `limits.max_body_bytes` | `1048576` | request body limit, after decompression (413 above) |
//! | `limits.max_depth` | `32` | JSON nesting limit (400 above) |
//! | `limits.max_bundle_entries` | `100` | Bundle entry limit (422 above) |
//! | `limits.max_string_bytes` | `65536` | longest JSON string (400 above) |
//! | `limits.max_issues` | `100` | issues in one OperationOutcome; one more issue says how many were left out |
//! | `limits.body_timeout_secs` | `10` | time allowed to send a request body (408 after) |
//! | `limits.max_concurrent_writes` | `16` | writes and validations in progress at once; more wait up to 250 ms, then get 503 with `Retry-After` |
//! | `delivery.enabled` | `true` | run the webhook delivery worker inside `serve` |
//! | `delivery.allow_loopback` | `false` (always on in sandbox mode) | allow `http` and loopback webhook addresses (tests, the sandbox) |
//! | `delivery.timeout_secs` | `15` | per-attempt timeout (1–30) |
//! | `delivery.lease_secs` | `60` | lease on a claimed event (longer than the timeout); a dead worker's events are free again after it |
//! | `delivery.alert_webhook_url` | none | operator alerts (an Endpoint disabled, an event dead-lettered) are POSTed here as JSON, retried every minute until a 2xx; always listed at `GET /fhir/Endpoint/$alerts` and logged as `ALERT` |
//! | `delivery.alert_secret` | none | a Standard Webhooks secret (`whsec_...`) to sign the alert pushes with |
//! | `validation.mode` | `enforce` | `enforce` (refuse invalid resources), `log` (accept; errors of the R4 validator, profiles and referral rules become warnings and are logged), `off` (JSON Schema structure check only) |
//! | `log.format` | `text` | `text` or `json` |
//! | `log.level` | `info` | tracing filter, e.g. `info,signpost=debug` |
//! | `sandbox.charities` | `true` | in sandbox mode, run the simulated charities (`sandbox-charity-webhook`, `sandbox-charity-polling`) that answer referrals as their sentinel notes ask; production never runs them |
//! | `clients` | none | API clients: `name`, `role`, `organization`, `key_sha256`; a client dropped from the list stops working at the next start |

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
pub use crate::fhir::ValidationMode;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Settings {
    pub mode: RunMode,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub directory: DirectorySettings,
    pub limits: LimitSettings,
    pub validation: ValidationSettings,
    pub delivery: DeliverySettings,
    pub log: LogSettings,
    pub clients: Vec<ClientSettings>,
    pub sandbox: SandboxSettings,
}

/// Sandbox mode's extras (PRODUCT.md §10).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// Run the simulated charities (sandbox mode only; never in production).
    pub charities: bool,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings { charities: true }
    }
}

/// Sandbox (public example data and keys, loopback only) or production (PRODUCT.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// The example directory and the public sandbox keys, embedded in the binary.
    #[default]
    Sandbox,
    /// Only the configured directory and clients.
    Production,
}

/// Webhook delivery (PRODUCT.md §5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Run the delivery worker inside `serve`.
    pub enabled: bool,
    /// Allow `http` and loopback webhook addresses (always on in sandbox mode; for tests).
    pub allow_loopback: bool,
    /// Per-attempt timeout in seconds (at most 30).
    pub timeout_secs: u64,
    /// Lease on a claimed event, in seconds; longer than the timeout. A worker that dies holding
    /// events frees them when their leases run out.
    pub lease_secs: u64,
    /// Where operator alerts are pushed (an incident tool's webhook); empty = only listed at
    /// `GET /fhir/Endpoint/$alerts` and logged.
    pub alert_webhook_url: String,
    /// Standard Webhooks secret (`whsec_...`) signing the alert pushes; empty = unsigned.
    pub alert_secret: String,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_loopback: false,
            timeout_secs: 15,
            lease_secs: 60,
            alert_webhook_url: String::new(),
            alert_secret: String::new(),
        }
    }
}

impl Settings {
    /// Whether webhooks may go to `http` and loopback addresses.
    pub fn allow_loopback_webhooks(&self) -> bool {
        self.delivery.allow_loopback || self.mode == RunMode::Sandbox
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSettings {
    pub mode: ValidationMode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    /// Empty: `http://{host}:{port}` as bound.
    pub public_base_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectorySettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_depth: usize,
    pub max_bundle_entries: usize,
    pub max_string_bytes: usize,
    pub max_issues: usize,
    pub body_timeout_secs: u64,
    pub max_concurrent_writes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// An API client declared in the config (the key itself is never in the config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub name: String,
    pub role: Role,
    pub organization: String,
    /// Lowercase hex SHA-256 of the key.
    pub key_sha256: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self { host: "127.0.0.1".into(), port: 8080, workers: 2, public_base_url: String::new() }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: default_database_url(), pool_size: 8 }
    }
}

impl Default for DirectorySettings {
    fn default() -> Self {
        Self { path: PathBuf::new() }
    }
}

/// The default SQLite file: `$XDG_DATA_HOME/signpost/signpost.db`, else
/// `$HOME/.local/share/signpost/signpost.db`, else `signpost.db` in the working folder.
pub fn default_database_url() -> String {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = env("XDG_DATA_HOME").or_else(|| env("HOME").map(|h| h.join(".local/share")));
    match dir {
        Some(d) => format!("sqlite://{}", d.join("signpost").join("signpost.db").display()),
        None => "sqlite://signpost.db".into(),
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_depth: 32,
            max_bundle_entries: 100,
            max_string_bytes: 64 * 1024,
            max_issues: 100,
            body_timeout_secs: 10,
            max_concurrent_writes: 16,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// A setting that could not be used, with its key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Load from defaults, then `file` (if given; it must exist), then the environment. Without
    /// a file the default mode is `sandbox`; with one it is `production`.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Serialized::default("mode", RunMode::Production)).merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("SIGNPOST__").split("__"));
        let settings: Settings = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            ConfigError(format!("{} (key `{}`)", e.kind, if key.is_empty() { "?".into() } else { key }))
        })?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError(format!("{why} (key `{key}`)")));
        if self.server.workers == 0 {
            return fail("server.workers", "must be at least 1");
        }
        if self.database.pool_size == 0 {
            return fail("database.pool_size", "must be at least 1");
        }
        if crate::store::DatabaseUrl::parse(&self.database.url).is_err() {
            return fail("database.url", "must be sqlite://PATH or postgres://...");
        }
        if self.limits.max_depth < 2 || self.limits.max_body_bytes < 1024 || self.limits.max_bundle_entries == 0 {
            return fail("limits", "limits are too small to accept a referral");
        }
        if self.mode == RunMode::Sandbox && !is_loopback(&self.server.host) {
            return fail(
                "server.host",
                "sandbox mode serves public keys and listens on loopback only (127.0.0.1, ::1 or localhost); \
                 set mode = \"production\" to listen elsewhere",
            );
        }
        if !self.server.public_base_url.is_empty() {
            let u = &self.server.public_base_url;
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(['?', '#', ' ']) {
                return fail("server.public_base_url", "must be an http:// or https:// URL without query or fragment");
            }
        }
        if !(1..=30).contains(&self.delivery.timeout_secs) {
            return fail("delivery.timeout_secs", "must be 1 to 30");
        }
        if self.delivery.lease_secs <= self.delivery.timeout_secs {
            return fail("delivery.lease_secs", "must be longer than delivery.timeout_secs");
        }
        let alert_url = &self.delivery.alert_webhook_url;
        if !(alert_url.is_empty() || alert_url.starts_with("https://") || alert_url.starts_with("http://")) {
            return fail("delivery.alert_webhook_url", "must be an http:// or https:// URL");
        }
        let secret = &self.delivery.alert_secret;
        if !secret.is_empty() && crate::delivery::signature::sign(secret, "check", 0, "").is_none() {
            return fail("delivery.alert_secret", "must be a Standard Webhooks secret (whsec_ and base64)");
        }
        if self.limits.max_issues == 0 || self.limits.body_timeout_secs == 0 || self.limits.max_concurrent_writes == 0 {
            return fail("limits", "max_issues, body_timeout_secs and max_concurrent_writes must be at least 1");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return fail("log.level", "is not a valid tracing filter");
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.key_sha256.len() != 64
                || !c.key_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return fail(&format!("clients[{i}].key_sha256"), "must be 64 lowercase hex characters");
            }
            if !crate::fhir::is_valid_id(&c.organization) {
                return fail(&format!("clients[{i}].organization"), "must be an Organization id");
            }
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ServerSettings {
    /// The public base URL (without `/fhir`) for a server bound to `port`.
    pub fn base_url(&self, port: u16) -> String {
        if self.public_base_url.is_empty() {
            let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
            format!("http://{host}:{port}")
        } else {
            self.public_base_url.trim_end_matches('/').to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[server]\nport = \"eighty\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        std::fs::write(&path, "[server]\nprot = 1\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        std::fs::write(&path, "[delivery]\nalert_secret = \"hunter2\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("delivery.alert_secret") && !err.contains("hunter2"), "{err}");
        std::fs::write(&path, "[delivery]\nalert_webhook_url = \"ftp://pager\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("delivery.alert_webhook_url"), "{err}");
    }

    #[test]
    fn file_values_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.toml");
        std::fs::write(&path, "[server]\nport = 9999\n[log]\nformat = \"json\"\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.server.port, 9999);
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.database.url, default_database_url());
        assert_eq!(s.mode, RunMode::Production, "a config file means production unless it says otherwise");
    }

    #[test]
    fn sandbox_mode_listens_on_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.toml");
        std::fs::write(&path, "mode = \"sandbox\"\n[server]\nhost = \"0.0.0.0\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("server.host"), "{err}");
        std::fs::write(&path, "mode = \"production\"\n[server]\nhost = \"0.0.0.0\"\n").unwrap();
        assert!(Settings::load(Some(&path)).is_ok());
        assert_eq!(Settings::load(None).unwrap().mode, RunMode::Sandbox);
    }
}
