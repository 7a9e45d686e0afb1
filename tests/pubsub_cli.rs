//! `fanout publish` and `fanout subscribe`, the real binary, through an in-process proxy.

use fanout::proxy::ProxyConfig;
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn stdin_lines_are_published_and_printed_by_the_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = fanout::proxy::start(ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".into()],
        subscribers: vec![format!("ipc://{}/p.sock", dir.path().display())],
        ..ProxyConfig::default()
    })
    .unwrap();
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
}
