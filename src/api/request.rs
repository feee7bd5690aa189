//! Reading the parts of an HTTP request that FHIR gives meaning to: headers, media types,
//! the body within its size limit, and the query string.

use actix_web::http::header::HeaderMap;
use actix_web::{HttpMessage, HttpRequest, web};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::fhir::outcome::{Issue, IssueCode};
use crate::gateway::{Return, WriteOpts};

/// The request's correlation id, stored in its extensions by the middleware.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

/// The caller's `X-Correlation-Id` when it is sane (printable ASCII, ≤ 128 bytes), else a new one.
pub fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

pub fn correlation_of(req: &HttpRequest) -> String {
    req.extensions().get::<CorrelationId>().map(|c| c.0.clone()).unwrap_or_default()
}

fn prefer_tokens(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']).map(|t| t.trim().replace(' ', "")).collect::<Vec<_>>())
        .collect()
}

/// `Prefer: return=minimal|representation|OperationOutcome`.
pub fn prefer_return(req: &HttpRequest) -> Return {
    for t in prefer_tokens(req) {
        match t.as_str() {
            "return=minimal" => return Return::Minimal,
            "return=representation" => return Return::Representation,
            "return=OperationOutcome" => return Return::OperationOutcome,
            _ => {}
        }
    }
    Return::Representation
}

/// `Prefer: handling=strict`.
pub fn prefer_strict(req: &HttpRequest) -> bool {
    prefer_tokens(req).iter().any(|t| t == "handling=strict")
}

/// `_format` and `Accept` must allow FHIR JSON.
pub fn check_format(req: &HttpRequest) -> Result<(), ApiError> {
    let not_acceptable =
        || ApiError::new(406, Issue::error(IssueCode::NotAcceptable, "Signpost answers in FHIR JSON only"));
    let json_like = |s: &str| {
        let s = s.trim().split(';').next().unwrap_or("").trim();
        matches!(s, "json" | "application/json" | "application/fhir+json" | "*/*" | "application/*" | "")
    };
    for (k, v) in query_pairs(req).unwrap_or_default() {
        if k == "_format" && !json_like(&v) {
            return Err(not_acceptable());
        }
    }
    if let Some(accept) = req.headers().get("accept").and_then(|v| v.to_str().ok())
        && !accept.split(',').any(json_like)
    {
        return Err(not_acceptable());
    }
    Ok(())
}

/// Writes must send FHIR JSON (PATCH: JSON Patch).
pub fn check_content_type(req: &HttpRequest, patch: bool) -> Result<(), ApiError> {
    let ct = req.content_type().trim().to_ascii_lowercase();
    let ok = if patch {
        ct == "application/json-patch+json"
    } else {
        ct == "application/fhir+json" || ct == "application/json"
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            415,
            Issue::error(
                IssueCode::UnsupportedMediaType,
                if patch {
                    "PATCH takes Content-Type: application/json-patch+json"
                } else {
                    "send Content-Type: application/fhir+json"
                },
            ),
        ))
    }
}

/// Read the body within `timeout` (408 after), refusing more than `limit` bytes (413) before
/// reading it all. A `Content-Encoding` of gzip or deflate is decoded, with the limit applied
/// to the decoded bytes too; any other encoding is refused (415).
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<web::Bytes, ApiError> {
    let encoding = content_encoding(req)?;
    let raw = match tokio::time::timeout(timeout, read_raw(req, payload, limit)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::new(
                408,
                Issue::error(
                    IssueCode::BodyTimeout,
                    format!("the request body did not arrive within {} seconds", timeout.as_secs()),
                ),
            ));
        }
    };
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => decode(flate2::read::GzDecoder::new(&raw[..]), limit),
        Encoding::Deflate => decode(flate2::read::ZlibDecoder::new(&raw[..]), limit),
    }
}

enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

fn content_encoding(req: &HttpRequest) -> Result<Encoding, ApiError> {
    let Some(value) = req.headers().get("content-encoding") else { return Ok(Encoding::Identity) };
    let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match value.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        _ => Err(ApiError::new(
            415,
            Issue::error(IssueCode::UnsupportedMediaType, "Content-Encoding must be gzip, deflate or identity"),
        )),
    }
}

/// Decompress at most `limit` bytes: a body that inflates beyond it is refused (413) without
/// inflating the rest.
fn decode(decoder: impl std::io::Read, limit: usize) -> Result<web::Bytes, ApiError> {
    use std::io::Read;
    let mut out = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|_| {
        ApiError::new(400, Issue::error(IssueCode::JsonMalformed, "the body does not decode with its Content-Encoding"))
    })?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out.into())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(413, Issue::error(IssueCode::BodyTooLarge, format!("the body is larger than {limit} bytes")))
}

async fn read_raw(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    if let Some(len) =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::new(400, Issue::error(IssueCode::JsonMalformed, "the request body could not be read"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// Idempotency key, If-Match, If-None-Exist and the request hash.
pub fn write_opts(req: &HttpRequest, body: &[u8]) -> Result<WriteOpts, ApiError> {
    let key = header(req, "x-request-id").or_else(|| header(req, "idempotency-key"));
    if let Some(k) = key
        && (k.len() > 200 || !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ApiError::new(
            400,
            Issue::error(IssueCode::BadConditional, "X-Request-Id must be printable ASCII, at most 200 characters"),
        ));
    }
    let if_match = match header(req, "if-match") {
        None => None,
        Some(v) => Some(v.trim_start_matches("W/").trim_matches('"').parse::<i64>().map_err(|_| {
            ApiError::new(412, Issue::error(IssueCode::VersionConflict, "If-Match must be an ETag like W/\"3\""))
        })?),
    };
    let mut hash = Sha256::new();
    hash.update(req.method().as_str().as_bytes());
    hash.update(b" ");
    hash.update(req.path().as_bytes());
    hash.update(b"\n");
    hash.update(body);
    Ok(WriteOpts {
        idempotency_key: key.map(str::to_string),
        request_hash: hex::encode(hash.finalize()),
        if_match,
        if_none_exist: header(req, "if-none-exist").map(str::to_string),
        message: None,
    })
}

/// The query string as decoded pairs, in order.
pub fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .map_err(|_| ApiError::new(400, Issue::error(IssueCode::BadSearchValue, "the query string cannot be decoded")))
}

/// The BaRS headers of a message, as sent (not the correlation id Signpost makes up when one is
/// missing).
pub fn message_headers(req: &HttpRequest) -> crate::gateway::messaging::MessageHeaders {
    crate::gateway::messaging::MessageHeaders {
        request_id: header(req, "x-request-id").map(str::to_string),
        correlation_id: header(req, "x-correlation-id").map(str::to_string),
    }
}
