//! One peer connection behind a proxy socket, seen from outside libzmq: what identifies it,
//! how the proxy ends it, and how many bytes libzmq has read from it.
//!
//! libzmq owns the descriptor of every connection; the proxy learns it from monitor events and
//! from messages (libzmq's private `__fd` property) and must never close it. To end a
//! connection it `shutdown`s the socket: libzmq then sees the connection end and tears the
//! session down itself. Descriptors are reused by the kernel as soon as libzmq closes them, so
//! every action on one is preceded by a check that it still is the same socket: a socket's
//! inode number is unique among live sockets and is not reused when a new socket gets the
//! same descriptor.

/// A live socket's identity: its inode number on the socket filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketId(u64);

/// The identity of the socket open on `fd` now, or `None` when `fd` is not a socket.
pub fn socket_id(fd: i32) -> Option<SocketId> {
    // SAFETY: fstat writes at most one `stat` into storage we own; a closed descriptor makes
    // it fail, which is reported as None.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) != 0 || (stat.st_mode & libc::S_IFMT) != libc::S_IFSOCK {
            return None;
        }
        Some(SocketId(stat.st_ino))
    }
}

/// Shuts down the connection on `fd` if it still is the socket `expected`; true when done.
pub fn shut_down(fd: i32, expected: SocketId) -> bool {
    if socket_id(fd) != Some(expected) {
        // Closed (and perhaps reused) since: not ours to touch.
        return false;
    }
    // SAFETY: shutdown on a descriptor we checked is still the same socket; it does not
    // release the descriptor, which stays libzmq's to close.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) == 0 }
}

/// The head of Linux's `struct tcp_info` (linux/tcp.h) up to `tcpi_bytes_received` (Linux
/// 4.1), which the `libc` crate's definition stops short of.
#[repr(C)]
#[derive(Default)]
struct TcpInfoHead {
    bytes: [u8; 8],
    times_and_metrics: [u32; 24],
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
}

/// Bytes libzmq has read from the TCP connection on `fd`: what the kernel received
/// (`tcpi_bytes_received`) less what still waits in the socket's receive queue (`SIOCINQ`).
/// `None` for anything but a connected TCP socket, and on kernels older than 4.1.
pub fn tcp_bytes_read(fd: i32) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    let mut info = TcpInfoHead::default();
    let mut len = std::mem::size_of::<TcpInfoHead>() as libc::socklen_t;
    // SAFETY: both calls write at most the sizes given into storage we own. The queue is read
    // first: bytes arriving between the two calls then count as read, which can only make the
    // estimate of what libzmq holds larger, never smaller.
    let ok = unsafe {
        libc::ioctl(fd, libc::FIONREAD, &mut queued) == 0
            && libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            ) == 0
    };
    if !ok || (len as usize) < std::mem::size_of::<TcpInfoHead>() {
        return None;
    }
    Some(
        info.bytes_received
            .saturating_sub(u64::try_from(queued).unwrap_or(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::io::AsRawFd;

    #[test]
    fn identity_shutdown_and_bytes_read_of_a_real_tcp_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let fd = server.as_raw_fd();
        let id = socket_id(fd).expect("a socket");
        assert_eq!(socket_id(fd), Some(id));
        assert_ne!(socket_id(client.as_raw_fd()), Some(id));
        assert!(socket_id(listener.as_raw_fd()).is_some());

        client.write_all(&[7u8; 1000]).expect("write");
        // Nothing read yet: the kernel holds all of it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while tcp_bytes_read(fd) != Some(0) || !matches!(peek_queued(fd), Some(1000)) {
            assert!(std::time::Instant::now() < deadline, "the bytes never arrived");
        }
        let mut buf = [0u8; 600];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(tcp_bytes_read(fd), Some(600));

        // A descriptor that is not a TCP socket.
        let (unix, _other) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert_eq!(tcp_bytes_read(unix.as_raw_fd()), None);
        assert!(socket_id(unix.as_raw_fd()).is_some());
        let file = tempfile::tempfile().expect("file");
        assert_eq!(socket_id(file.as_raw_fd()), None);

        // Shut down only when the identity matches.
        assert!(!shut_down(fd, socket_id(client.as_raw_fd()).expect("client id")));
        assert!(shut_down(fd, id));
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .expect("the server end was shut down");
    }

    fn peek_queued(fd: i32) -> Option<i32> {
        let mut queued: libc::c_int = 0;
        // SAFETY: writes one int we own.
        (unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } == 0).then_some(queued)
    }
}
