//! Reading request bodies as JSON within Signpost's limits.
//!
//! One pass of serde_json with a visitor that refuses duplicate property names, nesting deeper
//! than the limit and over-long strings while the value is built, so a hostile body costs no
//! more than its size (and never a deep recursive drop).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::outcome::{Issue, IssueCode};

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    pub max_string_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_depth: 32, max_string_bytes: 64 * 1024 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breach {
    Depth,
    Duplicate,
    String,
}

struct Seed<'a> {
    depth: usize,
    limits: Limits,
    breach: &'a Cell<Option<Breach>>,
}

impl<'a> Seed<'a> {
    fn child(&self) -> Seed<'a> {
        Seed { depth: self.depth + 1, limits: self.limits, breach: self.breach }
    }

    fn fail<E: de::Error>(&self, b: Breach) -> E {
        self.breach.set(Some(b));
        E::custom("limit")
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        if v.len() > self.limits.max_string_bytes {
            return Err(self.fail(Breach::String));
        }
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        if v.len() > self.limits.max_string_bytes {
            return Err(self.fail(Breach::String));
        }
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= self.limits.max_depth {
            return Err(self.fail(Breach::Depth));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.child())? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= self.limits.max_depth {
            return Err(self.fail(Breach::Depth));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.len() > self.limits.max_string_bytes {
                return Err(self.fail(Breach::String));
            }
            let value = map.next_value_seed(self.child())?;
            if out.insert(key, value).is_some() {
                return Err(self.fail(Breach::Duplicate));
            }
        }
        Ok(Value::Object(out))
    }
}

/// Parse `bytes` as one JSON value within `limits`. The error is an issue ready for an
/// OperationOutcome; it names the position, never the content. A UTF-8 byte order mark at the
/// start is ignored, as RFC 8259 §8.1 allows and the HL7 Java validator does (Windows tools
/// write one).
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Value, Issue> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let breach = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = Seed { depth: 0, limits, breach: &breach };
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|_| v));
    match result {
        Ok(v) => Ok(v),
        Err(e) => Err(match breach.get() {
            Some(Breach::Depth) => Issue::error(
                IssueCode::JsonTooDeep,
                format!(
                    "JSON nests deeper than {} levels (line {}, column {})",
                    limits.max_depth,
                    e.line(),
                    e.column()
                ),
            ),
            Some(Breach::Duplicate) => Issue::error(
                IssueCode::JsonDuplicateKey,
                format!("an object repeats a property name (line {}, column {})", e.line(), e.column()),
            ),
            Some(Breach::String) => Issue::error(
                IssueCode::StringTooLong,
                format!(
                    "a string is longer than {} bytes (line {}, column {})",
                    limits.max_string_bytes,
                    e.line(),
                    e.column()
                ),
            ),
            // serde_json's own recursion guard (128) can trip before ours for arrays of arrays.
            None if e.to_string().contains("recursion limit") => {
                Issue::error(IssueCode::JsonTooDeep, format!("JSON nests deeper than {} levels", limits.max_depth))
            }
            None => Issue::error(
                IssueCode::JsonMalformed,
                format!("the body is not valid JSON: {} at line {}, column {}", classify(&e), e.line(), e.column()),
            ),
        }),
    }
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected value",
        Category::Io => "read error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> Option<IssueCode> {
        parse(bytes, Limits::default()).err().map(|i| i.code)
    }

    #[test]
    fn accepts_ordinary_json() {
        assert!(parse(br#"{"a":[1,{"b":"c"}],"d":null}"#, Limits::default()).is_ok());
    }

    /// A byte order mark may lead the body (RFC 8259 §8.1); anywhere else it is not JSON.
    #[test]
    fn accepts_one_leading_byte_order_mark_only() {
        let bom = "\u{feff}";
        assert_eq!(parse(format!("{bom}{{\"a\":1}}").as_bytes(), Limits::default()).unwrap()["a"], 1);
        assert_eq!(code(format!("{bom}{bom}{{\"a\":1}}").as_bytes()), Some(IssueCode::JsonMalformed));
        assert_eq!(code(format!("{{\"a\":{bom}1}}").as_bytes()), Some(IssueCode::JsonMalformed));
    }

    #[test]
    fn refuses_duplicate_keys() {
        assert_eq!(code(br#"{"a":1,"a":2}"#), Some(IssueCode::JsonDuplicateKey));
    }

    #[test]
    fn refuses_depth_over_limit_but_not_at_it() {
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(parse(ok.as_bytes(), Limits::default()).is_ok());
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(code(deep.as_bytes()), Some(IssueCode::JsonTooDeep));
        assert_eq!(code("[".repeat(100_000).as_bytes()), Some(IssueCode::JsonTooDeep));
    }

    #[test]
    fn refuses_long_strings_and_bad_utf8() {
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(64 * 1024 + 1));
        assert_eq!(code(long.as_bytes()), Some(IssueCode::StringTooLong));
        assert_eq!(code(b"{\"a\":\"\xff\"}"), Some(IssueCode::JsonMalformed));
        assert_eq!(code(b"{\"a\":1} trailing"), Some(IssueCode::JsonMalformed));
    }

    #[test]
    fn malformed_diagnostics_do_not_echo_content() {
        let issue = parse(br#"{"name":"Jane Doe" "x"}"#, Limits::default()).unwrap_err();
        assert!(!issue.diagnostics.contains("Jane"));
    }
}
