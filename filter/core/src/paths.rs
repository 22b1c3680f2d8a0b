//! Which request path a request really names, and which configured path entries it matches.
//!
//! Two parts, both usable on their own (the exemption list today, route rules later, a fuzz
//! target always):
//!
//! - [`normalize`] turns a request's `:path` into its one normal form, or a precise
//!   [`Refusal`] when it cannot be normalised without guessing what the upstream will make of
//!   it. Normalisation: query and fragment dropped; RFC 3986 §6.2.2.1/§6.2.2.2
//!   percent-encoding normalisation (hex digits upper-cased, encoded unreserved characters
//!   decoded); RFC 3986 §5.2.4 dot-segment removal; duplicate slashes merged.
//! - [`PathMatcher`] holds `exact` and `prefix` entries, optionally limited to some methods,
//!   compiled and validated once from configuration ([`PathMatcher::from_json`]). A prefix
//!   matches on segment boundaries only: `/healthz` matches `/healthz` and `/healthz/…`, never
//!   `/healthzfoo`.
//!
//! A refusal is not a reply: the matcher never rejects a request. A path that cannot be
//! normalised simply matches no entry (for exemptions: it is never exempt and goes through the
//! full token check). An encoded `/` (`%2F`) or `\` (`%5C`) is never decoded into a separator
//! (that would change which resource is named for an upstream that does not decode it) and
//! never kept as data (an upstream that does decode it would see another path): it is a
//! refusal, like a raw `\` (which some servers treat as `/`).

use crate::config::ConfigError;
use crate::peer::nibble;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// At most this many entries in one list (each request walks the list).
pub const MAX_ENTRIES: usize = 256;
/// At most this many bytes in one entry's path.
pub const MAX_ENTRY_BYTES: usize = 1024;

/// Why a request path has no normal form. Each value has a stable name ([`Refusal::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not origin-form: does not start with `/` (`*`, absolute-form, empty).
    NotOriginForm,
    /// `%2F` or `%2f`: an encoded `/`.
    EncodedSlash,
    /// `%5C` or `%5c`: an encoded `\`.
    EncodedBackslash,
    /// A raw `\`, which some servers treat as `/`.
    Backslash,
    /// `%` not followed by two hex digits (`%zz`, `%4`, a trailing `%`).
    MalformedPercent,
    /// `%25`: an encoded `%`, i.e. double encoding (`%252F` is `%2F` to an upstream that
    /// decodes twice).
    EncodedPercent,
    /// An encoded control byte: `%00`–`%1F` or `%7F`.
    EncodedControl,
    /// A raw control byte, space or DEL.
    ControlByte,
    /// A raw byte ≥ 0x80 (non-ASCII must be percent-encoded).
    NonAscii,
    /// A raw ASCII byte that RFC 3986 does not allow in a path (`"`, `<`, `>`, `^`, `` ` ``,
    /// `{`, `|`, `}`).
    InvalidByte,
    /// A dot segment with parameters (`..;x`, `.;`, `..%3B`), which servlet containers treat
    /// as a dot segment and RFC 3986 does not.
    DotSegmentParameters,
    /// Merging slashes before or after removing dot segments names different paths
    /// (`/a//../b` is `/a/b` one way and `/b` the other): the upstream could see either.
    AmbiguousDotSegments,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::NotOriginForm => "not_origin_form",
            Refusal::EncodedSlash => "encoded_slash",
            Refusal::EncodedBackslash => "encoded_backslash",
            Refusal::Backslash => "backslash",
            Refusal::MalformedPercent => "malformed_percent",
            Refusal::EncodedPercent => "encoded_percent",
            Refusal::EncodedControl => "encoded_control",
            Refusal::ControlByte => "control_byte",
            Refusal::NonAscii => "non_ascii",
            Refusal::InvalidByte => "invalid_byte",
            Refusal::DotSegmentParameters => "dot_segment_parameters",
            Refusal::AmbiguousDotSegments => "ambiguous_dot_segments",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Refusal::NotOriginForm => "must start with '/'",
            Refusal::EncodedSlash => "must not contain an encoded '/' (%2F)",
            Refusal::EncodedBackslash => "must not contain an encoded '\\' (%5C)",
            Refusal::Backslash => "must not contain '\\'",
            Refusal::MalformedPercent => "has a '%' not followed by two hex digits",
            Refusal::EncodedPercent => "must not contain an encoded '%' (%25)",
            Refusal::EncodedControl => "must not contain an encoded control byte",
            Refusal::ControlByte => "must not contain control bytes or spaces",
            Refusal::NonAscii => "must be ASCII (percent-encode other bytes)",
            Refusal::InvalidByte => "contains a byte RFC 3986 does not allow in a path",
            Refusal::DotSegmentParameters => "must not contain a dot segment with parameters",
            Refusal::AmbiguousDotSegments => "mixes '//' and '..' ambiguously",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `%` (checked separately), plus `/`.
fn is_path_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
        || b == b'/'
}

fn upper_hex(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).map_or('0', |c| c.to_ascii_uppercase())
}

/// The normal form of a request target (`:path`), or why it has none.
///
/// Borrows when the path (without its query) is already normal, so the common case allocates
/// nothing.
pub fn normalize(target: &str) -> Result<Cow<'_, str>, Refusal> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(Refusal::NotOriginForm);
    }
    let bytes = path.as_bytes();
    let mut percent = false;
    let mut segments_need_work = false;
    let mut prev = 0u8;
    for &b in bytes {
        match b {
            b'%' => percent = true,
            b'\\' => return Err(Refusal::Backslash),
            0x00..=0x20 | 0x7f => return Err(Refusal::ControlByte),
            0x80..=0xff => return Err(Refusal::NonAscii),
            b if !is_path_byte(b) => return Err(Refusal::InvalidByte),
            // "//" or a segment starting with '.': dot segments or slashes to merge.
            b'/' | b'.' if prev == b'/' => segments_need_work = true,
            _ => {}
        }
        prev = b;
    }
    if !percent && !segments_need_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if percent {
        Cow::Owned(decode_percent(bytes)?)
    } else {
        Cow::Borrowed(path)
    };
    Ok(Cow::Owned(normalize_segments(&decoded)?))
}

/// RFC 3986 §6.2.2.1 and §6.2.2.2, refusing encodings that change the path's structure.
fn decode_percent(bytes: &[u8]) -> Result<String, Refusal> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(nibble);
        let lo = bytes.get(i + 2).copied().and_then(nibble);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(Refusal::MalformedPercent);
        };
        let decoded = (hi << 4) | lo;
        match decoded {
            b'/' => return Err(Refusal::EncodedSlash),
            b'\\' => return Err(Refusal::EncodedBackslash),
            b'%' => return Err(Refusal::EncodedPercent),
            0x00..=0x1f | 0x7f => return Err(Refusal::EncodedControl),
            d if is_unreserved(d) => out.push(char::from(d)),
            _ => {
                out.push('%');
                out.push(upper_hex(hi));
                out.push(upper_hex(lo));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// A segment that is `.` or `..` once parameters (`;…`, or an encoded `;`) are cut off, but is
/// not itself a dot segment.
fn is_dot_with_parameters(segment: &str) -> bool {
    let cut = match (segment.find(';'), segment.find("%3B")) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return false,
    };
    matches!(segment.get(..cut), Some("." | ".."))
}

/// RFC 3986 §5.2.4 on the segments after the leading `/`. Empty segments are segments.
fn remove_dot_segments<'a>(segments: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (i, &seg) in segments.iter().enumerate() {
        match seg {
            "." | ".." => {
                if seg == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    out
}

/// Drops empty segments except a final one (a trailing `/`).
fn merge_slashes<'a>(segments: &[&'a str]) -> Vec<&'a str> {
    let last = segments.len().saturating_sub(1);
    segments
        .iter()
        .enumerate()
        .filter(|&(i, s)| !s.is_empty() || i == last)
        .map(|(_, &s)| s)
        .collect()
}

fn join(segments: &[&str]) -> String {
    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum::<usize>());
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn normalize_segments(path: &str) -> Result<String, Refusal> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if segments.iter().any(|s| is_dot_with_parameters(s)) {
        return Err(Refusal::DotSegmentParameters);
    }
    // Envoy's order (and RFC 3986's): dot segments first, then merge.
    let normal = merge_slashes(&remove_dot_segments(&segments));
    let last = segments.len().saturating_sub(1);
    let interior_empty = segments
        .iter()
        .enumerate()
        .any(|(i, s)| s.is_empty() && i != last);
    if interior_empty && segments.contains(&"..") {
        let other = remove_dot_segments(&merge_slashes(&segments));
        if other != normal {
            return Err(Refusal::AmbiguousDotSegments);
        }
    }
    Ok(join(&normal))
}

// ---- The compiled matcher. ----

/// How an entry compares with a normalised path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// The whole path equals the entry.
    Exact,
    /// The path equals the entry or continues it with `/…` (`/` matches every path).
    Prefix,
}

/// One compiled entry: a normalised path, how it matches, and the methods it is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEntry {
    pub kind: PathKind,
    pub path: String,
    /// `None`: every method. Methods are case-sensitive (RFC 9110 §9.1).
    pub methods: Option<Vec<String>>,
}

impl PathEntry {
    fn matches_path(&self, normal: &str) -> bool {
        match self.kind {
            PathKind::Exact => normal == self.path,
            PathKind::Prefix => {
                self.path == "/"
                    || normal
                        .strip_prefix(self.path.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }

    fn matches_method(&self, method: Option<&str>) -> bool {
        match &self.methods {
            None => true,
            Some(ms) => method.is_some_and(|m| ms.iter().any(|x| x == m)),
        }
    }
}

/// A compiled list of path entries. Built once from configuration; read by every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMatcher {
    entries: Vec<PathEntry>,
    uses_methods: bool,
}

impl PathMatcher {
    /// A matcher from already-validated entries (see [`PathMatcher::from_json`] for the
    /// configuration form and its validation).
    pub fn new(entries: Vec<PathEntry>) -> PathMatcher {
        let uses_methods = entries.iter().any(|e| e.methods.is_some());
        PathMatcher {
            entries,
            uses_methods,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[PathEntry] {
        &self.entries
    }

    /// Whether any entry is limited to methods (callers can skip reading `:method` if not).
    pub fn uses_methods(&self) -> bool {
        self.uses_methods
    }

    /// The index of the first entry matching `method` and the request target `target`
    /// (`:path`, query allowed), `Ok(None)` if none does, or why the target has no normal
    /// form (then it matches nothing).
    pub fn find(&self, method: Option<&str>, target: &str) -> Result<Option<usize>, Refusal> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        let normal = normalize(target)?;
        Ok(self
            .entries
            .iter()
            .position(|e| e.matches_path(&normal) && e.matches_method(method)))
    }

    /// Whether some entry matches; a target without a normal form matches nothing.
    pub fn matches(&self, method: Option<&str>, target: &str) -> bool {
        matches!(self.find(method, target), Ok(Some(_)))
    }

    /// Compiles a configuration list at `field` (e.g. `exempt_paths`). Each element is either a
    /// string (a prefix entry) or an object with exactly one of `prefix` / `exact` and optional
    /// `methods`. Errors name the element and key (`exempt_paths[2].prefix`).
    pub fn from_json(list: &[Value], field: &str) -> Result<PathMatcher, ConfigError> {
        if list.len() > MAX_ENTRIES {
            return Err(err(field, format!("has more than {MAX_ENTRIES} entries")));
        }
        let mut entries: Vec<PathEntry> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let entry = compile_entry(item, &at)?;
            if let Some(j) = entries.iter().position(|e| *e == entry) {
                return Err(err(&at, format!("duplicates {field}[{j}]")));
            }
            entries.push(entry);
        }
        Ok(PathMatcher::new(entries))
    }
}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn compile_entry(item: &Value, at: &str) -> Result<PathEntry, ConfigError> {
    let obj = match item {
        Value::String(p) => {
            return Ok(PathEntry {
                kind: PathKind::Prefix,
                path: compile_path(p, PathKind::Prefix, at)?,
                methods: None,
            })
        }
        Value::Object(obj) => obj,
        _ => {
            return Err(err(
                at,
                "must be a path prefix string or an object with \"prefix\" or \"exact\"",
            ))
        }
    };
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "prefix" | "exact" | "methods"))
    {
        return Err(err(
            &format!("{at}.{key}"),
            "unknown field, expected one of `prefix`, `exact`, `methods`",
        ));
    }
    let (kind, key, value) = match (obj.get("prefix"), obj.get("exact")) {
        (Some(p), None) => (PathKind::Prefix, "prefix", p),
        (None, Some(e)) => (PathKind::Exact, "exact", e),
        (Some(_), Some(_)) => return Err(err(at, "has both `prefix` and `exact`; use one")),
        (None, None) => return Err(err(at, "needs `prefix` or `exact`")),
    };
    let field = format!("{at}.{key}");
    let Value::String(p) = value else {
        return Err(err(&field, "must be a string"));
    };
    let path = compile_path(p, kind, &field)?;
    let methods = match obj.get("methods") {
        None => None,
        Some(v) => Some(compile_methods(v, &format!("{at}.methods"))?),
    };
    Ok(PathEntry {
        kind,
        path,
        methods,
    })
}

fn compile_path(p: &str, kind: PathKind, field: &str) -> Result<String, ConfigError> {
    if p.len() > MAX_ENTRY_BYTES {
        return Err(err(
            field,
            format!("is longer than {MAX_ENTRY_BYTES} bytes"),
        ));
    }
    if p.contains(['?', '#']) {
        return Err(err(field, "must be a path without query or fragment"));
    }
    let normal = normalize(p).map_err(|r| err(field, r.describe()))?;
    if normal != p {
        return Err(err(
            field,
            format!("is not a normalised path (no dot segments, no '//', unreserved characters not percent-encoded, upper-case hex); write {normal:?}"),
        ));
    }
    if kind == PathKind::Prefix && p.len() > 1 && p.ends_with('/') {
        return Err(err(
            field,
            format!(
                "must not end with '/': a prefix matches on segment boundaries, so {:?} already matches itself and everything under it",
                p.trim_end_matches('/')
            ),
        ));
    }
    Ok(p.to_owned())
}

/// RFC 9110 `token` characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn compile_methods(v: &Value, field: &str) -> Result<Vec<String>, ConfigError> {
    let Value::Array(list) = v else {
        return Err(err(field, "must be a list of method names"));
    };
    if list.is_empty() {
        return Err(err(
            field,
            "is empty, which would match no request; omit it to match every method",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::String(m) = m else {
            return Err(err(&at, "must be a string"));
        };
        if m.is_empty() || m.len() > 32 || !m.bytes().all(is_tchar) {
            return Err(err(&at, "must be an HTTP method name (an RFC 9110 token)"));
        }
        if m.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(err(
                &at,
                format!(
                    "methods are case-sensitive (RFC 9110 §9.1) and clients send them upper-case; write {:?}",
                    m.to_ascii_uppercase()
                ),
            ));
        }
        if let Some(j) = out.iter().position(|x| x == m) {
            return Err(err(&at, format!("duplicates {field}[{j}]")));
        }
        out.push(m.clone());
    }
    Ok(out)
}
