//! A value handed to the forwarding thread from any other thread: the newest one waits in a
//! slot and a byte written to a socket pair wakes the thread, which polls the pair's other end
//! beside its libzmq sockets. Only the newest value counts; values handed in while the thread
//! was busy are replaced, never queued, so a slow forwarder never holds a backlog.
//!
//! What goes this way: a relay's assignment (`relay`) and the allow-lists the API gives a
//! CURVE proxy (`allow_lists`).

use super::ProxyError;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

type Slot<T> = Arc<Mutex<Option<T>>>;

/// Where values are handed in, from any thread.
#[derive(Debug)]
pub struct Handoff<T> {
    latest: Slot<T>,
    wake: UnixStream,
}

impl<T> Handoff<T> {
    /// Makes `value` the newest. False once the receiving end is gone.
    pub fn deliver(&self, value: T) -> bool {
        match self.latest.lock() {
            Ok(mut slot) => *slot = Some(value),
            Err(_) => return false,
        }
        wake_up(&self.wake)
    }
}

/// Writes the wake-up byte: true when it is written or one is pending already (a full socket
/// buffer), false when the reading end is gone. One byte is written whole or not at all.
pub(super) fn wake_up(mut wake: &UnixStream) -> bool {
    match wake.write_all(&[1]) {
        Ok(()) => true,
        Err(err) => err.kind() == ErrorKind::WouldBlock,
    }
}

/// The forwarding thread's end of a [`Handoff`].
#[derive(Debug)]
pub struct Inbox<T> {
    latest: Slot<T>,
    wake: UnixStream,
    /// Another writing end of the same wake-up, for producers with channels of their own.
    waker: UnixStream,
}

impl<T> Inbox<T> {
    /// Readable when a value (or another producer's wake-up) is waiting.
    pub(super) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Drains the wake-ups and takes the newest value, if one was handed in since the last
    /// call.
    pub(super) fn take(&self) -> Option<T> {
        let mut drain = [0u8; 64];
        while matches!((&self.wake).read(&mut drain), Ok(n) if n > 0) {}
        match self.latest.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        }
    }

    /// A writing end of this inbox's wake-up (write one byte with [`wake_up`]), for a
    /// producer that hands its values over by a channel of its own.
    pub(super) fn waker(&self) -> Result<UnixStream, ProxyError> {
        self.waker
            .try_clone()
            .map_err(ProxyError::io("sharing a wake-up of the forwarding thread"))
    }
}

/// A handoff and its inbox; `what` names it in errors.
pub fn handoff<T>(what: &str) -> Result<(Handoff<T>, Inbox<T>), ProxyError> {
    let context = || format!("creating the wake-up pair of {what}");
    let (wake_tx, wake_rx) = UnixStream::pair().map_err(ProxyError::io(context()))?;
    for end in [&wake_tx, &wake_rx] {
        end.set_nonblocking(true).map_err(ProxyError::io(context()))?;
    }
    let waker = wake_tx.try_clone().map_err(ProxyError::io(context()))?;
    let latest = Slot::default();
    Ok((
        Handoff {
            latest: latest.clone(),
            wake: wake_tx,
        },
        Inbox {
            latest,
            wake: wake_rx,
            waker,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn only_the_newest_value_is_taken_and_the_wake_up_is_drained() {
        let (handoff, inbox) = handoff::<u32>("a test").unwrap();
        assert!(!readable(inbox.wake_fd()));
        assert_eq!(inbox.take(), None);
        assert!(handoff.deliver(1));
        assert!(handoff.deliver(2));
        assert!(readable(inbox.wake_fd()));
        assert_eq!(inbox.take(), Some(2));
        assert!(!readable(inbox.wake_fd()));
        assert_eq!(inbox.take(), None);
    }

    #[test]
    fn another_producer_wakes_the_same_inbox_and_a_gone_inbox_is_seen() {
        let (handoff, inbox) = handoff::<u32>("a test").unwrap();
        let waker = inbox.waker().unwrap();
        assert!(wake_up(&waker));
        assert!(readable(inbox.wake_fd()));
        assert_eq!(inbox.take(), None, "a bare wake-up carries no value");
        assert!(!readable(inbox.wake_fd()));
        drop(waker);
        drop(inbox);
        assert!(!handoff.deliver(3), "nobody reads any more");
    }

    #[test]
    fn a_full_wake_up_buffer_still_delivers() {
        let (handoff, inbox) = handoff::<u32>("a test").unwrap();
        // One-byte writes fill a unix socket's buffer after a few hundred (each costs a
        // buffer of its own); the rest find it full and count as pending.
        for n in 0..10_000u32 {
            assert!(handoff.deliver(n), "delivery {n}");
        }
        assert_eq!(inbox.take(), Some(9_999));
        assert!(!readable(inbox.wake_fd()));
    }
}
