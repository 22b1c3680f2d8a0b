//! The path matcher (`paths`): `normalize` on arbitrary request targets, a fixed exemption
//! list matched against them, and `PathMatcher::from_json` on arbitrary entry lists.
//! Input: `method \n target`, or, when the first byte is `{` or `[`, a JSON entry list.
//! Invariants: a normal form starts with `/`, is a fixed point, has no empty, `.` or `..`
//! segment, no query or fragment, no `\`, and no encoded `/`, `\` or `%`; a refused target
//! matches nothing; a match is a real exact or segment-boundary prefix match on the normal
//! form, for an allowed method; compiled entries are themselves normal forms.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::OnceLock;
use tokenbind_core::paths::{normalize, PathKind, PathMatcher};

fn matcher() -> &'static PathMatcher {
    static M: OnceLock<PathMatcher> = OnceLock::new();
    M.get_or_init(|| {
        let list = json!([
            "/healthz",
            {"exact": "/ready"},
            {"prefix": "/api/v1/public", "methods": ["GET", "HEAD"]},
            {"exact": "/"},
            {"prefix": "/a%20b"}
        ]);
        let list = list.as_array().cloned().unwrap_or_default();
        PathMatcher::from_json(&list, "exempt_paths").expect("the fixed list compiles")
    })
}

fn check_normal(n: &str) {
    assert!(n.starts_with('/'), "normal form {n:?} is not absolute");
    assert_eq!(
        normalize(n).as_deref(),
        Ok(n),
        "normal form {n:?} is not a fixed point"
    );
    assert!(
        !n.contains(['?', '#', '\\']),
        "normal form {n:?} keeps a query, fragment or \\"
    );
    let upper = n.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%25"] {
        assert!(!upper.contains(bad), "normal form {n:?} keeps {bad}");
    }
    for seg in n.split('/').skip(1) {
        assert!(
            seg != "." && seg != "..",
            "normal form {n:?} keeps a dot segment"
        );
    }
    assert!(
        !n.contains("//"),
        "normal form {n:?} keeps an empty segment"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if s.starts_with('{') || s.starts_with('[') {
        let Ok(Value::Array(list)) = serde_json::from_str::<Value>(s) else {
            return;
        };
        if let Ok(m) = PathMatcher::from_json(&list, "exempt_paths") {
            for e in m.entries() {
                check_normal(&e.path);
                if e.kind == PathKind::Prefix && e.path != "/" {
                    assert!(!e.path.ends_with('/'), "prefix {:?} ends with /", e.path);
                }
            }
        }
        return;
    }
    let (method, target) = s.split_once('\n').unwrap_or(("GET", s));
    let normal = normalize(target);
    if let Ok(n) = &normal {
        check_normal(n);
    }
    let m = matcher();
    match m.find(Some(method), target) {
        Ok(Some(i)) => {
            let n = normal
                .as_deref()
                .expect("a match on a target without a normal form");
            let e = &m.entries()[i];
            match e.kind {
                PathKind::Exact => assert_eq!(n, e.path),
                PathKind::Prefix => {
                    let rest = n.strip_prefix(e.path.as_str()).expect("prefix match");
                    assert!(
                        e.path == "/" || rest.is_empty() || rest.starts_with('/'),
                        "{n:?} matched prefix {:?} off a segment boundary",
                        e.path
                    );
                }
            }
            if let Some(ms) = &e.methods {
                assert!(
                    ms.iter().any(|x| x == method),
                    "method {method:?} not allowed"
                );
            }
        }
        Ok(None) => {}
        Err(r) => {
            assert_eq!(normal.as_ref().err(), Some(&r));
            assert!(!m.matches(Some(method), target), "a refused target matched");
        }
    }
});
