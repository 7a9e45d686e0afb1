//! The proxy's configuration and the libzmq socket options derived from it (pure).

use super::ProxyError;
use std::time::Duration;

/// How one proxy binds and bounds its sockets.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// XSUB bind endpoints where publishers connect, e.g. `tcp://*:7100`, `tcp://127.0.0.1:0`.
    pub publishers: Vec<String>,
    /// XPUB bind endpoints where local subscribers connect: `ipc:///path/ns.name.sock`
    /// and/or `tcp://...`.
    pub subscribers: Vec<String>,
    /// Per-peer queue bound in messages (SNDHWM and RCVHWM on both sockets).
    pub hwm: i32,
    /// ZMQ_MAXMSGSIZE on both sockets: a peer sending a bigger frame is disconnected.
    pub max_message_bytes: i64,
    /// ZMTP heartbeat interval; the timeout and the TTL announced to peers are three times it.
    /// Zero disables heartbeats.
    pub heartbeat: Duration,
    /// Permission bits of the unix socket files, 0o660 by default.
    pub socket_mode: u32,
}

/// Default per-peer queue bound (libzmq's own default).
pub const DEFAULT_HWM: i32 = 1000;
/// Default largest frame accepted from a peer: the fabric carries small control messages.
pub const DEFAULT_MAX_MESSAGE_BYTES: i64 = 1 << 20;
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Default permission bits of unix socket files.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// How long shutdown waits for queued messages to leave: bounded so SIGTERM always ends.
pub const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            publishers: Vec::new(),
            subscribers: Vec::new(),
            hwm: DEFAULT_HWM,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            heartbeat: DEFAULT_HEARTBEAT,
            socket_mode: DEFAULT_SOCKET_MODE,
        }
    }
}

/// The heartbeat options libzmq takes, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatOptions {
    /// ZMQ_HEARTBEAT_IVL: how often a PING is sent on an otherwise idle connection.
    pub interval_ms: i32,
    /// ZMQ_HEARTBEAT_TIMEOUT: how long without any traffic after a PING before disconnecting.
    pub timeout_ms: i32,
    /// ZMQ_HEARTBEAT_TTL: asks the remote peer to drop us after this long without traffic.
    pub ttl_ms: i32,
}

/// libzmq carries the TTL on the wire in deciseconds in 16 bits.
const MAX_HEARTBEAT_TTL_MS: i64 = 6_553_599;

impl HeartbeatOptions {
    /// Derives timeout and TTL as three intervals, so one or two lost PINGs are tolerated.
    pub fn from_interval(interval: Duration) -> Self {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let interval_ms = interval_ms.min(i64::from(i32::MAX) / 3);
        let timeout_ms = interval_ms * 3;
        Self {
            // The min() above keeps every value within i32.
            interval_ms: interval_ms as i32,
            timeout_ms: timeout_ms as i32,
            ttl_ms: timeout_ms.min(MAX_HEARTBEAT_TTL_MS) as i32,
        }
    }

    /// Sets the three options on `socket` (nothing when the interval is zero: heartbeats off).
    /// Proxies, publishers and subscribers all use this, so both ends agree on the timing.
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<()> {
        if self.interval_ms > 0 {
            socket.set_heartbeat_ivl(self.interval_ms)?;
            socket.set_heartbeat_timeout(self.timeout_ms)?;
            socket.set_heartbeat_ttl(self.ttl_ms)?;
        }
        Ok(())
    }
}

impl ProxyConfig {
    /// Refuses configurations libzmq would reject late or interpret surprisingly.
    pub fn validate(&self) -> Result<(), ProxyError> {
        if self.publishers.is_empty() {
            return Err(ProxyError::Config(
                "at least one publisher endpoint is needed".into(),
            ));
        }
        if self.subscribers.is_empty() {
            return Err(ProxyError::Config(
                "at least one subscriber endpoint is needed".into(),
            ));
        }
        for endpoint in self.publishers.iter().chain(&self.subscribers) {
            if !(endpoint.starts_with("tcp://") || endpoint.starts_with("ipc://")) {
                return Err(ProxyError::Config(format!(
                    "endpoint {endpoint:?}: only tcp:// and ipc:// are supported"
                )));
            }
        }
        if self.hwm < 0 {
            return Err(ProxyError::Config(format!("hwm {} is negative", self.hwm)));
        }
        if self.max_message_bytes < -1 || self.max_message_bytes == 0 {
            return Err(ProxyError::Config(format!(
                "max message bytes {} must be positive (or -1 for no limit)",
                self.max_message_bytes
            )));
        }
        if self.socket_mode > 0o777 {
            return Err(ProxyError::Config(format!(
                "socket mode {:o} is not a permission mode",
                self.socket_mode
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_timeout_and_ttl_are_three_intervals() {
        let options = HeartbeatOptions::from_interval(Duration::from_secs(2));
        assert_eq!(
            options,
            HeartbeatOptions {
                interval_ms: 2000,
                timeout_ms: 6000,
                ttl_ms: 6000
            }
        );
    }

    #[test]
    fn heartbeat_ttl_is_capped_at_what_the_wire_carries() {
        let options = HeartbeatOptions::from_interval(Duration::from_secs(3600));
        assert_eq!(options.interval_ms, 3_600_000);
        assert_eq!(options.ttl_ms, 6_553_599);
    }

    #[test]
    fn huge_heartbeat_does_not_overflow() {
        let options = HeartbeatOptions::from_interval(Duration::from_secs(u64::MAX));
        assert!(options.interval_ms > 0 && options.timeout_ms >= options.interval_ms);
    }

    #[test]
    fn validation_refuses_missing_endpoints_and_odd_values() {
        let good = ProxyConfig {
            publishers: vec!["tcp://127.0.0.1:0".into()],
            subscribers: vec!["ipc:///tmp/x.sock".into()],
            ..ProxyConfig::default()
        };
        assert!(good.validate().is_ok());
        assert!(
            ProxyConfig {
                publishers: vec![],
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                subscribers: vec![],
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                subscribers: vec!["inproc://x".into()],
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                hwm: -1,
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                max_message_bytes: 0,
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ProxyConfig {
                socket_mode: 0o1777,
                ..good
            }
            .validate()
            .is_err()
        );
    }
}
