//! `fanout publish` and `fanout subscribe`, the real binary, through an in-process proxy.

use fanout::proxy::ProxyConfig;
use std::io::Write;
use std::process::{Command, Stdio};

/// A proxy on an ephemeral TCP port and a unix socket in `dir`.
fn start_proxy(dir: &std::path::Path) -> fanout::proxy::Proxy {
    fanout::proxy::start(ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".into()],
        subscribers: vec![format!("ipc://{}/p.sock", dir.display())],
        ..ProxyConfig::default()
    })
    .unwrap()
}

#[test]
fn stdin_lines_are_published_and_printed_by_the_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(dir.path());
    let subscriber = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "subscribe",
            "--log-level",
            "warn",
            "--connect",
            &proxy.subscriber_endpoints()[0],
        ])
        .args(["--topic", "greet", "--count", "3", "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The subscriber must be subscribed before the publisher's first message passes the proxy.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut publisher = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "publish",
            "--log-level",
            "warn",
            "--endpoints",
            &proxy.publisher_endpoints()[0],
        ])
        .args(["--topic", "greet", "--settle", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld\n\x01binary\n")
        .unwrap();
    let published = publisher.wait_with_output().unwrap();
    assert!(published.status.success());
    let summary = String::from_utf8_lossy(&published.stdout);
    assert!(
        summary.starts_with("published 3 messages to 1 proxies"),
        "{summary}"
    );

    let out = subscriber.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "greet\thello\ngreet\tworld\ngreet\t0x0162696e617279\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("received 3 messages"), "{stderr}");
    assert!(stderr.contains("gaps 0, lost 0"), "{stderr}");
    proxy.shutdown().unwrap();
}

#[test]
fn publish_without_any_proxy_fails_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "publish",
            "--log-level",
            "error",
            "--endpoints",
            "nonsense",
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|line| line.contains("nonsense")).count(),
        1,
        "the error is printed once: {stderr}"
    );
}

/// GET `path` on 127.0.0.1:`port`; the whole answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn publish_serves_its_metrics_on_http_and_logs_without_colour_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut publisher = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "publish",
            "--log-level",
            "info",
            "--endpoints",
            &proxy.publisher_endpoints()[0],
        ])
        .args(["--settle", "0", "--http", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    stdin.write_all(b"one\n").unwrap();
    let start = std::time::Instant::now();
    let metrics = loop {
        let answer = http_get(port, "/metrics").unwrap_or_default();
        if answer.contains("fanout_publisher_connected_proxies 1")
            && answer.contains("fanout_publisher_sent_messages_total 1")
        {
            break answer;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "{answer}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for name in [
        "fanout_publisher_membership_updates_total 1",
        "fanout_publisher_queue_full_dropped_messages_total 0",
        "fanout_publisher_membership_lag_seconds_count",
        "fanout_build_info{version=",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(
        http_get(port, "/readyz")
            .unwrap_or_default()
            .starts_with("HTTP/1.1 200")
    );
    drop(stdin);
    let out = publisher.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("publishing"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes on a pipe: {stderr:?}");
    proxy.shutdown().unwrap();
}
