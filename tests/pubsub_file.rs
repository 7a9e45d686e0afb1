//! `FileSource` against a real directory: plain rewrites, a Kubernetes-style ConfigMap volume
//! updated by an atomic `..data` symlink swap, a missing file, a directory that appears late.

use fanout::membership::file::FileSource;
use fanout::membership::{Membership, MembershipSource};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
/// Long enough that a test passing within it proves the directory watch, not the timer, fired.
const NO_TIMER: Duration = Duration::from_secs(3600);

struct Running {
    updates: mpsc::Receiver<Membership>,
    runtime: tokio::runtime::Runtime,
}

impl Running {
    fn start(source: FileSource) -> Self {
        let (tx, updates) = mpsc::channel();
        let (sender, mut snapshots) = tokio::sync::watch::channel(Membership::new());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(Box::new(source).run(sender));
        // Every snapshot the source sends, in order, to the test thread.
        runtime.spawn(async move {
            while snapshots.changed().await.is_ok() {
                if tx.send(snapshots.borrow_and_update().clone()).is_err() {
                    return;
                }
            }
        });
        Self { updates, runtime }
    }

    fn next(&self) -> Membership {
        self.updates.recv_timeout(WAIT).expect("a membership update")
    }

    fn nothing_within(&self, d: Duration) -> bool {
        self.updates.recv_timeout(d).is_err()
    }

    fn stop(self) {
        self.runtime.shutdown_background();
    }
}

fn set(items: &[&str]) -> Membership {
    items.iter().map(|s| s.parse().unwrap()).collect()
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_rewritten_file_is_followed_and_a_missing_file_keeps_the_last_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints");
    write_atomically(
        &path,
        "# comment\ntcp://10.0.0.1:7100\n\ngarbage line\ntcp://10.0.0.2:7100\n",
    );
    let running = Running::start(FileSource::new(&path).with_recheck_interval(NO_TIMER));
    assert_eq!(
        running.next(),
        set(&["tcp://10.0.0.1:7100", "tcp://10.0.0.2:7100"])
    );

    write_atomically(&path, "tcp://10.0.0.2:7100\ntcp://10.0.0.3:7100\n");
    assert_eq!(
        running.next(),
        set(&["tcp://10.0.0.2:7100", "tcp://10.0.0.3:7100"])
    );

    // In-place rewrite (not atomic) is followed too.
    std::fs::write(&path, "tcp://10.0.0.4:7100\n").unwrap();
    let mut latest = running.next();
    while latest != set(&["tcp://10.0.0.4:7100"]) {
        latest = running.next();
    }

    // Gone: no update (the last list stays); back: followed again.
    std::fs::remove_file(&path).unwrap();
    assert!(
        running.nothing_within(Duration::from_millis(500)),
        "a missing file must not empty the list"
    );
    write_atomically(&path, "tcp://10.0.0.5:7100\n");
    assert_eq!(running.next(), set(&["tcp://10.0.0.5:7100"]));
    running.stop();
}

/// Lays out a directory the way the kubelet mounts a ConfigMap volume:
/// `endpoints -> ..data/endpoints`, `..data -> ..<version>`, `..<version>/endpoints`.
fn configmap_version(dir: &Path, version: &str, text: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("endpoints"), text).unwrap();
    let tmp_link = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp_link).unwrap();
    // The atomic swap: rename the new symlink over `..data`.
    std::fs::rename(&tmp_link, dir.join("..data")).unwrap();
}

#[test]
fn a_configmap_volume_updated_by_symlink_swap_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    configmap_version(dir.path(), "2026_11_25_10_00_00.1", "tcp://10.1.0.1:7100\n");
    symlink("..data/endpoints", dir.path().join("endpoints")).unwrap();
    let running =
        Running::start(FileSource::new(dir.path().join("endpoints")).with_recheck_interval(NO_TIMER));
    assert_eq!(running.next(), set(&["tcp://10.1.0.1:7100"]));

    configmap_version(
        dir.path(),
        "2026_11_25_10_00_05.2",
        "tcp://10.1.0.1:7100\ntcp://10.1.0.2:7100\n",
    );
    std::fs::remove_dir_all(dir.path().join("..2026_11_25_10_00_00.1")).unwrap();
    assert_eq!(
        running.next(),
        set(&["tcp://10.1.0.1:7100", "tcp://10.1.0.2:7100"])
    );

    configmap_version(dir.path(), "2026_11_25_10_00_09.3", "tcp://10.1.0.2:7100\n");
    assert_eq!(running.next(), set(&["tcp://10.1.0.2:7100"]));
    running.stop();
}

#[test]
fn a_file_that_appears_later_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints");
    let running = Running::start(FileSource::new(&path).with_recheck_interval(NO_TIMER));
    assert!(running.nothing_within(Duration::from_millis(300)));
    write_atomically(&path, "tcp://10.2.0.1:7100\n");
    assert_eq!(running.next(), set(&["tcp://10.2.0.1:7100"]));
    running.stop();
}

#[test]
fn the_timer_covers_a_directory_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mount");
    let path = mount.join("endpoints");
    let running = Running::start(FileSource::new(&path).with_recheck_interval(Duration::from_millis(100)));
    assert!(running.nothing_within(Duration::from_millis(300)));
    std::fs::create_dir(&mount).unwrap();
    write_atomically(&path, "tcp://10.3.0.1:7100\n");
    assert_eq!(running.next(), set(&["tcp://10.3.0.1:7100"]));
    // Once the directory exists it is watched: later changes arrive as well.
    write_atomically(&path, "tcp://10.3.0.2:7100\n");
    assert_eq!(running.next(), set(&["tcp://10.3.0.2:7100"]));
    running.stop();
}

#[test]
fn a_publisher_following_the_file_sees_a_change_after_a_quiet_spell() {
    // Through the Publisher, whose `follow` drives the source on a current-thread runtime.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints");
    write_atomically(&path, "tcp://127.0.0.1:1\n");
    let publisher = fanout::publisher::Publisher::new(Default::default()).unwrap();
    publisher
        .follow(Box::new(FileSource::new(&path).with_recheck_interval(NO_TIMER)))
        .unwrap();
    let wait_for = |want: Membership, within: Duration| {
        let start = std::time::Instant::now();
        while publisher.connected() != want {
            assert!(start.elapsed() < within, "still {:?}", publisher.connected());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(set(&["tcp://127.0.0.1:1"]), WAIT);
    std::thread::sleep(Duration::from_secs(3));
    write_atomically(&path, "tcp://127.0.0.1:2\n");
    wait_for(set(&["tcp://127.0.0.1:2"]), Duration::from_secs(2));
}
