//! `fanout proxy` as the DaemonSet runs it: flags, `/readyz` and `/metrics`, and a clean exit
//! on SIGTERM that removes the socket file.

mod proxy_support;

use proxy_support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Status code and body of `GET path`, or `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Only if a test failed before stopping it: never leave the process behind.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the proxy did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_proxy(dir: &std::path::Path, publish_port: u16, http_port: u16) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "proxy",
            "--publishers",
            &format!("tcp://127.0.0.1:{publish_port}"),
        ])
        .args(["--subscribers", &format!("ipc://{}", socket_path(dir).display())])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args([
            "--hwm",
            "2000",
            "--max-message-bytes",
            "65536",
            "--heartbeat",
            "1",
            "--socket-mode",
            "640",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn fanout proxy");
    Running(child)
}

#[test]
fn serves_metrics_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (publish_port, http_port) = (free_port(), free_port());
    let mut proxy = run_proxy(dir.path(), publish_port, http_port);
    assert!(
        eventually(|| get(http_port, "/readyz").is_some_and(|(status, _)| status == 200)),
        "/readyz never became 200"
    );
    let path = socket_path(dir.path());
    assert!(path.exists(), "ready means the socket is bound");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("meta").permissions())
            & 0o777,
        0o640
    );
    assert_eq!(get(http_port, "/healthz").map(|(s, _)| s), Some(200));

    let ctx = zmq::Context::new();
    let publisher = publisher_to(&ctx, &format!("tcp://127.0.0.1:{publish_port}"));
    let subscriber = ctx.socket(zmq::SUB).expect("SUB");
    subscriber.set_linger(0).expect("linger");
    subscriber.set_subscribe(b"t").expect("subscribe");
    subscriber
        .connect(&format!("ipc://{}", path.display()))
        .expect("connect");
    sync(&publisher, &subscriber, b"t");
    publisher
        .send_multipart([b"t".as_slice(), b"hello"], 0)
        .expect("send");
    assert_eq!(subscriber.recv_multipart(0).expect("recv")[1], b"hello");

    let (status, metrics) = get(http_port, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    for expected in [
        "fanout_proxy_messages_received_total{side=\"publishers\"}",
        "fanout_proxy_connected_peers{side=\"subscribers\"} 1",
        "fanout_proxy_connected_peers{side=\"publishers\"} 1",
        "fanout_proxy_live_subscriptions 1",
        "fanout_proxy_dropped_messages_total",
        "fanout_proxy_handshake_failures_total",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }

    signal(&proxy.0, "TERM");
    let status = wait_exit(&mut proxy.0);
    assert!(status.success(), "exit status {status}");
    assert!(!path.exists(), "the socket file must be removed");
    assert!(get(http_port, "/healthz").is_none(), "HTTP must be down");
}

#[test]
fn sigint_also_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http_port = free_port();
    let mut proxy = run_proxy(dir.path(), free_port(), http_port);
    assert!(eventually(
        || get(http_port, "/readyz").is_some_and(|(status, _)| status == 200)
    ));
    signal(&proxy.0, "INT");
    assert!(wait_exit(&mut proxy.0).success());
    assert!(!socket_path(dir.path()).exists());
}

#[test]
fn a_port_in_use_is_a_clear_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut proxy = run_proxy(dir.path(), port, free_port());
    let status = wait_exit(&mut proxy.0);
    assert!(!status.success());
    assert!(!socket_path(dir.path()).exists());
}
