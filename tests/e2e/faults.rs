//! What the fault tests (issue 12 §2) do to the fabric from the outside, and how they look at
//! it without the parts' help: the kernel's TCP table of the test's network namespace, a TCP
//! forwarder that can stop forwarding (packets dropped, not refused), and a storm of connections
//! and garbage against a proxy's publisher port.

use crate::support::Background;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// TCP state ESTABLISHED in /proc/net/tcp.
const TCP_ESTABLISHED: &str = "01";

/// An `ADDR:PORT` of /proc/net/tcp: the IPv4 address as the kernel's u32 in hex (network byte
/// order read as a host integer), the port in hex.
fn parse_proc_address(text: &str) -> Option<SocketAddrV4> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// The local ports of the ESTABLISHED TCP connections of this network namespace whose remote
/// end is `remote`: every client connection to a listener, whichever process holds it.
pub fn established_to(remote: SocketAddrV4) -> BTreeSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = parse_proc_address(fields.get(1)?)?;
            let peer = parse_proc_address(fields.get(2)?)?;
            (peer == remote && *fields.get(3)? == TCP_ESTABLISHED).then_some(local.port())
        })
        .collect()
}

/// A TCP forwarder on 127.0.0.1 to one upstream address that can be switched into a
/// blackhole: every connection stays open and nothing more is forwarded either way, and new
/// connections are accepted and left silent. To the client that is a network that drops its
/// packets: no error, no reset, no answer.
pub struct Blackhole {
    pub local: SocketAddr,
    dropping: Arc<AtomicBool>,
    /// Bytes forwarded (both directions), to show the switch took.
    forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the forwarder");
        let local = listener.local_addr().expect("forwarder address");
        let dropping = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (d, f) = (dropping.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (d, f) = (d.clone(), f.clone());
                tokio::spawn(async move {
                    if d.load(Ordering::Relaxed) {
                        // Held open, never answered; dropped when the test ends.
                        std::future::pending::<()>().await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, d.clone(), f.clone()),
                        pump(server_read, client_write, d, f),
                    );
                });
            }
        });
        Self {
            local,
            dropping,
            forwarded,
            task,
        }
    }

    /// From now on nothing is forwarded on any connection, old or new.
    pub fn drop_everything(&self) {
        self.dropping.store(true, Ordering::Relaxed);
    }

    pub fn forwarded_bytes(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either end closes; once `dropping` is set, bytes read are
/// thrown away and nothing is written again (the connection stays open).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dropping.load(Ordering::Relaxed) {
            // Keep the connection open and silent until the test drops everything.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Connects to each of `paths` every `interval` on a thread of its own, as a subscriber
/// reconnecting would, until stopped; the result is, per path, the longest run of failed
/// connects (the path missing, or nobody listening): how long a subscriber arriving then would
/// have found no proxy, in intervals.
pub fn probe_paths(paths: Vec<std::path::PathBuf>, interval: Duration) -> Background<Vec<u32>> {
    Background::spawn(move |stop| {
        let (mut longest, mut current) = (vec![0u32; paths.len()], vec![0u32; paths.len()]);
        while !stop.load(Ordering::Relaxed) {
            for (i, path) in paths.iter().enumerate() {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    current[i] = 0;
                } else {
                    current[i] += 1;
                    longest[i] = longest[i].max(current[i]);
                }
            }
            std::thread::sleep(interval);
        }
        longest
    })
}

/// A storm against a publisher port: how many connections of each kind of abuse.
#[derive(Debug, Default, Clone, Copy)]
pub struct Storm {
    /// Connections opened and held, sending nothing (half-open handshakes).
    pub silent: usize,
    /// Connections that send random bytes (never starting with a greeting) and close.
    pub garbage: usize,
    /// Connections that send an HTTP request and close.
    pub http: usize,
    /// Connections that send a ZMTP greeting's first 10 bytes and stall, held.
    pub partial_greeting: usize,
    /// Connections that send a whole ZMTP 3.0 greeting with a mechanism nobody speaks and close.
    pub bad_mechanism: usize,
}

impl Storm {
    pub fn connections(&self) -> usize {
        self.silent + self.garbage + self.http + self.partial_greeting + self.bad_mechanism
    }

    /// Connections whose end the proxy's monitor reports as a failed handshake. Garbage and
    /// HTTP are not among them: their first byte marks them as pre-ZMTP-3.0 peers, refused
    /// outright (because the proxy sets a ZAP domain) and reported as a disconnect only.
    pub fn failed_handshakes(&self) -> usize {
        self.silent + self.partial_greeting + self.bad_mechanism
    }

    /// Runs the storm against `target` from this namespace (blocking); returns the
    /// connections it holds open (closing them is up to the caller) and how many connects
    /// failed (a listener that stopped accepting).
    pub fn run(&self, target: SocketAddr) -> (Vec<TcpStream>, usize) {
        let mut held = Vec::new();
        let mut failed = 0;
        let mut connect = || {
            let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2));
            if stream.is_err() {
                failed += 1;
            }
            stream.ok()
        };
        let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0];
        greeting.extend(b"GARBAGE");
        greeting.resize(64, 0);
        for i in 0..self.connections() {
            let Some(mut stream) = connect() else {
                continue;
            };
            // The proxy may close first: errors writing are fine.
            let mut kind = i;
            if kind < self.silent {
                held.push(stream);
                continue;
            }
            kind -= self.silent;
            if kind < self.garbage {
                let mut bytes = vec![0u8; 64 + (i * 997) % 4096];
                getrandom::fill(&mut bytes).expect("random bytes");
                // Never a greeting's signature byte: that is the partial greeting's case.
                if bytes[0] == 0xFF {
                    bytes[0] = 0;
                }
                let _ = stream.write_all(&bytes);
                continue;
            }
            kind -= self.garbage;
            if kind < self.http {
                let _ =
                    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: proxy\r\nUser-Agent: storm\r\n\r\n");
                continue;
            }
            kind -= self.http;
            if kind < self.partial_greeting {
                let _ = stream.write_all(&greeting[..10]);
                held.push(stream);
                continue;
            }
            let _ = stream.write_all(&greeting);
        }
        (held, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses_parse() {
        // 127.0.0.1:80 as the kernel prints it on a little-endian machine.
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_address("0100007F:0050"),
                Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80))
            );
        }
        assert_eq!(parse_proc_address("nonsense"), None);
    }
}
