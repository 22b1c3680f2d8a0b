//! tokenbind benchmarks. See `benches/README.md`.
//!
//! - [`fixtures`]: keys, tokens, DPoP proofs and the filter configuration, minted without the
//!   filter's own code.
//! - [`micro`]: the micro-benchmark operations, run by criterion (`benches/core.rs`) and by the
//!   `micro` binary natively and inside V8.
//! - The end-to-end harness is the `e2e` binary (`src/bin/e2e.rs`).

pub mod fixtures;
pub mod micro;
