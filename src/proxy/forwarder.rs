//! The running proxy: one thread owns the XSUB and XPUB sockets (libzmq sockets are not
//! thread-safe) and their monitors, and forwards between them until told to stop.
//!
//! Longer than 500 lines for a reason: it is one thread's state (two sockets, two monitors, the
//! connection tables, the socket files and counters) and the loop that owns it; split, that
//! state would be spread across files that must change together. The parts that are not that
//! state live beside it: setting the sockets up (`sockets`), moving messages (`route`),
//! subscriptions (`subscription_relay`), in-flight accounts (`connections`), which subscriber
//! connections are a relay's links to its leaves (`leaf_links`).

use super::ProxyError;
use super::allow_lists::{AllowListInput, allow_list_feed};
use super::auth::{self, LogLimiter};
use super::config::{ProxyConfig, SHUTDOWN_LINGER};
use super::connections::Connections;
use super::curve_server::CurveServer;
use super::in_flight::{InFlightLimits, Verdict, WireCost};
use super::ipc::BoundSocketFile;
use super::leaf_links::LeafLinks;
use super::message_source::{Source, SourceCache};
use super::metrics::{CutOff, ProxyMetrics, ProxyStats, Side};
use super::peer::{self, SocketId};
use super::relay::{RelayInput, RelayLinks};
use super::route::{BURST, Outcome, Route, Tally};
use super::sockets::{
    apply_socket_options, bind_all, configure_publisher_side, configure_subscriber_side, monitor_socket,
};
use super::subscriber_book::{Applied, ConnectionKind, Refusal};
use super::subscription_relay::{Holder, SubscriptionRelay};
use super::subscriptions::{UpstreamMessage, classify};
use crate::curve::PublicKey;
use crate::message_budget::MessageLimits;
use crate::socket_monitor::{
    EVENT_ACCEPTED, EVENT_CONNECTED, EVENT_DISCONNECTED, MonitorEvent, PeerChange, PeerTracker,
};
use crate::socket_options::raw_socket;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often every TCP connection's in-flight account is checked, and subscriber connections
/// whose socket went away are released.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// At most one log line per side and reason per this long.
const LOG_EVERY: Duration = Duration::from_secs(1);

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

/// What a proxy is fed while it runs, besides its configuration.
#[derive(Debug, Default)]
pub struct ProxyInputs {
    /// The leaves it relays to (relay tree).
    pub relay: Option<RelayInput>,
    /// The allow-lists from the API (CURVE only): once the first arrives, they alone count
    /// (`allow_lists`).
    pub allow_lists: Option<AllowListInput>,
}

/// Starts a proxy: every socket is bound (and every unix socket file prepared) before this
/// returns; forwarding runs on a thread of its own.
pub fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
    start_with(config, ProxyInputs::default())
}

/// Starts a proxy that also relays to the leaves its feed names (`relay`).
pub fn start_relay(config: ProxyConfig, relay: RelayInput) -> Result<Proxy, ProxyError> {
    start_with(
        config,
        ProxyInputs {
            relay: Some(relay),
            ..ProxyInputs::default()
        },
    )
}

/// Starts a proxy fed by `inputs`.
pub fn start_with(config: ProxyConfig, inputs: ProxyInputs) -> Result<Proxy, ProxyError> {
    config.validate()?;
    if inputs.allow_lists.is_some() && config.curve.is_none() {
        return Err(ProxyError::Config(
            "allow-lists from the API need a CURVE proxy (a secret key and allow-list files)".into(),
        ));
    }
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
                let forwarder = match Forwarder::bind(&config, metrics, inputs) {
                    Ok(forwarder) => forwarder,
                    Err(err) => {
                        running.store(false, Ordering::Release);
                        // start() waits for this and returns the error itself.
                        let _ = bound_tx.send(Err(err));
                        return Err(ProxyError::Thread("failed to bind"));
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
                // Not logged here: `shutdown` returns it (and `fanout proxy` ends at once and
                // prints it), or `Drop` logs it; logging it here too would print it twice.
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
            Ok(Ok(())) => ProxyError::Thread("exited before binding"),
            Err(_) => ProxyError::Thread("panicked while binding"),
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
            Err(_) => Err(ProxyError::Thread("panicked")),
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
    /// `xpub` as libzmq's raw socket (the object libzmq owns, not the wrapper, so it stays
    /// valid while `xpub` lives): sends that count full subscriber queues use it (`route`).
    xpub_raw: *mut std::ffi::c_void,
    xsub_monitor: zmq::Socket,
    xpub_monitor: zmq::Socket,
    /// The ZAP handler and allow-lists, when the proxy is a CURVE server.
    curve: Option<CurveServer>,
    /// The links to its leaf proxies, when the proxy may relay (relay tree).
    leaves: Option<RelayLinks>,
    /// Which subscriber-side connections are those links (the ones the XPUB made itself).
    leaf_links: LeafLinks,
    /// Where recent publisher messages came from.
    sources: SourceCache,
    _context: zmq::Context,
    publisher_endpoints: Vec<String>,
    subscriber_endpoints: Vec<String>,
    socket_files: Vec<BoundSocketFile>,
    metrics: ProxyMetrics,
    /// Subscriptions: per subscriber connection, and what goes upstream.
    relay: SubscriptionRelay,
    /// The per-message caps downstream, checked before anything is sent on.
    limits: MessageLimits,
    /// The per-message caps upstream (one frame): at most `publisher_send_hwm` of them wait
    /// for each publisher.
    upstream_limits: MessageLimits,
    /// The frames of the multipart message being forwarded (reused: no allocation per message).
    parts: Vec<zmq::Message>,
    publisher_peers: PeerTracker,
    subscriber_peers: PeerTracker,
    /// Per connection of each side: its socket and in-flight account.
    publisher_connections: Connections,
    subscriber_connections: Connections,
    /// The framing of each side's TCP connections (CURVE or NULL).
    publisher_wire: WireCost,
    subscriber_wire: WireCost,
    /// Whether each side's socket had nothing complete left to receive after the last pass.
    publishers_caught_up: bool,
    subscribers_caught_up: bool,
    next_check: Instant,
    log: LogLimiter<(Side, CutOff)>,
}

/// Distinguishes the inproc monitor endpoints of several proxies in one process.
static NEXT_PROXY_ID: AtomicU64 = AtomicU64::new(0);

impl Forwarder {
    fn bind(config: &ProxyConfig, metrics: ProxyMetrics, inputs: ProxyInputs) -> Result<Self, ProxyError> {
        let ProxyInputs { relay, allow_lists } = inputs;
        let context = zmq::Context::new();
        let xsub = context
            .socket(zmq::XSUB)
            .map_err(ProxyError::zmq("creating the XSUB socket"))?;
        let mut xpub = context
            .socket(zmq::XPUB)
            .map_err(ProxyError::zmq("creating the XPUB socket"))?;
        apply_socket_options(&xsub, config, "publisher (XSUB)")?;
        apply_socket_options(&xpub, config, "subscriber (XPUB)")?;
        configure_publisher_side(&xsub, config)?;
        configure_subscriber_side(&mut xpub, config)?;
        let xpub_raw = raw_socket(&mut xpub);
        // The ZAP handler is bound before any CURVE listener, so no handshake finds it
        // missing (libzmq would then admit the peer: ZAP enforcement is off by default).
        let curve = match &config.curve {
            Some(curve) => {
                // Without a feed from the API the files stay the only source.
                let allow_lists = match allow_lists {
                    Some(input) => input,
                    None => allow_list_feed()?.1,
                };
                let server = CurveServer::start(&context, curve, metrics.clone(), allow_lists)?;
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
        let leaves = relay
            .map(|input| {
                RelayLinks::new(
                    input,
                    &xpub,
                    config.leaf_link_frame_limit(),
                    config.curve.as_ref().map(|curve| &curve.secret),
                )
            })
            .transpose()?;
        // Every publisher endpoint is CURVE with a secret key; of the subscriber endpoints the
        // tcp ones, the only ones measured.
        let publisher_wire = WireCost::of(curve_on);
        let subscriber_wire = WireCost::of(curve_on);
        let in_flight_limits =
            |wire| InFlightLimits::new(config.hwm, config.max_message_bytes, config.max_frames, wire);
        Ok(Self {
            xsub,
            xpub,
            xpub_raw,
            xsub_monitor,
            xpub_monitor,
            curve,
            leaves,
            leaf_links: LeafLinks::default(),
            _context: context,
            publisher_endpoints,
            subscriber_endpoints,
            socket_files,
            metrics,
            relay: SubscriptionRelay::new(config.subscription_limits),
            limits: MessageLimits {
                max_frames: config.max_frames,
                max_bytes: u64::try_from(config.max_message_bytes).unwrap_or(u64::MAX),
            },
            upstream_limits: config.upstream_message_limits(),
            parts: Vec::new(),
            publisher_peers: PeerTracker::default(),
            subscriber_peers: PeerTracker::default(),
            publisher_connections: Connections::new(in_flight_limits(publisher_wire)),
            subscriber_connections: Connections::new(in_flight_limits(subscriber_wire)),
            publisher_wire,
            subscriber_wire,
            publishers_caught_up: true,
            subscribers_caught_up: true,
            next_check: Instant::now() + CHECK_EVERY,
            log: LogLimiter::new(LOG_EVERY),
            sources: SourceCache::default(),
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
            let timeout = self.next_check.saturating_duration_since(Instant::now());
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
                let leaves_item = self.leaves.as_ref().map(|leaves| {
                    items.push(zmq::PollItem::from_fd(leaves.wake_fd(), zmq::POLLIN));
                    items.len() - 1
                });
                let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
                match zmq::poll(&mut items, timeout) {
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
                    leaves_item.is_some_and(|index| items[index].is_readable()),
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
            if assignment && let Some(leaves) = &mut self.leaves {
                leaves.apply(&self.xpub);
            }
            // Monitor events before messages: a connection accepted since the last pass is
            // known before its messages are counted.
            if publisher_events {
                self.drain_monitor(Side::Publishers);
            }
            if subscriber_events {
                self.drain_monitor(Side::Subscribers);
            }
            self.publishers_caught_up = !downstream || self.forward_downstream(&mut frame)?;
            self.subscribers_caught_up = !upstream || self.forward_upstream(&mut frame)?;
            if Instant::now() >= self.next_check {
                self.check_connections();
                self.next_check = Instant::now() + CHECK_EVERY;
            }
        }
    }

    /// Publishers to subscribers: a burst of whole messages, every frame unchanged. Returns
    /// whether the publisher side had nothing more to receive.
    fn forward_downstream(&mut self, frame: &mut zmq::Message) -> Result<bool, ProxyError> {
        let mut route = Route {
            from: &self.xsub,
            to: &self.xpub,
            limits: self.limits,
            parts: &mut self.parts,
            wire: self.publisher_wire,
            count_full_queues: Some(self.xpub_raw),
        };
        let sources = &mut self.sources;
        let connections = &mut self.publisher_connections;
        let mut curve = self.curve.as_mut();
        // Per message: the metadata address compared with a few remembered ones (a field
        // read), then one addition to the current run of the connection's bytes. With CURVE,
        // the key it was admitted with checked against the allow-list.
        let (tally, drained) = route.burst(
            frame,
            |message| {
                let source = sources.source(message);
                let forward = curve
                    .as_mut()
                    .is_none_or(|curve| curve.admit(Side::Publishers, source));
                (forward, source.fd)
            },
            |fd, wire| {
                if let Some(fd) = fd {
                    connections.delivered(fd, wire);
                }
            },
        )?;
        tally.record(&self.metrics, Side::Publishers, Side::Subscribers);
        self.record_revoked(Side::Publishers);
        Ok(drained)
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

    /// Subscribers to publishers: subscribes and unsubscribes go to the relay, which sends on
    /// what changes the set of held topics; anything else subscribers send is forwarded
    /// unchanged within the upstream caps (one frame). Returns whether the subscriber side had
    /// nothing more to receive. Not the hot path: subscribers send little.
    fn forward_upstream(&mut self, frame: &mut zmq::Message) -> Result<bool, ProxyError> {
        let mut tally = Tally::default();
        let mut drained = false;
        for _ in 0..BURST {
            let received = Route {
                from: &self.xpub,
                to: &self.xsub,
                limits: self.upstream_limits,
                parts: &mut self.parts,
                wire: self.subscriber_wire,
                count_full_queues: None,
            }
            .receive(frame)?;
            if !received {
                drained = true;
                break;
            }
            // Monitor events emitted before this message was queued are applied first, so a
            // connection that ended is known ended before a message on its reused descriptor.
            self.drain_monitor(Side::Subscribers);
            let source = Source::of(frame);
            let holder = source.fd.and_then(|fd| {
                let id = peer::socket_id(fd)?;
                let kind = if self.leaf_links.is_link(fd, id) {
                    ConnectionKind::LeafLink
                } else {
                    ConnectionKind::Subscriber
                };
                Some(Holder { fd, id, kind })
            });
            let outcome = self.upstream_message(frame, &source, holder)?;
            // A link to a leaf keeps no in-flight account: the group's own proxy, whose
            // upstream is mostly idle (an account would reconnect it, and cut the leaf's node
            // off for a moment, after a long enough run of heartbeats alone).
            if let Some(fd) = source.fd
                && holder.is_none_or(|holder| holder.kind == ConnectionKind::Subscriber)
            {
                self.subscriber_connections.delivered(fd, outcome.wire());
            }
            tally.add(outcome);
        }
        tally.record(&self.metrics, Side::Subscribers, Side::Publishers);
        self.record_revoked(Side::Subscribers);
        Ok(drained)
    }

    /// One message from a subscriber or a link to a leaf, whose first frame is in `frame`;
    /// `holder` is its connection while still open.
    fn upstream_message(
        &mut self,
        frame: &mut zmq::Message,
        source: &Source,
        holder: Option<Holder>,
    ) -> Result<Outcome, ProxyError> {
        let mut route = Route {
            from: &self.xpub,
            to: &self.xsub,
            limits: self.upstream_limits,
            parts: &mut self.parts,
            wire: self.subscriber_wire,
            count_full_queues: None,
        };
        // A link to a leaf has no User-Id: the relay is the CURVE client there, and it was the
        // leaf's ZAP handler that admitted the group's key.
        let leaf_link = holder.is_some_and(|holder| holder.kind == ConnectionKind::LeafLink);
        if !leaf_link
            && let Some(curve) = &mut self.curve
            && !curve.admit(Side::Subscribers, source)
        {
            return route.discard(frame);
        }
        let (subscribe, topic) = match classify(&frame[..]) {
            _ if frame.get_more() => return route.message(frame),
            UpstreamMessage::Subscribe(topic) => (true, topic),
            UpstreamMessage::Unsubscribe(topic) => (false, topic),
            UpstreamMessage::Other => return route.message(frame),
        };
        let outcome = Outcome::Withheld {
            wire: self.subscriber_wire.frame(frame.len()),
        };
        // No connection: an unsubscribe libzmq made up for a subscriber that left (no
        // descriptor), or one queued before its connection ended (the descriptor is closed);
        // the connection's end is handled from the monitor and the checks instead.
        let Some(holder) = holder else {
            return Ok(outcome);
        };
        match self
            .relay
            .apply(&self.xsub, &self.metrics, holder, subscribe, topic)
        {
            Applied::Refused(refusal) => {
                let reason = match refusal {
                    Refusal::Topics => CutOff::Topics,
                    Refusal::TopicBytes => CutOff::TopicBytes,
                };
                self.metrics.refused_subscriptions(refusal.as_str()).inc();
                self.cut_off(
                    Side::Subscribers,
                    holder.fd,
                    holder.id,
                    reason,
                    topic.len() as u64,
                );
            }
            Applied::NotHeld => {
                self.metrics.refused_subscriptions("not_subscribed").inc();
            }
            Applied::Recorded | Applied::Duplicate | Applied::Ignored => {}
        }
        Ok(outcome)
    }

    /// Closes the connection on `fd` (if it still is socket `id`), counts and logs it.
    fn cut_off(&mut self, side: Side, fd: i32, id: SocketId, reason: CutOff, amount: u64) {
        if !peer::shut_down(fd, id) {
            return;
        }
        self.metrics.cut_off(side, reason).inc();
        if let Some(suppressed) = self.log.allow((side, reason), Instant::now()) {
            tracing::warn!(
                side = side.as_str(),
                reason = reason.as_str(),
                amount,
                suppressed,
                "peer cut off"
            );
        }
    }

    /// The timer's work: every TCP connection's in-flight account, and subscriber connections
    /// whose socket is gone.
    fn check_connections(&mut self) {
        let now = Instant::now();
        for side in [Side::Publishers, Side::Subscribers] {
            let (connections, caught_up) = match side {
                Side::Publishers => (&mut self.publisher_connections, self.publishers_caught_up),
                Side::Subscribers => (&mut self.subscriber_connections, self.subscribers_caught_up),
            };
            let offenders = connections.check(now, caught_up);
            let largest = connections.largest_in_flight();
            self.metrics
                .side(side)
                .in_flight_max
                .set(i64::try_from(largest).unwrap_or(i64::MAX));
            for offender in offenders {
                let (reason, amount) = match offender.verdict {
                    Verdict::InFlight(bytes) => (CutOff::InFlight, bytes),
                    Verdict::Unfinished(bytes) => (CutOff::UnfinishedMessage, bytes),
                    Verdict::Fine => continue,
                };
                self.cut_off(side, offender.fd, offender.id, reason, amount);
            }
        }
        self.relay.retain_open(&self.xsub, &self.metrics);
        self.leaf_links.retain_open();
    }

    fn drain_monitor(&mut self, side: Side) {
        let (socket, peers, connections) = match side {
            Side::Publishers => (
                &self.xsub_monitor,
                &mut self.publisher_peers,
                &mut self.publisher_connections,
            ),
            Side::Subscribers => (
                &self.xpub_monitor,
                &mut self.subscriber_peers,
                &mut self.subscriber_connections,
            ),
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
            // The event value is the connection's descriptor for ACCEPTED, CONNECTED and
            // DISCONNECTED.
            let fd = i32::try_from(event.value).unwrap_or(-1);
            if matches!(event.code, EVENT_ACCEPTED | EVENT_DISCONNECTED) && side == Side::Publishers {
                // A metadata address may be reused from now on.
                self.sources.forget();
            }
            match event.code {
                EVENT_ACCEPTED => {
                    connections.accepted(fd);
                    if side == Side::Subscribers {
                        self.leaf_links.accepted(fd);
                    }
                }
                // Only a relay's XPUB connects anywhere: to its leaves.
                EVENT_CONNECTED if side == Side::Subscribers => self.leaf_links.connected(fd),
                EVENT_DISCONNECTED => {
                    connections.disconnected(fd);
                    if side == Side::Subscribers {
                        self.relay.connection_ended(&self.xsub, &self.metrics, fd);
                    }
                }
                _ => {}
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
