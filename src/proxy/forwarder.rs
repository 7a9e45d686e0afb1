//! The running proxy: one thread owns the XSUB and XPUB sockets (libzmq sockets are not
//! thread-safe) and their monitors, and forwards between them until told to stop.
//!
//! Longer than 500 lines for a reason: it is one thread's state (two sockets, two monitors, the
//! socket files and counters) and the loop that owns it; split, that state would be spread
//! across files that must change together.

use super::ProxyError;
use super::auth;
use super::config::{ProxyConfig, SHUTDOWN_LINGER};
use super::curve_server::CurveServer;
use super::ipc::{self, BoundSocketFile};
use super::metrics::{ProxyMetrics, ProxyStats, Side};
use super::monitor::{self, MonitorEvent, PeerChange, PeerTracker};
use super::relay::{RelayInput, RelayLinks};
use super::subscriptions::{LiveSubscriptions, SUBSCRIBE_TO_EVERYTHING, Upstream};
use crate::curve::PublicKey;
use crate::message_budget::{Exceeded, MessageBudget, MessageLimits, Verdict};
use crate::socket_options::HeartbeatOptions;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

/// Messages moved per socket before the loop looks at the other socket and the stop signal,
/// so neither direction starves the other.
const BURST: usize = 4096;

/// A running proxy. Dropping it stops it like `shutdown` does, without returning the stats.
#[derive(Debug)]
pub struct Proxy {
    publisher_endpoints: Vec<String>,
    subscriber_endpoints: Vec<String>,
    curve_public_key: Option<PublicKey>,
    metrics: ProxyMetrics,
    stop: UnixStream,
    running: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ProxyError>>>,
}

/// Starts a proxy: every socket is bound (and every unix socket file prepared) before this
/// returns; forwarding runs on a thread of its own.
pub fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
    start_with(config, None)
}

/// Starts a proxy that also relays to the leaves its feed names (`relay`).
pub fn start_relay(config: ProxyConfig, relay: RelayInput) -> Result<Proxy, ProxyError> {
    start_with(config, Some(relay))
}

fn start_with(config: ProxyConfig, relay: Option<RelayInput>) -> Result<Proxy, ProxyError> {
    config.validate()?;
    let metrics = ProxyMetrics::default();
    let (stop, stop_rx) = UnixStream::pair().map_err(ProxyError::io("creating the stop signal"))?;
    stop_rx
        .set_nonblocking(true)
        .map_err(ProxyError::io("creating the stop signal"))?;
    let running = Arc::new(AtomicBool::new(true));
    let (bound_tx, bound_rx) = mpsc::channel();
    let thread = {
        let metrics = metrics.clone();
        let running = running.clone();
        std::thread::Builder::new()
            .name("fanout-proxy".into())
            .spawn(move || {
                let forwarder = match Forwarder::bind(&config, metrics, relay) {
                    Ok(forwarder) => forwarder,
                    Err(err) => {
                        running.store(false, Ordering::Release);
                        let text = err.to_string();
                        // start() waits for this and returns the error itself.
                        let _ = bound_tx.send(Err(err));
                        return Err(ProxyError::Thread(format!("binding failed: {text}")));
                    }
                };
                let endpoints = (
                    forwarder.publisher_endpoints.clone(),
                    forwarder.subscriber_endpoints.clone(),
                    forwarder.curve.as_ref().map(CurveServer::public_key),
                );
                // If start() is gone nobody wants the proxy; run() then ends at the first
                // poll because the stop signal's other end is closed.
                let _ = bound_tx.send(Ok(endpoints));
                let result = forwarder.run(&stop_rx);
                running.store(false, Ordering::Release);
                if let Err(err) = &result {
                    tracing::error!(error = %err, "proxy stopped with an error");
                }
                result
            })
            .map_err(ProxyError::io("spawning the proxy thread"))?
    };
    match bound_rx.recv() {
        Ok(Ok((publisher_endpoints, subscriber_endpoints, curve_public_key))) => Ok(Proxy {
            publisher_endpoints,
            subscriber_endpoints,
            curve_public_key,
            metrics,
            stop,
            running,
            thread: Some(thread),
        }),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(err)
        }
        Err(_) => Err(match thread.join() {
            Ok(Err(err)) => err,
            Ok(Ok(())) => ProxyError::Thread("exited before binding".into()),
            Err(_) => ProxyError::Thread("panicked while binding".into()),
        }),
    }
}

impl Proxy {
    /// XSUB endpoints as bound (a tcp port 0 resolved to the real port).
    pub fn publisher_endpoints(&self) -> &[String] {
        &self.publisher_endpoints
    }

    /// XPUB endpoints as bound.
    pub fn subscriber_endpoints(&self) -> &[String] {
        &self.subscriber_endpoints
    }

    /// The proxy's CURVE public key (derived from its secret key), when it is a CURVE server.
    pub fn curve_public_key(&self) -> Option<PublicKey> {
        self.curve_public_key
    }

    pub fn stats(&self) -> ProxyStats {
        self.metrics.snapshot()
    }

    /// The live metrics, to register with a Prometheus registry.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// False once the forwarding thread has ended (after shutdown, or on a fatal error).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Stops forwarding, lets queued messages leave for at most the shutdown linger, closes the
    /// sockets and removes the unix socket files.
    pub fn shutdown(mut self) -> Result<ProxyStats, ProxyError> {
        self.stop_and_join()?;
        Ok(self.metrics.snapshot())
    }

    fn stop_and_join(&mut self) -> Result<(), ProxyError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // If the thread already ended, its end of the pair is closed and this write fails:
        // nothing to signal then.
        let _ = self.stop.write_all(b"x");
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(ProxyError::Thread("the forwarding thread panicked".into())),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Err(err) = self.stop_and_join() {
            tracing::warn!(error = %err, "proxy ended with an error");
        }
    }
}

/// Which thread owns it: everything here lives and dies on the forwarding thread.
struct Forwarder {
    // Field order is drop order: sockets before the context, whose termination waits for
    // them (bounded by the linger set at shutdown).
    xsub: zmq::Socket,
    xpub: zmq::Socket,
    xsub_monitor: zmq::Socket,
    xpub_monitor: zmq::Socket,
    /// The ZAP handler and allow-lists, when the proxy is a CURVE server.
    curve: Option<CurveServer>,
    /// The links to its leaves, when the proxy may relay.
    relay: Option<RelayLinks>,
    _context: zmq::Context,
    publisher_endpoints: Vec<String>,
    subscriber_endpoints: Vec<String>,
    socket_files: Vec<BoundSocketFile>,
    metrics: ProxyMetrics,
    live_subscriptions: LiveSubscriptions,
    /// The per-message caps, checked on both directions before anything is sent on.
    limits: MessageLimits,
    /// The frames of the multipart message being forwarded (reused: no allocation per message).
    parts: Vec<zmq::Message>,
    publisher_peers: PeerTracker,
    subscriber_peers: PeerTracker,
}

/// Distinguishes the inproc monitor endpoints of several proxies in one process.
static NEXT_PROXY_ID: AtomicU64 = AtomicU64::new(0);

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
fn bind_all(
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

fn monitor_socket(
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

impl Forwarder {
    fn bind(
        config: &ProxyConfig,
        metrics: ProxyMetrics,
        relay: Option<RelayInput>,
    ) -> Result<Self, ProxyError> {
        let context = zmq::Context::new();
        let xsub = context
            .socket(zmq::XSUB)
            .map_err(ProxyError::zmq("creating the XSUB socket"))?;
        let xpub = context
            .socket(zmq::XPUB)
            .map_err(ProxyError::zmq("creating the XPUB socket"))?;
        apply_socket_options(&xsub, config, "publisher (XSUB)")?;
        apply_socket_options(&xpub, config, "subscriber (XPUB)")?;
        // The ZAP handler is bound before any CURVE listener, so no handshake finds it
        // missing (libzmq would then admit the peer: ZAP enforcement is off by default).
        let curve = match &config.curve {
            Some(curve) => {
                let server = CurveServer::start(&context, curve, metrics.clone())?;
                metrics.enable_auth();
                let ctx = |what: &str| ProxyError::zmq(format!("setting {what}"));
                for (socket, domain) in [(&xsub, auth::PUBLISHER_DOMAIN), (&xpub, auth::SUBSCRIBER_DOMAIN)] {
                    socket.set_zap_domain(domain).map_err(ctx("ZAP_DOMAIN"))?;
                    socket
                        .set_curve_secretkey(&curve.secret.0)
                        .map_err(ctx("CURVE_SECRETKEY"))?;
                }
                // Every publisher endpoint is a CURVE server; subscriber endpoints per
                // transport (bind_all).
                xsub.set_curve_server(true).map_err(ctx("CURVE_SERVER"))?;
                Some(server)
            }
            None => None,
        };
        let id = NEXT_PROXY_ID.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Monitors first, so that no early connection escapes the peer counts.
        let xsub_monitor = monitor_socket(
            &context,
            &xsub,
            &format!("inproc://fanout-proxy-{pid}-{id}-publishers"),
        )?;
        let xpub_monitor = monitor_socket(
            &context,
            &xpub,
            &format!("inproc://fanout-proxy-{pid}-{id}-subscribers"),
        )?;
        let mut socket_files = Vec::new();
        let curve_on = curve.is_some();
        let bound = bind_all(
            &xsub,
            &config.publishers,
            config.socket_mode,
            &mut socket_files,
            false,
        )
        .and_then(|publishers| {
            let subscribers = bind_all(
                &xpub,
                &config.subscribers,
                config.socket_mode,
                &mut socket_files,
                curve_on,
            )?;
            Ok((publishers, subscribers))
        });
        let (publisher_endpoints, subscriber_endpoints) = match bound {
            Ok(bound) => bound,
            Err(err) => {
                socket_files.into_iter().for_each(BoundSocketFile::remove);
                return Err(err);
            }
        };
        tracing::info!(publishers = ?publisher_endpoints, subscribers = ?subscriber_endpoints, "proxy bound");
        // After every bind: the relay's CURVE client options apply to its connects only.
        let relay = relay
            .map(|input| RelayLinks::new(input, &xpub, config.curve.as_ref().map(|curve| &curve.secret)))
            .transpose()?;
        Ok(Self {
            xsub,
            xpub,
            xsub_monitor,
            xpub_monitor,
            curve,
            relay,
            _context: context,
            publisher_endpoints,
            subscriber_endpoints,
            socket_files,
            metrics,
            live_subscriptions: LiveSubscriptions::new(config.subscription_limits),
            limits: MessageLimits {
                max_frames: config.max_frames,
                max_bytes: u64::try_from(config.max_message_bytes).unwrap_or(u64::MAX),
            },
            parts: Vec::new(),
            publisher_peers: PeerTracker::default(),
            subscriber_peers: PeerTracker::default(),
        })
    }

    fn run(mut self, stop: &UnixStream) -> Result<(), ProxyError> {
        let result = self.forward_until_stopped(stop);
        self.close();
        result
    }

    fn forward_until_stopped(&mut self, stop: &UnixStream) -> Result<(), ProxyError> {
        let mut frame = zmq::Message::new();
        loop {
            let (
                downstream,
                upstream,
                publisher_events,
                subscriber_events,
                stopped,
                zap,
                allow_lists,
                assignment,
            ) = {
                let mut items = Vec::with_capacity(8);
                items.extend([
                    self.xsub.as_poll_item(zmq::POLLIN),
                    self.xpub.as_poll_item(zmq::POLLIN),
                    self.xsub_monitor.as_poll_item(zmq::POLLIN),
                    self.xpub_monitor.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(stop.as_raw_fd(), zmq::POLLIN),
                ]);
                if let Some(curve) = &self.curve {
                    items.push(curve.zap_socket().as_poll_item(zmq::POLLIN));
                    items.push(zmq::PollItem::from_fd(curve.wake_fd(), zmq::POLLIN));
                }
                let relay_item = self.relay.as_ref().map(|relay| {
                    items.push(zmq::PollItem::from_fd(relay.wake_fd(), zmq::POLLIN));
                    items.len() - 1
                });
                match zmq::poll(&mut items, -1) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(err) => {
                        return Err(ProxyError::Zmq {
                            context: "polling".into(),
                            source: err,
                        });
                    }
                }
                (
                    items[0].is_readable(),
                    items[1].is_readable(),
                    items[2].is_readable(),
                    items[3].is_readable(),
                    items[4].is_readable() || items[4].is_error(),
                    self.curve.is_some() && items[5].is_readable(),
                    self.curve.is_some() && items[6].is_readable(),
                    relay_item.is_some_and(|index| items[index].is_readable()),
                )
            };
            if stopped {
                return Ok(());
            }
            if let Some(curve) = &mut self.curve {
                // Allow-list changes first: nothing of a revoked key is forwarded after the
                // wake-up that brought the change.
                if allow_lists {
                    curve.apply_updates();
                }
                if zap {
                    curve.serve_zap()?;
                }
            }
            if assignment && let Some(relay) = &mut self.relay {
                relay.apply(&self.xpub);
            }
            if downstream {
                self.forward_downstream(&mut frame)?;
            }
            if upstream {
                self.forward_upstream(&mut frame)?;
            }
            if publisher_events {
                self.drain_monitor(Side::Publishers);
            }
            if subscriber_events {
                self.drain_monitor(Side::Subscribers);
            }
        }
    }

    /// Publishers to subscribers: a burst of whole messages, every frame unchanged.
    fn forward_downstream(&mut self, frame: &mut zmq::Message) -> Result<(), ProxyError> {
        let mut route = Route {
            from: &self.xsub,
            to: &self.xpub,
            limits: self.limits,
            parts: &mut self.parts,
        };
        let tally = match &mut self.curve {
            // Reading each message's User-Id costs a property lookup: only with CURVE.
            Some(curve) => route.burst(frame, |message| {
                if curve.admit(Side::Publishers, message) {
                    Upstream::Forward
                } else {
                    Upstream::Drop
                }
            })?,
            None => route.burst(frame, |_| Upstream::Forward)?,
        };
        tally.record(&self.metrics, Side::Publishers, Side::Subscribers);
        self.record_revoked(Side::Publishers);
        Ok(())
    }

    /// Adds the messages of revoked keys the last burst dropped to the metrics.
    fn record_revoked(&mut self, side: Side) {
        if let Some(curve) = &mut self.curve
            && curve.revoked_messages > 0
        {
            self.metrics
                .side(side)
                .refused_revoked
                .inc_by(std::mem::take(&mut curve.revoked_messages));
        }
    }

    /// Subscribers to publishers: subscriptions (as reference-counted by XPUB, and bounded by
    /// the subscription limits) and anything else subscribers send; subscriptions update the
    /// live set.
    fn forward_upstream(&mut self, frame: &mut zmq::Message) -> Result<(), ProxyError> {
        let live = &mut self.live_subscriptions;
        let mut subscription_messages = 0;
        let mut over_limit = 0;
        let mut route = Route {
            from: &self.xpub,
            to: &self.xsub,
            limits: self.limits,
            parts: &mut self.parts,
        };
        let mut curve = self.curve.as_mut();
        let tally = route.burst(frame, |message| {
            if let Some(curve) = curve.as_mut()
                && !curve.admit(Side::Subscribers, message)
            {
                return Upstream::Drop;
            }
            let first = &message[..];
            let was_collapsed = live.is_collapsed();
            let action = live.apply(first);
            match action {
                Upstream::Forward if first.first().is_some_and(|b| *b <= 1) => {
                    subscription_messages += 1
                }
                Upstream::Forward => {}
                Upstream::SubscribeToEverything => {
                    subscription_messages += 1;
                    over_limit += 1;
                    tracing::warn!(
                        "subscribers asked for more (or longer) topics than the subscription limits allow; subscribing upstream to everything and filtering locally from now on"
                    );
                }
                Upstream::Drop => {
                    if was_collapsed {
                        over_limit += 1;
                    }
                }
            }
            action
        })?;
        tally.record(&self.metrics, Side::Subscribers, Side::Publishers);
        self.record_revoked(Side::Subscribers);
        self.metrics.subscription_messages.inc_by(subscription_messages);
        self.metrics.subscriptions_over_limit.inc_by(over_limit);
        self.metrics
            .subscriptions_collapsed
            .set(i64::from(self.live_subscriptions.is_collapsed()));
        self.metrics
            .live_subscriptions
            .set(i64::try_from(self.live_subscriptions.len()).unwrap_or(i64::MAX));
        Ok(())
    }

    fn drain_monitor(&mut self, side: Side) {
        let (socket, peers) = match side {
            Side::Publishers => (&self.xsub_monitor, &mut self.publisher_peers),
            Side::Subscribers => (&self.xpub_monitor, &mut self.subscriber_peers),
        };
        let metrics = self.metrics.side(side);
        while let Ok(parts) = socket.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = parts.first().and_then(|first| MonitorEvent::parse(first)) else {
                continue;
            };
            let endpoint = parts
                .get(1)
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .unwrap_or_default();
            if let Some(curve) = &mut self.curve {
                curve.on_event(side, event.code, event.value);
            }
            match peers.apply(event) {
                PeerChange::Accepted => tracing::debug!(?side, %endpoint, "peer connected"),
                PeerChange::Disconnected => {
                    metrics.disconnects.inc();
                    tracing::debug!(?side, %endpoint, "peer disconnected");
                }
                PeerChange::HandshakeFailed => {
                    metrics.handshake_failures.inc();
                    tracing::info!(?side, %endpoint, code = event.code, errno = event.value, "peer cut off: handshake failed");
                }
                PeerChange::Stopped | PeerChange::Ignored => {}
            }
            metrics
                .connected
                .set(i64::try_from(peers.connected()).unwrap_or(i64::MAX));
        }
    }

    fn close(self) {
        for socket in [&self.xsub, &self.xpub] {
            let linger = i32::try_from(SHUTDOWN_LINGER.as_millis()).unwrap_or(i32::MAX);
            if let Err(err) = socket.set_linger(linger) {
                tracing::warn!(error = %err, "cannot set the shutdown linger");
            }
        }
        let Forwarder {
            xsub,
            xpub,
            xsub_monitor,
            xpub_monitor,
            curve,
            _context,
            socket_files,
            ..
        } = self;
        drop(xsub);
        drop(xpub);
        drop(xsub_monitor);
        drop(xpub_monitor);
        if let Some(curve) = curve {
            curve.close();
        }
        // Terminating the context waits for queued messages, at most the linger.
        drop(_context);
        socket_files.into_iter().for_each(BoundSocketFile::remove);
        tracing::info!("proxy stopped");
    }
}

/// What one burst moved.
#[derive(Debug, Default)]
struct Tally {
    messages: u64,
    bytes: u64,
    failures: u64,
    /// Messages over a per-message cap, by cap.
    refused_frames: u64,
    refused_bytes: u64,
    /// Messages deliberately not forwarded (subscription changes after a collapse).
    withheld: u64,
}

impl Tally {
    fn record(&self, metrics: &ProxyMetrics, from: Side, to: Side) {
        let refused = self.refused_frames + self.refused_bytes;
        if self.messages == 0 && self.failures == 0 && refused == 0 && self.withheld == 0 {
            return;
        }
        let received = metrics.side(from);
        received
            .messages_received
            .inc_by(self.messages + self.failures + refused + self.withheld);
        received.bytes_received.inc_by(self.bytes);
        received.refused_frames.inc_by(self.refused_frames);
        received.refused_bytes.inc_by(self.refused_bytes);
        let sent = metrics.side(to);
        sent.messages_sent.inc_by(self.messages);
        sent.bytes_sent.inc_by(self.bytes);
        if self.failures > 0 {
            sent.send_failures.inc_by(self.failures);
        }
    }
}

/// What became of one message.
enum Outcome {
    Sent(u64),
    SendFailed,
    Refused(Exceeded),
    Withheld,
}

/// One direction of the proxy: its two sockets, the per-message caps and the reused frame
/// buffer.
struct Route<'a> {
    from: &'a zmq::Socket,
    to: &'a zmq::Socket,
    limits: MessageLimits,
    parts: &'a mut Vec<zmq::Message>,
}

impl Route<'_> {
    /// Moves up to `BURST` whole messages without blocking, reusing `frame`. `inspect` sees the
    /// first frame of each message (the only thing the proxy ever reads, and only upstream)
    /// and says what to forward. A failed send or a message over a cap drops that message and
    /// is counted; only errors of the sockets themselves end the proxy.
    fn burst(
        &mut self,
        frame: &mut zmq::Message,
        mut inspect: impl FnMut(&mut zmq::Message) -> Upstream,
    ) -> Result<Tally, ProxyError> {
        let mut tally = Tally::default();
        for _ in 0..BURST {
            match self.from.recv(frame, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => break,
                Err(err) => {
                    return Err(ProxyError::Zmq {
                        context: "receiving".into(),
                        source: err,
                    });
                }
            }
            let outcome = match inspect(frame) {
                Upstream::Forward => self.message(frame)?,
                Upstream::SubscribeToEverything if !frame.get_more() => {
                    *frame = zmq::Message::from(SUBSCRIBE_TO_EVERYTHING);
                    self.message(frame)?
                }
                Upstream::SubscribeToEverything | Upstream::Drop => {
                    self.discard_rest(frame)?;
                    Outcome::Withheld
                }
            };
            match outcome {
                Outcome::Sent(bytes) => {
                    tally.messages += 1;
                    tally.bytes += bytes;
                }
                Outcome::SendFailed => tally.failures += 1,
                Outcome::Refused(Exceeded::Frames) => tally.refused_frames += 1,
                Outcome::Refused(Exceeded::Bytes) => tally.refused_bytes += 1,
                Outcome::Withheld => tally.withheld += 1,
            }
        }
        Ok(tally)
    }

    /// Forwards the message whose first frame is in `frame`, unchanged, if it is within the
    /// caps. The frames are gathered first, so a message over a cap is dropped whole and a
    /// subscriber never sees part of it.
    fn message(&mut self, frame: &mut zmq::Message) -> Result<Outcome, ProxyError> {
        let mut budget = MessageBudget::new(self.limits);
        self.parts.clear();
        loop {
            let more = frame.get_more();
            match budget.frame(frame.len(), more) {
                Verdict::Continue => {
                    self.parts.push(std::mem::replace(frame, zmq::Message::new()));
                    self.next_frame(frame)?;
                }
                Verdict::Complete => break,
                Verdict::Exceeded(why) => {
                    self.parts.clear();
                    if more {
                        self.discard_rest(frame)?;
                    }
                    tracing::debug!(reason = why.as_str(), "message over a cap; dropped");
                    return Ok(Outcome::Refused(why));
                }
            }
        }
        // `frame` holds the last frame; earlier ones, if any, are in `parts`. libzmq takes the
        // rest of a multipart message once it took the first frame, so only the first send can
        // fail in practice; any failure drops the message and is counted, never ends the proxy.
        let mut bytes = frame.len() as u64;
        let last = std::mem::replace(frame, zmq::Message::new());
        for part in self.parts.drain(..) {
            bytes += part.len() as u64;
            if let Err(err) = self.to.send(part, zmq::SNDMORE | zmq::DONTWAIT) {
                tracing::debug!(error = %err, "send failed; message dropped");
                return Ok(Outcome::SendFailed);
            }
        }
        if let Err(err) = self.to.send(last, zmq::DONTWAIT) {
            tracing::debug!(error = %err, "send failed; message dropped");
            return Ok(Outcome::SendFailed);
        }
        Ok(Outcome::Sent(bytes))
    }

    /// Later frames of a message are already queued when the first one arrives (libzmq
    /// delivers messages whole), so this does not wait.
    fn next_frame(&self, frame: &mut zmq::Message) -> Result<(), ProxyError> {
        self.from
            .recv(frame, 0)
            .map_err(ProxyError::zmq("receiving the next frame of a message"))
    }

    /// Reads and drops what is left of the message whose latest frame is in `frame`.
    fn discard_rest(&self, frame: &mut zmq::Message) -> Result<(), ProxyError> {
        while frame.get_more() {
            self.next_frame(frame)?;
        }
        Ok(())
    }
}
