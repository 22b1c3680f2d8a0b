//! Strict JSON: one meaning per document. Every JSON text the filter reads (JWS header and
//! claims, DPoP proof header and claims with its `jwk`, JWKS, OIDC discovery documents, the
//! plugin configuration) is parsed here, and a member name that occurs twice in one object, at
//! any depth, is refused.
//!
//! RFC 7159 §4 only says names "SHOULD be unique" and RFC 7519 §4 lets a JWT consumer take the
//! last duplicate, which is what `serde_json::Value` does silently. Other consumers take the
//! first, so `{"sub":"alice","sub":"mallory"}` means different things to different parsers: a
//! claims-injection bug at an issuer becomes an impersonation. A security filter refuses.
//!
//! Names are compared after unescaping, so `"s\u0075b"` and `"sub"` are the same name. The
//! result is exactly the `Value` that `serde_json::from_slice` would build for a document
//! without duplicates; the check costs one map lookup per member (the same entry lookup that
//! inserts it) and allocates only on the error path.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use std::fmt;

/// Longest member name shown in a pointer; longer names are cut (the pointer is for logs and
/// config errors, which must stay short).
const MAX_NAME_CHARS: usize = 64;

/// Defines `fn $name(pointer: &str) -> &'static str`: a static log detail naming a duplicate
/// member when its pointer is one of the registered names given, and a generic one otherwise.
/// Denial details are static text chosen by the code, so a member name from a request is never
/// echoed; the registered names are the ones an attacker would duplicate.
macro_rules! duplicate_details {
    ($name:ident, $what:literal, [$($member:literal),* $(,)?]) => {
        fn $name(pointer: &str) -> &'static str {
            match pointer {
                $($member => concat!($what, " has a duplicate member ", $member),)*
                _ => concat!($what, " has a duplicate member (an unregistered name, not logged)"),
            }
        }
    };
}
pub(crate) use duplicate_details;

/// Where a duplicate member was found: the path from the document root, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Member(String),
    Index(usize),
}

fn printable(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if i == MAX_NAME_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Duplicate {
    /// The JSON pointer (RFC 6901) of the second occurrence: `/sub`, `/cnf/jkt`,
    /// `/keys/1/kid`. Control characters are escaped and long names cut, so it is safe to log.
    pub fn pointer(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            out.push('/');
            match segment {
                Segment::Member(name) => {
                    out.push_str(&printable(name).replace('~', "~0").replace('/', "~1"))
                }
                Segment::Index(i) => out.push_str(&i.to_string()),
            }
        }
        out
    }

    /// The same path in the configuration's field notation: `providers[0].jwks.keys[1].kid`.
    pub fn field(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Member(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&printable(name));
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duplicate member {}", self.pointer())
    }
}

/// Why a text was refused.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON: syntax, nesting deeper than serde_json's limit, trailing characters.
    Syntax(serde_json::Error),
    /// Valid JSON, but a member name occurs twice in one object.
    Duplicate(Duplicate),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax(e) => write!(f, "not valid JSON ({e})"),
            JsonError::Duplicate(d) => d.fmt(f),
        }
    }
}

impl std::error::Error for JsonError {}

/// Parses JSON, refusing duplicate member names at any depth.
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    finish(&mut de)
}

/// [`from_slice`] for text.
pub fn from_str(text: &str) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    finish(&mut de)
}

fn finish<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
) -> Result<Value, JsonError> {
    // Segments are collected innermost first while the error unwinds.
    let mut found: Option<Vec<Segment>> = None;
    let parsed = Strict(&mut found)
        .deserialize(&mut *de)
        .and_then(|value| de.end().map(|()| value));
    match (parsed, found) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(mut segments)) => {
            segments.reverse();
            Err(JsonError::Duplicate(Duplicate { segments }))
        }
        (Err(e), None) => Err(JsonError::Syntax(e)),
    }
}

/// Builds a `Value` exactly as serde_json's own visitor does, except that maps refuse a name
/// they already hold. `.0` receives the path of a duplicate.
struct Strict<'a>(&'a mut Option<Vec<Segment>>);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let found = self.0;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        loop {
            match seq.next_element_seed(Strict(&mut *found)) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    if let Some(path) = found.as_mut() {
                        path.push(Segment::Index(items.len()));
                    }
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let found = self.0;
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            match map.entry(name) {
                Entry::Occupied(first) => {
                    *found = Some(vec![Segment::Member(first.key().clone())]);
                    return Err(de::Error::custom("duplicate member name"));
                }
                Entry::Vacant(slot) => match access.next_value_seed(Strict(&mut *found)) {
                    Ok(value) => {
                        slot.insert(value);
                    }
                    Err(e) => {
                        if let Some(path) = found.as_mut() {
                            path.push(Segment::Member(slot.key().clone()));
                        }
                        return Err(e);
                    }
                },
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(text: &str) -> String {
        match from_str(text) {
            Err(JsonError::Duplicate(d)) => d.pointer(),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn builds_what_serde_json_builds() {
        for text in [
            r#"{"a":1,"b":-2,"c":1.5,"d":1e400,"e":"x\u00e9","f":[true,false,null],"g":{"h":{}}}"#,
            r#"[1,{"a":[{"b":2}]},"s"]"#,
            r#"18446744073709551615"#,
            r#"-9223372036854775808"#,
            r#""\ud83d\ude00""#,
        ] {
            let strict = from_str(text);
            let plain: Result<Value, _> = serde_json::from_str(text);
            match (strict, plain) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(JsonError::Syntax(_)), Err(_)) => {}
                (a, b) => panic!("{text}: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn refuses_duplicates_at_any_depth_with_their_pointer() {
        assert_eq!(dup(r#"{"sub":"a","sub":"b"}"#), "/sub");
        assert_eq!(dup(r#"{"cnf":{"jkt":"a","jkt":"b"}}"#), "/cnf/jkt");
        assert_eq!(
            dup(r#"{"keys":[{"kid":"a"},{"kid":"a","kid":"b"}]}"#),
            "/keys/1/kid"
        );
        assert_eq!(dup(r#"[[{}],[{"x":1,"x":1}]]"#), "/1/0/x");
        assert_eq!(dup(r#"{"a/b~":{"c":1,"c":2}}"#), "/a~1b~0/c");
    }

    #[test]
    fn escaped_names_are_compared_after_unescaping() {
        assert_eq!(dup(r#"{"sub":"a","s\u0075b":"b"}"#), "/sub");
        assert_eq!(dup(r#"{"\u0061lg":"none","alg":"ES256"}"#), "/alg");
    }

    #[test]
    fn the_same_name_in_different_objects_is_fine() {
        let v = from_str(r#"{"kid":"a","jwk":{"kid":"a"},"l":[{"kid":1},{"kid":2}]}"#);
        assert!(v.is_ok(), "{v:?}");
    }

    #[test]
    fn syntax_errors_are_not_duplicates() {
        for text in [r#"{"a":1"#, r#"{"a":1} x"#, "", r#"{"a":1,}"#] {
            assert!(
                matches!(from_str(text), Err(JsonError::Syntax(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn nesting_is_bounded_by_serde_jsons_recursion_limit() {
        for open in ["[", "{\"a\":"] {
            let text = open.repeat(100_000);
            assert!(matches!(from_str(&text), Err(JsonError::Syntax(_))));
        }
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(from_str(&ok).is_ok());
    }

    #[test]
    fn pointers_are_safe_to_log() {
        let long = "n".repeat(500);
        let p = dup(&format!(r#"{{"{long}\n":1,"{long}\n":2}}"#));
        assert!(p.len() < 80, "{p}");
        assert!(!p.contains('\n'));
        let p = dup(r#"{"a\u0000":1,"a\u0000":2}"#);
        assert!(!p.contains('\0'), "{p:?}");
    }

    #[test]
    fn field_notation_for_config_errors() {
        let Err(JsonError::Duplicate(d)) =
            from_str(r#"{"providers":[{"jwks":{"keys":[{"kid":1,"kid":2}]}}]}"#)
        else {
            panic!()
        };
        assert_eq!(d.field(), "providers[0].jwks.keys[0].kid");
        assert_eq!(d.pointer(), "/providers/0/jwks/keys/0/kid");
    }
}
