//! Who is calling: API keys, roles and Organizations.
//!
//! Every request presents `Authorization: Bearer <key>`. Keys are random, high-entropy
//! strings, so a single SHA-256 is the right stored form (a slow password hash buys nothing
//! and would cost every request). The key itself is shown once, when the client is added.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a running instance trusts a key it has looked up before asking the database again:
/// a revoked key or a changed role takes effect on every instance within this time.
pub const CACHE_SECS: u64 = 5;

/// What a client may do (PRODUCT.md §1, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A GP practice or hospital system sending referrals.
    Referrer,
    /// A charity receiving referrals and updating its Tasks.
    Charity,
    /// Runs the gateway: directory, everything visible.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Referrer => "referrer",
            Role::Charity => "charity",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "referrer" => Some(Role::Referrer),
            "charity" => Some(Role::Charity),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    pub name: String,
    pub role: Role,
    /// The Organization id the client acts for (e.g. `stroke-association`).
    pub org_id: String,
}

impl Principal {
    /// `Organization/{org_id}`.
    pub fn org_reference(&self) -> String {
        format!("Organization/{}", self.org_id)
    }
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key: `sp_` and 32 random bytes in hex.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("sp_{}", hex::encode(bytes))
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hash_to_hex() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(a.starts_with("sp_") && a.len() == 67);
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
