//! The peer connections of one proxy socket, by descriptor, as its monitor reports them
//! (ACCEPTED, DISCONNECTED), each TCP one with its in-flight account
//! ([`in_flight`](super::in_flight)), checked on a timer.
//!
//! The forwarder tells the table, per message, the descriptor it came from and its wire
//! bytes; consecutive messages of one connection are added up first, so the table itself is
//! touched once per run of messages, not once per message.

use super::in_flight::{InFlight, InFlightLimits, Verdict};
use super::peer::{self, SocketId};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Default)]
struct Connection {
    /// The socket, recorded when the monitor reported the connection accepted; `None` for a
    /// descriptor only seen on messages so far.
    id: Option<SocketId>,
    /// Whether it is a TCP connection (the only kind whose bytes read the kernel reports).
    tcp: bool,
    account: InFlight,
}

/// A connection the last check found over a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offender {
    pub fd: i32,
    pub id: SocketId,
    pub verdict: Verdict,
}

#[derive(Debug)]
pub struct Connections {
    limits: InFlightLimits,
    connections: HashMap<i32, Connection>,
    /// The run of messages being added up: descriptor and wire bytes.
    run_fd: i32,
    run_bytes: u64,
    /// The largest count against the in-flight bound at the last check.
    largest: u64,
}

impl Connections {
    pub fn new(limits: InFlightLimits) -> Self {
        Self {
            limits,
            connections: HashMap::new(),
            run_fd: -1,
            run_bytes: 0,
            largest: 0,
        }
    }

    /// The monitor reported a connection accepted on `fd`.
    pub fn accepted(&mut self, fd: i32) {
        let id = peer::socket_id(fd);
        let read = peer::tcp_bytes_read(fd);
        let connection = self.connections.entry(fd).or_default();
        if connection.id.is_some() && connection.id != id {
            // Another socket's leftovers (its DISCONNECTED was not seen): start afresh.
            *connection = Connection::default();
        }
        connection.id = id;
        connection.tcp = read.is_some();
        if let Some(read) = read {
            // A first look now, so that the next check can already judge the connection's
            // growth (a first check only records where it starts).
            connection.account.check(read, Instant::now(), false, self.limits);
        }
    }

    /// The monitor reported the connection on `fd` ended.
    pub fn disconnected(&mut self, fd: i32) {
        self.flush();
        self.connections.remove(&fd);
    }

    /// A message of `wire` bytes from the connection on `fd`.
    #[inline]
    pub fn delivered(&mut self, fd: i32, wire: u64) {
        if fd == self.run_fd {
            self.run_bytes += wire;
        } else {
            self.flush();
            self.run_fd = fd;
            self.run_bytes = wire;
        }
    }

    /// Adds the current run to its connection.
    pub fn flush(&mut self) {
        if self.run_bytes > 0 {
            self.connections
                .entry(self.run_fd)
                .or_default()
                .account
                .delivered(std::mem::take(&mut self.run_bytes));
        }
        self.run_fd = -1;
    }

    /// Checks every TCP connection; returns those over a bound. `caught_up`: the socket had
    /// no complete message left to receive just before.
    pub fn check(&mut self, now: Instant, caught_up: bool) -> Vec<Offender> {
        self.flush();
        let mut offenders = Vec::new();
        let mut largest = 0;
        let limits = self.limits;
        self.connections.retain(|fd, connection| {
            let Some(id) = connection.id else {
                return true;
            };
            if peer::socket_id(*fd) != Some(id) {
                // Gone (or the descriptor is another socket's now): its DISCONNECTED is on
                // its way or was lost.
                return false;
            }
            if !connection.tcp {
                return true;
            }
            let Some(read) = peer::tcp_bytes_read(*fd) else {
                return true;
            };
            let verdict = connection.account.check(read, now, caught_up, limits);
            largest = largest.max(connection.account.counted(read));
            if verdict != Verdict::Fine {
                offenders.push(Offender { fd: *fd, id, verdict });
            }
            true
        });
        self.largest = largest;
        offenders
    }

    /// The largest count against the in-flight bound at the last check.
    pub fn largest_in_flight(&self) -> u64 {
        self.largest
    }
}
