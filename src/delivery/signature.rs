//! Standard Webhooks v1 signatures: `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>` with
//! the Endpoint's secret (`whsec_` + base64 of 32 random bytes).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The `v1,...` signature of one delivery; `None` if the secret is not valid base64.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header: the current secret's signature, and during a rotation's
/// overlap the previous one's too (space-separated), so receivers holding either verify.
pub fn header(current: &str, previous: Option<&str>, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let mut out = sign(current, id, timestamp, body)?;
    if let Some(p) = previous.and_then(|p| sign(p, id, timestamp, body)) {
        out.push(' ');
        out.push_str(&p);
    }
    Some(out)
}

/// Check a received webhook's Standard Webhooks headers against `secret` with the Standard
/// Webhooks reference implementation (the `standardwebhooks` crate, independent of [`sign`]):
/// the signature, and a timestamp within five minutes. The error says what was wrong.
pub fn verify_request(secret: &str, headers: &actix_web::http::header::HeaderMap, body: &[u8]) -> Result<(), String> {
    verify_headers(secret, &http_headers(headers), body)
}

/// Actix's request headers as `http` headers (what the Standard Webhooks crate reads).
pub fn http_headers(headers: &actix_web::http::header::HeaderMap) -> http::HeaderMap {
    let mut converted = http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) =
            (http::HeaderName::from_bytes(name.as_str().as_bytes()), http::HeaderValue::from_bytes(value.as_bytes()))
        {
            converted.append(n, v);
        }
    }
    converted
}

/// [`verify_request`] for `http` headers (a reqwest or hyper request).
pub fn verify_headers(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<(), String> {
    let webhook = standardwebhooks::Webhook::new(secret).map_err(|e| format!("the secret is not usable: {e}"))?;
    webhook.verify(body, headers).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// D1: the Standard Webhooks reference vector.
    #[test]
    fn signs_the_standard_webhooks_vector() {
        assert_eq!(
            sign(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                r#"{"email":"test@example.com","username":"test_user"}"#
            )
            .as_deref(),
            Some("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=")
        );
    }

    #[test]
    fn secrets_are_random_whsec_keys_and_rotation_sends_both() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && STANDARD.decode(&a[6..]).unwrap().len() == 32);
        let both = header(&a, Some(&b), "msg_1", 1, "{}").unwrap();
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts, vec![sign(&a, "msg_1", 1, "{}").unwrap(), sign(&b, "msg_1", 1, "{}").unwrap()]);
        assert_eq!(sign("whsec_!!", "m", 1, "{}"), None);
    }
}
