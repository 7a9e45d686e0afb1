//! `fanout controller` refuses leader-election timings under which a leader could outlive its
//! lease, before it talks to any API server (so no cluster is needed here).

use std::process::Command;

fn controller(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .arg("controller")
        .args(["--http", "127.0.0.1:0"])
        .args(args)
        // No kubeconfig anywhere: reaching the API would fail with another message.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run fanout controller");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_renew_deadline_not_below_the_lease_duration_is_refused_with_the_reason() {
    let (ok, stderr) = controller(&["--lease-duration", "10s", "--renew-deadline", "10s"]);
    assert!(!ok);
    assert!(stderr.contains("invalid leader election timings"), "{stderr}");
    assert!(stderr.contains("shorter than the lease duration"), "{stderr}");
}

#[test]
fn a_retry_period_not_below_the_renew_deadline_is_refused_with_the_reason() {
    let (ok, stderr) = controller(&["--renew-deadline", "2s", "--retry-period", "2s"]);
    assert!(!ok);
    assert!(stderr.contains("retry period"), "{stderr}");
}

#[test]
fn a_fractional_lease_duration_and_a_malformed_duration_are_refused() {
    let (ok, stderr) = controller(&[
        "--lease-duration",
        "1500ms",
        "--renew-deadline",
        "1s",
        "--retry-period",
        "200ms",
    ]);
    assert!(!ok);
    assert!(stderr.contains("whole number of seconds"), "{stderr}");

    let (ok, stderr) = controller(&["--lease-duration", "fifteen"]);
    assert!(!ok);
    assert!(stderr.contains("not a duration like 15s"), "{stderr}");
}
