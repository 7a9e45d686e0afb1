//! Setting up the proxy's two sockets: the options both get, the subscriber side's own, binding
//! (unix socket files included) and monitors.

use super::ProxyError;
use super::config::ProxyConfig;
use super::ipc::{self, BoundSocketFile};
use crate::nodrop::set_lossy;
use crate::socket_monitor as monitor;
use crate::socket_options::{HeartbeatOptions, raw_socket, set_int_option};

/// The subscriber side's receive high-water mark. The XPUB moves every subscription it reads
/// into its own trie and an unbounded queue for the application, reading each connection's
/// pipe for as long as the connection's engine keeps refilling it: a flooding subscriber had
/// up to 29 000 subscriptions stored before the proxy judged its 1 001st with the default
/// 1 000, still 8 000 to 13 000 with 100 (measured); with 2 the refill waits for the proxy's
/// own pace and it is cut off at its cap. 1 is smaller still but stalls CURVE connections admitted through ZAP in libzmq
/// 4.3.4 (measured: nothing ever arrives). An honest subscriber's subscriptions wait in TCP
/// and in its own queue meanwhile.
const SUBSCRIBER_RCVHWM: i32 = 2;
// libzmq's XPUB option that hands every subscribe and unsubscribe to the application (zmq.h).
const ZMQ_XPUB_VERBOSER: std::ffi::c_int = 78;

/// Applies the options a proxy sets on both of its sockets (HWM, size limit, heartbeats, ZAP
/// domain, linger). Public so that the benchmark gives libzmq's stock proxy identical sockets.
pub fn apply_socket_options(
    socket: &zmq::Socket,
    config: &ProxyConfig,
    what: &str,
) -> Result<(), ProxyError> {
    let heartbeat = HeartbeatOptions::from_interval(config.heartbeat);
    let ctx = |option: &str| ProxyError::zmq(format!("setting {option} on the {what} socket"));
    socket.set_sndhwm(config.hwm).map_err(ctx("SNDHWM"))?;
    socket.set_rcvhwm(config.hwm).map_err(ctx("RCVHWM"))?;
    socket
        .set_maxmsgsize(config.max_message_bytes)
        .map_err(ctx("MAXMSGSIZE"))?;
    heartbeat
        .apply(socket)
        .map_err(ctx("HEARTBEAT_IVL/TIMEOUT/TTL"))?;
    // A ZAP domain makes libzmq refuse pre-ZMTP-3.0 peers. Without it any byte stream not
    // starting with 0xFF (an HTTP request, a port scanner) is taken for a ZMTP 1.0 peer and
    // its bytes for messages. No ZAP handler exists in the proxy's context and enforcement
    // is off, so ZMTP 3.x peers with the NULL mechanism are accepted as before.
    socket.set_zap_domain("fanout").map_err(ctx("ZAP_DOMAIN"))?;
    // Until shutdown nothing waits on close; shutdown sets the bounded linger.
    socket.set_linger(0).map_err(ctx("LINGER"))?;
    Ok(())
}

/// Binds `socket` to each endpoint, preparing unix socket files first; returns the endpoints
/// as bound.
///
/// With `curve_on_tcp`, tcp endpoints are bound as CURVE servers and the others (unix
/// sockets, protected by their file mode) with the NULL mechanism: libzmq copies the socket's
/// options into each listener when it binds, so the mechanism can differ per endpoint.
pub fn bind_all(
    socket: &zmq::Socket,
    endpoints: &[String],
    mode: u32,
    files: &mut Vec<BoundSocketFile>,
    curve_on_tcp: bool,
) -> Result<Vec<String>, ProxyError> {
    let mut bound = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        if curve_on_tcp {
            socket
                .set_curve_server(endpoint.starts_with("tcp://"))
                .map_err(ProxyError::zmq(format!("setting CURVE_SERVER for {endpoint}")))?;
        }
        let path = ipc::ipc_path(endpoint);
        if let Some(path) = &path {
            ipc::prepare(path)?;
        }
        socket
            .bind(endpoint)
            .map_err(ProxyError::zmq(format!("binding {endpoint}")))?;
        if let Some(path) = &path {
            files.push(BoundSocketFile::after_bind(path, mode)?);
        }
        let last = socket
            .get_last_endpoint()
            .map_err(ProxyError::zmq(format!(
                "reading the endpoint bound for {endpoint}"
            )))?
            .unwrap_or_else(|_| endpoint.clone());
        bound.push(last);
    }
    Ok(bound)
}

/// The publisher side's own option: a send high-water mark that holds every subscription the
/// XSUB sends a peer when it connects (`ProxyConfig::publisher_send_hwm`).
pub fn configure_publisher_side(xsub: &zmq::Socket, config: &ProxyConfig) -> Result<(), ProxyError> {
    xsub.set_sndhwm(config.publisher_send_hwm())
        .map_err(ProxyError::zmq("setting SNDHWM on the publisher (XSUB) socket"))
}

/// The subscriber side's own options: every subscribe and unsubscribe handed up with its
/// connection (the proxy keeps the per-connection books, see `subscription_relay`), a send
/// that fails rather than drops silently for a full subscriber queue (`set_lossy`), and
/// incoming frames no longer than a subscription to the longest allowed topic (or a handshake
/// command), so that libzmq drops a subscriber sending more before storing it.
pub fn configure_subscriber_side(xpub: &mut zmq::Socket, config: &ProxyConfig) -> Result<(), ProxyError> {
    set_int_option(raw_socket(xpub), ZMQ_XPUB_VERBOSER, 1).map_err(ProxyError::zmq(
        "setting XPUB_VERBOSER on the subscriber (XPUB) socket",
    ))?;
    set_lossy(raw_socket(xpub), false).map_err(ProxyError::zmq(
        "setting XPUB_NODROP on the subscriber (XPUB) socket",
    ))?;
    xpub.set_maxmsgsize(config.subscriber_frame_limit())
        .map_err(ProxyError::zmq(
            "setting MAXMSGSIZE on the subscriber (XPUB) socket",
        ))?;
    xpub.set_rcvhwm(SUBSCRIBER_RCVHWM)
        .map_err(ProxyError::zmq("setting RCVHWM on the subscriber (XPUB) socket"))
}

pub fn monitor_socket(
    context: &zmq::Context,
    socket: &zmq::Socket,
    address: &str,
) -> Result<zmq::Socket, ProxyError> {
    socket
        .monitor(address, monitor::WATCHED_EVENTS)
        .map_err(ProxyError::zmq(format!("starting monitor {address}")))?;
    let monitor = context
        .socket(zmq::PAIR)
        .map_err(ProxyError::zmq("creating a monitor socket"))?;
    monitor
        .set_linger(0)
        .map_err(ProxyError::zmq("setting LINGER on a monitor socket"))?;
    monitor
        .connect(address)
        .map_err(ProxyError::zmq(format!("connecting monitor {address}")))?;
    Ok(monitor)
}
