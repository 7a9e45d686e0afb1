//! The HTTP endpoint (`/healthz`, `/readyz`, `/metrics`) against clients that hold on: a
//! slowloris trickling a request head, one address opening many connections, idle connections
//! filling every slot. Real sockets on 127.0.0.0/8 (clients bind their own 127.0.0.x so that
//! they are different addresses).

use fanout::http::{Health, HttpLimits, bind_with};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LIMITS: HttpLimits = HttpLimits {
    max_connections: 4,
    max_connections_per_peer: 2,
    header_timeout: Duration::from_millis(500),
    max_connection_age: Duration::from_secs(30),
};

async fn server(limits: HttpLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let health = Arc::new(Health::default());
    health.set_ready(true);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, serve) = bind_with(
        "127.0.0.1:0".parse().expect("addr"),
        health,
        Arc::new(Registry::default()),
        limits,
        async {
            let _ = stopped.await;
        },
    )
    .await
    .expect("bind");
    tokio::spawn(serve);
    (addr, stop)
}

/// A connection to `server` from the address `from` (127.0.0.x).
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind the client address");
    socket.connect(server).await.expect("connect")
}

/// `GET /readyz` from `from`: the status line, and how long it took.
async fn readyz_from(from: &str, server: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = connect_from(from, server).await;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, started.elapsed())
}

/// Writes one byte of a request head every 100 ms until the server closes the connection;
/// returns how long the server kept it open.
async fn slowloris(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    let head = b"GET /readyz HTTP/1.1\r\nHost: t\r\nX-Slow: ".repeat(100);
    let mut buffer = [0u8; 256];
    for byte in head {
        if stream.write_all(&[byte]).await.is_err() {
            return started.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            Err(_) => {}
            // Closed (or a 408 before closing): the server cut us off.
            Ok(_) => return started.elapsed(),
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    started.elapsed()
}

/// Whether the server closed `stream` within `within` without a byte asked of it.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_does_not_block_readyz() {
    let (addr, _stop) = server(LIMITS).await;
    // Two slow connections from one address: its whole share.
    let slow = tokio::spawn(async move {
        let a = slowloris(connect_from("127.0.0.2", addr).await);
        let b = slowloris(connect_from("127.0.0.2", addr).await);
        tokio::join!(a, b)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A third from the same address is closed at once ...
    let mut third = connect_from("127.0.0.2", addr).await;
    assert!(
        closed_within(&mut third, Duration::from_secs(1)).await,
        "a third connection from the slowloris's address was served"
    );
    // ... while the probe from elsewhere is answered at once.
    let (status, took) = readyz_from("127.0.0.3", addr).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        took < Duration::from_millis(400),
        "/readyz took {took:?} during the slowloris"
    );
    // The slow ones are cut off after the header timeout, though they keep sending.
    let (a, b) = slow.await.expect("slowloris");
    eprintln!("slowloris connections closed after {a:?} and {b:?}; /readyz meanwhile in {took:?}");
    for kept in [a, b] {
        assert!(
            kept >= LIMITS.header_timeout && kept < LIMITS.header_timeout + Duration::from_secs(1),
            "a slowloris connection was kept {kept:?} (header timeout {:?})",
            LIMITS.header_timeout
        );
    }
}

#[tokio::test]
async fn idle_connections_filling_every_slot_only_delay_readyz_by_the_header_timeout() {
    let (addr, _stop) = server(LIMITS).await;
    // Four addresses, one idle connection each: every slot taken.
    let mut idle = Vec::new();
    for from in ["127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        idle.push(connect_from(from, addr).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, took) = readyz_from("127.0.0.8", addr).await;
    eprintln!("/readyz with every slot held by idle connections: {took:?}");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        took < LIMITS.header_timeout + Duration::from_secs(1),
        "/readyz waited {took:?} behind idle connections"
    );
    for mut stream in idle {
        assert!(
            closed_within(&mut stream, Duration::from_millis(200)).await,
            "an idle connection outlived the header timeout"
        );
    }
}

#[tokio::test]
async fn a_connection_that_idles_after_a_request_ends_at_its_age_limit() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(30),
        max_connection_age: Duration::from_millis(600),
        ..LIMITS
    };
    let (addr, _stop) = server(limits).await;
    let mut stream = connect_from("127.0.0.9", addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = vec![0u8; 1024];
    let n = stream.read(&mut buffer).await.expect("read");
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive, then nothing: closed at the age limit, not held for the header timeout.
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "the idle keep-alive connection was never closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed only after {:?}",
        started.elapsed()
    );
}
