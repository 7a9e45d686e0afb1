//! Which connection a received message came from (its descriptor) and the CURVE key it was
//! admitted with, read from the message's metadata, at the cost of a field read per message.
//!
//! libzmq attaches one metadata object to every message of a connection (the properties
//! `__fd`, `User-Id`, `Peer-Address`...), created once when the connection's handshake ends
//! and freed once the connection and all its messages are gone. Looking a property up costs a
//! map search in libzmq (and, through the `zmq` crate, an allocation), which on the forwarding
//! path would cost more than the rest of the proxy's own work per message. So the forwarder
//! reads only the address of that metadata object, the first field of every libzmq 4.x `msg_t`
//! (ABI layout checked by the tests here), and looks the properties up once per address,
//! remembered in a small direct-mapped table.
//!
//! An address is reused only after its connection has ended: the forwarder forgets every
//! address whenever its monitor reports a connection accepted or ended, and drains the monitor
//! before each burst of messages. What remains is a connection that ends, and another that is
//! accepted, completes its handshake, gets its metadata at the very address the first one's
//! had and sends, all within one burst: its messages of that burst would be counted for the
//! ended connection (and, with CURVE, checked against that connection's key, which was listed
//! as well since both were admitted by the ZAP handler).

use std::ffi::{CStr, c_char, c_void};

// Calls the `zmq` crate does not expose with the signatures needed here (zmq.h, libzmq 4.x).
unsafe extern "C" {
    fn zmq_msg_gets(msg: *const c_void, property: *const c_char) -> *const c_char;
}

// `zmq::Message` is a struct with one field, libzmq's 64-byte `zmq_msg_t`; being the same size,
// that field is at offset 0, so a pointer to the message is a pointer to the `zmq_msg_t`.
const _: () = assert!(std::mem::size_of::<zmq::Message>() == 64);

fn raw(message: &zmq::Message) -> *const c_void {
    (message as *const zmq::Message).cast()
}

/// The address of the message's metadata object (0 when it has none: inproc peers, and the
/// unsubscriptions libzmq's XPUB makes up when a subscriber leaves).
fn metadata_address(message: &zmq::Message) -> usize {
    // SAFETY: the message is an initialised `zmq_msg_t` (8-byte aligned, 64 bytes), whose first
    // field in every libzmq 4.x representation is the `metadata_t *`.
    unsafe { raw(message).cast::<usize>().read() }
}

/// A metadata property of `message`, without allocating.
pub fn property<'a>(message: &'a zmq::Message, name: &CStr) -> Option<&'a str> {
    // SAFETY: libzmq returns NULL or a NUL-terminated string owned by the message's metadata,
    // which lives at least as long as the message borrowed here.
    unsafe {
        let value = zmq_msg_gets(raw(message), name.as_ptr());
        if value.is_null() {
            None
        } else {
            CStr::from_ptr(value).to_str().ok()
        }
    }
}

/// The descriptor of the connection `message` came from.
pub fn descriptor(message: &zmq::Message) -> Option<i32> {
    property(message, c"__fd").and_then(|fd| fd.parse().ok())
}

/// Where one message came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// The connection's descriptor.
    pub fd: Option<i32>,
    /// The CURVE key (Z85) the ZAP handler admitted the connection with.
    pub user: Option<String>,
}

impl Source {
    pub fn of(message: &zmq::Message) -> Self {
        Self {
            fd: descriptor(message),
            user: property(message, c"User-Id").map(str::to_owned),
        }
    }
}

/// Slots of the table: more than the publishers a proxy interleaves in practice. Two
/// connections on one slot only cost each other a lookup.
pub const SLOTS: usize = 64;

/// The sources of recent connections, by metadata address.
pub struct SourceCache {
    slots: Box<[(usize, Source); SLOTS]>,
    none: Source,
}

impl Default for SourceCache {
    fn default() -> Self {
        Self {
            slots: Box::new(std::array::from_fn(|_| (0, Source::default()))),
            none: Source::default(),
        }
    }
}

impl SourceCache {
    /// Where `message` came from: a field read and a comparison when its connection is
    /// remembered; otherwise looked up and remembered.
    #[inline]
    pub fn source(&mut self, message: &zmq::Message) -> &Source {
        let metadata = metadata_address(message);
        if metadata == 0 {
            return &self.none;
        }
        // Metadata objects are heap blocks of 16-byte alignment: mix the bits above that.
        let slot = ((metadata >> 4) ^ (metadata >> 10)) % SLOTS;
        let entry = &mut self.slots[slot];
        if entry.0 != metadata {
            *entry = (metadata, Source::of(message));
        }
        &entry.1
    }

    /// Forgets every connection (a connection was accepted or ended: addresses may be reused).
    pub fn forget(&mut self) {
        for entry in self.slots.iter_mut() {
            entry.0 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two PUB connections to one XSUB over tcp, so that messages carry real metadata.
    fn two_connections() -> (zmq::Context, zmq::Socket, zmq::Socket, zmq::Socket) {
        let ctx = zmq::Context::new();
        let xsub = ctx.socket(zmq::XSUB).expect("XSUB");
        xsub.bind("tcp://127.0.0.1:0").expect("bind");
        xsub.send(&[1u8][..], 0).expect("subscribe to everything");
        xsub.set_rcvtimeo(5000).expect("rcvtimeo");
        let endpoint = xsub.get_last_endpoint().expect("endpoint").expect("utf-8");
        let connect = |name: &str| {
            let publisher = ctx.socket(zmq::PUB).expect("PUB");
            publisher.connect(&endpoint).expect(name);
            publisher
        };
        let (a, b) = (connect("a"), connect("b"));
        (ctx, xsub, a, b)
    }

    fn receive_from(xsub: &zmq::Socket, publisher: &zmq::Socket, tag: &[u8]) -> zmq::Message {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(std::time::Instant::now() < deadline, "nothing from {tag:?}");
            publisher.send(tag, zmq::DONTWAIT).expect("send");
            let mut message = zmq::Message::new();
            if xsub.recv(&mut message, zmq::DONTWAIT).is_ok() && &message[..] == tag {
                return message;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn the_metadata_address_identifies_the_connection_and_the_cache_answers_like_libzmq() {
        let (_ctx, xsub, a, b) = two_connections();
        let a1 = receive_from(&xsub, &a, b"a");
        let a2 = receive_from(&xsub, &a, b"a");
        let b1 = receive_from(&xsub, &b, b"b");
        // libzmq 4.x layout: the first field is the metadata pointer, shared by a connection.
        assert_ne!(metadata_address(&a1), 0);
        assert_eq!(metadata_address(&a1), metadata_address(&a2));
        assert_ne!(metadata_address(&a1), metadata_address(&b1));
        let fd_a = descriptor(&a1).expect("__fd");
        let fd_b = descriptor(&b1).expect("__fd");
        assert_ne!(fd_a, fd_b);
        assert_eq!(property(&a1, c"User-Id"), None);
        assert!(property(&a1, c"Peer-Address").is_some_and(|p| p.starts_with("127.0.0.1")));

        let mut cache = SourceCache::default();
        assert_eq!(cache.source(&a1).fd, Some(fd_a));
        assert_eq!(cache.source(&b1).fd, Some(fd_b));
        assert_eq!(cache.source(&a2).fd, Some(fd_a));
        // Entries outlive the messages they were learnt from, and forgetting is harmless.
        drop((a1, a2, b1));
        let a3 = receive_from(&xsub, &a, b"a");
        assert_eq!(
            cache.source(&a3),
            &Source {
                fd: Some(fd_a),
                user: None
            }
        );
        cache.forget();
        assert_eq!(cache.source(&a3).fd, Some(fd_a));
        // A message without metadata (made locally).
        assert_eq!(cache.source(&zmq::Message::from(&b"x"[..])), &Source::default());
    }

    #[test]
    fn more_connections_than_entries_are_all_answered_right() {
        let ctx = zmq::Context::new();
        let xsub = ctx.socket(zmq::XSUB).expect("XSUB");
        xsub.bind("tcp://127.0.0.1:0").expect("bind");
        xsub.send(&[1u8][..], 0).expect("subscribe");
        let endpoint = xsub.get_last_endpoint().expect("endpoint").expect("utf-8");
        let publishers: Vec<zmq::Socket> = (0..SLOTS + 3)
            .map(|_| {
                let p = ctx.socket(zmq::PUB).expect("PUB");
                p.connect(&endpoint).expect("connect");
                p
            })
            .collect();
        let mut cache = SourceCache::default();
        for round in 0..3 {
            for (i, publisher) in publishers.iter().enumerate() {
                let tag = format!("p{i}");
                let message = receive_from(&xsub, publisher, tag.as_bytes());
                let expected = descriptor(&message);
                assert!(expected.is_some());
                assert_eq!(cache.source(&message).fd, expected, "round {round} publisher {i}");
            }
        }
    }
}
