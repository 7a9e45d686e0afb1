//! Unix socket files: created with their directory and mode, stale ones replaced, anything
//! else refused, removed on shutdown.

mod proxy_support;

use fanout::proxy::{self, ProxyConfig, ProxyError};
use proxy_support::*;
use std::os::unix::fs::PermissionsExt;
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

#[test]
fn a_socket_another_proxy_listens_on_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start(dir.path());
    let err = proxy::start(config(dir.path())).expect_err("must refuse a live socket");
    assert!(matches!(err, ProxyError::SocketFile { .. }), "{err}");
    assert!(err.to_string().contains("listening"), "{err}");

    // The first proxy is untouched and still serves.
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
