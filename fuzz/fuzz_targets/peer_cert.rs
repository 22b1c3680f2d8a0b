//! The peer certificate as an X.509-SVID leaf (SPIFFE X509-SVID §2, §4, §5.2):
//! `svid::check_leaf_pem` and `svid::check_leaf_der`, on arbitrary bytes.
//! The first byte picks the form: even, the rest is PEM (what Envoy's
//! `connection.peer_certificate` gives); odd, the rest is DER.
//! Invariants: an accepted leaf's digest is the SHA-256 of exactly the DER that was checked;
//! its SPIFFE ID re-parses to itself and has a path; the PEM and DER checks agree on the same
//! certificate; a verdict about the leaf is deterministic (what the per-VM cache relies on).
#![no_main]
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tokenbind_core::spiffe::SpiffeId;
use tokenbind_core::svid::{check_leaf_der, check_leaf_pem, SvidError};

fn pem_of(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let verdict = check_leaf_pem(rest);
        assert_eq!(
            verdict,
            check_leaf_pem(rest),
            "PEM verdict not deterministic"
        );
        if let Err(e) = &verdict {
            assert!(e.is_about_the_leaf(), "a leaf check reported {e:?}");
            assert!(!e.message().is_empty());
        }
        return;
    }
    let verdict = check_leaf_der(rest);
    assert_eq!(
        verdict,
        check_leaf_der(rest),
        "DER verdict not deterministic"
    );
    match &verdict {
        Ok(svid) => {
            let digest: [u8; 32] = Sha256::digest(rest).into();
            assert_eq!(svid.sha256, digest, "digest is not of the checked DER");
            let id = svid.id.as_str();
            assert_eq!(SpiffeId::parse(id).as_ref(), Ok(&svid.id));
            assert!(
                id.len() > "spiffe://".len() + svid.id.trust_domain().len(),
                "an accepted SVID without a path"
            );
        }
        Err(e) => {
            assert!(e.is_about_the_leaf(), "a leaf check reported {e:?}");
            assert!(
                !matches!(e, SvidError::NotPem | SvidError::TooLarge),
                "a DER check reported a PEM error: {e:?}"
            );
        }
    }
    // The same bytes wrapped as PEM get the same verdict (the PEM layer only decodes), unless
    // the PEM is over the size cap or empty (an empty block is not a certificate PEM).
    let pem = pem_of(rest);
    match check_leaf_pem(pem.as_bytes()) {
        Err(SvidError::TooLarge) => {}
        Err(SvidError::NotPem) if rest.is_empty() => {}
        other => assert_eq!(other, verdict, "PEM and DER checks disagree"),
    }
});
