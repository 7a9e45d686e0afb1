//! The libzmq socket options every end of the fabric agrees on: ZMTP heartbeats (proxy,
//! publisher, subscriber) and the set-up of a client socket (publisher and subscriber):
//! queue bound, linger, reconnect back-off, heartbeats, CURVE; and setting the int options
//! the `zmq` crate has no setter for.

use crate::curve::CurveClient;
use std::time::Duration;

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

/// libzmq's reconnect interval after a lost connection, doubling up to [`RECONNECT_MAX`].
pub const RECONNECT: Duration = Duration::from_millis(100);
/// A subscriber's first reconnect comes sooner: it talks to its own node's proxy (a unix
/// socket, or the node's address), so trying again costs nothing, and while it waits it
/// receives nothing. In a proxy rollout the new proxy already serves the path when the old one
/// lets go, so this interval (plus up to as much again of libzmq's jitter) is most of what each
/// node's subscribers lose (measured in the e2e rollout test).
pub const SUBSCRIBER_RECONNECT: Duration = Duration::from_millis(10);
/// The cap of the reconnect back-off: a proxy that comes back is found within this long.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How a client socket (a publisher's PUB, a subscriber's SUB) is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Messages queued per peer: SNDHWM of a PUB, RCVHWM of a SUB.
    pub hwm: i32,
    /// How long closing waits for unsent messages.
    pub linger: Duration,
    /// ZMTP heartbeat interval (None: no heartbeats).
    pub heartbeat: Option<Duration>,
    /// CURVE: our key pair and the proxy's public key (None: no security mechanism).
    pub curve: Option<CurveClient>,
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

/// A client socket of `kind` (PUB or SUB) in `context`, with `options` applied.
pub fn client_socket(
    context: &zmq::Context,
    kind: zmq::SocketType,
    options: &ClientOptions,
) -> zmq::Result<zmq::Socket> {
    let socket = context.socket(kind)?;
    match kind {
        zmq::SUB | zmq::XSUB => socket.set_rcvhwm(options.hwm)?,
        _ => socket.set_sndhwm(options.hwm)?,
    }
    socket.set_linger(millis(options.linger))?;
    let reconnect = match kind {
        zmq::SUB | zmq::XSUB => SUBSCRIBER_RECONNECT,
        _ => RECONNECT,
    };
    socket.set_reconnect_ivl(millis(reconnect))?;
    socket.set_reconnect_ivl_max(millis(RECONNECT_MAX))?;
    if let Some(interval) = options.heartbeat {
        HeartbeatOptions::from_interval(interval).apply(&socket)?;
    }
    if let Some(curve) = &options.curve {
        curve.apply(&socket)?;
    }
    Ok(socket)
}

unsafe extern "C" {
    fn zmq_setsockopt(
        socket: *mut std::ffi::c_void,
        option: std::ffi::c_int,
        value: *const std::ffi::c_void,
        len: usize,
    ) -> std::ffi::c_int;
}

/// The raw libzmq socket behind `socket`, for the options and calls the `zmq` crate lacks.
/// Valid for as long as `socket` lives.
pub fn raw_socket(socket: &mut zmq::Socket) -> *mut std::ffi::c_void {
    socket.as_mut_ptr()
}

/// Sets an int-valued option the `zmq` crate has no setter for on the raw `socket`.
pub(crate) fn set_int_option(
    socket: *mut std::ffi::c_void,
    option: std::ffi::c_int,
    value: std::ffi::c_int,
) -> Result<(), zmq::Error> {
    // SAFETY: a live socket (the caller's) and an int option value of the size given.
    let rc = unsafe {
        zmq_setsockopt(
            socket,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<std::ffi::c_int>(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(last_zmq_error()) }
}

/// The error of the libzmq call that just failed on this thread (libzmq sets errno).
/// `zmq::Error::from_raw` panics on a code it does not know; "no error recorded" (0) is reported
/// as EINVAL instead of reaching it.
pub(crate) fn last_zmq_error() -> zmq::Error {
    match std::io::Error::last_os_error().raw_os_error() {
        Some(code) if code != 0 => zmq::Error::from_raw(code),
        _ => zmq::Error::EINVAL,
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
    fn a_client_socket_carries_its_options() {
        let context = zmq::Context::new();
        let options = ClientOptions {
            hwm: 77,
            linger: Duration::from_millis(250),
            heartbeat: Some(Duration::from_secs(2)),
            curve: None,
        };
        let publisher = client_socket(&context, zmq::PUB, &options).unwrap();
        assert_eq!(publisher.get_sndhwm().unwrap(), 77);
        assert_eq!(publisher.get_linger().unwrap(), 250);
        assert_eq!(publisher.get_reconnect_ivl().unwrap(), 100);
        assert_eq!(publisher.get_reconnect_ivl_max().unwrap(), 5000);
        assert_eq!(publisher.get_heartbeat_ivl().unwrap(), 2000);
        let subscriber = client_socket(&context, zmq::SUB, &options).unwrap();
        assert_eq!(subscriber.get_rcvhwm().unwrap(), 77);
        assert_eq!(subscriber.get_reconnect_ivl().unwrap(), 10);
        assert_eq!(subscriber.get_reconnect_ivl_max().unwrap(), 5000);
    }
}
