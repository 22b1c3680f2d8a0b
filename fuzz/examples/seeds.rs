//! Mints the seed corpus in `fuzz/seeds/<target>/` with the fixed keys of `tokenbind_fuzz`:
//! `cargo run --release --example seeds` (from `fuzz/`). Deterministic: running it again
//! rewrites the same files. Also copies the core's JWKS fixtures and the example Envoy
//! configuration's plugin config.
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use tokenbind_fuzz::*;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn with(mut v: Value, overrides: Value) -> Value {
    merge(&mut v, overrides);
    v
}

fn main() {
    let keys = keys();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // ---- jws and jws_differential: valid tokens, near misses, and sign-mode inputs ----
    let mut tokens: Vec<(String, Vec<u8>)> = Vec::new();
    for s in Signer::ALL {
        let alg = s.alg();
        let c = claims();
        tokens.push((
            format!("{alg}-valid"),
            keys.token(
                s,
                header(s).to_string().as_bytes(),
                c.to_string().as_bytes(),
            )
            .into_bytes(),
        ));
        let cases = [
            (
                "expired",
                json!({"exp": NOW - 3600, "iat": NOW - 7200, "nbf": NOW - 7200}),
            ),
            ("not-yet-valid", json!({"nbf": NOW + 3600})),
            (
                "wrong-aud",
                json!({"aud": ["spiffe://cluster.local/ns/x/sa/y", AUDIENCE]}),
            ),
            ("cnf-x5t", json!({"cnf": {"x5t#S256": CLIENT_X5T}})),
            ("cnf-jkt", json!({"cnf": {"jkt": jkt(s)}})),
            ("fractional", json!({"exp": (NOW + 3600) as f64 + 0.5})),
        ];
        for (name, o) in cases {
            let c = with(claims(), o);
            tokens.push((
                format!("{alg}-{name}"),
                keys.token(
                    s,
                    header(s).to_string().as_bytes(),
                    c.to_string().as_bytes(),
                )
                .into_bytes(),
            ));
            if s != Signer::Rs256 {
                tokens.push((format!("{alg}-{name}.sign"), sign_input(s, &header(s), &c)));
            }
        }
        if s == Signer::Rs256 {
            continue;
        }
        tokens.push((
            format!("{alg}-valid.sign"),
            sign_input(s, &header(s), &claims()),
        ));
        tokens.push((
            format!("{alg}-nokid.sign"),
            sign_input(s, &json!({"alg": alg}), &claims()),
        ));
        tokens.push((
            format!("{alg}-crit.sign"),
            sign_input(
                s,
                &with(header(s), json!({"crit": ["b64"], "b64": false})),
                &claims(),
            ),
        ));
    }
    let es = Signer::Es256;
    tokens.push((
        "none".into(),
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(claims().to_string().as_bytes())
        )
        .into_bytes(),
    ));
    tokens.push((
        "hs256".into(),
        keys.token(
            es,
            br#"{"alg":"HS256","kid":"es-1"}"#,
            claims().to_string().as_bytes(),
        )
        .into_bytes(),
    ));
    tokens.push((
        "jwe-5-parts".into(),
        b"eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d".to_vec(),
    ));
    tokens.push((
        "dpop-typ.sign".into(),
        sign_input(es, &with(header(es), json!({"typ": "dpop+jwt"})), &claims()),
    ));
    for (name, bytes) in &tokens {
        write("jws", name, bytes);
        write("jws_differential", name, bytes);
    }

    // ---- jwks and jwk ----
    write("jwks", "fixed.json", keys.jwks().to_string().as_bytes());
    for entry in fs::read_dir(root.join("filter/core/tests/data/jwks")).unwrap() {
        let entry = entry.unwrap();
        write(
            "jwks",
            &entry.file_name().to_string_lossy(),
            &fs::read(entry.path()).unwrap(),
        );
    }
    write("jwks", "empty.json", br#"{"keys":[]}"#);
    for s in Signer::ALL {
        write(
            "jwk",
            &format!("{}.json", s.alg()),
            keys.public_jwk(s).to_string().as_bytes(),
        );
    }
    write("jwk", "p384.json", br#"{"kty":"EC","crv":"P-384","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#);
    write("jwk", "private.json", br#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}"#);

    // ---- dpop: proofs bound to the fuzz target's access token ----
    const ACCESS_TOKEN: &str = "fuzz.access.token";
    for s in Signer::ALL {
        let alg = s.alg();
        write(
            "dpop",
            &format!("{alg}-valid"),
            dpop_proof(s, ACCESS_TOKEN, "jti-1", json!({})).as_bytes(),
        );
        write(
            "dpop",
            &format!("{alg}-nonce"),
            dpop_proof(s, ACCESS_TOKEN, "jti-2", json!({"nonce": "bm9uY2U"})).as_bytes(),
        );
        write(
            "dpop",
            &format!("{alg}-post"),
            dpop_proof(
                s,
                ACCESS_TOKEN,
                "jti-3",
                json!({"htm": "POST", "htu": "https://server.example/api/items?x=1#f"}),
            )
            .as_bytes(),
        );
        let h = json!({"typ": "dpop+jwt", "alg": alg, "jwk": keys.public_jwk(s)});
        let c = json!({"jti": "j", "htm": "GET", "htu": htu(), "iat": NOW,
                       "ath": tokenbind_core::dpop::access_token_hash(ACCESS_TOKEN)});
        if s != Signer::Rs256 {
            write("dpop", &format!("{alg}-valid.sign"), &sign_input(s, &h, &c));
        }
    }

    // ---- xfcc ----
    let hash = CLIENT_SHA256;
    let gw = GATEWAY_SHA256;
    let xfcc = [
        format!("By={GATEWAY};Hash={hash};Subject=\"CN=client,O=a;b\";URI={CLIENT}"),
        format!("By={GATEWAY};Hash={hash};URI={CLIENT},By=spiffe://cluster.local/ns/default/sa/server;Hash={gw};URI={GATEWAY}"),
        format!("By=spiffe://cluster.local/ns/default/sa/server;Hash={gw};URI={GATEWAY}"),
        format!("Hash={hash};Cert=\"-----BEGIN%20CERTIFICATE-----\";Chain=\"x\";DNS=client.example"),
        "By=spiffe://td/gw".to_owned(),
        "Subject=\"unterminated".to_owned(),
    ];
    for (i, v) in xfcc.iter().enumerate() {
        write("xfcc", &format!("xfcc-{i}"), v.as_bytes());
    }

    // ---- spiffe ----
    for (i, id) in [
        CLIENT,
        GATEWAY,
        "spiffe://example.org",
        "spiffe://a.b-c_d/x/y.z",
        "spiffe://td/a/../b",
        "spiffe://TD/x",
        "spiffe://td/x/",
        "https://td/x",
    ]
    .iter()
    .enumerate()
    {
        write("spiffe", &format!("id-{i}"), id.as_bytes());
    }

    // ---- config: the fuzz configuration, variants, and the example Envoy bootstrap's ----
    let cfg = config_json();
    write("config", "fuzz.json", cfg.to_string().as_bytes());
    let mut remote = cfg.clone();
    remote["providers"][0] = json!({"name": "remote", "issuer": ISSUER, "audiences": [AUDIENCE],
        "remote_jwks": {"cluster": "issuer", "uri": "https://issuer.example/", "discovery": true,
                        "cache_duration_seconds": 300, "timeout_ms": 1500, "jitter_percent": 5,
                        "refetch_unknown_kid_min_interval_seconds": 10, "max_body_bytes": 65536},
        "algorithms": ["ES256", "EdDSA"]});
    write(
        "config",
        "remote-discovery.json",
        remote.to_string().as_bytes(),
    );
    let mut file = cfg.clone();
    file["providers"][0] = json!({"name": "file", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": "/etc/tokenbind/jwks.json"});
    write("config", "jwks-file.json", file.to_string().as_bytes());
    let dpop = with(
        cfg.clone(),
        json!({"mode": "monitor", "require_binding": false, "realm": "r",
        "cache": {"max_entries": 10}, "max_token_bytes": 4096, "emit_filter_state": false,
        "dpop": {"algorithms": ["ES256", "EdDSA"], "iat_window_seconds": 30, "require_nonce": true,
                 "nonce_lifetime_seconds": 60, "trust_forwarded_proto": true,
                 "replay_cache": {"max_entries": 1000}, "max_proof_bytes": 2048}}),
    );
    write("config", "dpop.json", dpop.to_string().as_bytes());
    let yaml = fs::read_to_string(root.join("envoy/tokenbind.yaml")).unwrap();
    let body: String = yaml
        .split("value: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim_start().starts_with("- name:"))
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str::<Value>(&body).expect("envoy/tokenbind.yaml plugin config is JSON");
    write("config", "envoy-tokenbind-yaml.json", body.as_bytes());

    // ---- discovery: Cache-Control line, then the body ----
    write("discovery", "discovery", format!("max-age=300\n{}", json!({"issuer": ISSUER, "jwks_uri": "https://issuer.example/keys?v=1", "id_token_signing_alg_values_supported": ["ES256"]})).as_bytes());
    write(
        "discovery",
        "discovery-wrong-issuer",
        format!(
            "no-cache\n{}",
            json!({"issuer": "https://other.example", "jwks_uri": "https://issuer.example/keys"})
        )
        .as_bytes(),
    );
    write(
        "discovery",
        "jwks",
        format!("public, max-age=\"60\"\n{}", keys.jwks()).as_bytes(),
    );
    write(
        "discovery",
        "userinfo-uri",
        format!(
            "\n{}",
            json!({"issuer": ISSUER, "jwks_uri": "https://user@issuer.example/keys"})
        )
        .as_bytes(),
    );

    // ---- engine: requests with valid tokens and proofs, peers and forwarders ----
    let client_hash = hash;
    let bearer = String::from_utf8(tokens[0].1.clone()).unwrap();
    let peer = format!("@mtls=1\n@uri={CLIENT}\n@sha256={client_hash}\n@pem=client\n");
    write(
        "engine",
        "bearer-spiffe",
        format!("{peer}authorization: Bearer {bearer}\n").as_bytes(),
    );
    write("engine", "bearer-attacker", format!("@mtls=1\n@uri=spiffe://cluster.local/ns/default/sa/attacker\n@sha256={ATTACKER_SHA256}\n@pem=attacker\nauthorization: Bearer {bearer}\n").as_bytes());
    write("engine", "bearer-two-uri-sans", format!("@mtls=1\n@uri={CLIENT}\n@sha256={TWO_URI_SANS_SHA256}\n@pem=two-uri-sans\nauthorization: Bearer {bearer}\n").as_bytes());
    write("engine", "healthz", b":path: /healthz\n");
    write("engine", "no-token", format!("{peer}").as_bytes());
    let x5t = keys.token(
        es,
        header(es).to_string().as_bytes(),
        with(claims(), json!({"cnf": {"x5t#S256": CLIENT_X5T}}))
            .to_string()
            .as_bytes(),
    );
    write(
        "engine",
        "bearer-x5t",
        format!("{peer}authorization: Bearer {x5t}\n").as_bytes(),
    );
    write("engine", "xfcc-gateway", format!(
        "@mtls=1\n@uri={GATEWAY}\n@sha256={gw}\n@pem=gateway\nauthorization: Bearer {bearer}\nx-forwarded-client-cert: By={GATEWAY};Hash={client_hash};URI={CLIENT},By=spiffe://cluster.local/ns/default/sa/server;Hash={gw};URI={GATEWAY}\n").as_bytes());
    for s in Signer::ALL {
        let bound = keys.token(
            es,
            header(es).to_string().as_bytes(),
            with(claims(), json!({"cnf": {"jkt": jkt(s)}}))
                .to_string()
                .as_bytes(),
        );
        let proof = dpop_proof(s, &bound, "jti-e", json!({}));
        write("engine", &format!("dpop-{}", s.alg()), format!(
            "{peer}@tls=1\n:method: GET\n:authority: {AUTHORITY}\n:path: {PATH}\nauthorization: DPoP {bound}\ndpop: {proof}\n").as_bytes());
        if s == es {
            write("engine", "dpop-nonce", format!(
                "@config=1\n@nonce-key\n{peer}:authority: {AUTHORITY}\n:path: {PATH}\nx-forwarded-proto: https\nauthorization: DPoP {bound}\ndpop: {proof}\n").as_bytes());
            write("engine", "dpop-as-bearer", format!(
                "@config=2\n{peer}:authority: {AUTHORITY}\n:path: {PATH}\nauthorization: Bearer {bound}\ndpop: {proof}\n").as_bytes());
        }
    }
    // Both sides of the differential accept the valid tokens (else it would compare nothing).
    for s in Signer::ALL {
        let token = String::from_utf8(
            tokens
                .iter()
                .find(|(n, _)| *n == format!("{}-valid", s.alg()))
                .unwrap()
                .1
                .clone(),
        )
        .unwrap();
        assert_eq!(
            differential::jwt_simple(&token),
            Ok(s.kid()),
            "jwt-simple refuses the {} seed",
            s.alg()
        );
        let config = config();
        let key_sets = vec![config.providers[0]
            .keys
            .static_keys()
            .cloned()
            .map(std::rc::Rc::new)];
        tokenbind_core::jwt::verify(
            &token,
            &config,
            &key_sets,
            &tokenbind_core::Crypto::wasm(),
            NOW,
        )
        .unwrap_or_else(|e| panic!("tokenbind refuses the {} seed: {e:?}", s.alg()));
    }

    // The engine seeds must reach what they are for: a seed that stopped at an early denial
    // would leave the binding and DPoP code to chance.
    let expect = [
        ("bearer-spiffe", None),
        ("bearer-x5t", None),
        ("xfcc-gateway", None),
        ("dpop-ES256", None),
        ("dpop-RS256", None),
        ("dpop-EdDSA", None),
        ("bearer-attacker", Some("spiffe_mismatch")),
        ("bearer-two-uri-sans", Some("invalid_peer_svid")),
        ("dpop-nonce", Some("dpop_nonce_required")),
        ("dpop-as-bearer", Some("dpop_downgrade")),
        ("no-token", Some("missing_token")),
    ];
    for (name, want) in expect {
        let data = fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("seeds/engine")
                .join(name),
        )
        .unwrap();
        let (host, n, now) = engine_input(&data);
        let engine = tokenbind_core::Engine::new(engine_config(n));
        let got = engine
            .decide(&host, now)
            .denial()
            .map(|d| d.reason.as_str());
        assert_eq!(got, want, "engine seed {name}");
    }
    println!("seeds written to fuzz/seeds/");
}
