//! Unix socket files: created with their directory and mode, stale ones replaced, a live one
//! taken over from the same proxy user in its own directory (a rolling update), anything else
//! refused, removed on shutdown only while still the proxy's own.

mod proxy_support;

use fanout::proxy::{self, ProxyConfig, ProxyError};
use proxy_support::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("socket file exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_directory_is_created_the_mode_set_and_the_file_removed_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = socket_path(dir.path());
    assert!(!path.parent().expect("has a parent").exists());
    let proxy = start(dir.path());
    assert_eq!(
        proxy.subscriber_endpoints(),
        [format!("ipc://{}", path.display())]
    );
    assert_eq!(mode(&path), 0o660);

    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &proxy);
    let subscriber = subscriber(&ctx, &proxy, &[b"t"]);
    sync(&publisher, &subscriber, b"t");
    proxy.shutdown().expect("clean shutdown");
    assert!(!path.exists(), "the socket file must be removed on shutdown");
}

#[test]
fn the_mode_is_configurable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = proxy::start(ProxyConfig {
        socket_mode: 0o600,
        ..config(dir.path())
    })
    .expect("starts");
    assert_eq!(mode(&socket_path(dir.path())), 0o600);
    drop(proxy);
    assert!(
        !socket_path(dir.path()).exists(),
        "dropping a proxy removes its file too"
    );
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = socket_path(dir.path());
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    // A socket file nobody listens on any more, as a killed proxy leaves behind.
    drop(UnixListener::bind(&path).expect("bind a listener"));
    assert!(path.exists());

    let proxy = start(dir.path());
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &proxy);
    let subscriber = subscriber(&ctx, &proxy, &[b"t"]);
    sync(&publisher, &subscriber, b"t");
}

#[test]
fn a_regular_file_is_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = socket_path(dir.path());
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(&path, b"precious").expect("write");

    let err = proxy::start(config(dir.path())).expect_err("must refuse");
    assert!(matches!(err, ProxyError::SocketFile { .. }), "{err}");
    assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
}

/// A rolling update: the group's next proxy (same user, the directory only that user may
/// write) takes the socket path over while the first still serves. The first keeps its
/// subscriber until it stops and then leaves the file alone; a new subscriber reaches the
/// second at once, and the first's subscriber reconnects to the second by itself.
#[test]
fn a_live_socket_of_the_same_proxy_user_in_its_own_directory_is_taken_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = socket_path(dir.path());
    let first = start(dir.path());
    let ctx = zmq::Context::new();
    let first_publisher = publisher(&ctx, &first);
    let early = subscriber(&ctx, &first, &[b"t"]);
    sync(&first_publisher, &early, b"t");
    let first_inode = std::fs::symlink_metadata(&path).expect("socket").ino();

    let second = start(dir.path());
    let taken = std::fs::symlink_metadata(&path).expect("socket");
    assert_ne!(
        taken.ino(),
        first_inode,
        "the path is the second proxy's socket now"
    );
    assert_eq!(taken.mode() & 0o777, 0o660);
    let second_publisher = publisher(&ctx, &second);
    // The first proxy still serves the subscriber it has ...
    sync(&first_publisher, &early, b"t");
    // ... and a subscriber connecting now reaches the second.
    let late = subscriber(&ctx, &second, &[b"t"]);
    sync(&second_publisher, &late, b"t");

    first.shutdown().expect("clean shutdown");
    let kept = std::fs::symlink_metadata(&path).expect("the first proxy left the second's socket");
    assert_eq!(kept.ino(), taken.ino());
    // The first proxy's subscriber reconnects to the path: the second proxy.
    sync(&second_publisher, &early, b"t");
    second.shutdown().expect("clean shutdown");
    assert!(!path.exists(), "the second proxy removes its own socket");
}

/// A live socket in a directory others may write to (a shared directory such as /tmp) could
/// be anybody's: it is refused, and its proxy keeps serving.
#[test]
fn a_live_socket_in_a_directory_others_may_write_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start(dir.path());
    let parent = socket_path(dir.path()).parent().expect("a parent").to_path_buf();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let err = proxy::start(config(dir.path())).expect_err("must refuse a live socket");
    assert!(matches!(err, ProxyError::SocketFile { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("listening") && text.contains("writable by others"),
        "{text}"
    );

    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &first);
    let subscriber = subscriber(&ctx, &first, &[b"t"]);
    sync(&publisher, &subscriber, b"t");
    first.shutdown().expect("clean shutdown");
}

#[test]
fn a_failed_start_leaves_no_socket_file_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let config = ProxyConfig {
        // The unix socket is bound first (subscribers), then the taken TCP port fails.
        subscribers: vec![
            format!("ipc://{}", socket_path(dir.path()).display()),
            format!("tcp://127.0.0.1:{port}"),
        ],
        ..config(dir.path())
    };
    let err = proxy::start(config).expect_err("port taken");
    assert!(matches!(err, ProxyError::Zmq { .. }), "{err}");
    assert!(!socket_path(dir.path()).exists());
}

#[test]
fn tcp_subscribers_and_several_publisher_endpoints_work_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ProxyConfig {
        publishers: vec!["tcp://127.0.0.1:0".into(), "tcp://127.0.0.1:0".into()],
        subscribers: vec!["tcp://127.0.0.1:0".into()],
        ..config(dir.path())
    };
    let proxy = proxy::start(config).expect("starts");
    assert_eq!(proxy.publisher_endpoints().len(), 2);
    assert!(proxy.publisher_endpoints().iter().all(|e| tcp_port(e) != 0));
    assert_ne!(proxy.publisher_endpoints()[0], proxy.publisher_endpoints()[1]);
    let ctx = zmq::Context::new();
    let subscriber = subscriber(&ctx, &proxy, &[b"t"]);
    for endpoint in proxy.publisher_endpoints() {
        let publisher = ctx.socket(zmq::PUB).expect("PUB");
        publisher.set_linger(0).expect("linger");
        publisher.connect(endpoint).expect("connect");
        sync(&publisher, &subscriber, b"t");
    }
}
