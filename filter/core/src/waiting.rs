//! Requests held until their provider's keys arrive: who waits, for which provider, until when.
//!
//! A request whose token names a remote provider with no keys yet (or an unknown `kid` while a
//! refetch is under way) is held here instead of being refused at once. It is woken when the
//! provider's keys change or its fetch ends (either way, [`Waiting::take_ready`] with the
//! provider as settled), or when its deadline passes; it is forgotten when its stream ends
//! first. Bounded: beyond [`Waiting::capacity`] a request is decided at once, and the engine
//! reports that as `tokenbind.jwks.wait_list_full`, not as anything else.

/// One held request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The proxy's id for the request (its HTTP context).
    pub context_id: u32,
    /// The provider whose keys it waits for (index into `Config::providers`).
    pub provider: usize,
    /// Unix milliseconds after which it is decided with whatever keys are there.
    pub deadline_ms: u64,
}

/// The held requests of one VM.
#[derive(Debug)]
pub struct Waiting {
    held: Vec<Held>,
    capacity: usize,
}

/// Requests held per VM by default; beyond it they are decided at once.
pub const DEFAULT_CAPACITY: usize = 10_000;

impl Default for Waiting {
    fn default() -> Self {
        Waiting::new(DEFAULT_CAPACITY)
    }
}

impl Waiting {
    pub fn new(capacity: usize) -> Self {
        Waiting {
            held: Vec::new(),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds a request. False if the list is full (the request must be decided now). A context
    /// already held is held once, with the new provider and deadline.
    pub fn hold(&mut self, held: Held) -> bool {
        if let Some(h) = self
            .held
            .iter_mut()
            .find(|h| h.context_id == held.context_id)
        {
            *h = held;
            return true;
        }
        if self.held.len() >= self.capacity {
            return false;
        }
        self.held.push(held);
        true
    }

    /// Whether a request is held.
    pub fn is_held(&self, context_id: u32) -> bool {
        self.held.iter().any(|h| h.context_id == context_id)
    }

    /// Forgets a request (its stream ended). True if it was held.
    pub fn forget(&mut self, context_id: u32) -> bool {
        let before = self.held.len();
        self.held.retain(|h| h.context_id != context_id);
        self.held.len() != before
    }

    /// Takes the requests that can be decided now: their provider is `settled` (its keys
    /// changed or its fetch ended), or their deadline passed. In the order they were held.
    pub fn take_ready(&mut self, settled: &[usize], now_ms: u64) -> Vec<Held> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let (ready, waiting): (Vec<Held>, Vec<Held>) = self
            .held
            .drain(..)
            .partition(|h| now_ms >= h.deadline_ms || settled.contains(&h.provider));
        self.held = waiting;
        ready
    }

    /// The earliest deadline, if any request is held.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.held.iter().map(|h| h.deadline_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(context_id: u32, provider: usize, deadline_ms: u64) -> Held {
        Held {
            context_id,
            provider,
            deadline_ms,
        }
    }

    #[test]
    fn woken_by_their_provider_or_their_deadline_in_order() {
        let mut w = Waiting::new(10);
        assert!(w.hold(held(1, 0, 1_000)));
        assert!(w.hold(held(2, 1, 1_000)));
        assert!(w.hold(held(3, 0, 5_000)));
        assert_eq!(w.next_deadline_ms(), Some(1_000));
        // Provider 0 settled: 1 and 3 wake, 2 keeps waiting.
        let ready: Vec<u32> = w
            .take_ready(&[0], 500)
            .iter()
            .map(|h| h.context_id)
            .collect();
        assert_eq!(ready, vec![1, 3]);
        assert!(w.is_held(2));
        // Nothing settled, before the deadline: nobody.
        assert!(w.take_ready(&[], 999).is_empty());
        // The deadline passed.
        assert_eq!(w.take_ready(&[], 1_000), vec![held(2, 1, 1_000)]);
        assert!(w.is_empty());
    }

    #[test]
    fn forgotten_requests_are_never_woken() {
        let mut w = Waiting::new(10);
        w.hold(held(1, 0, 1_000));
        assert!(w.forget(1));
        assert!(!w.forget(1));
        assert!(w.take_ready(&[0], 2_000).is_empty());
    }

    #[test]
    fn the_cap_holds_and_a_context_is_held_once() {
        let mut w = Waiting::new(3);
        for id in 0..3 {
            assert!(w.hold(held(id, 0, 1_000)));
        }
        assert!(!w.hold(held(99, 0, 1_000)), "full");
        assert_eq!(w.len(), 3);
        // Holding a held context again replaces it, even when full.
        assert!(w.hold(held(1, 2, 9_000)));
        assert_eq!(w.len(), 3);
        assert_eq!(w.take_ready(&[2], 0), vec![held(1, 2, 9_000)]);
        // Room again.
        assert!(w.hold(held(99, 0, 1_000)));
    }
}
