//! The proxy-wasm context table: which root context (one per plugin configuration) and which
//! HTTP context (one per request) the host means by a context id, and where each callback goes.
//!
//! It replaces the proxy-wasm SDK's dispatcher, which `panic!`s (aborting the worker's VM) on an
//! unknown context id or call token and unwraps `set_effective_context` before every callback.
//! Here an id or token the table does not know is logged (the first [`COMPLAINT_LIMIT`] times per
//! VM) and the callback returns its neutral value; nothing panics. The host already makes the
//! context a callback is for the effective one, so no callback sets it.
//!
//! No borrow of the table is held while a callback runs: the callback's state (`Rc`s) is cloned
//! out first, so a host call that re-enters the module finds the table free.

use crate::{Http, Shared};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

/// What a stream callback tells the host (proxy-wasm `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// How many unknown ids, tokens or busy-table events a VM logs; the rest are only counted in the
/// last line.
pub const COMPLAINT_LIMIT: u32 = 10;

#[derive(Default)]
struct Table {
    /// Root contexts, with their configuration once `on_configure` succeeded.
    roots: BTreeMap<u32, Option<Rc<Shared>>>,
    /// HTTP contexts, each bound to its root's configuration when created.
    streams: BTreeMap<u32, Rc<Http>>,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
    static COMPLAINTS: Cell<u32> = const { Cell::new(0) };
}

/// Logs that the host named something the table does not know, at most [`COMPLAINT_LIMIT`]
/// times per VM.
fn complain(what: &str) {
    let n = COMPLAINTS
        .try_with(|c| {
            let n = c.get().saturating_add(1);
            c.set(n);
            n
        })
        .unwrap_or(u32::MAX);
    if n < COMPLAINT_LIMIT {
        log::warn!("tokenbind: {what}; ignored");
    } else if n == COMPLAINT_LIMIT {
        log::warn!("tokenbind: {what}; ignored (further such events are not logged)");
    }
}

/// How many times the host named something unknown so far (for tests).
#[cfg(test)]
pub fn complaints() -> u32 {
    COMPLAINTS.try_with(Cell::get).unwrap_or(0)
}

/// Runs `f` on the table; `None` (logged) if the table is unavailable (a callback re-entered
/// while it was borrowed, or the VM is shutting down).
fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> Option<R> {
    let result = TABLE
        .try_with(|table| table.try_borrow_mut().ok().map(|mut t| f(&mut t)))
        .ok()
        .flatten();
    if result.is_none() {
        complain("context table unavailable (re-entrant callback)");
    }
    result
}

/// The configuration of root context `id`: `None` if the root is unknown, `Some(None)` if it
/// is known but not configured.
fn root(id: u32) -> Option<Option<Rc<Shared>>> {
    with_table(|t| t.roots.get(&id).cloned()).flatten()
}

fn stream(id: u32) -> Option<Rc<Http>> {
    with_table(|t| t.streams.get(&id).cloned()).flatten()
}

/// `proxy_on_context_create`: a root context when `root_id` is 0, else an HTTP context of that
/// root. An HTTP context of an unknown or unconfigured root is not created (its request is
/// then failed closed by [`on_request_headers`]).
pub fn on_context_create(id: u32, root_id: u32) {
    if root_id == 0 {
        let fresh = with_table(|t| {
            if t.roots.contains_key(&id) || t.streams.contains_key(&id) {
                false
            } else {
                t.roots.insert(id, None);
                true
            }
        });
        if fresh == Some(false) {
            complain(&format!("context {id} created twice"));
        }
        return;
    }
    match root(root_id) {
        Some(Some(shared)) => {
            let http = Rc::new(Http::new(id, shared));
            let fresh = with_table(|t| {
                if t.roots.contains_key(&id) || t.streams.contains_key(&id) {
                    false
                } else {
                    t.streams.insert(id, http);
                    true
                }
            });
            if fresh == Some(false) {
                complain(&format!("context {id} created twice"));
            }
        }
        Some(None) => complain(&format!(
            "HTTP context {id} created under root context {root_id}, which has no configuration"
        )),
        None => complain(&format!(
            "HTTP context {id} created under unknown root context {root_id}"
        )),
    }
}

/// `proxy_on_vm_start`: nothing to do (the configuration arrives in `on_configure`).
pub fn on_vm_start(id: u32) -> bool {
    if root(id).is_none() {
        complain(&format!("VM start for unknown root context {id}"));
    }
    true
}

/// `proxy_on_configure`: parses and applies the plugin configuration; false refuses it (the
/// reason is logged).
pub fn on_configure(id: u32) -> bool {
    if root(id).is_none() {
        complain(&format!("configuration for unknown root context {id}"));
        return false;
    }
    let Some(shared) = crate::configure() else {
        return false;
    };
    with_table(|t| {
        if let Some(slot) = t.roots.get_mut(&id) {
            *slot = Some(shared);
            true
        } else {
            false
        }
    })
    .unwrap_or(false)
}

/// `proxy_on_tick`, for a root context.
pub fn on_tick(id: u32) {
    match root(id) {
        Some(Some(shared)) => {
            let wake = shared.tick();
            resume(id, &wake);
        }
        // A root whose configuration was refused has no timer work; Envoy does not tick it.
        Some(None) => {}
        None => complain(&format!("timer tick for unknown root context {id}")),
    }
}

/// `proxy_on_http_call_response`. Fetches are dispatched only from root contexts, so responses
/// are for roots; a token the fetcher did not dispatch is ignored.
pub fn on_http_call_response(id: u32, token: u32, body_size: usize) {
    match root(id) {
        Some(Some(shared)) => match shared.on_call_response(token, body_size) {
            Some(wake) => resume(id, &wake),
            None => complain(&format!(
                "HTTP call response with unknown token {token} for root context {id}"
            )),
        },
        Some(None) | None => complain(&format!(
            "HTTP call response (token {token}) for context {id}, which dispatched no call"
        )),
    }
}

/// Makes each woken request's context effective and resumes it (its final attempt), then
/// hands the host back to root context `root_id`. A request whose stream already ended is gone
/// from the table and skipped.
fn resume(root_id: u32, wake: &[u32]) {
    if wake.is_empty() {
        return;
    }
    for id in wake {
        if let Some(http) = stream(*id) {
            if crate::host::set_effective_context(*id) {
                http.resume();
            }
        }
    }
    crate::host::set_effective_context(root_id);
}

/// `proxy_on_request_headers`. A request whose context the table does not know is answered 503
/// (fail closed), as Envoy answers requests when the filter's VM has failed.
pub fn on_request_headers(id: u32) -> Action {
    match stream(id) {
        Some(http) => http.on_request_headers(),
        None => {
            complain(&format!("request headers for unknown HTTP context {id}"));
            if !crate::host::send_reply(503, &[], b"") {
                log::error!("tokenbind: host refused the 503 reply");
            }
            Action::Pause
        }
    }
}

/// `proxy_on_done`: the context is finishing. Always true (nothing to wait for).
pub fn on_done(id: u32) -> bool {
    if let Some(http) = stream(id) {
        http.on_done();
    } else if root(id).is_none() {
        complain(&format!("done for unknown context {id}"));
    }
    true
}

/// `proxy_on_delete`: forgets the context.
pub fn on_delete(id: u32) {
    let known = with_table(|t| t.streams.remove(&id).is_some() || t.roots.remove(&id).is_some());
    if known == Some(false) {
        complain(&format!("delete for unknown context {id}"));
    }
}

/// Live contexts (roots, HTTP), for tests.
#[cfg(test)]
pub fn counts() -> (usize, usize) {
    with_table(|t| (t.roots.len(), t.streams.len())).unwrap_or((0, 0))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    //! The table against the stand-in proxy of [`crate::test_host`]. Each test runs on its own
    //! thread, so each has its own table.
    use super::*;
    use crate::exports::*;
    use crate::test_host::{log_lines, replies, set_configuration};

    /// One provider with an inline key (RFC 8037's Ed25519 example), verified in Rust.
    fn config() -> String {
        r#"{"crypto": "wasm", "providers": [{"name": "mesh", "issuer": "https://issuer.example",
            "audiences": ["spiffe://example.org/server"],
            "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}]}"#
            .to_owned()
    }

    /// The filter's logger (what `_initialize` installs), without its panic hook, which would
    /// hide test failures in the stand-in's log.
    fn logger() {
        let _ = log::set_logger(&crate::host::LOGGER);
        log::set_max_level(log::LevelFilter::Info);
    }

    fn warnings_containing(needle: &str) -> usize {
        log_lines()
            .iter()
            .filter(|(level, m)| *level == 3 && m.contains(needle))
            .count()
    }

    #[test]
    fn a_request_goes_root_to_http_context_and_back() {
        logger();
        proxy_on_context_create(1, 0);
        assert_eq!(proxy_on_vm_start(1, 0), 1);
        set_configuration(&config());
        assert_eq!(proxy_on_configure(1, 0), 1, "{:?}", log_lines());
        proxy_on_context_create(2, 1);
        assert_eq!(counts(), (1, 1));
        // No token: the engine denies (missing_token) and the adapter answers 401.
        assert_eq!(proxy_on_request_headers(2, 0, 1), Action::Pause as u32);
        assert_eq!(replies(), vec![401]);
        proxy_on_tick(1);
        assert_eq!(proxy_on_done(2), 1);
        proxy_on_delete(2);
        assert_eq!(proxy_on_done(1), 1);
        proxy_on_delete(1);
        assert_eq!(counts(), (0, 0));
        assert_eq!(complaints(), 0, "{:?}", log_lines());
    }

    /// One provider with remote keys; the stand-in proxy has no shared data and answers every
    /// HTTP call with token 7.
    fn remote_config() -> String {
        r#"{"crypto": "wasm", "providers": [{"name": "mesh", "issuer": "https://issuer.example",
            "audiences": ["spiffe://example.org/server"],
            "remote_jwks": {"cluster": "issuer", "uri": "https://issuer.example/jwks"}}],
            "spiffe": null}"#
            .to_owned()
    }

    /// A compact JWS for the remote provider (never verified: its keys never arrive).
    const TOKEN: &str =
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIn0.c2ln";

    /// Root 1 configured with [`remote_config`], and request context 2 carrying [`TOKEN`].
    fn remote_root_and_request() {
        logger();
        crate::test_host::set_request_header("authorization", &format!("Bearer {TOKEN}"));
        proxy_on_context_create(1, 0);
        set_configuration(&remote_config());
        assert_eq!(proxy_on_configure(1, 0), 1, "{:?}", log_lines());
        proxy_on_context_create(2, 1);
    }

    #[test]
    fn a_request_held_for_keys_is_woken_by_the_fetch_and_answered_once() {
        remote_root_and_request();
        // No keys yet, and a fetch is due: held, not answered.
        assert_eq!(proxy_on_request_headers(2, 0, 1), Action::Pause as u32);
        assert!(replies().is_empty());
        // The tick dispatches the fetch (token 7); its response has no status: a failed fetch,
        // which wakes the held request for its final attempt.
        proxy_on_tick(1);
        proxy_on_http_call_response(1, 7, 0, 0, 0);
        assert_eq!(replies(), vec![401]);
        assert_eq!(warnings_containing("reason=jwks_unavailable"), 1);
        // Woken once: a second response changes nothing.
        proxy_on_http_call_response(1, 7, 0, 0, 0);
        proxy_on_tick(1);
        assert_eq!(replies(), vec![401]);
        assert_eq!(proxy_on_done(2), 1);
        proxy_on_delete(2);
    }

    #[test]
    fn a_held_request_that_ends_first_is_forgotten() {
        remote_root_and_request();
        assert_eq!(proxy_on_request_headers(2, 0, 1), Action::Pause as u32);
        proxy_on_tick(1);
        // The client went away before the keys.
        assert_eq!(proxy_on_done(2), 1);
        proxy_on_delete(2);
        proxy_on_http_call_response(1, 7, 0, 0, 0);
        assert!(replies().is_empty());
        assert!(!log_lines().iter().any(|(_, m)| m.contains("denied")));
    }

    #[test]
    fn an_unknown_call_token_is_logged_and_ignored() {
        logger();
        proxy_on_context_create(1, 0);
        set_configuration(&config());
        assert_eq!(proxy_on_configure(1, 0), 1, "{:?}", log_lines());
        // The fetcher dispatched no call (the provider has inline keys): token 42 is unknown.
        proxy_on_http_call_response(1, 42, 0, 10, 0);
        assert_eq!(complaints(), 1);
        assert_eq!(warnings_containing("unknown token 42"), 1);
        // A response for a context that dispatched nothing.
        proxy_on_http_call_response(99, 43, 0, 10, 0);
        assert_eq!(warnings_containing("token 43"), 1);
        assert!(replies().is_empty());
        assert_eq!(counts(), (1, 0));
    }

    #[test]
    fn unknown_context_ids_get_the_neutral_value() {
        logger();
        proxy_on_tick(7);
        assert_eq!(proxy_on_vm_start(7, 0), 1);
        assert_eq!(proxy_on_configure(7, 0), 0);
        assert_eq!(proxy_on_done(7), 1);
        proxy_on_delete(7);
        proxy_on_context_create(8, 7);
        assert_eq!(counts(), (0, 0));
        assert_eq!(complaints(), 6);
        assert_eq!(warnings_containing("unknown"), 6, "{:?}", log_lines());
    }

    #[test]
    fn a_request_without_a_context_fails_closed() {
        logger();
        // Its root refused its configuration, so its HTTP context was never created.
        proxy_on_context_create(1, 0);
        set_configuration(r#"{"providers": []}"#);
        assert_eq!(proxy_on_configure(1, 0), 0);
        proxy_on_context_create(2, 1);
        assert_eq!(counts(), (1, 0));
        assert_eq!(warnings_containing("has no configuration"), 1);
        assert_eq!(proxy_on_request_headers(2, 0, 1), Action::Pause as u32);
        assert_eq!(replies(), vec![503]);
        assert_eq!(warnings_containing("unknown HTTP context 2"), 1);
    }

    #[test]
    fn a_context_created_twice_keeps_the_first() {
        logger();
        proxy_on_context_create(1, 0);
        set_configuration(&config());
        assert_eq!(proxy_on_configure(1, 0), 1);
        proxy_on_context_create(1, 0);
        proxy_on_context_create(2, 1);
        proxy_on_context_create(2, 1);
        assert_eq!(counts(), (1, 1));
        assert_eq!(warnings_containing("created twice"), 2);
        // The root kept its configuration.
        assert_eq!(proxy_on_request_headers(2, 0, 1), Action::Pause as u32);
        assert_eq!(replies(), vec![401]);
    }

    #[test]
    fn complaints_are_logged_a_bounded_number_of_times() {
        logger();
        for id in 100..200 {
            proxy_on_tick(id);
        }
        assert_eq!(complaints(), 100);
        assert_eq!(warnings_containing("ignored"), COMPLAINT_LIMIT as usize);
        assert_eq!(warnings_containing("not logged"), 1);
    }

    #[test]
    fn memory_handed_to_the_host_comes_back_as_a_vec() {
        logger();
        let p = proxy_on_memory_allocate(16);
        assert!(!p.is_null());
        unsafe { std::ptr::write_bytes(p, 7, 16) };
        let v = unsafe { Vec::from_raw_parts(p, 16, 16) };
        assert_eq!(v, vec![7; 16]);
        assert!(!proxy_on_memory_allocate(0).is_null());
        // More than can exist: null, not an abort.
        assert!(proxy_on_memory_allocate(usize::MAX).is_null());
    }
}
