//! A node's socket directory as the proxy pod leaves it, with real uids: the init container's
//! `fanout prepare-socket-dir` (root), the real `fanout proxy` as uid 65532, and an agent as
//! another uid in the socket's group. The agent receives over the socket, and cannot unlink,
//! move or replace it, nor plant anything beside it (issue 10: "an agent can never unlink or
//! replace the proxy's socket"). Needs root to switch uids; without it the test says so and
//! does nothing.

mod proxy_support;

use proxy_support::{free_port, publisher_to};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PROXY_UID: u32 = 65532;
const AGENT_UID: u32 = 1000;
const SOCKET_GROUP: u32 = 2000;

fn fanout() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fanout"))
}

/// `command` run as `uid` with primary group `gid` (no other groups).
fn run_as(uid: u32, gid: u32, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn described(output: &Output) -> String {
    format!(
        "exit {:?}, stderr {:?}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

#[test]
fn an_agent_in_the_socket_group_receives_but_cannot_unlink_or_replace_the_proxy_socket() {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the proxy and the agent as other uids");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // Other uids must be able to reach the directory at all, or every refusal below would
    // prove nothing.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = tmp.path().join("fanout");
    std::fs::create_dir(&root).expect("root");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = root.join("net.updates");
    let socket: PathBuf = dir.join("net.updates.sock");

    // The init container, exactly as the DaemonSet runs it.
    let prepared = fanout()
        .args(["prepare-socket-dir", "--root"])
        .arg(&root)
        .arg("--path")
        .arg(&dir)
        .args(["--uid", &PROXY_UID.to_string()])
        .args(["--gid", &SOCKET_GROUP.to_string()])
        .args(["--mode", "2750"])
        .output()
        .expect("prepare-socket-dir runs");
    assert!(prepared.status.success(), "{}", described(&prepared));

    // The proxy, as uid 65532.
    let publish_port = free_port();
    let proxy = Running(
        fanout()
            .args([
                "proxy",
                "--publishers",
                &format!("tcp://127.0.0.1:{publish_port}"),
            ])
            .args(["--subscribers", &format!("ipc://{}", socket.display())])
            .args(["--http", &format!("127.0.0.1:{}", free_port())])
            .uid(PROXY_UID)
            .gid(PROXY_UID)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the proxy starts"),
    );
    wait_for(&socket);
    let before = std::fs::symlink_metadata(&socket).expect("socket");
    assert_eq!(
        (before.uid(), before.gid(), before.mode() & 0o7777),
        (PROXY_UID, SOCKET_GROUP, 0o660),
        "the socket is the proxy's, in the socket group, 0660"
    );

    // The agent receives over the socket (so it can reach and connect to it) ...
    let agent = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["subscribe", "--connect", &format!("ipc://{}", socket.display())])
        .args(["--topic", "ports", "--count", "1", "--timeout", "10"])
        .uid(AGENT_UID)
        .gid(SOCKET_GROUP)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let ctx = zmq::Context::new();
    let publisher = publisher_to(&ctx, &format!("tcp://127.0.0.1:{publish_port}"));
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(agent.wait_with_output()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let received = loop {
        publisher
            .send_multipart([b"ports".as_slice(), b"open 443"], 0)
            .expect("send");
        match done.recv_timeout(Duration::from_millis(50)) {
            Ok(output) => break output.expect("the agent ends"),
            Err(_) => assert!(Instant::now() < deadline, "the agent never ended"),
        }
    };
    let stdout = String::from_utf8_lossy(&received.stdout);
    assert!(
        received.status.success() && stdout.contains("open 443"),
        "the agent received nothing over the socket: {}; stdout {stdout:?}",
        described(&received)
    );

    // ... but cannot take it away, move it, put its own in its place, or plant anything.
    let planted = tmp.path().join("agent.sock");
    let beside = dir.join("planted");
    let agents_file = tmp.path().join("agents-file");
    std::fs::write(&agents_file, b"not a socket").expect("write");
    std::os::unix::fs::chown(&agents_file, Some(AGENT_UID), Some(SOCKET_GROUP)).expect("chown");
    let attempts: [(&str, Vec<&str>); 5] = [
        ("rm", vec!["-f", socket.to_str().expect("utf-8")]),
        (
            "mv",
            vec![
                socket.to_str().expect("utf-8"),
                tmp.path().to_str().expect("utf-8"),
            ],
        ),
        (
            "ln",
            vec![
                "-sf",
                planted.to_str().expect("utf-8"),
                socket.to_str().expect("utf-8"),
            ],
        ),
        (
            "mv",
            vec![
                "-f",
                agents_file.to_str().expect("utf-8"),
                socket.to_str().expect("utf-8"),
            ],
        ),
        ("touch", vec![beside.to_str().expect("utf-8")]),
    ];
    for (program, args) in &attempts {
        let output = run_as(AGENT_UID, SOCKET_GROUP, program, args);
        assert!(
            !output.status.success(),
            "the agent could `{program} {}`",
            args.join(" ")
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("Permission denied"),
            "`{program}` failed for another reason: {}",
            described(&output)
        );
    }
    let after = std::fs::symlink_metadata(&socket).expect("the socket is still there");
    assert_eq!(after.ino(), before.ino(), "the very same socket");
    assert!(!beside.exists());

    // The same `rm` as the socket's owner works: the refusals above are the agent's lack of
    // rights, not a test that cannot fail.
    let owner = run_as(PROXY_UID, PROXY_UID, "rm", &[socket.to_str().expect("utf-8")]);
    assert!(owner.status.success(), "{}", described(&owner));
    drop(proxy);
}
