//! A throw-away PKI generated at test time: one CA, Envoy's serving
//! certificate and SPIFFE workload certificates, all written as PEM files into
//! a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::{ATTACKER_ID, CLIENT_ID, SERVER_ID};

/// A leaf certificate and its private key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Short name, used for file names and messages (`client`, `attacker`).
    pub name: String,
    /// The SPIFFE ID in the URI SAN, if any.
    pub spiffe_id: Option<String>,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Where the certificate PEM was written.
    pub cert_path: PathBuf,
    /// Where the key PEM was written.
    pub key_path: PathBuf,
}

impl Leaf {
    /// RFC 8705 `x5t#S256`: base64url (no padding) of SHA-256 over the DER
    /// certificate, computed here independently of the filter.
    pub fn x5t_s256(&self) -> String {
        x5t_s256(&self.cert_der)
    }

    /// The SPIFFE ID; panics for leaves made without one.
    pub fn id(&self) -> &str {
        self.spiffe_id
            .as_deref()
            .unwrap_or_else(|| panic!("leaf {} has no SPIFFE ID", self.name))
    }
}

/// base64url-no-pad(SHA-256(der)).
pub fn x5t_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// A CA plus the standard leaves, with PEMs in a temp dir that lives as long
/// as this value.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    ca_path: PathBuf,
    /// Envoy's serving certificate: DNS `localhost`, IP 127.0.0.1 and
    /// URI `spiffe://cluster.local/ns/default/sa/server`.
    pub server: Leaf,
    /// `spiffe://cluster.local/ns/default/sa/client`
    pub client: Leaf,
    /// `spiffe://cluster.local/ns/default/sa/attacker`
    pub attacker: Leaf,
}

impl Pki {
    /// Generates the CA and the standard leaves. Panics on failure (test code).
    pub fn new() -> Pki {
        Self::try_new().unwrap_or_else(|e| panic!("generating the test PKI failed: {e}"))
    }

    pub fn try_new() -> Result<Pki, Box<dyn std::error::Error>> {
        let dir = tempfile::Builder::new()
            .prefix("tokenbind-pki-")
            .tempdir()?;

        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "tokenbind test CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tokenbind integration tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_pem = ca.pem();
        let ca_path = dir.path().join("ca.pem");
        fs::write(&ca_path, &ca_pem)?;

        let server = issue(
            &ca,
            dir.path(),
            "server",
            &[
                SanType::DnsName("localhost".try_into()?),
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::URI(SERVER_ID.try_into()?),
            ],
            Some(SERVER_ID),
            &[ExtendedKeyUsagePurpose::ServerAuth],
        )?;
        let client = workload_in(&ca, dir.path(), "client", CLIENT_ID)?;
        let attacker = workload_in(&ca, dir.path(), "attacker", ATTACKER_ID)?;

        Ok(Pki {
            dir,
            ca,
            ca_pem,
            ca_path,
            server,
            client,
            attacker,
        })
    }

    /// A new client certificate from this CA with `spiffe_id` as its only
    /// URI SAN, e.g. `spiffe://evil.example/ns/x/sa/y` for a workload in a
    /// trust domain the filter does not allow.
    pub fn workload(&self, name: &str, spiffe_id: &str) -> Leaf {
        workload_in(&self.ca, self.dir.path(), name, spiffe_id)
            .unwrap_or_else(|e| panic!("issuing workload cert {name} ({spiffe_id}) failed: {e}"))
    }

    /// A client certificate from this CA with no URI SAN at all (DNS only).
    pub fn workload_without_spiffe(&self, name: &str) -> Leaf {
        let dns = format!("{name}.test");
        let sans = match dns.clone().try_into() {
            Ok(d) => vec![SanType::DnsName(d)],
            Err(e) => panic!("bad DNS name {dns}: {e}"),
        };
        issue(
            &self.ca,
            self.dir.path(),
            name,
            &sans,
            None,
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )
        .unwrap_or_else(|e| panic!("issuing cert {name} failed: {e}"))
    }

    /// A client certificate from this CA that is not a valid X.509-SVID leaf (X509-SVID §2,
    /// §4.1, §4.3, §5.2), as `flaw` says. Its first URI SAN is `spiffe_id` (what Envoy reports
    /// as `uri_san_peer_certificate`) except for [`Flaw::NonSpiffeUri`].
    pub fn flawed_workload(&self, name: &str, spiffe_id: &str, flaw: Flaw) -> Leaf {
        let built = (|| -> Result<Leaf, Box<dyn std::error::Error>> {
            let mut uris = vec![spiffe_id.to_owned()];
            let mut is_ca = IsCa::ExplicitNoCa;
            let mut usages = vec![KeyUsagePurpose::DigitalSignature];
            match &flaw {
                Flaw::SecondUriSan(second) => uris.push(second.clone()),
                Flaw::CaFlag => is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
                Flaw::KeyCertSign => usages.push(KeyUsagePurpose::KeyCertSign),
                Flaw::NonSpiffeUri(uri) => uris = vec![uri.clone()],
            }
            let mut sans = Vec::new();
            for u in &uris {
                sans.push(SanType::URI(u.as_str().try_into()?));
            }
            sans.push(SanType::DnsName("localhost".try_into()?));
            let spec = LeafSpec {
                is_ca,
                key_usages: usages,
            };
            issue_with(
                &self.ca,
                self.dir.path(),
                name,
                &sans,
                uris.first().map(String::as_str),
                &[
                    ExtendedKeyUsagePurpose::ClientAuth,
                    ExtendedKeyUsagePurpose::ServerAuth,
                ],
                &spec,
            )
        })();
        built.unwrap_or_else(|e| panic!("issuing flawed cert {name} ({flaw:?}) failed: {e}"))
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the CA PEM was written.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The directory holding all PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn workload_in(
    ca: &CertifiedIssuer<'static, KeyPair>,
    dir: &Path,
    name: &str,
    spiffe_id: &str,
) -> Result<Leaf, Box<dyn std::error::Error>> {
    issue(
        ca,
        dir,
        name,
        // The SPIFFE ID first (Envoy reports the first URI SAN), then localhost so a workload
        // certificate can also serve on loopback, like a sidecar's.
        &[
            SanType::URI(spiffe_id.try_into()?),
            SanType::DnsName("localhost".try_into()?),
        ],
        Some(spiffe_id),
        // Like a mesh X.509-SVID: usable as a client and as a server certificate.
        &[
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ],
    )
}

/// How a [`Pki::flawed_workload`] certificate breaks the X.509-SVID leaf rules.
#[derive(Clone, Debug)]
pub enum Flaw {
    /// A second URI SAN after the SPIFFE ID (X509-SVID §2, §5.2: exactly one).
    SecondUriSan(String),
    /// Basic constraints `cA: TRUE` (§4.1, §5.2).
    CaFlag,
    /// Key usage `keyCertSign` besides `digitalSignature` (§4.3, §5.2).
    KeyCertSign,
    /// The only URI SAN is this non-SPIFFE URI (§5.2: scheme `spiffe`).
    NonSpiffeUri(String),
}

/// The constraints of a leaf certificate.
struct LeafSpec {
    is_ca: IsCa,
    key_usages: Vec<KeyUsagePurpose>,
}

fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    dir: &Path,
    name: &str,
    sans: &[SanType],
    spiffe_id: Option<&str>,
    eku: &[ExtendedKeyUsagePurpose],
) -> Result<Leaf, Box<dyn std::error::Error>> {
    let svid = LeafSpec {
        is_ca: IsCa::ExplicitNoCa,
        key_usages: vec![KeyUsagePurpose::DigitalSignature],
    };
    issue_with(ca, dir, name, sans, spiffe_id, eku, &svid)
}

fn issue_with(
    ca: &CertifiedIssuer<'static, KeyPair>,
    dir: &Path,
    name: &str,
    sans: &[SanType],
    spiffe_id: Option<&str>,
    eku: &[ExtendedKeyUsagePurpose],
    spec: &LeafSpec,
) -> Result<Leaf, Box<dyn std::error::Error>> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = sans.to_vec();
    params.is_ca = spec.is_ca;
    params.key_usages = spec.key_usages.clone();
    params.extended_key_usages = eku.to_vec();
    params.use_authority_key_identifier_extension = true;

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let cert_path = dir.join(format!("{name}.crt.pem"));
    let key_path = dir.join(format!("{name}.key.pem"));
    fs::write(&cert_path, &cert_pem)?;
    fs::write(&key_path, &key_pem)?;
    Ok(Leaf {
        name: name.to_string(),
        spiffe_id: spiffe_id.map(str::to_string),
        cert_der: cert.der().to_vec(),
        cert_pem,
        key_pem,
        cert_path,
        key_path,
    })
}
