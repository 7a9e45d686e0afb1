//! Moving whole messages from one socket to the other, within the per-message caps, and
//! counting what moved (the forwarding thread's inner loop).

use super::ProxyError;
use super::in_flight::WireCost;
use super::metrics::{ProxyMetrics, Side};
use crate::message_budget::{Exceeded, MessageBudget, MessageLimits, Verdict};
use crate::nodrop::send_counting_full_queues;
use std::ffi::c_void;

/// Messages moved per socket before the loop looks at the other socket and the stop signal,
/// so neither direction starves the other.
pub const BURST: usize = 4096;

/// What one burst moved.
#[derive(Debug, Default)]
pub struct Tally {
    pub messages: u64,
    pub bytes: u64,
    pub failures: u64,
    /// Messages over a per-message cap, by cap.
    pub refused_frames: u64,
    pub refused_bytes: u64,
    /// Messages deliberately not forwarded (a revoked key's, subscription changes the proxy
    /// applies itself).
    pub withheld: u64,
    /// Sends that found a peer's queue full (see `Route::count_full_queues`).
    pub queue_full: u64,
}

impl Tally {
    pub fn record(&self, metrics: &ProxyMetrics, from: Side, to: Side) {
        let refused = self.refused_frames + self.refused_bytes;
        if self.messages == 0
            && self.failures == 0
            && refused == 0
            && self.withheld == 0
            && self.queue_full == 0
        {
            return;
        }
        let received = metrics.side(from);
        received
            .messages_received
            .inc_by(self.messages + self.failures + refused + self.withheld);
        received.bytes_received.inc_by(self.bytes);
        received.refused_frames.inc_by(self.refused_frames);
        received.refused_bytes.inc_by(self.refused_bytes);
        let sent = metrics.side(to);
        sent.messages_sent.inc_by(self.messages);
        sent.bytes_sent.inc_by(self.bytes);
        if self.failures > 0 {
            sent.send_failures.inc_by(self.failures);
        }
        if self.queue_full > 0 {
            sent.queue_full.inc_by(self.queue_full);
        }
    }

    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Sent {
                bytes, queue_full, ..
            } => {
                self.messages += 1;
                self.bytes += bytes;
                self.queue_full += u64::from(queue_full);
            }
            Outcome::SendFailed { .. } => self.failures += 1,
            Outcome::Refused {
                why: Exceeded::Frames,
                ..
            } => self.refused_frames += 1,
            Outcome::Refused {
                why: Exceeded::Bytes, ..
            } => self.refused_bytes += 1,
            Outcome::Withheld { .. } => self.withheld += 1,
        }
    }
}

/// What became of one message, with the wire bytes its frames took from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the socket; `queue_full`: a peer's queue was found full, and that peer did not
    /// get it.
    Sent {
        bytes: u64,
        wire: u64,
        queue_full: bool,
    },
    SendFailed {
        wire: u64,
    },
    Refused {
        why: Exceeded,
        wire: u64,
    },
    Withheld {
        wire: u64,
    },
}

impl Outcome {
    pub fn wire(self) -> u64 {
        match self {
            Outcome::Sent { wire, .. }
            | Outcome::SendFailed { wire }
            | Outcome::Refused { wire, .. }
            | Outcome::Withheld { wire } => wire,
        }
    }
}

/// One direction of the proxy: its two sockets, the per-message caps, the reused frame
/// buffer, and the framing of its peers' connections (for their in-flight accounts).
pub struct Route<'a> {
    pub from: &'a zmq::Socket,
    pub to: &'a zmq::Socket,
    pub limits: MessageLimits,
    pub parts: &'a mut Vec<zmq::Message>,
    pub wire: WireCost,
    /// `to` as libzmq's raw socket when it is the subscriber side's XPUB, which runs with
    /// ZMQ_XPUB_NODROP: a message a subscriber's full queue cannot take fails with EAGAIN, is
    /// sent again with the socket lossy for that one send (the others get it, the full queue
    /// does not), and the event is counted (`crate::nodrop`, shared with the publisher): each
    /// time a queue filled, not each message it then missed (those the subscriber's envelope
    /// gaps count). `None`: sent as libzmq does by default.
    pub count_full_queues: Option<*mut c_void>,
}

impl Route<'_> {
    /// Moves up to `BURST` whole messages without blocking, reusing `frame`. `inspect` sees the
    /// first frame of each message (the only thing the proxy reads of it) and says whether to
    /// forward it, and what to hand `done` with the message's wire bytes afterwards. A failed
    /// send or a message over a cap drops that message and is counted; only errors of the
    /// sockets themselves end the proxy. The flag returned is true when the socket had nothing
    /// more to receive.
    pub fn burst<T>(
        &mut self,
        frame: &mut zmq::Message,
        mut inspect: impl FnMut(&mut zmq::Message) -> (bool, T),
        mut done: impl FnMut(T, u64),
    ) -> Result<(Tally, bool), ProxyError> {
        let mut tally = Tally::default();
        for _ in 0..BURST {
            if !self.receive(frame)? {
                return Ok((tally, true));
            }
            let (forward, token) = inspect(frame);
            let outcome = if forward {
                self.message(frame)?
            } else {
                self.discard(frame)?
            };
            done(token, outcome.wire());
            tally.add(outcome);
        }
        Ok((tally, false))
    }

    /// Receives the first frame of the next message into `frame`; false when there is none.
    pub fn receive(&self, frame: &mut zmq::Message) -> Result<bool, ProxyError> {
        match self.from.recv(frame, zmq::DONTWAIT) {
            Ok(()) => Ok(true),
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Ok(false),
            Err(err) => Err(ProxyError::Zmq {
                context: "receiving".into(),
                source: err,
            }),
        }
    }

    /// Forwards the message whose first frame is in `frame`, unchanged, if it is within the
    /// caps. The frames are gathered first, so a message over a cap is dropped whole and a
    /// subscriber never sees part of it.
    pub fn message(&mut self, frame: &mut zmq::Message) -> Result<Outcome, ProxyError> {
        let mut budget = MessageBudget::new(self.limits);
        self.parts.clear();
        let mut wire = 0;
        loop {
            let more = frame.get_more();
            wire += self.wire.frame(frame.len());
            match budget.frame(frame.len(), more) {
                Verdict::Continue => {
                    self.parts.push(std::mem::replace(frame, zmq::Message::new()));
                    self.next_frame(frame)?;
                }
                Verdict::Complete => break,
                Verdict::Exceeded(why) => {
                    self.parts.clear();
                    if more {
                        wire += self.discard_rest(frame)?;
                    }
                    tracing::debug!(reason = why.as_str(), "message over a cap; dropped");
                    return Ok(Outcome::Refused { why, wire });
                }
            }
        }
        // `frame` holds the last frame; earlier ones, if any, are in `parts`. Any failure drops
        // the message and is counted, never ends the proxy.
        let bytes = self
            .parts
            .iter()
            .chain([&*frame])
            .map(|part| part.len() as u64)
            .sum();
        let last = std::mem::replace(frame, zmq::Message::new());
        let frames = self.parts.drain(..).chain([last]);
        let sent = match self.count_full_queues {
            Some(xpub) => send_counting_full_queues(xpub, frames),
            None => self.to.send_multipart(frames, zmq::DONTWAIT).map(|()| false),
        };
        match sent {
            Ok(queue_full) => Ok(Outcome::Sent {
                bytes,
                wire,
                queue_full,
            }),
            Err(err) => {
                tracing::debug!(error = %err, "send failed; message dropped");
                Ok(Outcome::SendFailed { wire })
            }
        }
    }

    /// Drops the message whose first frame is in `frame`.
    pub fn discard(&self, frame: &mut zmq::Message) -> Result<Outcome, ProxyError> {
        let first = self.wire.frame(frame.len());
        Ok(Outcome::Withheld {
            wire: first + self.discard_rest(frame)?,
        })
    }

    /// Later frames of a message are already queued when the first one arrives (libzmq
    /// delivers messages whole), so this does not wait.
    fn next_frame(&self, frame: &mut zmq::Message) -> Result<(), ProxyError> {
        self.from
            .recv(frame, 0)
            .map_err(ProxyError::zmq("receiving the next frame of a message"))
    }

    /// Reads and drops what is left of the message whose latest frame is in `frame`; returns
    /// the wire bytes of the frames read.
    fn discard_rest(&self, frame: &mut zmq::Message) -> Result<u64, ProxyError> {
        let mut wire = 0;
        while frame.get_more() {
            self.next_frame(frame)?;
            wire += self.wire.frame(frame.len());
        }
        Ok(wire)
    }
}
