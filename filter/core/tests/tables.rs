//! Tables that cannot drift: every reason has a row in the README's decision table, a reply, a
//! metric (both modes) a stats tag can extract, and a reply class; the counter indices are
//! dense. The files are compiled in (`include_str!`), so this runs in V8 as well.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use tokenbind_core::metrics::{Counter, COUNT};
use tokenbind_core::reason::Class;
use tokenbind_core::response::{self, Challenge};
use tokenbind_core::Reason;

const README: &str = include_str!("../../../README.md");
/// The core's decision tests: every reason must be asserted by name in one of them.
const DECISION_TESTS: [&str; 6] = [
    include_str!("decisions.rs"),
    include_str!("dpop.rs"),
    include_str!("svid.rs"),
    include_str!("key_wait.rs"),
    include_str!("claim_types.rs"),
    include_str!("paths.rs"),
];
const STATS_TAGS: &str = include_str!("../../../envoy/observability/stats_tags.yaml");

/// The `reason` names in the last column of the README's decision table.
fn decision_table_reasons() -> BTreeSet<String> {
    let start = README
        .find("## Decision table")
        .expect("README has a decision table");
    let table = &README[start..];
    let end = table.find("\n### ").unwrap_or(table.len());
    let mut names = BTreeSet::new();
    for row in table[..end].lines().filter(|l| l.starts_with('|')) {
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap_or("");
        // The first `code` span of the cell is the outcome: a reason, or `tokenbind.*`.
        if let Some(code) = last.split('`').nth(1) {
            if !code.starts_with("tokenbind.") {
                names.insert(code.to_owned());
            }
        }
    }
    names
}

#[test]
fn every_reason_has_a_decision_table_row_and_every_row_is_a_reason() {
    let table = decision_table_reasons();
    let reasons: BTreeSet<String> = Reason::ALL.iter().map(|r| r.as_str().to_owned()).collect();
    let missing: Vec<_> = reasons.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "reasons without a README decision-table row: {missing:?}"
    );
    let unknown: Vec<_> = table.difference(&reasons).collect();
    assert!(
        unknown.is_empty(),
        "README decision-table rows that are not reasons: {unknown:?}"
    );
}

#[test]
fn every_reason_has_a_decision_test_case() {
    let missing: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| {
            let name = format!("Reason::{r:?}");
            !DECISION_TESTS.iter().any(|t| {
                t.match_indices(&name).any(|(i, _)| {
                    // The whole variant name, not a prefix of a longer one.
                    !t[i + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
                })
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "reasons no decision test asserts: {missing:?}"
    );
}

#[test]
fn every_reason_has_a_reply_that_fits_its_class() {
    let c = Challenge {
        realm: "tokenbind",
        dpop_scheme: false,
        dpop_algs: "ES256",
    };
    for r in Reason::ALL {
        let reply = response::unauthorized(r, &c, None);
        assert!(
            reply
                .body
                .contains(&format!("\"reason\":\"{}\"", r.as_str())),
            "{r}"
        );
        let www = reply.headers.iter().find(|(k, _)| *k == "www-authenticate");
        match r.class() {
            Class::ServerSide => {
                assert_eq!(reply.status, 503, "{r}");
                assert!(www.is_none(), "{r}: a 503 judges no credential");
            }
            Class::Missing => {
                assert_eq!(reply.status, 401);
                assert_eq!(www.unwrap().1, "Bearer realm=\"tokenbind\"");
            }
            Class::Token | Class::Downgrade | Class::DpopProof | Class::NonceChallenge => {
                assert_eq!(reply.status, 401, "{r}");
                let www = &www.unwrap().1;
                assert!(www.contains(response::error_code(r)), "{r}: {www}");
                assert!(www.contains(r.description()), "{r}: {www}");
            }
        }
    }
}

#[test]
fn every_reason_has_a_counter_in_both_modes_that_the_stats_tags_extract() {
    let names: BTreeSet<String> = Counter::all().map(Counter::name).collect();
    assert_eq!(names.len(), COUNT, "counter names are unique");
    for (i, c) in Counter::all().enumerate() {
        assert_eq!(c.index(), i, "{c:?}: indices are dense and in order");
    }
    // The tag regexes capture `[a-z0-9_]+` after these prefixes (envoy/observability).
    assert!(STATS_TAGS.contains(r"^wasmcustom\.tokenbind\.denied(\.([a-z0-9_]+))$"));
    assert!(STATS_TAGS.contains(r"^wasmcustom\.tokenbind\.monitor\.would_deny(\.([a-z0-9_]+))$"));
    for r in Reason::ALL {
        assert!(names.contains(&format!("tokenbind.denied.{r}")));
        assert!(names.contains(&format!("tokenbind.monitor.would_deny.{r}")));
        assert!(
            r.as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{r}: the stats tag regex would not extract it"
        );
    }
}
