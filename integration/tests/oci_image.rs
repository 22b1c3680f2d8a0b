//! The OCI image of the filter built by `scripts/oci.sh`, as Istio pulls it (`url: oci://...`).
//!
//! Format (the Wasm image spec's "compat" variant, which Istio's fetcher accepts): an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/`) whose one image has a standard manifest
//! (`application/vnd.oci.image.manifest.v1+json`, annotation `module.wasm.image/variant:
//! compat`), an image config blob (`application/vnd.oci.image.config.v1+json`) and exactly one
//! layer (`application/vnd.oci.image.layer.v1.tar+gzip`) that is a tar.gz of one file,
//! `plugin.wasm`, byte-identical to the built module.
//!
//! Checked here: the layout's structure, every descriptor's digest and size against its blob
//! (and no stray blobs), the media types, the layer's content extracted the way Istio's image
//! fetcher does it (last layer, gunzip, untar, the entry named `plugin.wasm`), the archive
//! `tokenbind.tar` holding exactly the layout, reproducibility (two builds give byte-identical
//! output, so the same manifest digest), and the recorded digests: `tokenbind.sha256` is the
//! manifest digest (what WasmPlugin.spec.sha256 must be for an oci:// URL: Istio compares it
//! with the pulled image's manifest digest) and `tokenbind.wasm.sha256` the module's.
//!
//! Needs sh, GNU tar, gzip and sha256sum (scripts/setup.sh installs them through
//! scripts/setup-tools.sh) and the built filter; missing ones fail the tests.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use flate2::read::GzDecoder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokenbind_integration::{require_wasm, workspace_root};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `scripts/oci.sh` with `OCI_OUT=out` (None: the default, target/oci) and `args`;
/// returns its stdout. Panics with its output if it fails.
fn oci_sh(out: Option<&Path>, args: &[&str]) -> String {
    let wasm = require_wasm();
    let mut cmd = Command::new("sh");
    cmd.arg(workspace_root().join("scripts/oci.sh"))
        .args(args)
        .env("TOKENBIND_WASM", &wasm)
        .env_remove("OCI_TAG")
        .stdin(Stdio::null());
    match out {
        Some(o) => cmd.env("OCI_OUT", o),
        None => cmd.env_remove("OCI_OUT"),
    };
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh scripts/oci.sh: {e}; run scripts/setup.sh"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/oci.sh failed ({}); if a tool is missing run scripts/setup.sh.\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A build into a fresh temp dir.
struct Build {
    _dir: tempfile::TempDir,
    out: PathBuf,
    stdout: String,
}

impl Build {
    fn new() -> Build {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("oci");
        let stdout = oci_sh(Some(&out), &[]);
        Build {
            _dir: dir,
            out,
            stdout,
        }
    }

    fn layout(&self) -> PathBuf {
        self.out.join("tokenbind")
    }
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The blob a descriptor points at, after checking its digest and size.
fn blob(layout: &Path, desc: &Value, what: &str) -> Vec<u8> {
    let digest = desc["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no digest"));
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{what}: digest {digest} is not sha256"));
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{what}: blob {digest} missing: {e}"));
    assert_eq!(
        sha256_hex(&bytes),
        hex,
        "{what}: blob content does not match its digest"
    );
    assert_eq!(
        desc["size"].as_u64(),
        Some(bytes.len() as u64),
        "{what}: descriptor size"
    );
    bytes
}

/// Everything about one layout; returns the manifest digest (hex).
fn check_layout(layout: &Path, wasm: &[u8]) -> String {
    assert_eq!(
        read_json(&layout.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], INDEX_TYPE);
    let manifests = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(manifests.len(), 1, "one image in the layout");
    let mdesc = &manifests[0];
    assert_eq!(mdesc["mediaType"], MANIFEST_TYPE);
    assert_eq!(
        mdesc["annotations"]["org.opencontainers.image.ref.name"],
        json!(tokenbind_integration::workspace_version()),
        "tagged with the workspace version"
    );
    let manifest_bytes = blob(layout, mdesc, "manifest");
    let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST_TYPE);
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"], "compat",
        "the compat variant's annotation (required with the OCI layer media type)"
    );

    // Config.
    let cdesc = &manifest["config"];
    assert_eq!(cdesc["mediaType"], CONFIG_TYPE);
    let config: Value = serde_json::from_slice(&blob(layout, cdesc, "config")).expect("config");
    assert!(config["architecture"].is_string() && config["os"].is_string());
    assert_eq!(config["rootfs"]["type"], "layers");

    // The one layer, read the way Istio's image fetcher reads it.
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "exactly one layer");
    let ldesc = &layers[0];
    assert_eq!(ldesc["mediaType"], LAYER_TYPE);
    let layer = blob(layout, ldesc, "layer");
    let mut tar_bytes = Vec::new();
    GzDecoder::new(&layer[..])
        .read_to_end(&mut tar_bytes)
        .expect("the layer is gzip");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([format!("sha256:{}", sha256_hex(&tar_bytes))]),
        "diff_ids is the uncompressed layer's digest"
    );
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut entries = Vec::new();
    for entry in archive.entries().expect("the layer is a tar") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let header = entry.header().clone();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        entries.push((path, header, content));
    }
    assert_eq!(
        entries.len(),
        1,
        "the layer holds one file: {:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    let (path, header, content) = &entries[0];
    assert_eq!(path, "plugin.wasm");
    assert!(
        header.entry_type().is_file(),
        "plugin.wasm is a regular file"
    );
    assert_eq!(header.mode().unwrap() & 0o777, 0o644);
    assert_eq!(header.mtime().unwrap(), 0, "fixed mtime");
    assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
    assert!(
        content == wasm,
        "plugin.wasm is byte-identical to the built module"
    );

    // No blobs but these three.
    let mut blobs: Vec<String> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    blobs.sort();
    let mut referenced: Vec<String> = [mdesc, cdesc, ldesc]
        .iter()
        .map(|d| d["digest"].as_str().unwrap()["sha256:".len()..].to_string())
        .collect();
    referenced.sort();
    assert_eq!(blobs, referenced, "exactly the referenced blobs");
    let entries: Vec<String> = fs::read_dir(layout)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(entries, ["blobs", "index.json", "oci-layout"]);

    sha256_hex(&manifest_bytes)
}

/// Every regular file of the archive, by path, after checking the headers are deterministic.
fn archive_files(tarball: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = fs::read(tarball).expect("tokenbind.tar");
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut files = BTreeMap::new();
    let mut order = Vec::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let h = entry.header();
        assert_eq!(h.mtime().unwrap(), 0, "{path}: fixed mtime");
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap()),
            (0, 0),
            "{path}: owner"
        );
        order.push(path.clone());
        if h.entry_type().is_file() {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            files.insert(path, content);
        }
    }
    assert_eq!(
        order[..2],
        ["oci-layout", "index.json"],
        "layout files first, then blobs/"
    );
    files
}

fn layout_files(layout: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for name in ["oci-layout", "index.json"] {
        files.insert(name.to_string(), fs::read(layout.join(name)).unwrap());
    }
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = format!("blobs/sha256/{}", e.file_name().to_string_lossy());
        files.insert(name, fs::read(e.path()).unwrap());
    }
    files
}

#[test]
fn image_is_a_compat_wasm_image_of_the_built_module() {
    let wasm = fs::read(require_wasm()).unwrap();
    let b = Build::new();
    let digest = check_layout(&b.layout(), &wasm);
    assert_eq!(
        fs::read_to_string(b.out.join("tokenbind.sha256"))
            .unwrap()
            .trim(),
        digest,
        "tokenbind.sha256 records the manifest digest (WasmPlugin.spec.sha256 for oci://)"
    );
    assert_eq!(
        fs::read_to_string(b.out.join("tokenbind.wasm.sha256"))
            .unwrap()
            .trim(),
        sha256_hex(&wasm),
        "tokenbind.wasm.sha256 records the module's digest (for http(s):// URLs)"
    );
    assert!(
        b.stdout.contains(&format!("sha256:{digest}")),
        "oci.sh prints the digest:\n{}",
        b.stdout
    );
}

#[test]
fn archive_holds_exactly_the_layout() {
    let b = Build::new();
    assert_eq!(
        archive_files(&b.out.join("tokenbind.tar")),
        layout_files(&b.layout()),
        "tokenbind.tar is the layout"
    );
}

#[test]
fn build_is_reproducible() {
    let (one, two) = (Build::new(), Build::new());
    let digest = |b: &Build| fs::read_to_string(b.out.join("tokenbind.sha256")).unwrap();
    assert_eq!(digest(&one), digest(&two), "same manifest digest");
    assert_eq!(layout_files(&one.layout()), layout_files(&two.layout()));
    assert!(
        fs::read(one.out.join("tokenbind.tar")).unwrap()
            == fs::read(two.out.join("tokenbind.tar")).unwrap(),
        "byte-identical archives"
    );
}

/// Only one test writes the default location.
static DEFAULT_OUT: Mutex<()> = Mutex::new(());

#[test]
fn default_build_goes_to_target_oci() {
    let _guard = DEFAULT_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let wasm = fs::read(require_wasm()).unwrap();
    let stdout = oci_sh(None, &[]);
    let out = workspace_root().join("target/oci");
    let digest = check_layout(&out.join("tokenbind"), &wasm);
    assert!(out.join("tokenbind.tar").is_file());
    assert_eq!(
        fs::read_to_string(out.join("tokenbind.sha256"))
            .unwrap()
            .trim(),
        digest
    );
    assert!(stdout.contains("target/oci/tokenbind"), "{stdout}");

    // The manifests in envoy/istio pin a digest with `scripts/oci.sh --pin` at release time;
    // a rebuilt filter changes the digest, so a stale pin is reported, not failed on.
    let pinned = fs::read_to_string(workspace_root().join("envoy/istio/wasmplugin.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("sha256:")
                .map(|v| v.trim().to_string())
        });
    if pinned.as_deref() != Some(digest.as_str()) {
        eprintln!(
            "note: envoy/istio pins sha256 {pinned:?}, the current build is {digest}; \
             run `scripts/oci.sh --pin` when releasing this build"
        );
    }
}

#[test]
fn pin_writes_the_digest_and_tag_into_the_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("istio");
    fs::create_dir(&manifests).unwrap();
    let src = workspace_root().join("envoy/istio");
    let mut originals = BTreeMap::new();
    for e in fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let text = fs::read_to_string(&p).unwrap();
            // Make every pin stale so the rewrite is visible.
            let stale = text
                .lines()
                .map(|l| match l.split_once("sha256: ") {
                    Some((indent, v)) if v.len() == 64 && indent.trim().is_empty() => {
                        format!("{indent}sha256: {}", "0".repeat(64))
                    }
                    _ => l.replace(
                        &format!("/tokenbind:{}", tokenbind_integration::workspace_version()),
                        "/tokenbind:0.0.0-old",
                    ),
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
            let name = p.file_name().unwrap().to_owned();
            fs::write(manifests.join(&name), &stale).unwrap();
            originals.insert(name, (text, stale));
        }
    }
    assert!(originals.len() >= 3);
    let out = dir.path().join("oci");
    oci_sh(Some(&out), &["--pin", manifests.to_str().unwrap()]);
    let digest = fs::read_to_string(out.join("tokenbind.sha256")).unwrap();
    let digest = digest.trim();
    let tag = format!("/tokenbind:{}", tokenbind_integration::workspace_version());
    let mut with_module = 0;
    for (name, (original, stale)) in originals {
        let pinned = fs::read_to_string(manifests.join(&name)).unwrap();
        let name = name.to_string_lossy();
        let (mut shas, mut urls) = (0, 0);
        for ((p, s), o) in pinned.lines().zip(stale.lines()).zip(original.lines()) {
            if let Some(v) = p.trim().strip_prefix("sha256: ") {
                assert_eq!(v, digest, "{name}: sha256 pinned to the build");
                shas += 1;
            } else if p.contains("oci://") && p.contains("/tokenbind:") {
                assert!(p.contains(&tag), "{name}: tag pinned: {p}");
                urls += 1;
            } else {
                assert_eq!(p, s, "{name}: --pin changed an unrelated line");
                assert_eq!(p, o, "{name}");
            }
        }
        assert_eq!(pinned.lines().count(), original.lines().count(), "{name}");
        if original.contains("oci://") {
            assert!(
                shas >= 1 && urls >= 1,
                "{name}: has a pinned sha256 and oci:// url"
            );
            with_module += 1;
        } else {
            // A manifest that does not carry the module (path-normalization.yaml) is untouched.
            assert_eq!((shas, urls), (0, 0), "{name}");
        }
    }
    assert!(with_module >= 3, "{with_module} manifests carry the module");
}
