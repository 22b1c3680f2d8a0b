//! The path normaliser and matcher (`tokenbind_core::paths`), and `exempt_paths` in the
//! configuration and the engine.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::borrow::Cow;
use tokenbind_core::paths::{normalize, PathKind, PathMatcher, Refusal};
use tokenbind_core::{Config, MockHost, Outcome, Reason};

fn norm(p: &str) -> Result<String, Refusal> {
    normalize(p).map(Cow::into_owned)
}

fn check(cases: &[(&str, &str)]) {
    for (input, want) in cases {
        assert_eq!(norm(input).as_deref(), Ok(*want), "normalize({input:?})");
        // The normal form is a fixed point.
        assert_eq!(norm(want).as_deref(), Ok(*want), "normalize({want:?})");
    }
}

#[test]
fn rfc3986_section_5_2_4_examples() {
    check(&[
        ("/a/b/c/./../../g", "/a/g"),
        ("/mid/content=5/../6", "/mid/6"),
    ]);
}

/// RFC 3986 §5.4 with base `http://a/b/c/d;p?q`: the merged path of each reference (§5.2.3)
/// and the target's path after §5.2.4.
#[test]
fn rfc3986_section_5_4_examples() {
    check(&[
        // §5.4.1 normal examples.
        ("/b/c/g", "/b/c/g"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/g/", "/b/c/g/"),
        ("/g", "/g"),
        ("/b/c/d;p", "/b/c/d;p"),
        ("/b/c/g;x", "/b/c/g;x"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/./", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../", "/b/"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/../..", "/"),
        ("/b/c/../../", "/"),
        ("/b/c/../../g", "/g"),
        // §5.4.2 abnormal examples.
        ("/b/c/../../../g", "/g"),
        ("/b/c/../../../../g", "/g"),
        ("/./g", "/g"),
        ("/../g", "/g"),
        ("/b/c/g.", "/b/c/g."),
        ("/b/c/.g", "/b/c/.g"),
        ("/b/c/g..", "/b/c/g.."),
        ("/b/c/..g", "/b/c/..g"),
        ("/b/c/./../g", "/b/g"),
        ("/b/c/./g/.", "/b/c/g/"),
        ("/b/c/g/./h", "/b/c/g/h"),
        ("/b/c/g/../h", "/b/c/h"),
        ("/b/c/g;x=1/./y", "/b/c/g;x=1/y"),
        ("/b/c/g;x=1/../y", "/b/c/y"),
    ]);
}

#[test]
fn query_and_fragment_are_ignored() {
    check(&[
        ("/healthz?x=1", "/healthz"),
        ("/healthz?", "/healthz"),
        ("/healthz#frag", "/healthz"),
        ("/healthz?a=/../admin", "/healthz"),
        ("/a/../b?x=%2F", "/b"),
    ]);
}

#[test]
fn percent_encoding_normalisation() {
    check(&[
        // Unreserved characters are decoded (§6.2.2.2), in either case of hex digit.
        ("/%68ealthz", "/healthz"),
        ("/%68%65%61%6C%74%68%7a", "/healthz"),
        ("/%7Euser/%2d%2E%5f", "/~user/-._"),
        ("/%41%5A%61%7A%30%39", "/AZaz09"),
        // Everything else stays encoded, with upper-case hex (§6.2.2.1).
        ("/a%20b%2a", "/a%20b%2A"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/x%3fy", "/x%3Fy"),
        ("/x%3a%40", "/x%3A%40"),
        // Encoded dots are dots: decoded before dot-segment removal.
        ("/healthz/%2e%2e/api", "/api"),
        ("/healthz/%2E/live", "/healthz/live"),
        ("/healthz/.%2e/api", "/api"),
    ]);
}

#[test]
fn duplicate_slashes_are_merged() {
    check(&[
        ("//healthz", "/healthz"),
        ("/healthz//live", "/healthz/live"),
        ("/healthz//", "/healthz/"),
        ("//", "/"),
        ("///", "/"),
        ("//healthz/../api", "/api"),
        ("/a//./b", "/a/b"),
        // Both orders agree here, so the path is not ambiguous.
        ("//a/../b", "/b"),
    ]);
}

#[test]
fn already_normal_paths_are_borrowed() {
    for p in ["/", "/healthz", "/healthz/live", "/a.b/c..d/e.", "/x;y=1"] {
        assert!(
            matches!(normalize(p), Ok(Cow::Borrowed(b)) if b == p),
            "{p}"
        );
    }
    assert!(matches!(
        normalize("/healthz?x=1"),
        Ok(Cow::Borrowed("/healthz"))
    ));
}

#[test]
fn refusals_are_precise() {
    let cases: &[(&str, Refusal)] = &[
        ("", Refusal::NotOriginForm),
        ("*", Refusal::NotOriginForm),
        ("healthz", Refusal::NotOriginForm),
        ("http://h/healthz", Refusal::NotOriginForm),
        ("?x=/healthz", Refusal::NotOriginForm),
        ("/healthz%2F..%2Fapi", Refusal::EncodedSlash),
        ("/healthz%2f..%2fapi", Refusal::EncodedSlash),
        ("/healthz%5C..%5Capi", Refusal::EncodedBackslash),
        ("/healthz%5c..", Refusal::EncodedBackslash),
        ("/healthz\\..\\api", Refusal::Backslash),
        ("/healthz%", Refusal::MalformedPercent),
        ("/healthz%4", Refusal::MalformedPercent),
        ("/healthz%zz", Refusal::MalformedPercent),
        ("/healthz%g0", Refusal::MalformedPercent),
        ("/healthz%252F..%252Fapi", Refusal::EncodedPercent),
        ("/healthz%00", Refusal::EncodedControl),
        ("/healthz%0a", Refusal::EncodedControl),
        ("/healthz%7F", Refusal::EncodedControl),
        ("/healthz\0", Refusal::ControlByte),
        ("/healthz\t", Refusal::ControlByte),
        ("/healthz x", Refusal::ControlByte),
        ("/healthz\u{7f}", Refusal::ControlByte),
        ("/caf\u{e9}", Refusal::NonAscii),
        ("/a\"b", Refusal::InvalidByte),
        ("/a<b>", Refusal::InvalidByte),
        ("/a{b}", Refusal::InvalidByte),
        ("/a|b", Refusal::InvalidByte),
        ("/a^b", Refusal::InvalidByte),
        ("/a`b", Refusal::InvalidByte),
        ("/healthz/..;/api", Refusal::DotSegmentParameters),
        ("/healthz/..;x=1/api", Refusal::DotSegmentParameters),
        ("/healthz/.;/api", Refusal::DotSegmentParameters),
        ("/healthz/..%3b/api", Refusal::DotSegmentParameters),
        ("/healthz/%2e%2e;/api", Refusal::DotSegmentParameters),
        ("/healthz//../api", Refusal::AmbiguousDotSegments),
        ("/api//../healthz", Refusal::AmbiguousDotSegments),
    ];
    for (input, want) in cases {
        assert_eq!(norm(input), Err(*want), "normalize({input:?})");
        assert!(!want.as_str().is_empty());
    }
    // The query is cut first: a refused byte there does not matter.
    assert_eq!(norm("/healthz?x=%2F\\").as_deref(), Ok("/healthz"));
}

fn matcher(entries: Value) -> PathMatcher {
    PathMatcher::from_json(entries.as_array().unwrap(), "exempt_paths").unwrap()
}

#[test]
fn prefixes_match_on_segment_boundaries() {
    let m = matcher(json!(["/healthz"]));
    for yes in [
        "/healthz",
        "/healthz/",
        "/healthz/live",
        "/healthz?x=1",
        "/%68ealthz",
        "//healthz",
        "/healthz/./live",
        "/x/../healthz",
    ] {
        assert_eq!(m.find(None, yes), Ok(Some(0)), "{yes}");
    }
    for no in [
        "/healthzfoo",
        "/healthz-admin/secrets",
        "/healthz.json",
        "/healthz;x",
        "/health",
        "/HEALTHZ",
        "/api/healthz",
        "/healthz/../api/admin",
        "/healthz/%2e%2e/api",
        "//healthz/../api",
        "/%68ealthz/../api",
    ] {
        assert_eq!(m.find(None, no), Ok(None), "{no}");
    }
    for refused in [
        "/healthz%2F..%2Fapi",
        "/healthz%2f..%2fapi",
        "/healthz\\..\\api",
        "/healthz%5C..%5Capi",
        "/healthz/..;/api",
        "/healthz//../api",
    ] {
        assert!(m.find(None, refused).is_err(), "{refused}");
        assert!(!m.matches(None, refused), "{refused}");
    }
}

#[test]
fn the_root_prefix_matches_every_normal_path() {
    let m = matcher(json!(["/"]));
    for p in ["/", "/a", "/a/b/", "/a/../b"] {
        assert!(m.matches(Some("GET"), p), "{p}");
    }
    assert!(!m.matches(Some("GET"), "/a%2Fb"));
}

#[test]
fn exact_entries_match_only_themselves() {
    let m = matcher(json!([{"exact": "/ready"}]));
    assert!(m.matches(None, "/ready"));
    assert!(m.matches(None, "/ready?full=1"));
    assert!(m.matches(None, "/%72eady"));
    for no in ["/ready/", "/ready/x", "/readyz", "/"] {
        assert!(!m.matches(None, no), "{no}");
    }
    assert_eq!(m.entries()[0].kind, PathKind::Exact);
}

#[test]
fn methods_limit_an_entry() {
    let m = matcher(json!([
        {"prefix": "/healthz", "methods": ["GET", "HEAD"]},
        {"exact": "/ready"}
    ]));
    assert!(m.uses_methods());
    assert_eq!(m.find(Some("GET"), "/healthz/live"), Ok(Some(0)));
    assert_eq!(m.find(Some("HEAD"), "/healthz"), Ok(Some(0)));
    for method in [Some("POST"), Some("get"), Some("OPTIONS"), None] {
        assert_eq!(m.find(method, "/healthz"), Ok(None), "{method:?}");
    }
    assert_eq!(m.find(Some("POST"), "/ready"), Ok(Some(1)));
    assert!(!matcher(json!(["/a"])).uses_methods());
}

#[test]
fn an_empty_matcher_matches_nothing_without_normalising() {
    let m = PathMatcher::default();
    assert!(m.is_empty());
    // Even a path that has no normal form is just "no match" when there is nothing to match.
    assert_eq!(m.find(None, "/a%2Fb"), Ok(None));
}

fn config(exempt: Value) -> Result<Config, tokenbind_core::ConfigError> {
    let keys = Keys::new();
    let cfg = config_json(&keys, json!({"exempt_paths": exempt}));
    Config::from_json(cfg.to_string().as_bytes(), &|_| Err("no files".into()))
}

#[test]
fn config_accepts_strings_and_objects() {
    let c = config(json!([
        "/healthz",
        {"prefix": "/livez", "methods": ["GET", "HEAD"]},
        {"exact": "/ready"},
        {"exact": "/status/"},
        "/",
        "/a%20b",
        "/caf%C3%A9"
    ]))
    .unwrap();
    let e = c.exempt_paths.entries();
    assert_eq!(e.len(), 7);
    assert_eq!(
        (e[0].kind, e[0].path.as_str()),
        (PathKind::Prefix, "/healthz")
    );
    assert_eq!(
        e[1].methods.as_deref(),
        Some(&["GET".into(), "HEAD".into()][..])
    );
    assert_eq!((e[2].kind, e[2].methods.as_ref()), (PathKind::Exact, None));
    assert!(config(json!([])).unwrap().exempt_paths.is_empty());
}

#[test]
fn config_errors_name_the_entry_and_key() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!(["healthz"]), "exempt_paths[0]", "'/'"),
        (
            json!(["/a", "/healthz/../api"]),
            "exempt_paths[1]",
            "\"/api\"",
        ),
        (
            json!(["/a", "/b", {"prefix": "/x/./y"}]),
            "exempt_paths[2].prefix",
            "\"/x/y\"",
        ),
        (json!(["//healthz"]), "exempt_paths[0]", "\"/healthz\""),
        (json!(["/%68ealthz"]), "exempt_paths[0]", "\"/healthz\""),
        (json!(["/a%3fb"]), "exempt_paths[0]", "\"/a%3Fb\""),
        (json!(["/healthz%2Fx"]), "exempt_paths[0]", "%2F"),
        (json!(["/healthz%5Cx"]), "exempt_paths[0]", "%5C"),
        (json!(["/healthz\\x"]), "exempt_paths[0]", "'\\'"),
        (json!(["/healthz%"]), "exempt_paths[0]", "'%'"),
        (json!(["/healthz?x=1"]), "exempt_paths[0]", "query"),
        (
            json!([{"exact": "/ready#x"}]),
            "exempt_paths[0].exact",
            "query",
        ),
        (
            json!(["/healthz/"]),
            "exempt_paths[0]",
            "segment boundaries",
        ),
        (json!(["/a b"]), "exempt_paths[0]", "spaces"),
        (json!([42]), "exempt_paths[0]", "string"),
        (json!([{"prefix": 42}]), "exempt_paths[0].prefix", "string"),
        (
            json!([{"prefix": "/a", "exact": "/a"}]),
            "exempt_paths[0]",
            "both",
        ),
        (json!([{"methods": ["GET"]}]), "exempt_paths[0]", "needs"),
        (
            json!([{"prefix": "/a", "method": ["GET"]}]),
            "exempt_paths[0].method",
            "unknown",
        ),
        (
            json!([{"prefix": "/a", "methods": "GET"}]),
            "exempt_paths[0].methods",
            "list",
        ),
        (
            json!([{"prefix": "/a", "methods": []}]),
            "exempt_paths[0].methods",
            "empty",
        ),
        (
            json!([{"prefix": "/a", "methods": ["GET", "get"]}]),
            "exempt_paths[0].methods[1]",
            "\"GET\"",
        ),
        (
            json!([{"prefix": "/a", "methods": ["GET", "GET"]}]),
            "exempt_paths[0].methods[1]",
            "duplicates",
        ),
        (
            json!([{"prefix": "/a", "methods": ["GE T"]}]),
            "exempt_paths[0].methods[0]",
            "token",
        ),
        (
            json!([{"prefix": "/a", "methods": [""]}]),
            "exempt_paths[0].methods[0]",
            "token",
        ),
        (
            json!([{"prefix": "/a", "methods": [1]}]),
            "exempt_paths[0].methods[0]",
            "string",
        ),
        (
            json!(["/a", {"prefix": "/a"}]),
            "exempt_paths[1]",
            "duplicates exempt_paths[0]",
        ),
        (json!("/healthz"), "exempt_paths", ""),
    ];
    for (exempt, field, needle) in cases {
        match config(exempt.clone()) {
            Ok(_) => panic!("accepted {exempt}"),
            Err(e) => {
                assert_eq!(e.field, field, "{exempt}: {e}");
                assert!(
                    e.to_string().contains(needle),
                    "{exempt}: {e} lacks {needle:?}"
                );
            }
        }
    }
    let many: Vec<String> = (0..=tokenbind_core::paths::MAX_ENTRIES)
        .map(|i| format!("/p{i}"))
        .collect();
    assert_eq!(config(json!(many)).unwrap_err().field, "exempt_paths");
    let long = format!("/{}", "a".repeat(tokenbind_core::paths::MAX_ENTRY_BYTES));
    assert_eq!(config(json!([long])).unwrap_err().field, "exempt_paths[0]");
}

fn decide(engine: &tokenbind_core::Engine, method: &str, path: &str) -> Outcome {
    let host = MockHost::new()
        .with_header(":method", method)
        .with_header(":path", path);
    engine.decide(&host, now()).outcome
}

#[test]
fn the_engine_exempts_only_normal_matching_paths() {
    let keys = Keys::new();
    let engine = engine(
        &keys,
        json!({"exempt_paths": [
            "/healthz",
            {"exact": "/ready"},
            {"prefix": "/livez", "methods": ["GET", "HEAD"]}
        ]}),
    );
    for (method, path) in [
        ("GET", "/healthz"),
        ("POST", "/healthz/live"),
        ("GET", "/healthz?x=1"),
        ("GET", "/%68ealthz"),
        ("GET", "/ready"),
        ("GET", "/livez"),
        ("HEAD", "/livez/x"),
    ] {
        assert_eq!(
            decide(&engine, method, path),
            Outcome::Exempt,
            "{method} {path}"
        );
    }
    for (method, path) in [
        ("GET", "/healthzfoo"),
        ("GET", "/healthz-admin/secrets"),
        ("GET", "/healthz/../api/admin"),
        ("GET", "/healthz%2F..%2Fapi"),
        ("GET", "/healthz%2f..%2fapi"),
        ("GET", "/healthz\\..\\api"),
        ("GET", "//healthz/../api"),
        ("GET", "/%68ealthz/../api"),
        ("GET", "/healthz/..;/api"),
        ("GET", "/ready/x"),
        ("POST", "/livez"),
    ] {
        match decide(&engine, method, path) {
            Outcome::Deny(d) => assert_eq!(d.reason, Reason::MissingToken, "{method} {path}"),
            other => panic!("{method} {path}: {other:?}"),
        }
    }
}

/// Seeded random paths built from the characters that matter (separators, dots, percent
/// signs and the hex digits of `%2F`/`%5C`/`%2E`, `;`, `\`, query and fragment): the
/// normaliser never panics, and every normal form it returns is a fixed point with no dot
/// segments, no `//`, no query and no encoded or raw separator other than `/`.
#[test]
fn random_paths_normalise_to_fixed_points_or_are_refused() {
    const PIECES: &[&str] = &[
        "/", "/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%", "%4",
        "%68", "%7e", "%C3%a9", ";", "..;", "\\", "?", "#", "healthz", "h", "a", "-", "~",
        "\u{7f}", " ", "\0", "é",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    };
    let m = matcher(json!(["/healthz"]));
    let (mut normal, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let mut p = String::from(if next(8) == 0 { "" } else { "/" });
        for _ in 0..next(12) {
            p.push_str(PIECES[next(PIECES.len())]);
        }
        match normalize(&p) {
            Ok(n) => {
                normal += 1;
                assert!(n.starts_with('/'), "{p:?} -> {n:?}");
                assert_eq!(normalize(&n).as_deref(), Ok(&*n), "{p:?} -> {n:?}");
                assert!(!n.contains("//"), "{p:?} -> {n:?}");
                assert!(!n.contains(['?', '#', '\\']), "{p:?} -> {n:?}");
                assert!(!n.contains("%2F") && !n.contains("%5C"), "{p:?} -> {n:?}");
                assert!(
                    n.split('/').all(|s| s != "." && s != ".."),
                    "{p:?} -> {n:?}"
                );
                if m.matches(None, &p) {
                    assert!(
                        n == "/healthz" || n.starts_with("/healthz/"),
                        "{p:?} -> {n:?}"
                    );
                }
            }
            Err(r) => {
                refused += 1;
                assert!(!m.matches(None, &p), "{p:?} refused ({r}) but matched");
            }
        }
    }
    // Both branches were exercised.
    assert!(
        normal > 1000 && refused > 1000,
        "{normal} normal, {refused} refused"
    );
}
