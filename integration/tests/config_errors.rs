//! Invalid plugin configurations: the plugin must refuse to start (Envoy
//! exits, or at least does not serve the listener) and the Envoy log must say
//! `tokenbind: invalid configuration` and name the offending field path.

use serde_json::{json, Value};
use tokenbind_integration::assertions::assert_allowed;
use tokenbind_integration::envoy::{Bootstrap, Envoy, EnvoyOptions, StartError};
use tokenbind_integration::pki::Pki;
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{
    plugin_config, require_wasm, Stack, AUDIENCE, CLIENT_ID, ISSUER, LISTENER,
};

const MARKER: &str = "tokenbind: invalid configuration";

/// Starts Envoy with `configure(standard config)` and returns the log,
/// asserting that the plugin was refused.
fn refused_log(configure: impl FnOnce(&mut Value)) -> String {
    match Stack::try_with_filter(configure, EnvoyOptions::default()) {
        Err(e @ StartError::Exited { .. }) => e.log().unwrap_or_default().to_string(),
        Err(e) => panic!("expected Envoy to exit on a bad plugin config, got: {e}"),
        Ok(s) => refused_running(&s.envoy),
    }
}

/// Envoy kept running: acceptable only if the listener was rejected.
fn refused_running(envoy: &Envoy) -> String {
    let log = envoy.log();
    assert!(
        envoy.try_port(LISTENER).is_none(),
        "Envoy started and serves the listener despite a bad plugin config. Log:\n{log}"
    );
    log
}

/// The log line(s) mentioning the marker, for messages.
fn marker_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(MARKER)).collect()
}

#[track_caller]
fn assert_names(log: &str, field: &str) {
    let lines = marker_lines(log);
    assert!(
        !lines.is_empty(),
        "log does not contain {MARKER:?}. Log:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l.contains(field)),
        "no {MARKER:?} line names {field:?}; lines: {lines:#?}"
    );
}

#[test]
fn unknown_provider_field_is_refused_and_named() {
    let log = refused_log(|cfg| cfg["providers"][0]["bogus_field"] = json!(true));
    assert_names(&log, "providers[0].bogus_field");
}

#[test]
fn unknown_top_level_field_is_refused_and_named() {
    let log = refused_log(|cfg| cfg["bogus_top"] = json!(1));
    assert_names(&log, "bogus_top");
}

#[test]
fn jwks_string_that_is_not_json_is_refused_and_named() {
    let log = refused_log(|cfg| cfg["providers"][0]["jwks"] = json!("{not json"));
    assert_names(&log, "providers[0].jwks");
}

#[test]
fn jwks_key_with_bad_coordinate_is_refused_and_named() {
    // keys[0] is the EC key; its x is not base64url.
    let log =
        refused_log(|cfg| cfg["providers"][0]["jwks"]["keys"][0]["x"] = json!("!!not base64!!"));
    assert_names(&log, "providers[0].jwks.keys[0].x");
}

#[test]
fn jwks_key_with_wrong_length_coordinate_is_refused_and_named() {
    // Valid base64url, but 3 bytes instead of 32.
    let log = refused_log(|cfg| cfg["providers"][0]["jwks"]["keys"][0]["x"] = json!("AQID"));
    assert_names(&log, "providers[0].jwks.keys[0].x");
}

#[test]
fn jwks_given_as_a_json_string_is_accepted() {
    // The contract allows the JWKS inline or as a JSON string of the same.
    let s = Stack::with_filter(|cfg| {
        let jwks = cfg["providers"][0]["jwks"].to_string();
        cfg["providers"][0]["jwks"] = json!(jwks);
    });
    assert!(s.envoy.try_port(LISTENER).is_some());
    assert!(
        marker_lines(&s.envoy.log()).is_empty(),
        "valid config logged {MARKER:?}"
    );
    let token = s
        .issuer
        .sign(Alg::EdDsa, &s.issuer.claims(CLIENT_ID, AUDIENCE));
    let r = s.get(&s.pki.client, "/api", Some(&token));
    assert_allowed(&r, "JWKS given as a string");
}

#[test]
fn bad_mode_is_refused_and_named() {
    let log = refused_log(|cfg| cfg["mode"] = json!("audit"));
    assert_names(&log, "mode");
}

#[test]
fn configuration_that_is_not_json_is_refused() {
    let wasm = require_wasm();
    let pki = Pki::new();
    let bootstrap = Bootstrap::new(&pki)
        .wasm_filter_raw(&wasm, "this is not json")
        .build();
    let log = match Envoy::start(&bootstrap) {
        Err(e @ StartError::Exited { .. }) => e.log().unwrap_or_default().to_string(),
        Err(e) => panic!("expected Envoy to exit, got: {e}"),
        Ok(envoy) => refused_running(&envoy),
    };
    assert!(!marker_lines(&log).is_empty(), "Log:\n{log}");
}

#[test]
fn valid_standard_configuration_starts_cleanly() {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let bootstrap = Bootstrap::new(&pki)
        .wasm_filter(&wasm, &plugin_config(&issuer))
        .build();
    let envoy = Envoy::start(&bootstrap).unwrap_or_else(|e| panic!("{e}"));
    assert!(envoy.try_port(LISTENER).is_some());
    assert!(marker_lines(&envoy.log()).is_empty(), "{}", envoy.log());
}

#[test]
fn jwks_file_is_refused_because_envoy_wasm_has_no_filesystem() {
    // Envoy 1.40's V8 runtime gives a Wasm module no preopened directories:
    // std::fs reads fail with ENOENT even for files that exist. A provider
    // that needs a file must therefore be refused at start-up, loudly.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let issuer = TokenIssuer::new(ISSUER);
    std::fs::write(&path, issuer.jwks().to_string()).unwrap();
    let log = refused_log(|cfg| {
        let p = cfg["providers"][0].as_object_mut().unwrap();
        p.remove("jwks");
        p.insert("jwks_file".into(), json!(path.to_string_lossy()));
    });
    assert_names(&log, "providers[0].jwks_file");
}

#[test]
fn jwks_string_with_a_duplicate_member_is_refused_and_named() {
    let issuer = TokenIssuer::new(ISSUER);
    let text = issuer.jwks().to_string();
    let dup = text.replacen(
        r#""kid":"es256-1""#,
        r#""kid":"es256-1","kid":"eddsa-1""#,
        1,
    );
    assert_ne!(dup, text);
    let log = refused_log(|cfg| cfg["providers"][0]["jwks"] = json!(dup));
    assert_names(&log, "providers[0].jwks: duplicate member /keys/0/kid");
}

#[test]
fn plugin_config_with_a_duplicate_member_is_refused_and_named() {
    let wasm = require_wasm();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    // "mode" twice: enforce first, monitor last. No reading of it is safe to pick.
    let text = plugin_config(&issuer).to_string();
    let dup = text.replacen(
        r#""mode":"enforce""#,
        r#""mode":"enforce","mode":"monitor""#,
        1,
    );
    assert_ne!(dup, text);
    let bootstrap = Bootstrap::new(&pki).wasm_filter_raw(&wasm, &dup).build();
    let log = match Envoy::start_with(&bootstrap, EnvoyOptions::default()) {
        Err(e @ StartError::Exited { .. }) => e.log().unwrap_or_default().to_string(),
        Err(e) => panic!("expected Envoy to exit on a bad plugin config, got: {e}"),
        Ok(envoy) => refused_running(&envoy),
    };
    assert_names(&log, "mode: duplicate member /mode");
}
