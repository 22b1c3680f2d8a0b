//! Criterion micro-benchmarks of the filter's core, natively:
//! `cargo bench -p tokenbind-benches --no-default-features` (or `scripts/bench.sh criterion`;
//! without `--no-default-features` the `e2e` feature's jwt-simple switches `rsa` to 64-bit
//! digits, so RS256 would not be the RSA code the filter runs).
//!
//! The operations are the ones in `tokenbind_benches::micro` (also timed inside V8 by the
//! `micro` binary): a cache-hit decision, cold decisions and raw signature checks for ES256,
//! EdDSA and RS256-2048, DPoP proof verification and full DPoP decisions, RFC 7638
//! thumbprints, the SPIFFE ID parse and the binding check. Measurement times are short so the
//! whole run takes about a minute; pass criterion options after `--` to change that, e.g.
//! `cargo bench -p tokenbind-benches -- --measurement-time 5 decide/`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tokenbind_benches::micro::suite;

fn core(c: &mut Criterion) {
    let ops = match suite() {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("setting up the benchmark suite failed: {e}");
            std::process::exit(1);
        }
    };
    for mut op in ops {
        let name = op.name().to_owned();
        c.bench_function(&name, |b| b.iter_custom(|iters| op.run(iters)));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = core
}
criterion_main!(benches);
