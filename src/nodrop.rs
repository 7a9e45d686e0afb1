//! Sending on a socket that runs with `ZMQ_XPUB_NODROP`, so that a peer's full queue is seen
//! and counted where libzmq would otherwise drop for it without a trace. The proxy's XPUB
//! (toward its subscribers) and the publisher's PUB (toward its proxies) both send this way:
//! libzmq's PUB is an XPUB underneath (`pub_t` derives from `xpub_t`) and takes the option.
//!
//! What this relies on, libzmq 4.3 (`xpub.cpp` `xsend`, `dist.cpp`, `pipe.cpp`):
//! - Lossy (libzmq's default): a frame goes to every matching peer pipe that has room. A full
//!   pipe is skipped (`dist_t::write` fails, the pipe leaves the matching set and misses the
//!   rest of that message) and stays out of the send set until its reader has caught up
//!   (`pipe_t::check_write`, then `activate_write`); no send fails meanwhile.
//! - `NODROP`: before each frame every matching pipe's HWM is checked (`dist_t::check_hwm`);
//!   if one is full the send fails with EAGAIN, reaches *no* pipe, and leaves the message with
//!   the caller. Without `ZMQ_DONTWAIT` libzmq would then wait (up to SNDTIMEO, forever by
//!   default) for that one slow peer, stalling every other peer: every send here is DONTWAIT.
//! - A pipe's fill counts whole messages (`_msgs_written` advances on a message's last frame
//!   only) and the count of what its reader took only grows, while the matching set only
//!   shrinks within a message: once a message's first frame passed the check, its later frames
//!   pass too, so the EAGAIN comes on the first frame. Every frame is still sent by the same
//!   rule, so a later one refused would be resent lossy too, never leaving a message half sent.
//! - Sent again right after an EAGAIN with the socket lossy for that one send, the frame
//!   reaches every matching pipe but the full ones: a failed first frame leaves `_more_send`
//!   false, so the retry matches the subscriptions again; a failed later frame keeps the
//!   message's matching set.
//!
//! What is counted is each time a peer's queue was found full, not each message it then
//! misses: after the lossy send libzmq leaves the full peer out until it has read enough, so
//! the following messages skip it without an EAGAIN (a subscriber's envelope gaps count those).

use crate::socket_options::{last_zmq_error, set_int_option};
use std::ffi::{c_int, c_void};

// libzmq's XPUB (and PUB) option that makes a send fail with EAGAIN instead of dropping the
// message for a peer whose queue is full (zmq.h).
const ZMQ_XPUB_NODROP: c_int = 69;

// The `zmq` crate's send consumes the message even when the send fails; this one leaves it
// to the caller, so a send refused for a full queue can be tried again (zmq.h).
unsafe extern "C" {
    fn zmq_msg_send(msg: *mut c_void, socket: *mut c_void, flags: c_int) -> c_int;
}

// `zmq::Message` is libzmq's 64-byte `zmq_msg_t` and nothing else.
const _: () = assert!(std::mem::size_of::<zmq::Message>() == 64);

/// Whether the XPUB or PUB `socket` (raw, see `socket_options::raw_socket`) drops a message
/// for a peer whose queue is full (`true`, libzmq's default) or fails the whole send with
/// EAGAIN (`false`, `ZMQ_XPUB_NODROP`). Sockets sent on with [`send_counting_full_queues`] run
/// with `false`; it turns them lossy for one send at a time.
pub fn set_lossy(socket: *mut c_void, lossy: bool) -> Result<(), zmq::Error> {
    set_int_option(socket, ZMQ_XPUB_NODROP, c_int::from(!lossy))
}

/// Sends `frames` as one message on `socket`, a NODROP XPUB or PUB (raw, alive for the call),
/// without ever waiting. A frame a full peer queue refuses is sent again with the socket lossy
/// for that one send. Returns whether that happened: the message then reached every other
/// matching peer, not the full one. An error is the socket's own (the message is dropped).
pub fn send_counting_full_queues(
    socket: *mut c_void,
    frames: impl IntoIterator<Item = zmq::Message>,
) -> Result<bool, zmq::Error> {
    let mut frames = frames.into_iter().peekable();
    let mut queue_full = false;
    while let Some(mut frame) = frames.next() {
        let more = if frames.peek().is_some() { zmq::SNDMORE } else { 0 };
        queue_full |= send_frame(socket, &mut frame, more | zmq::DONTWAIT)?;
    }
    Ok(queue_full)
}

/// One frame of [`send_counting_full_queues`]; true when a full queue refused it first.
fn send_frame(socket: *mut c_void, frame: &mut zmq::Message, flags: c_int) -> Result<bool, zmq::Error> {
    let send = |frame: &mut zmq::Message| {
        // SAFETY: `socket` is the caller's live socket and `frame` an initialised `zmq_msg_t`;
        // on success libzmq takes its content and leaves it empty, on failure it leaves it as
        // it was, and `zmq::Message`'s drop closes it either way.
        let rc = unsafe { zmq_msg_send((frame as *mut zmq::Message).cast(), socket, flags) };
        if rc >= 0 { Ok(()) } else { Err(last_zmq_error()) }
    };
    match send(frame) {
        Ok(()) => Ok(false),
        Err(zmq::Error::EAGAIN) => {
            set_lossy(socket, true)?;
            let retried = send(frame);
            set_lossy(socket, false)?;
            retried.map(|()| true)
        }
        Err(err) => Err(err),
    }
}
