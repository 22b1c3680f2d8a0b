//! DPoP binding (RFC 9449): a token with `cnf.jkt` must come with the `DPoP` scheme and a
//! proof, signed by that key, for this request. The proof checks are [`crate::dpop`]'s.

use super::{Inputs, Verdict};
use crate::dpop::{self, Refusal, ResourceRequest};
use crate::extract::Scheme;
use crate::reason::{Denial, Reason};

pub fn check(inputs: &Inputs<'_>) -> Result<Verdict, Refusal> {
    let Some(jkt) = &inputs.facts.cnf.jkt else {
        return Ok(Verdict::NotApplicable);
    };
    if inputs.scheme != Scheme::DPoP {
        // RFC 9449 §7.2: a DPoP-bound token sent as a bearer token is a downgrade.
        return Err(Denial::new(
            Reason::DpopDowngrade,
            "DPoP-bound token presented with the Bearer scheme",
        )
        .into());
    }
    let request = ResourceRequest {
        host: inputs.host,
        path: inputs.path,
        access_token: inputs.token,
        jkt,
        now: inputs.now,
    };
    let state = &inputs.dpop;
    dpop::check_request(
        &request,
        &inputs.config.dpop,
        &mut state.proof_keys.borrow_mut(),
        state.replay,
        state.crypto,
    )?;
    Ok(Verdict::Passed)
}
