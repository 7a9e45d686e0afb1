//! `fanout demo` end to end: the real binary, short settings, its summary and exit code.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_demo_runs_to_completion_and_reports_every_node() {
    let start = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "demo",
            "--nodes",
            "3",
            "--rate",
            "500",
            "--seconds",
            "3",
            "--log-level",
            "warn",
        ])
        .output()
        .expect("run fanout demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the demo took too long"
    );
    assert!(stdout.contains("demo OK"), "{stdout}");
    // The joining node (node-3) received and its join latency was measured.
    let joiner = stdout
        .lines()
        .find(|l| l.starts_with("node-3"))
        .unwrap_or_else(|| panic!("no line for node-3:\n{stdout}"));
    assert!(joiner.contains("first message"), "{joiner}");
    let received: u64 = joiner.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(received > 0, "{joiner}");
    // The departed node (node-0) is reported as having left.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("node-0") && l.contains("left")),
        "{stdout}"
    );
    assert!(stdout.contains("publisher disconnected from node-0"), "{stdout}");
}

#[test]
fn the_demo_refuses_bad_arguments_with_a_failure_exit_code() {
    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["demo", "--nodes", "1", "--seconds", "1"])
        .output()
        .expect("run fanout demo");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--nodes"));
}
