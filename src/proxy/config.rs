//! The proxy's configuration (pure).

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
