//! Pure: the proxies whose CURVE handshake refused our key, and when to try each again.
//!
//! libzmq 4.3 ends a connection for good when the server's ZAP handler refuses the handshake
//! (the client takes the ERROR command as a protocol error and never reconnects; measured in
//! `tests/proxy_curve.rs`). A publisher started before its key was listed would so stay cut off
//! from that proxy until it restarted. The socket thread reconnects a refused endpoint itself
//! every [`AUTH_RETRY`] instead: a key added to the allow-list is admitted within a second.

use crate::endpoint_list::Endpoint;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long after a refusal the endpoint is connected again. A refused publisher costs each
/// proxy one CURVE handshake this often, and is admitted this long after its key is listed
/// (plus the proxy's own reading of its allow-list).
pub const AUTH_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct RefusedProxies {
    /// Refused, to be connected again at this instant.
    retry_at: BTreeMap<Endpoint, Instant>,
    /// Connected again, the outcome not known yet.
    retried: BTreeSet<Endpoint>,
}

impl RefusedProxies {
    /// `endpoint` refused our key at `now`. True when it had not (a refusal worth a log line).
    pub fn refused(&mut self, endpoint: Endpoint, now: Instant) -> bool {
        let known = self.retried.remove(&endpoint);
        self.retry_at.insert(endpoint, now + AUTH_RETRY).is_none() && !known
    }

    /// `endpoint` completed a handshake. True when it had refused us before.
    pub fn admitted(&mut self, endpoint: &Endpoint) -> bool {
        let retried = self.retried.remove(endpoint);
        self.retry_at.remove(endpoint).is_some() || retried
    }

    /// `endpoint` left the membership: nothing to retry.
    pub fn forget(&mut self, endpoint: &Endpoint) {
        self.retry_at.remove(endpoint);
        self.retried.remove(endpoint);
    }

    /// The endpoints to connect again at `now`. Each then waits for its outcome: a refusal
    /// schedules it again, a handshake clears it.
    pub fn due(&mut self, now: Instant) -> Vec<Endpoint> {
        let due: Vec<Endpoint> = self
            .retry_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(endpoint, _)| endpoint.clone())
            .collect();
        for endpoint in &due {
            self.retry_at.remove(endpoint);
            self.retried.insert(endpoint.clone());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint::parse(&format!("tcp://10.0.0.1:{port}")).unwrap()
    }

    #[test]
    fn a_refused_proxy_is_retried_after_the_interval_until_it_admits_us() {
        let mut refused = RefusedProxies::default();
        let t0 = Instant::now();
        assert!(refused.refused(endpoint(1), t0), "the first refusal is news");
        assert!(refused.due(t0).is_empty());
        assert!(refused.due(t0 + AUTH_RETRY / 2).is_empty());
        assert_eq!(refused.due(t0 + AUTH_RETRY), [endpoint(1)]);
        assert!(refused.due(t0 + AUTH_RETRY * 10).is_empty(), "once per refusal");
        // Refused again after the retry: not news, scheduled again.
        let t1 = t0 + AUTH_RETRY;
        assert!(!refused.refused(endpoint(1), t1));
        assert_eq!(refused.due(t1 + AUTH_RETRY), [endpoint(1)]);
        assert!(refused.admitted(&endpoint(1)));
        assert!(!refused.admitted(&endpoint(1)), "admitted once");
        assert!(!refused.admitted(&endpoint(2)), "never refused");
    }

    #[test]
    fn a_proxy_that_left_is_not_retried() {
        let mut refused = RefusedProxies::default();
        let t0 = Instant::now();
        refused.refused(endpoint(1), t0);
        refused.refused(endpoint(2), t0);
        refused.forget(&endpoint(1));
        assert_eq!(refused.due(t0 + AUTH_RETRY), [endpoint(2)]);
        refused.forget(&endpoint(2));
        assert!(!refused.admitted(&endpoint(2)));
    }
}
