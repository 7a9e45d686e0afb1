//! Which of the subscriber side's connections are the relay's links to its leaves: the ones the
//! proxy's XPUB made itself (relay tree, [`RelayLinks`](super::relay::RelayLinks)), as opposed
//! to the ones it accepted from subscribers.
//!
//! A link carries everything its leaf forwards upstream: up to the group's upstream topic cap
//! (`--max-topics`) rather than one subscriber's, from a peer authenticated the other way round
//! (the relay is the CURVE client, the leaf's ZAP handler admitted the group's key), so the
//! link has no `User-Id` of its own. The forwarder therefore gives a link the upstream cap,
//! admits it without a subscriber key and keeps no in-flight account for it
//! (docs/security.md, "Relay links").
//!
//! libzmq's monitor reports each outbound connection as CONNECTED with its descriptor, before
//! the connection's handshake and so before any of its messages. Descriptors are reused, so
//! each link is kept with its socket's identity and is a link only while the descriptor still
//! is that socket; an entry is dropped when its descriptor turns up as an accepted connection,
//! and on the forwarder's timer once the socket is gone. A DISCONNECTED does not drop it: the
//! link's last messages may still be queued behind the event, and they are the link's.

use super::peer::{self, SocketId};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct LeafLinks {
    links: HashMap<i32, SocketId>,
}

impl LeafLinks {
    /// The monitor reported an outbound connection on `fd`.
    pub fn connected(&mut self, fd: i32) {
        match peer::socket_id(fd) {
            Some(id) => {
                self.links.insert(fd, id);
            }
            // Already closed again: nothing of it can arrive.
            None => {
                self.links.remove(&fd);
            }
        }
    }

    /// The monitor reported a connection accepted on `fd`: whatever link was there has gone.
    pub fn accepted(&mut self, fd: i32) {
        self.links.remove(&fd);
    }

    /// Whether the connection on `fd`, socket `id`, is one of the links.
    pub fn is_link(&self, fd: i32, id: SocketId) -> bool {
        self.links.get(&fd) == Some(&id)
    }

    /// Forgets the links whose socket is gone.
    pub fn retain_open(&mut self) {
        self.links.retain(|fd, id| peer::socket_id(*fd) == Some(*id));
    }

    /// Links known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.links.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    /// Closes the socket on `fd` and opens a copy of `other` on the same descriptor, at once
    /// (dup2), so that no other thread of the test process can take the descriptor between.
    fn reuse(fd: i32, other: &impl AsRawFd) -> OwnedFd {
        // SAFETY: `fd` is a descriptor the caller gave up ownership of (into_raw_fd); dup2
        // closes it and makes it a copy of `other`, owned from here on by the OwnedFd.
        unsafe {
            assert_eq!(libc::dup2(other.as_raw_fd(), fd), fd);
            OwnedFd::from_raw_fd(fd)
        }
    }

    #[test]
    fn a_link_is_its_socket_not_its_descriptor() {
        let mut links = LeafLinks::default();
        let (link, _leaf) = UnixStream::pair().expect("pair");
        let id = peer::socket_id(link.as_raw_fd()).expect("a socket");
        let fd = link.into_raw_fd();
        links.connected(fd);
        assert!(links.is_link(fd, id));

        // The link's socket closes and a subscriber's connection gets its descriptor: not a
        // link, before and after the monitor reports it accepted.
        let (subscriber, _peer) = UnixStream::pair().expect("pair");
        let reused = reuse(fd, &subscriber);
        let reused_id = peer::socket_id(fd).expect("a socket");
        assert_ne!(reused_id, id);
        assert!(!links.is_link(fd, reused_id));
        links.retain_open();
        assert_eq!(links.len(), 0, "a link whose socket is gone is forgotten");
        links.connected(fd);
        assert!(links.is_link(fd, reused_id));
        links.accepted(fd);
        assert!(!links.is_link(fd, reused_id));
        drop(reused);
    }

    #[test]
    fn a_link_already_closed_when_reported_is_not_recorded() {
        let mut links = LeafLinks::default();
        let (link, _leaf) = UnixStream::pair().expect("pair");
        let fd = link.into_raw_fd();
        links.connected(fd);
        assert_eq!(links.len(), 1);
        // Its descriptor is something else than a socket by the time the event is read.
        let file = tempfile::tempfile().expect("file");
        let reused = reuse(fd, &file);
        links.connected(fd);
        assert_eq!(links.len(), 0);
        drop(reused);
    }
}
