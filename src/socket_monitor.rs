//! Makes sense of libzmq socket monitor events (pure): which peers are connected, which
//! were cut off during the handshake, which went away.
//!
//! libzmq reports ACCEPTED, CONNECTED and DISCONNECTED with the connection's file descriptor as
//! the event value, so the connected set is keyed by descriptor; a DISCONNECTED for a
//! descriptor never seen accepted is still counted as a disconnect but changes nothing else.
//! CONNECTED (a connection the socket made itself: a relay's link to a leaf) is not a peer
//! connected to the proxy and is left to the forwarder.
//!
//! Shared by the proxy (its peers) and the publisher (its handshakes with the proxies), so it
//! lives beside `socket_options`, not under `proxy`.

use std::collections::HashSet;

// Event codes from zmq.h (stable API of libzmq 4.3); matched here rather than through
// `zmq::SocketEvent::from_raw`, which panics on codes it does not know.
pub const EVENT_CONNECTED: u16 = 0x0001;
pub const EVENT_ACCEPTED: u16 = 0x0020;
pub const EVENT_DISCONNECTED: u16 = 0x0200;
pub const EVENT_MONITOR_STOPPED: u16 = 0x0400;
pub const EVENT_HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
pub const EVENT_HANDSHAKE_SUCCEEDED: u16 = 0x1000;
pub const EVENT_HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;
pub const EVENT_HANDSHAKE_FAILED_AUTH: u16 = 0x4000;

/// The events the proxy asks libzmq for.
pub const WATCHED_EVENTS: i32 = (EVENT_CONNECTED
    | EVENT_ACCEPTED
    | EVENT_DISCONNECTED
    | EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | EVENT_HANDSHAKE_FAILED_PROTOCOL
    | EVENT_HANDSHAKE_FAILED_AUTH) as i32;

/// One decoded monitor event: the first frame is a 16-bit event code and a 32-bit value,
/// in host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    pub code: u16,
    pub value: u32,
}

impl MonitorEvent {
    pub fn parse(first_frame: &[u8]) -> Option<Self> {
        let code = u16::from_ne_bytes(first_frame.get(0..2)?.try_into().ok()?);
        let value = u32::from_ne_bytes(first_frame.get(2..6)?.try_into().ok()?);
        Some(Self { code, value })
    }
}

/// What an event changed, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Accepted,
    Disconnected,
    HandshakeFailed,
    Stopped,
    Ignored,
}

/// Connected peers on one socket.
#[derive(Debug, Default)]
pub struct PeerTracker {
    connected: HashSet<u32>,
}

impl PeerTracker {
    pub fn apply(&mut self, event: MonitorEvent) -> PeerChange {
        match event.code {
            EVENT_ACCEPTED => {
                self.connected.insert(event.value);
                PeerChange::Accepted
            }
            EVENT_DISCONNECTED => {
                self.connected.remove(&event.value);
                PeerChange::Disconnected
            }
            EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | EVENT_HANDSHAKE_FAILED_PROTOCOL
            | EVENT_HANDSHAKE_FAILED_AUTH => PeerChange::HandshakeFailed,
            EVENT_MONITOR_STOPPED => PeerChange::Stopped,
            _ => PeerChange::Ignored,
        }
    }

    pub fn connected(&self) -> usize {
        self.connected.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(code: u16, value: u32) -> Vec<u8> {
        let mut frame = code.to_ne_bytes().to_vec();
        frame.extend_from_slice(&value.to_ne_bytes());
        frame
    }

    #[test]
    fn parses_event_frames_and_refuses_short_ones() {
        assert_eq!(
            MonitorEvent::parse(&frame(EVENT_ACCEPTED, 17)),
            Some(MonitorEvent {
                code: EVENT_ACCEPTED,
                value: 17
            })
        );
        assert_eq!(MonitorEvent::parse(&[0x20, 0, 1]), None);
        assert_eq!(MonitorEvent::parse(&[]), None);
    }

    #[test]
    fn counts_connected_peers_by_descriptor() {
        let mut peers = PeerTracker::default();
        let apply = |peers: &mut PeerTracker, code, value| {
            peers.apply(MonitorEvent::parse(&frame(code, value)).expect("well-formed test frame"))
        };
        assert_eq!(apply(&mut peers, EVENT_ACCEPTED, 10), PeerChange::Accepted);
        assert_eq!(apply(&mut peers, EVENT_ACCEPTED, 11), PeerChange::Accepted);
        assert_eq!(peers.connected(), 2);
        assert_eq!(
            apply(&mut peers, EVENT_HANDSHAKE_FAILED_PROTOCOL, 71),
            PeerChange::HandshakeFailed
        );
        assert_eq!(
            apply(&mut peers, EVENT_DISCONNECTED, 10),
            PeerChange::Disconnected
        );
        assert_eq!(
            apply(&mut peers, EVENT_DISCONNECTED, 99),
            PeerChange::Disconnected
        );
        assert_eq!(peers.connected(), 1);
        assert_eq!(apply(&mut peers, 0x1000, 0), PeerChange::Ignored);
        // A connection the socket made itself is no peer connected to it.
        assert_eq!(apply(&mut peers, EVENT_CONNECTED, 12), PeerChange::Ignored);
        assert_eq!(peers.connected(), 1);
    }
}
