//! Settings: defaults, then an optional TOML file, then `SIGNPOST__...` environment variables
//! (`SIGNPOST__DATABASE__URL` sets `database.url`). Unknown keys and bad values fail start-up
//! with the key named.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `server.host` | `127.0.0.1` | address to listen on |
//! | `server.port` | `8080` | port (0 = any free port) |
//! | `server.workers` | `2` | HTTP worker threads |
//! | `database.url` | `sqlite://data/signpost.db` | `sqlite://PATH` or `postgres://...` |
//! | `database.pool_size` | `8` | connections in the pool |
//! | `directory.path` | `examples/directory` | folder of directory Bundles loaded at start (empty = none) |
//! | `limits.max_body_bytes` | `1048576` | request body limit (413 above) |
//! | `limits.max_depth` | `32` | JSON nesting limit (400 above) |
//! | `limits.max_bundle_entries` | `100` | Bundle entry limit (422 above) |
//! | `limits.max_string_bytes` | `65536` | longest JSON string (400 above) |
//! | `validation.mode` | `enforce` | `enforce` (refuse invalid resources), `log` (accept; errors of the R4 validator, profiles and referral rules become warnings and are logged), `off` (JSON Schema structure check only) |
//! | `log.format` | `text` | `text` or `json` |
//! | `log.level` | `info` | tracing filter, e.g. `info,signpost=debug` |
//! | `clients` | none | API clients: `name`, `role`, `organization`, `key_sha256` |

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::Role;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub directory: DirectorySettings,
    pub limits: LimitSettings,
    pub validation: ValidationSettings,
    pub log: LogSettings,
    pub clients: Vec<ClientSettings>,
}

/// How strictly writes are validated (PRODUCT.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// Only the R4 JSON Schema structure check.
    Off,
    /// The full validator runs; its errors are logged and returned as warnings, not refused.
    Log,
    /// Every error refuses the write.
    #[default]
    Enforce,
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
        Self { host: "127.0.0.1".into(), port: 8080, workers: 2 }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: "sqlite://data/signpost.db".into(), pool_size: 8 }
    }
}

impl Default for DirectorySettings {
    fn default() -> Self {
        Self { path: PathBuf::from("examples/directory") }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self { max_body_bytes: 1024 * 1024, max_depth: 32, max_bundle_entries: 100, max_string_bytes: 64 * 1024 }
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
    /// Load from defaults, then `file` (if given; it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
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
    }

    #[test]
    fn file_values_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.toml");
        std::fs::write(&path, "[server]\nport = 9999\n[log]\nformat = \"json\"\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.server.port, 9999);
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.database.url, "sqlite://data/signpost.db");
    }
}
