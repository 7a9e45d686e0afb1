//! Bytes a TCP peer has sent that libzmq holds and the proxy has not received, and when that
//! is too much (pure).
//!
//! libzmq's pipes pass a multipart message on only once its last frame arrived and count only
//! complete messages against the high-water mark, so a peer that sends frames with the MORE
//! flag forever grows a buffer below the application (about 64 bytes of memory per frame, each
//! frame as little as 2 bytes on the wire) that no socket option bounds. The proxy bounds it
//! from outside: per TCP connection it compares the bytes libzmq has read from the socket
//! (the kernel's `tcpi_bytes_received` less the receive queue) with the wire bytes of the
//! frames the proxy has received from that connection. The difference is what libzmq holds
//! (frames not yet received by the proxy, complete or not) plus what never becomes a frame
//! the proxy sees: the greeting and handshake, and heartbeat commands.
//!
//! Two rules, checked on a timer, never per message:
//! - **unfinished message**: when the proxy has caught up (its socket had nothing left to
//!   receive), a connection that completed no message since the last check and whose bytes
//!   read grew by more than one message's worth (plus a small allowance for heartbeats) since
//!   its last completed message is stuck in a message that does not end. Catches it within
//!   a check or two.
//! - **in flight**: whatever the proxy is doing, the difference above may not exceed the
//!   per-peer bound the configuration already promises (`hwm` messages of `max_message_bytes`)
//!   plus a margin. Heartbeats are forgiven only at checks where the proxy had caught up and
//!   the connection completed a message (a stuck peer never does), at a bounded rate, so an
//!   active honest peer never accumulates them; a peer that sends nothing but heartbeats for a
//!   very long time reaches the bound and is reconnected (docs/security.md gives the time).

use std::time::{Duration, Instant};

/// Wire bytes of one frame of `len` bytes: the ZMTP 3 frame header, and with CURVE the
/// MESSAGE command wrapping each frame (name, nonce, flags and MAC: 33 bytes). This is the
/// least a peer can have sent for it: ZMTP 3.1 subscription commands are a few bytes longer,
/// which only makes the estimate of what libzmq holds larger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireCost {
    extra: u64,
    /// Frames up to this many bytes have a 1-byte size, longer ones an 8-byte size.
    short_up_to: usize,
}

impl WireCost {
    pub const NULL: WireCost = WireCost {
        extra: 0,
        short_up_to: 255,
    };
    pub const CURVE: WireCost = WireCost {
        extra: 33,
        short_up_to: 255 - 33,
    };

    pub fn of(curve: bool) -> Self {
        if curve { Self::CURVE } else { Self::NULL }
    }

    #[inline]
    pub fn frame(self, len: usize) -> u64 {
        len as u64 + self.extra + if len <= self.short_up_to { 2 } else { 9 }
    }

    /// The most wire bytes one frame's framing can add.
    pub fn max_overhead(self) -> u64 {
        self.extra + 9
    }
}

/// The bounds, from the proxy's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlightLimits {
    /// The in-flight rule's bound; `None` when the configuration bounds no queue (hwm 0 or no
    /// message size limit, benchmarks only).
    pub max_in_flight: Option<u64>,
    /// The unfinished-message rule's bound; `None` without a message size limit.
    pub max_unfinished: Option<u64>,
}

/// Added to the per-peer bound: the handshake, the decoder's read buffer, and heartbeats.
pub const MARGIN: u64 = 16 << 20;
/// Added to one message's worth in the unfinished-message rule: the decoder's read buffer and
/// what arrives between the proxy catching up and the check.
pub const UNFINISHED_SLACK: u64 = 64 << 10;
/// Heartbeat bytes per second a connection may send without completing a message (PING and
/// PONG are 7-44 bytes each; 1 KiB/s allows a PING every 50 ms with CURVE).
pub const HEARTBEAT_ALLOWANCE: u64 = 1024;

impl InFlightLimits {
    pub fn new(hwm: i32, max_message_bytes: i64, max_frames: u32, wire: WireCost) -> Self {
        let message = u64::try_from(max_message_bytes)
            .ok()
            .map(|bytes| bytes.saturating_add(u64::from(max_frames).saturating_mul(wire.max_overhead())));
        Self {
            max_in_flight: message.filter(|_| hwm > 0).map(|message| {
                u64::try_from(hwm)
                    .unwrap_or(0)
                    .saturating_mul(message)
                    .saturating_add(MARGIN)
            }),
            max_unfinished: message.map(|message| message.saturating_add(UNFINISHED_SLACK)),
        }
    }
}

/// Why a connection is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Held bytes above the per-peer bound.
    InFlight(u64),
    /// Bytes read without a message completing, above one message's worth.
    Unfinished(u64),
}

/// One connection's account.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    /// Wire bytes of the frames the proxy received from the connection.
    delivered: u64,
    /// Heartbeat bytes forgiven so far.
    forgiven: u64,
    /// Whether a message was received since the last check.
    completed_since_check: bool,
    /// Held bytes and time at the last check after which a message completed.
    base: Option<(u64, Instant)>,
    /// Time of the last check.
    checked: Option<Instant>,
}

impl InFlight {
    /// The proxy received a message of `wire` bytes from the connection.
    #[inline]
    pub fn delivered(&mut self, wire: u64) {
        self.delivered = self.delivered.wrapping_add(wire);
        self.completed_since_check = true;
    }

    /// A check, with `read` the bytes libzmq has read from the connection so far. `caught_up`:
    /// the proxy received everything its socket had complete just before.
    pub fn check(&mut self, read: u64, now: Instant, caught_up: bool, limits: InFlightLimits) -> Verdict {
        let held = read.saturating_sub(self.delivered);
        let since_check = self
            .checked
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.checked = Some(now);
        let completed = std::mem::take(&mut self.completed_since_check);
        if caught_up && completed {
            let pending = held.saturating_sub(self.forgiven);
            self.forgiven += pending.min(allowance(since_check));
        }
        let counted = held.saturating_sub(self.forgiven);
        if limits.max_in_flight.is_some_and(|max| counted > max) {
            return Verdict::InFlight(counted);
        }
        match self.base {
            Some((base, at)) if caught_up && !completed => {
                let grown = held.saturating_sub(base);
                let allowed = limits
                    .max_unfinished
                    .map(|max| max.saturating_add(allowance(now.saturating_duration_since(at))));
                if allowed.is_some_and(|allowed| grown > allowed) {
                    return Verdict::Unfinished(grown);
                }
            }
            Some(_) if !completed => {}
            _ => self.base = Some((held, now)),
        }
        Verdict::Fine
    }

    /// The bytes counted against the in-flight bound at the last check's figures.
    pub fn counted(&self, read: u64) -> u64 {
        read.saturating_sub(self.delivered).saturating_sub(self.forgiven)
    }
}

fn allowance(elapsed: Duration) -> u64 {
    let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    millis.saturating_mul(HEARTBEAT_ALLOWANCE) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits() -> InFlightLimits {
        InFlightLimits::new(10, 1000, 4, WireCost::NULL)
    }

    #[test]
    fn wire_cost_of_frames() {
        assert_eq!(WireCost::NULL.frame(0), 2);
        assert_eq!(WireCost::NULL.frame(255), 257);
        assert_eq!(WireCost::NULL.frame(256), 265);
        assert_eq!(WireCost::CURVE.frame(0), 35);
        assert_eq!(WireCost::CURVE.frame(222), 257);
        assert_eq!(WireCost::CURVE.frame(223), 265);
        let l = limits();
        assert_eq!(l.max_in_flight, Some(10 * (1000 + 4 * 9) + MARGIN));
        assert_eq!(l.max_unfinished, Some(1000 + 36 + UNFINISHED_SLACK));
        assert_eq!(
            InFlightLimits::new(0, 1000, 4, WireCost::NULL).max_in_flight,
            None
        );
        assert_eq!(
            InFlightLimits::new(10, -1, 4, WireCost::NULL),
            InFlightLimits {
                max_in_flight: None,
                max_unfinished: None
            }
        );
    }

    #[test]
    fn a_peer_that_keeps_sending_without_completing_a_message_is_caught_at_the_next_check() {
        let t0 = Instant::now();
        let mut peer = InFlight::default();
        // Handshake, then a few messages.
        assert_eq!(peer.check(300, t0, true, limits()), Verdict::Fine);
        peer.delivered(100);
        assert_eq!(peer.check(400, t0 + 100 * MS, true, limits()), Verdict::Fine);
        // Then frames with MORE set, 200 KiB of them by the next check: no message completes.
        let read = 400 + (200 << 10);
        assert!(matches!(
            peer.check(read, t0 + 200 * MS, true, limits()),
            Verdict::Unfinished(grown) if grown == 200 << 10
        ));
    }

    #[test]
    fn a_stuck_peer_is_not_judged_while_the_proxy_is_behind_but_the_bound_still_holds() {
        let t0 = Instant::now();
        let mut peer = InFlight::default();
        peer.check(300, t0, true, limits());
        // The proxy is behind (it had more to receive): complete messages may be queued.
        assert_eq!(
            peer.check(300 + (500 << 10), t0 + 100 * MS, false, limits()),
            Verdict::Fine
        );
        // The per-peer bound applies regardless.
        let over = 300 + limits().max_in_flight.expect("bounded") + 1;
        assert!(matches!(
            peer.check(over, t0 + 200 * MS, false, limits()),
            Verdict::InFlight(_)
        ));
    }

    #[test]
    fn a_busy_honest_peer_and_an_idle_one_with_heartbeats_are_fine() {
        let t0 = Instant::now();
        let limits = limits();
        let mut busy = InFlight::default();
        let mut idle = InFlight::default();
        let (mut read_busy, mut read_idle) = (300u64, 300u64);
        // A day of checks every 100 ms.
        for tick in 0..864_000u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            // Busy: a 500-byte message and a 9-byte heartbeat every tick, one message always
            // half received at the check.
            busy.delivered(500);
            read_busy += 509;
            let half = 250;
            assert_eq!(
                busy.check(read_busy + half, now, true, limits),
                Verdict::Fine,
                "tick {tick}"
            );
            // Idle: a heartbeat (PING 9 bytes, PONG 7) every 5 s.
            if tick % 50 == 0 {
                read_idle += 16;
            }
            assert_eq!(
                idle.check(read_idle, now, true, limits),
                Verdict::Fine,
                "tick {tick}"
            );
        }
        // The busy peer's heartbeats were forgiven; the idle one's accumulate towards the bound
        // (reached only after months at this rate).
        assert!(busy.counted(read_busy) < 1000, "{}", busy.counted(read_busy));
        assert_eq!(idle.counted(read_idle), read_idle);
    }

    #[test]
    fn forgiveness_cannot_be_farmed_to_hold_more() {
        // Forgiveness needs a message completed since the last check, with the proxy caught
        // up: then all the peer holds is a message begun after that completion, so at most
        // what it sent within one check interval. A peer playing along for a long time, every
        // interval completing its message and beginning another of `window` bytes, gets at
        // most `window` forgiven, however long it plays; stuck afterwards, it is cut off at
        // the bound plus that.
        let t0 = Instant::now();
        let limits = limits();
        let max = limits.max_in_flight.expect("bounded");
        let window = max / 2;
        let mut peer = InFlight::default();
        let mut delivered = 0u64;
        for tick in 0..200_000u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            // The message begun in the last interval completes, another begins.
            if tick > 0 {
                peer.delivered(window);
                delivered += window;
            }
            assert_eq!(peer.check(delivered + window, now, true, limits), Verdict::Fine);
        }
        assert!(peer.forgiven <= window, "{} forgiven", peer.forgiven);
        // Stuck now: the unfinished message grows and nothing completes.
        let later = t0 + Duration::from_secs(20_000);
        let verdict = peer.check(delivered + window + max + 1, later, false, limits);
        assert!(matches!(verdict, Verdict::InFlight(_)), "{verdict:?}");
    }
}
