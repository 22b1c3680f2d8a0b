//! Prometheus output and the Grafana dashboard in `envoy/observability/`,
//! against a real Envoy started with the shipped `stats_tags.yaml` overlaid
//! on the test bootstrap (`--config-yaml`, exactly as the README says).
//!
//! * Per-reason counters come out of `/stats/prometheus` as one labelled
//!   series each (`tokenbind_denied{reason="spiffe_mismatch"}`,
//!   `tokenbind_monitor_would_deny{reason="expired"}`), with the values of
//!   the dotted counters in `/stats`, and no unlabelled per-reason names.
//! * Every metric the dashboard's PromQL references is in that output, and
//!   every `by (label)` it groups on is a label of those metrics, so the
//!   dashboard cannot silently rot when the filter or the tags change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use serde_json::{json, Value};
use tokenbind_integration::assertions::{assert_allowed, assert_denied};
use tokenbind_integration::envoy::{EnvoyOptions, WASM_METRIC_PREFIX};
use tokenbind_integration::tokens::Alg;
use tokenbind_integration::{workspace_root, Stack, AUDIENCE, CLIENT_ID};

fn observability_dir() -> PathBuf {
    workspace_root().join("envoy/observability")
}

fn read(name: &str) -> String {
    let path = observability_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Envoy with the standard filter config in `mode` and the shipped
/// `stats_tags.yaml` overlaid on the bootstrap.
fn start(mode: &str) -> Stack {
    let options = EnvoyOptions {
        extra_args: vec!["--config-yaml".to_string(), read("stats_tags.yaml")],
        ..EnvoyOptions::default()
    };
    Stack::try_with_filter(|cfg| cfg["mode"] = json!(mode), options).unwrap_or_else(|e| {
        panic!("Envoy failed to start with envoy/observability/stats_tags.yaml: {e}")
    })
}

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The Prometheus text exposition: samples and `# TYPE` lines.
struct Exposition {
    samples: Vec<Sample>,
    types: Vec<(String, String)>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        let mut types = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(n), Some(t)) = (parts.next(), parts.next()) {
                    types.push((n.to_string(), t.to_string()));
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(
                parse_sample(line).unwrap_or_else(|| panic!("unparsable sample line {line:?}")),
            );
        }
        Exposition { samples, types }
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the series `name{label="value"}`; panics if there is not
    /// exactly one.
    fn labelled(&self, name: &str, label: &str, value: &str) -> f64 {
        let found: Vec<&Sample> = self
            .named(name)
            .filter(|s| s.labels.get(label).map(String::as_str) == Some(value))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {name}{{{label}=\"{value}\"}}, found {found:?}"
        );
        found[0].value
    }

    /// The value of the unlabelled series `name`.
    fn unlabelled(&self, name: &str) -> f64 {
        let found: Vec<&Sample> = self.named(name).collect();
        assert!(
            found.len() == 1 && found[0].labels.is_empty(),
            "expected exactly one unlabelled {name}, found {found:?}"
        );
        found[0].value
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

/// `name{a="x",b="y"} value` or `name value` (optional timestamp ignored).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let (_, quote) = chars.next()?;
                    if quote != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => value.push(chars.next()?.1),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `/stats` lines `wasmcustom.<prefix><suffix>: value`, as suffix -> value.
fn dotted(stats: &str, prefix: &str) -> BTreeMap<String, f64> {
    let full = format!("{WASM_METRIC_PREFIX}{prefix}");
    stats
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(": ")?;
            Some((n.strip_prefix(&full)?.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// For `tokenbind_denied` / `tokenbind_monitor_would_deny`: one series per
/// reason, labelled `reason`, nothing else, values equal to the dotted
/// counters in `/stats`, and no unlabelled per-reason names.
#[track_caller]
fn assert_labelled_family(stack: &Stack, prom: &Exposition, family: &str, dotted_prefix: &str) {
    let stats = stack.envoy.stats();
    let expected = dotted(&stats, dotted_prefix);
    assert!(
        expected.len() >= 20,
        "too few {dotted_prefix}* counters in /stats: {expected:?}"
    );
    let mut got = BTreeMap::new();
    for s in prom.named(family) {
        assert_eq!(
            s.labels.keys().collect::<Vec<_>>(),
            vec!["reason"],
            "{family} must carry exactly the reason label: {s:?}"
        );
        let reason = s.labels["reason"].clone();
        assert!(
            got.insert(reason.clone(), s.value).is_none(),
            "duplicate {family}{{reason=\"{reason}\"}}"
        );
    }
    assert_eq!(
        got, expected,
        "{family}{{reason}} series differ from the /stats counters {dotted_prefix}<reason>"
    );
    let stray: Vec<&str> = prom
        .names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{family}_")))
        .collect();
    assert!(
        stray.is_empty(),
        "unlabelled per-reason names are still exported: {stray:?}"
    );
    let types: Vec<&(String, String)> = prom.types.iter().filter(|(n, _)| n == family).collect();
    assert_eq!(
        types,
        vec![&(family.to_string(), "counter".to_string())],
        "{family} must have exactly one `# TYPE {family} counter`"
    );
}

#[test]
fn denials_are_one_prometheus_series_labelled_by_reason() {
    let s = start("enforce");
    let token = s
        .issuer
        .sign(Alg::Es256, &s.issuer.claims(CLIENT_ID, AUDIENCE));
    let expired = s
        .issuer
        .sign(Alg::EdDsa, &s.issuer.claims(CLIENT_ID, AUDIENCE).expired());
    assert_allowed(&s.get(&s.pki.client, "/api", Some(&token)), "client");
    for i in 0..2 {
        assert_denied(
            &s.get(&s.pki.attacker, "/api", Some(&token)),
            "spiffe_mismatch",
            &format!("replay {i}"),
        );
    }
    assert_denied(
        &s.get(&s.pki.client, "/api", None),
        "missing_token",
        "no token",
    );
    assert_denied(
        &s.get(&s.pki.client, "/api", Some(&expired)),
        "expired",
        "expired",
    );
    assert_allowed(&s.get(&s.pki.client, "/healthz", None), "exempt");

    let text = s.envoy.prometheus();
    let prom = Exposition::parse(&text);
    assert_eq!(
        prom.labelled("tokenbind_denied", "reason", "spiffe_mismatch"),
        2.0
    );
    assert_eq!(
        prom.labelled("tokenbind_denied", "reason", "missing_token"),
        1.0
    );
    assert_eq!(prom.labelled("tokenbind_denied", "reason", "expired"), 1.0);
    assert_eq!(
        prom.labelled("tokenbind_denied", "reason", "bad_signature"),
        0.0
    );
    assert_labelled_family(&s, &prom, "tokenbind_denied", "tokenbind.denied.");
    assert_labelled_family(
        &s,
        &prom,
        "tokenbind_monitor_would_deny",
        "tokenbind.monitor.would_deny.",
    );
    assert!(
        prom.named("tokenbind_monitor_would_deny")
            .all(|x| x.value == 0.0),
        "enforce mode counted would-denies"
    );
    assert_eq!(prom.unlabelled("tokenbind_allowed"), 1.0);
    assert_eq!(prom.unlabelled("tokenbind_exempt"), 1.0);
    let hits = prom.unlabelled("tokenbind_cache_hit");
    let misses = prom.unlabelled("tokenbind_cache_miss");
    assert!(
        hits >= 1.0 && misses >= 1.0,
        "the replays of a verified token must hit the cache: hit {hits}, miss {misses}"
    );
    assert!(
        !text.contains("wasmcustom"),
        "the wasmcustom prefix leaks into /stats/prometheus"
    );
    // The tags change only the Prometheus view: /stats keeps the dotted
    // names the other tests read.
    assert_eq!(s.envoy.counter("tokenbind.denied.spiffe_mismatch"), 2);
    assert_eq!(
        s.envoy.stat("wasmcustom.tokenbind.denied.spiffe_mismatch"),
        2
    );
}

#[test]
fn monitor_would_denies_are_one_prometheus_series_labelled_by_reason() {
    let s = start("monitor");
    let token = s
        .issuer
        .sign(Alg::Es256, &s.issuer.claims(CLIENT_ID, AUDIENCE));
    let expired = s
        .issuer
        .sign(Alg::Es256, &s.issuer.claims(CLIENT_ID, AUDIENCE).expired());
    assert_allowed(&s.get(&s.pki.attacker, "/api", Some(&token)), "replay");
    assert_allowed(&s.get(&s.pki.client, "/api", None), "no token");
    for i in 0..2 {
        assert_allowed(
            &s.get(&s.pki.client, "/api", Some(&expired)),
            &format!("expired {i}"),
        );
    }

    let prom = Exposition::parse(&s.envoy.prometheus());
    let would = "tokenbind_monitor_would_deny";
    assert_eq!(prom.labelled(would, "reason", "spiffe_mismatch"), 1.0);
    assert_eq!(prom.labelled(would, "reason", "missing_token"), 1.0);
    assert_eq!(prom.labelled(would, "reason", "expired"), 2.0);
    assert_eq!(prom.labelled(would, "reason", "unknown_key"), 0.0);
    assert_labelled_family(&s, &prom, would, "tokenbind.monitor.would_deny.");
    assert_labelled_family(&s, &prom, "tokenbind_denied", "tokenbind.denied.");
    assert!(
        prom.named("tokenbind_denied").all(|x| x.value == 0.0),
        "monitor mode counted denials"
    );
}

/// Metric names and grouping labels referenced by a PromQL expression.
/// Handles what dashboards use: functions and aggregations, `by`/`without`
/// label lists, `{...}` matchers, `[...]` ranges, strings, numbers,
/// Grafana `$variables`, binary operators.
fn promql_refs(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    // Words that are never metric names; the first six take a label list.
    const KEYWORDS: [&str; 11] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != close {
            j += 1;
        }
        j + 1
    };
    let ident_end = |i: usize| -> usize {
        let mut j = i;
        while j < chars.len()
            && (chars[j].is_ascii_alphanumeric() || chars[j] == '_' || chars[j] == ':')
        {
            j += 1;
        }
        j
    };
    let next_non_space = |mut j: usize| -> Option<char> {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        chars.get(j).copied()
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i, c);
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '$' {
            i = ident_end(i + 1);
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            // A number (1, 0.5, 1e-9) or a duration (5m).
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = ident_end(i);
            let word: String = chars[i..end].iter().collect();
            let followed_by_paren = next_non_space(end) == Some('(');
            // `sum by (l) (...)`: an aggregation followed by its modifier.
            let followed_by_modifier = {
                let mut j = end;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let next: String = chars[j..ident_end(j)].iter().collect();
                next == "by" || next == "without"
            };
            if let Some(k) = KEYWORDS.iter().position(|k| *k == word) {
                if followed_by_paren && k < 6 {
                    // A label list; `by`/`without` lists are grouping labels.
                    let open = (end..chars.len()).find(|&j| chars[j] == '(').unwrap_or(end);
                    let close = skip_to(open, ')');
                    if k < 2 {
                        let list: String =
                            chars[open + 1..close.saturating_sub(1)].iter().collect();
                        for l in list.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                            labels.insert(l.to_string());
                        }
                    }
                    i = close;
                    continue;
                }
            } else if !followed_by_paren && !followed_by_modifier {
                metrics.insert(word);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    (metrics, labels)
}

#[test]
fn promql_refs_finds_metrics_and_grouping_labels() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let (m, l) = promql_refs(
        r#"sum by (reason, pod) (rate(tokenbind_denied{reason!="x",ns=~"$ns"}[5m])) / on (pod) group_left clamp_min(sum without (le) (increase(a_b:c[$__rate_interval] offset 1h)), 1e-9) * 100 > bool 0.5"#,
    );
    assert_eq!(m, set(&["a_b:c", "tokenbind_denied"]));
    assert_eq!(l, set(&["le", "pod", "reason"]));
    let (m, l) = promql_refs("sum(rate(x[5m])) / (sum(rate(x[5m])) + sum(rate(y[5m])))");
    assert_eq!(m, set(&["x", "y"]));
    assert!(l.is_empty());
}

/// Labels Prometheus itself attaches to scraped series (target labels from
/// the scrape config and Kubernetes service discovery). A dashboard may group
/// by them although Envoy's output does not carry them.
const SCRAPE_LABELS: [&str; 5] = ["instance", "job", "namespace", "pod", "cluster"];

#[test]
fn grafana_dashboard_queries_only_what_envoy_exports() {
    let dashboard: Value = serde_json::from_str(&read("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("grafana-dashboard.json is not JSON: {e}"));
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!(
        (36..=41).contains(&schema),
        "schemaVersion {schema}, expected ~39"
    );
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));

    // A Prometheus data source variable, used by every panel and target.
    let vars = dashboard["templating"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("no templating.list"));
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .unwrap_or_else(|| panic!("no Prometheus data source variable in {vars:?}"));
    let ds_uid = format!("${{{}}}", ds_var["name"].as_str().unwrap_or_default());

    let panels = dashboard["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("no panels"));
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64()),
            "duplicate panel id in {title}"
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], ds_uid.as_str(), "{title}");
        for g in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][g].is_u64(), "{title}: gridPos.{g}");
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds_uid.as_str(), "{title}");
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: target without expr"));
            exprs.push((title.to_string(), expr.to_string()));
        }
    }

    // The panels the README promises.
    let has = |needle: &str| exprs.iter().any(|(_, e)| e.contains(needle));
    for needle in [
        "rate(tokenbind_allowed[",
        "sum by (reason) (rate(tokenbind_denied[5m]))",
        "sum by (reason) (rate(tokenbind_monitor_would_deny[5m]))",
        "tokenbind_cache_hit",
        "tokenbind_cache_miss",
        "rate(tokenbind_exempt[",
    ] {
        assert!(has(needle), "no panel queries {needle:?}: {exprs:#?}");
    }

    // Every metric and grouping label exists in a real Envoy's output.
    let s = start("enforce");
    let prom = Exposition::parse(&s.envoy.prometheus());
    let names = prom.names();
    for (title, expr) in &exprs {
        let (metrics, labels) = promql_refs(expr);
        assert!(!metrics.is_empty(), "{title}: no metric in {expr:?}");
        for m in &metrics {
            assert!(
                names.contains(m.as_str()),
                "panel {title:?} queries {m}, which Envoy's /stats/prometheus does not export \
                 (tokenbind names there: {:?})",
                names
                    .iter()
                    .filter(|n| n.contains("tokenbind"))
                    .collect::<Vec<_>>()
            );
        }
        for l in &labels {
            assert!(
                SCRAPE_LABELS.contains(&l.as_str())
                    || metrics
                        .iter()
                        .any(|m| prom.named(m).any(|x| x.labels.contains_key(l))),
                "panel {title:?} groups by {l:?}, which none of {metrics:?} carries"
            );
        }
    }
}
