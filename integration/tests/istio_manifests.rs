//! The Istio manifests in `envoy/istio/` are right, not just parseable:
//!
//! 1. **Istio's CRD schemas.** Every manifest passes `integration/testdata/istio/validate.mjs`:
//!    the OpenAPI schemas of Istio's CRDs (WasmPlugin extensions.istio.io/v1alpha1, EnvoyFilter
//!    networking.istio.io/v1alpha3) as published in `@kubernetes-models/istio` (version and
//!    source in `integration/testdata/istio/README.md`), plus unknown-field rejection as
//!    `kubectl apply` does it, the CRDs' CEL rules and istiod's EnvoyFilter webhook checks. Broken
//!    manifests (a fixed one in testdata and mutations of the real ones) are rejected.
//! 2. **Shape.** The fields a mesh operator relies on: inbound only, AUTHN phase, fail closed,
//!    the OCI URL and digest, monitor first with an enforce variant that changes only the mode;
//!    the EnvoyFilter's ECDS wiring and the same plugin configuration as the WasmPlugin.
//! 3. **Envoy accepts what they carry.** The Envoy config each manifest turns into is assembled
//!    into a bootstrap (mTLS listener, HTTP connection manager, that filter, router) and checked
//!    with the real Envoy's `--mode validate`, which in Envoy 1.40 also loads the Wasm module and
//!    runs the plugin's configure step (so a bad `pluginConfig` fails validation). For a
//!    WasmPlugin that config is what istiod generates (Wasm filter named `<ns>.<name>`,
//!    `root_id` = pluginName, V8, `configuration` = the pluginConfig as a JSON StringValue,
//!    `fail_open` from failStrategy) with the code source that istio-agent substitutes after
//!    pulling the image (a local file: the built `tokenbind.wasm`).
//! 4. **The filter runs with it.** Envoy is started with that config (the provider's issuer,
//!    audience and JWKS swapped for the test issuer's, nothing else changed) and real requests
//!    go through: the bound caller passes, a caller presenting someone else's token is
//!    would-denied (monitor) or refused (enforce). The EnvoyFilter's extension config is served
//!    to Envoy by file-based ECDS, and the documented one-line monitor -> enforce change is
//!    applied to the running Envoy without a restart.
//!
//! Needs Node.js and the validator's packages (scripts/setup.sh installs them through
//! scripts/setup-tools.sh), the Envoy binary and the built filter; missing ones fail the tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::{json, Value};
use tokenbind_integration::client::{Client, Response};
use tokenbind_integration::envoy::{Bootstrap, Envoy};
use tokenbind_integration::pki::{Leaf, Pki};
use tokenbind_integration::tokens::{Alg, TokenIssuer};
use tokenbind_integration::{
    require_wasm, workspace_root, AUDIENCE, CLIENT_ID, ISSUER, LISTENER, UPSTREAM_BODY,
};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const WASMPLUGIN: &str = "extensions.istio.io/v1alpha1/WasmPlugin";
const ENVOYFILTER: &str = "networking.istio.io/v1alpha3/EnvoyFilter";
/// The `@kubernetes-models/istio` version the README and package-lock.json pin.
const SCHEMA_PACKAGE_VERSION: &str = "3.0.1";

// ---------------------------------------------------------------------------------------------
// Loading manifests
// ---------------------------------------------------------------------------------------------

fn istio_dir() -> PathBuf {
    workspace_root().join("envoy/istio")
}

fn schema_dir() -> PathBuf {
    workspace_root().join("integration/testdata/istio")
}

/// Every YAML document in `path`, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The single document of `envoy/istio/<name>`.
fn manifest(name: &str) -> Value {
    let mut docs = yaml_docs(&istio_dir().join(name));
    assert_eq!(docs.len(), 1, "envoy/istio/{name}: expected one document");
    docs.remove(0)
}

/// `(file name, document)` for every document of every `envoy/istio/*.yaml`.
fn all_manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(istio_dir())
        .unwrap_or_else(|e| panic!("cannot list envoy/istio: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for (i, doc) in yaml_docs(&f).into_iter().enumerate() {
            out.push((format!("{name}#{i}"), doc));
        }
    }
    out
}

fn kind_of(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["apiVersion"].as_str().unwrap_or_default(),
        doc["kind"].as_str().unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------------------------
// The CRD schema validator (node integration/testdata/istio/validate.mjs)
// ---------------------------------------------------------------------------------------------

/// One resource's result: `(check, path, message)` per error.
#[derive(Debug)]
struct Verdict {
    name: String,
    errors: Vec<(String, String, String)>,
}

impl Verdict {
    fn has(&self, check: &str, path: &str) -> bool {
        self.errors.iter().any(|(c, p, _)| c == check && p == path)
    }
}

fn require_validator() {
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "Node.js (`node`) not found: the Istio schema check runs \
             integration/testdata/istio/validate.mjs. Run scripts/setup.sh \
             (scripts/setup-tools.sh installs Node.js and the validator)"
        ),
    }
    let pkg = schema_dir().join("node_modules/@kubernetes-models/istio/package.json");
    let ts = schema_dir().join("node_modules/typescript/package.json");
    if !pkg.is_file() || !ts.is_file() {
        panic!(
            "the Istio CRD schema packages are not installed in {}: run scripts/setup.sh \
             (scripts/setup-tools.sh runs npm ci there)",
            schema_dir().display()
        );
    }
    let meta: Value = serde_json::from_str(&fs::read_to_string(&pkg).unwrap()).unwrap();
    assert_eq!(
        meta["version"], SCHEMA_PACKAGE_VERSION,
        "installed @kubernetes-models/istio is not the pinned version: run scripts/setup.sh"
    );
}

/// Runs the validator on `items`; panics if it cannot run (exit code other than 0/1).
fn validate(items: &[(String, Value)]) -> Vec<Verdict> {
    require_validator();
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.json");
    let payload: Vec<Value> = items
        .iter()
        .map(|(name, doc)| json!({"name": name, "doc": doc}))
        .collect();
    fs::write(&input, serde_json::to_vec(&payload).unwrap()).unwrap();
    let out = Command::new("node")
        .arg(schema_dir().join("validate.mjs"))
        .arg(&input)
        .stdin(Stdio::null())
        .output()
        .expect("running node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "validate.mjs failed to run ({:?}): {stderr}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("validate.mjs printed no JSON report ({e}); stderr: {stderr}"));
    assert_eq!(report.len(), items.len(), "one verdict per resource");
    let verdicts: Vec<Verdict> = report
        .iter()
        .map(|r| Verdict {
            name: r["name"].as_str().unwrap_or_default().to_string(),
            errors: r["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                    (s("check"), s("path"), s("message"))
                })
                .collect(),
        })
        .collect();
    let all_valid = verdicts.iter().all(|v| v.errors.is_empty());
    assert_eq!(
        code == Some(0),
        all_valid,
        "validate.mjs exit code {code:?} disagrees with its report: {verdicts:#?}"
    );
    verdicts
}

#[test]
fn every_manifest_passes_istio_crd_schemas() {
    let items = all_manifests();
    let kinds: Vec<(String, String)> = items.iter().map(|(n, d)| (n.clone(), kind_of(d))).collect();
    assert_eq!(
        kinds,
        vec![
            ("envoyfilter.yaml#0".to_string(), ENVOYFILTER.to_string()),
            (
                "path-normalization.yaml#0".to_string(),
                ENVOYFILTER.to_string()
            ),
            (
                "wasmplugin-enforce.yaml#0".to_string(),
                WASMPLUGIN.to_string()
            ),
            ("wasmplugin.yaml#0".to_string(), WASMPLUGIN.to_string()),
        ],
        "envoy/istio holds these manifests"
    );
    for v in validate(&items) {
        assert!(
            v.errors.is_empty(),
            "{} violates Istio's CRD schema: {:#?}",
            v.name,
            v.errors
        );
    }
}

/// A fixed broken manifest (testdata) and mutations of the real ones: each must be rejected,
/// for the reason we broke it.
#[test]
fn validator_rejects_broken_manifests() {
    // integration/testdata/istio/broken-wasmplugin.yaml names its expected errors in
    // `# expect: <check> <path>` comments.
    let broken = schema_dir().join("broken-wasmplugin.yaml");
    let text = fs::read_to_string(&broken).expect("broken-wasmplugin.yaml");
    let expected: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# expect: "))
        .map(|e| {
            let (c, p) = e.split_once(' ').expect("# expect: <check> <path>");
            (c.to_string(), p.trim().to_string())
        })
        .collect();
    assert!(
        expected.len() >= 4,
        "broken-wasmplugin.yaml lists its expected errors"
    );

    let wp = manifest("wasmplugin.yaml");
    let ef = manifest("envoyfilter.yaml");
    let mut items = vec![(
        "broken-wasmplugin.yaml".to_string(),
        yaml_docs(&broken).remove(0),
    )];
    let mut cases: Vec<(&str, &str)> = Vec::new();
    let mut mutate = |name: &'static str,
                      base: &Value,
                      check: &'static str,
                      path: &'static str,
                      f: &dyn Fn(&mut Value)| {
        let mut doc = base.clone();
        f(&mut doc);
        items.push((name.to_string(), doc));
        cases.push((check, path));
    };
    mutate("phase enum", &wp, "schema", "/spec/phase", &|d| {
        d["spec"]["phase"] = json!("AUTHENTICATION")
    });
    mutate(
        "failStrategy enum",
        &wp,
        "schema",
        "/spec/failStrategy",
        &|d| d["spec"]["failStrategy"] = json!("FAIL_CLOSED"),
    );
    mutate("digest with prefix", &wp, "schema", "/spec/sha256", &|d| {
        let hex = d["spec"]["sha256"].as_str().unwrap().to_string();
        d["spec"]["sha256"] = json!(format!("sha256:{hex}"));
    });
    mutate(
        "match mode enum",
        &wp,
        "schema",
        "/spec/match/0/mode",
        &|d| d["spec"]["match"][0]["mode"] = json!("INBOUND"),
    );
    mutate(
        "unknown spec field",
        &wp,
        "fields",
        "/spec/pluginConfiguration",
        &|d| {
            let cfg = d["spec"]["pluginConfig"].clone();
            d["spec"]["pluginConfiguration"] = cfg;
        },
    );
    mutate(
        "unknown selector field",
        &wp,
        "fields",
        "/spec/selector/labels",
        &|d| {
            d["spec"]["selector"]["labels"] = json!({"app": "orders"});
        },
    );
    mutate("url scheme (CEL)", &wp, "cel", "/spec/url", &|d| {
        d["spec"]["url"] = json!("ftp://registry.example.com/tokenbind:1")
    });
    mutate("selector and targetRefs (CEL)", &wp, "cel", "/spec", &|d| {
        d["spec"]["targetRefs"] = json!([{"kind": "Service", "name": "orders"}]);
    });
    mutate(
        "applyTo enum",
        &ef,
        "schema",
        "/spec/configPatches/0/applyTo",
        &|d| {
            d["spec"]["configPatches"][0]["applyTo"] = json!("EXTENSION_CONFIGURATION");
        },
    );
    mutate(
        "operation enum",
        &ef,
        "schema",
        "/spec/configPatches/1/patch/operation",
        &|d| {
            d["spec"]["configPatches"][1]["patch"]["operation"] = json!("INSERT_BEFORE_ROUTER");
        },
    );
    mutate(
        "context enum",
        &ef,
        "schema",
        "/spec/configPatches/1/match/context",
        &|d| {
            d["spec"]["configPatches"][1]["match"]["context"] = json!("INBOUND");
        },
    );
    mutate(
        "subFilter spelled wrong",
        &ef,
        "fields",
        "/spec/configPatches/1/match/listener/filterChain/filter/sub_filter",
        &|d| {
            let f =
                &mut d["spec"]["configPatches"][1]["match"]["listener"]["filterChain"]["filter"];
            let sub = f["subFilter"].take();
            f.as_object_mut().unwrap().remove("subFilter");
            f["sub_filter"] = sub;
        },
    );
    mutate(
        "subFilter without HCM (webhook)",
        &ef,
        "webhook",
        "/spec/configPatches/1",
        &|d| {
            d["spec"]["configPatches"][1]["match"]["listener"]["filterChain"]["filter"]["name"] =
                json!("envoy.filters.network.tcp_proxy");
        },
    );

    let verdicts = validate(&items);
    let broken_verdict = &verdicts[0];
    for (check, path) in &expected {
        assert!(
            broken_verdict.has(check, path),
            "broken-wasmplugin.yaml: expected a {check} error at {path}; got {:#?}",
            broken_verdict.errors
        );
    }
    for (v, (check, path)) in verdicts[1..].iter().zip(&cases) {
        assert!(
            v.has(check, path),
            "mutation {:?}: expected a {check} error at {path}; got {:#?}",
            v.name,
            v.errors
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shape
// ---------------------------------------------------------------------------------------------

#[test]
fn wasmplugin_is_inbound_authn_fail_closed_pinned_and_monitor_first() {
    let wp = manifest("wasmplugin.yaml");
    let spec = &wp["spec"];
    assert_eq!(kind_of(&wp), WASMPLUGIN);
    assert_eq!(spec["phase"], "AUTHN");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert_eq!(
        spec["match"],
        json!([{"mode": "SERVER"}]),
        "inbound traffic only"
    );
    let labels = spec["selector"]["matchLabels"]
        .as_object()
        .expect("selector.matchLabels");
    assert!(!labels.is_empty(), "the selector names the workload");
    assert_eq!(spec["pluginName"], "tokenbind");
    assert!(
        spec["imagePullPolicy"].is_string(),
        "imagePullPolicy is set"
    );
    let url = spec["url"].as_str().expect("url");
    let tag = format!("/tokenbind:{}", tokenbind_integration::workspace_version());
    assert!(
        url.starts_with("oci://") && url.ends_with(&tag),
        "url {url:?} is oci://<registry>{tag} (the workspace version; scripts/oci.sh --pin sets it)"
    );
    let sha = spec["sha256"].as_str().expect("sha256");
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "sha256 {sha:?} is a bare lowercase hex digest (the image manifest digest from scripts/oci.sh)"
    );
    assert_eq!(
        spec["pluginConfig"]["mode"], "monitor",
        "roll out in monitor mode first"
    );
}

#[test]
fn enforce_variant_differs_only_in_mode() {
    let monitor = manifest("wasmplugin.yaml");
    let enforce = manifest("wasmplugin-enforce.yaml");
    assert_eq!(enforce["spec"]["pluginConfig"]["mode"], "enforce");
    let mut switched = monitor.clone();
    switched["spec"]["pluginConfig"]["mode"] = json!("enforce");
    assert_eq!(
        switched, enforce,
        "wasmplugin-enforce.yaml must be wasmplugin.yaml with pluginConfig.mode = enforce \
         (same name, so applying it replaces the monitor rollout)"
    );
}

/// The EnvoyFilter's two patches: `(EXTENSION_CONFIG value, HTTP_FILTER patch)`.
fn envoyfilter_parts(ef: &Value) -> (Value, Value) {
    let patches = ef["spec"]["configPatches"]
        .as_array()
        .expect("configPatches");
    assert_eq!(
        patches.len(),
        2,
        "an EXTENSION_CONFIG and an HTTP_FILTER patch"
    );
    let ext = patches
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .expect("EXTENSION_CONFIG patch");
    let http = patches
        .iter()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .expect("HTTP_FILTER patch");
    (ext["patch"]["value"].clone(), http.clone())
}

/// The JSON configuration string inside a Wasm filter config, parsed.
fn wasm_configuration(wasm_typed_config: &Value) -> Value {
    let cfg = &wasm_typed_config["config"]["configuration"];
    assert_eq!(cfg["@type"], STRING_VALUE_TYPE);
    let text = cfg["value"].as_str().expect("configuration.value");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("configuration is not JSON: {e}\n{text}"))
}

#[test]
fn envoyfilter_delivers_the_same_filter_through_ecds() {
    let ef = manifest("envoyfilter.yaml");
    let wp = manifest("wasmplugin.yaml");
    assert_eq!(kind_of(&ef), ENVOYFILTER);
    assert_eq!(
        ef["spec"]["workloadSelector"]["labels"], wp["spec"]["selector"]["matchLabels"],
        "same workloads as the WasmPlugin"
    );
    let (ext, http) = envoyfilter_parts(&ef);
    let ext_patch = &ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .unwrap()["patch"];
    assert_eq!(ext_patch["operation"], "ADD");

    // HTTP_FILTER: inbound, before the router, configured by name over ADS.
    assert_eq!(http["match"]["context"], "SIDECAR_INBOUND");
    let filter = &http["match"]["listener"]["filterChain"]["filter"];
    assert_eq!(
        filter["name"],
        "envoy.filters.network.http_connection_manager"
    );
    assert_eq!(filter["subFilter"]["name"], "envoy.filters.http.router");
    assert_eq!(http["patch"]["operation"], "INSERT_BEFORE");
    let value = &http["patch"]["value"];
    let name = ext["name"].as_str().expect("extension config name");
    assert_eq!(
        value["name"], name,
        "the HTTP filter names the extension config"
    );
    assert!(
        value.get("typed_config").is_none(),
        "configured only through ECDS"
    );
    let discovery = &value["config_discovery"];
    assert_eq!(
        discovery["config_source"]["ads"],
        json!({}),
        "delivered by istiod over ADS"
    );
    assert_eq!(discovery["type_urls"], json!([WASM_TYPE]));

    // EXTENSION_CONFIG: the Wasm filter, same module and configuration as the WasmPlugin.
    let tc = &ext["typed_config"];
    assert_eq!(tc["@type"], WASM_TYPE);
    assert_eq!(tc["config"]["fail_open"], false, "fail closed");
    assert_eq!(tc["config"]["root_id"], wp["spec"]["pluginName"]);
    let vm = &tc["config"]["vm_config"];
    assert_eq!(vm["runtime"], "envoy.wasm.runtime.v8");
    let remote = &vm["code"]["remote"];
    assert_eq!(remote["http_uri"]["uri"], wp["spec"]["url"], "same image");
    assert_eq!(remote["sha256"], wp["spec"]["sha256"], "same digest");
    assert_eq!(
        wasm_configuration(tc),
        wp["spec"]["pluginConfig"],
        "the EnvoyFilter's configuration string is the WasmPlugin's pluginConfig"
    );

    // The documented switch to enforce is exactly one line.
    let text = fs::read_to_string(istio_dir().join("envoyfilter.yaml")).unwrap();
    let switched = switch_to_enforce(&text);
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&switched)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let mut expected = ef.clone();
    let (ext, _) = envoyfilter_parts(&docs[0]);
    assert_eq!(wasm_configuration(&ext["typed_config"])["mode"], "enforce");
    // Nothing but the mode changed.
    let patched = &mut expected["spec"]["configPatches"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .unwrap()["patch"]["value"]["typed_config"]["config"]["configuration"]["value"];
    let mut config = wasm_configuration(&ext["typed_config"]);
    config["mode"] = json!("monitor");
    assert_eq!(
        serde_json::from_str::<Value>(patched.as_str().unwrap()).unwrap(),
        config
    );
    *patched = ext["typed_config"]["config"]["configuration"]["value"].clone();
    assert_eq!(docs[0], expected, "the one-line edit changes only the mode");
}

/// envoyfilter.yaml with the documented one-line edit for enforce mode: the one non-comment
/// line holding [`MONITOR_LINE`] gets [`ENFORCE_LINE`] instead.
fn switch_to_enforce(text: &str) -> String {
    let hits = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(MONITOR_LINE))
        .count();
    assert_eq!(
        hits, 1,
        "envoyfilter.yaml has exactly one {MONITOR_LINE:?} line (the documented switch)"
    );
    let mut out: String = text
        .lines()
        .map(|l| {
            if !l.trim_start().starts_with('#') && l.contains(MONITOR_LINE) {
                l.replace(MONITOR_LINE, ENFORCE_LINE)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// The line of envoyfilter.yaml that the README says to change for enforce mode.
const MONITOR_LINE: &str = r#""mode": "monitor","#;
const ENFORCE_LINE: &str = r#""mode": "enforce","#;

// ---------------------------------------------------------------------------------------------
// What the manifests become in Envoy
// ---------------------------------------------------------------------------------------------

/// The HTTP filter istiod generates for a WasmPlugin (pilot/pkg/model/extensions.go:
/// `<ns>.<name>`, root_id = pluginName, V8, pluginConfig as a JSON StringValue, image pull
/// policy and resource version as VM environment variables, fail_open only for FAIL_OPEN),
/// with `code` as istio-agent rewrites it after pulling the image: a local file.
fn wasmplugin_filter(wp: &Value, plugin_config: &Value, wasm: &Path) -> Value {
    let spec = &wp["spec"];
    let name = format!(
        "{}.{}",
        wp["metadata"]["namespace"].as_str().unwrap_or("default"),
        wp["metadata"]["name"].as_str().expect("metadata.name")
    );
    let mut env = json!({"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"});
    if let Some(policy) = spec["imagePullPolicy"].as_str() {
        env["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = json!(policy);
    }
    json!({
        "name": name,
        "typed_config": {
            "@type": WASM_TYPE,
            "config": {
                "name": name,
                "root_id": spec["pluginName"].as_str().unwrap_or_default(),
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.to_string_lossy()}},
                    "environment_variables": {"key_values": env}
                },
                "configuration": {"@type": STRING_VALUE_TYPE, "value": plugin_config.to_string()},
                "fail_open": spec["failStrategy"] == "FAIL_OPEN"
            }
        }
    })
}

/// The EXTENSION_CONFIG value with its remote code source replaced by `wasm`, as istio-agent
/// does before passing the extension config on to Envoy.
fn agent_rewritten(ext: &Value, wasm: &Path) -> Value {
    let mut ext = ext.clone();
    let code = &mut ext["typed_config"]["config"]["vm_config"]["code"];
    assert!(
        code.get("remote").is_some(),
        "the manifest pulls the module remotely"
    );
    *code = json!({"local": {"filename": wasm.to_string_lossy()}});
    ext
}

/// The plugin configuration with the first provider's issuer, audience and JWKS replaced by the
/// test issuer's ES256 key: the only change needed to verify real tokens.
fn with_test_issuer(config: &Value, issuer: &TokenIssuer) -> Value {
    let mut c = config.clone();
    let p = &mut c["providers"][0];
    assert!(p.is_object(), "the configuration has a provider");
    p["issuer"] = json!(issuer.issuer());
    p["audiences"] = json!([AUDIENCE]);
    p["jwks"] = json!({"keys": [issuer.jwk(Alg::Es256)]});
    c
}

/// The HTTP connection manager's filter list in a bootstrap.
fn http_filters(bootstrap: &mut Value) -> &mut Vec<Value> {
    fn find(v: &mut Value) -> Option<&mut Value> {
        if v.get("@type").and_then(Value::as_str) == Some(HCM_TYPE) {
            return v.get_mut("http_filters");
        }
        match v {
            Value::Object(m) => m.values_mut().find_map(find),
            Value::Array(a) => a.iter_mut().find_map(find),
            _ => None,
        }
    }
    find(bootstrap)
        .and_then(Value::as_array_mut)
        .expect("the bootstrap has an HTTP connection manager")
}

/// The harness's standard bootstrap (mTLS listener `main`, HTTP connection manager, router,
/// direct 200 "upstream ok") with `filter` before the router.
fn bootstrap_with(pki: &Pki, filter: Value) -> Value {
    let mut b = Bootstrap::new(pki).build();
    let filters = http_filters(&mut b);
    let router = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.router")
        .expect("router");
    filters.insert(router, filter);
    if b.get("node").is_none() {
        b["node"] = json!({"id": "tokenbind-test", "cluster": "tokenbind-test"});
    }
    b
}

#[track_caller]
fn assert_validates(config: &Value, what: &str, configured_mode: Option<&str>) {
    let (ok, log) = tokenbind_integration::envoy::validate(config, None);
    assert!(ok, "{what}: envoy --mode validate failed:\n{log}");
    assert!(
        log.contains(" OK"),
        "{what}: no OK from envoy --mode validate:\n{log}"
    );
    if let Some(mode) = configured_mode {
        let marker = format!("tokenbind: configured: mode={mode}");
        assert!(
            log.contains(&marker),
            "{what}: the plugin did not configure itself ({marker:?} missing):\n{log}"
        );
    }
}

/// Istio rewrites HTTP probes to istio-agent's port, so kubelet never goes through the inbound
/// listener: the manifests exempt nothing (README, "Path exemptions").
#[test]
fn istio_manifests_exempt_no_paths() {
    let ef = manifest("envoyfilter.yaml");
    let (ext, _) = envoyfilter_parts(&ef);
    let configs = [
        (
            "wasmplugin.yaml",
            manifest("wasmplugin.yaml")["spec"]["pluginConfig"].clone(),
        ),
        (
            "wasmplugin-enforce.yaml",
            manifest("wasmplugin-enforce.yaml")["spec"]["pluginConfig"].clone(),
        ),
        ("envoyfilter.yaml", wasm_configuration(&ext["typed_config"])),
    ];
    for (name, config) in configs {
        assert!(config.is_object(), "{name}: {config}");
        assert!(config.get("exempt_paths").is_none(), "{name}: {config}");
    }
}

/// `path-normalization.yaml` merges the three recommended settings into the inbound HTTP
/// connection manager, and Envoy accepts the result.
#[test]
fn path_normalization_patch_sets_the_recommended_settings() {
    let ef = manifest("path-normalization.yaml");
    let wp = manifest("wasmplugin.yaml");
    assert_eq!(kind_of(&ef), ENVOYFILTER);
    assert_eq!(
        ef["spec"]["workloadSelector"]["labels"], wp["spec"]["selector"]["matchLabels"],
        "same workloads as the WasmPlugin"
    );
    let patches = ef["spec"]["configPatches"]
        .as_array()
        .expect("configPatches");
    assert_eq!(patches.len(), 1);
    let p = &patches[0];
    assert_eq!(p["applyTo"], "NETWORK_FILTER");
    assert_eq!(p["match"]["context"], "SIDECAR_INBOUND");
    assert_eq!(
        p["match"]["listener"]["filterChain"]["filter"]["name"],
        "envoy.filters.network.http_connection_manager"
    );
    assert_eq!(p["patch"]["operation"], "MERGE");
    let tc = &p["patch"]["value"]["typed_config"];
    assert_eq!(tc["@type"], HCM_TYPE);
    let want = tokenbind_integration::envoy::path_normalization();
    let mut settings = tc.as_object().unwrap().clone();
    settings.remove("@type");
    assert_eq!(Value::Object(settings.clone()), want);

    // Merged into an HCM that has none of them, Envoy validates it.
    let pki = Pki::new();
    let mut b = Bootstrap::new(&pki).without_path_normalization().build();
    let hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]
        .as_object_mut()
        .unwrap();
    assert!(hcm.get("normalize_path").is_none());
    hcm.extend(settings);
    assert_validates(&b, "path-normalization.yaml merged into the HCM", None);
}

#[test]
fn wasmplugin_filter_config_passes_envoy_validate() {
    let wasm = require_wasm();
    let pki = Pki::new();
    for (file, mode) in [
        ("wasmplugin.yaml", "monitor"),
        ("wasmplugin-enforce.yaml", "enforce"),
    ] {
        let wp = manifest(file);
        // The pluginConfig exactly as shipped (example issuer and key).
        let filter = wasmplugin_filter(&wp, &wp["spec"]["pluginConfig"], &wasm);
        assert_validates(&bootstrap_with(&pki, filter), file, Some(mode));
    }
}

#[test]
fn envoyfilter_patches_pass_envoy_validate() {
    let wasm = require_wasm();
    let pki = Pki::new();
    let (ext, http) = envoyfilter_parts(&manifest("envoyfilter.yaml"));

    // 1. The EXTENSION_CONFIG value verbatim, remote OCI source included, as an inline filter.
    //    (Validation does not fetch remote code, so this checks the proto shape.)
    assert_validates(
        &bootstrap_with(&pki, ext.clone()),
        "EXTENSION_CONFIG value (verbatim)",
        None,
    );

    // 2. As Envoy receives it from istio-agent (local module): the plugin loads and configures.
    let local = agent_rewritten(&ext, &wasm);
    assert_validates(
        &bootstrap_with(&pki, local),
        "EXTENSION_CONFIG value (module pulled)",
        Some("monitor"),
    );

    // 3. The HTTP_FILTER value verbatim except the config source: ADS has no server here, so a
    //    file stands in (validation does not fetch ECDS; this checks the filter's shape).
    let dir = tempfile::tempdir().unwrap();
    let ecds = dir.path().join("ecds.json");
    write_ecds(&ecds, &agent_rewritten(&ext, &wasm), "1");
    let mut value = http["patch"]["value"].clone();
    value["config_discovery"]["config_source"] = ecds_file_source(&ecds);
    assert_validates(&bootstrap_with(&pki, value), "HTTP_FILTER value", None);
}

// ---------------------------------------------------------------------------------------------
// Live
// ---------------------------------------------------------------------------------------------

fn get(pki: &Pki, envoy: &Envoy, leaf: &Leaf, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    Client::new(pki.ca_pem(), Some(leaf))
        .get(
            envoy.port(LISTENER),
            "/api",
            &[("authorization", auth.as_str())],
        )
        .unwrap_or_else(|e| panic!("GET /api as {} failed: {e}", leaf.name))
}

#[track_caller]
fn assert_passed(r: &Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: expected 200, got:\n{r}");
    assert_eq!(r.body_str(), UPSTREAM_BODY, "{what}");
}

#[track_caller]
fn assert_refused(r: &Response, reason: &str, realm: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: expected 401 {reason}, got:\n{r}");
    assert_eq!(
        r.json().map(|b| b["reason"].clone()),
        Some(json!(reason)),
        "{what}:\n{r}"
    );
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{realm}\"")),
        "{what}: the configured realm is used: {challenge:?}"
    );
}

#[test]
fn wasmplugin_config_runs_in_envoy_and_binds_tokens() {
    let wasm = require_wasm();
    for file in ["wasmplugin.yaml", "wasmplugin-enforce.yaml"] {
        let wp = manifest(file);
        let pki = Pki::new();
        let issuer = TokenIssuer::new(ISSUER);
        let config = with_test_issuer(&wp["spec"]["pluginConfig"], &issuer);
        let bootstrap = bootstrap_with(&pki, wasmplugin_filter(&wp, &config, &wasm));
        let envoy = Envoy::start(&bootstrap)
            .unwrap_or_else(|e| panic!("{file}: Envoy refused the WasmPlugin's filter: {e}"));
        let mode = config["mode"].as_str().unwrap();
        assert!(
            envoy
                .log()
                .contains(&format!("tokenbind: configured: mode={mode}")),
            "{file}: plugin configured in {mode} mode. Log:\n{}",
            envoy.log()
        );

        // The client's token, presented by the client: bound, passes.
        let token = issuer.sign(Alg::Es256, &issuer.claims(CLIENT_ID, AUDIENCE));
        assert_passed(
            &get(&pki, &envoy, &pki.client, &token),
            &format!("{file}: bound caller"),
        );
        assert_eq!(
            envoy.counter("tokenbind.allowed"),
            1,
            "{file}: counted as allowed"
        );

        // The same token presented by another mesh workload.
        let stolen = get(&pki, &envoy, &pki.attacker, &token);
        match mode {
            "monitor" => {
                assert_passed(&stolen, &format!("{file}: monitor mode never blocks"));
                assert_eq!(
                    envoy.counter("tokenbind.monitor.would_deny.spiffe_mismatch"),
                    1,
                    "{file}: the stolen token is counted as a would-deny"
                );
            }
            _ => {
                let realm = config["realm"].as_str().unwrap();
                assert_refused(
                    &stolen,
                    "spiffe_mismatch",
                    realm,
                    &format!("{file}: stolen token"),
                );
                assert_eq!(
                    envoy.counter("tokenbind.denied.spiffe_mismatch"),
                    1,
                    "{file}"
                );
            }
        }
    }
}

/// A ConfigSource reading xDS resources from `path` (file-based subscription).
fn ecds_file_source(path: &Path) -> Value {
    json!({
        "path_config_source": {"path": path.to_string_lossy()},
        "resource_api_version": "V3",
        "initial_fetch_timeout": "0s"
    })
}

/// Writes an ECDS DiscoveryResponse holding `ext` (a TypedExtensionConfig) to `path`
/// atomically (Envoy watches the file's directory for renames onto it).
fn write_ecds(path: &Path, ext: &Value, version: &str) {
    let mut resource = ext.clone();
    resource["@type"] = json!("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig");
    let body = json!({"version_info": version, "resources": [resource]});
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&body).unwrap()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// The EnvoyFilter's EXTENSION_CONFIG value after the test-issuer substitution and the module
/// pull; `text` is the manifest's YAML (so the documented one-line edit can be applied to it).
fn ecds_resource(text: &str, issuer: &TokenIssuer, wasm: &Path) -> Value {
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let (ext, _) = envoyfilter_parts(&docs[0]);
    let mut ext = agent_rewritten(&ext, wasm);
    let config = with_test_issuer(&wasm_configuration(&ext["typed_config"]), issuer);
    ext["typed_config"]["config"]["configuration"]["value"] = json!(config.to_string());
    ext
}

#[test]
fn envoyfilter_ecds_config_runs_and_switches_to_enforce_live() {
    let wasm = require_wasm();
    let ef = manifest("envoyfilter.yaml");
    let (_, http) = envoyfilter_parts(&ef);
    let text = fs::read_to_string(istio_dir().join("envoyfilter.yaml")).unwrap();
    let pki = Pki::new();
    let issuer = TokenIssuer::new(ISSUER);
    let dir = tempfile::tempdir().unwrap();
    let ecds = dir.path().join("ecds.json");

    // The extension config as shipped (monitor), served from a file instead of istiod.
    write_ecds(&ecds, &ecds_resource(&text, &issuer, &wasm), "monitor");
    let mut value = http["patch"]["value"].clone();
    value["config_discovery"]["config_source"] = ecds_file_source(&ecds);
    let envoy = Envoy::start(&bootstrap_with(&pki, value))
        .unwrap_or_else(|e| panic!("Envoy refused the EnvoyFilter's filter: {e}"));
    assert!(
        envoy.log().contains("tokenbind: configured: mode=monitor"),
        "the ECDS config reached the plugin. Log:\n{}",
        envoy.log()
    );
    let token = issuer.sign(Alg::Es256, &issuer.claims(CLIENT_ID, AUDIENCE));
    assert_passed(
        &get(&pki, &envoy, &pki.client, &token),
        "bound caller (monitor)",
    );
    assert_passed(
        &get(&pki, &envoy, &pki.attacker, &token),
        "stolen token, monitor mode",
    );
    assert_eq!(
        envoy.counter("tokenbind.monitor.would_deny.spiffe_mismatch"),
        1
    );

    // The documented one-line change, pushed to the running Envoy.
    let enforce_text = switch_to_enforce(&text);
    write_ecds(
        &ecds,
        &ecds_resource(&enforce_text, &issuer, &wasm),
        "enforce",
    );
    let realm = wasm_configuration(&envoyfilter_parts(&ef).0["typed_config"])["realm"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stolen = loop {
        let r = get(&pki, &envoy, &pki.attacker, &token);
        if r.status == 401 || Instant::now() > deadline {
            break r;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_refused(
        &stolen,
        "spiffe_mismatch",
        &realm,
        "stolen token after the live switch to enforce",
    );
    assert!(
        envoy.log().contains("tokenbind: configured: mode=enforce"),
        "the plugin was reconfigured. Log:\n{}",
        envoy.log()
    );
    assert_passed(
        &get(&pki, &envoy, &pki.client, &token),
        "bound caller (enforce)",
    );
}
