//! `fanout proxy`: the per-node proxy's flags, a contract with the DaemonSet the controller
//! writes (`controller::objects::proxy_args`).

use crate::proxy::{
    CurveServerConfig, DEFAULT_HWM, DEFAULT_MAX_FRAMES, DEFAULT_MAX_MESSAGE_BYTES, ProxyConfig,
    SubscriptionLimits,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// XSUB bind endpoint for publishers (repeatable), e.g. `tcp://0.0.0.0:7100`.
    #[arg(long = "publishers", value_name = "ENDPOINT", required = true)]
    pub publishers: Vec<String>,
    /// XPUB bind endpoint for local subscribers (repeatable), e.g.
    /// `ipc:///var/run/fanout/ns.name.sock` or `tcp://0.0.0.0:7101`.
    #[arg(long = "subscribers", value_name = "ENDPOINT", required = true)]
    pub subscribers: Vec<String>,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address, e.g. `0.0.0.0:9102`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// Per-peer queue bound in messages (send and receive high-water marks).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HWM, value_parser = clap::value_parser!(i32).range(0..))]
    pub hwm: i32,
    /// Largest message (all frames) forwarded; a peer sending a bigger frame is disconnected.
    /// `--hwm` x this is the most one peer's queue holds, at most 256 MiB; with framing and a
    /// 16 MiB margin, the most libzmq may hold for one TCP peer before its connection is closed
    /// (as it is when a peer keeps sending without completing a message).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_message_bytes: i64,
    /// Most frames per message; a message with more is dropped and counted.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FRAMES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_frames: u32,
    /// Most distinct topics (of all subscribers together) subscribed upstream one by one; past
    /// it the proxy subscribes upstream to everything once and filters locally.
    #[arg(long, value_name = "N", default_value_t = SubscriptionLimits::default().max_topics)]
    pub max_topics: usize,
    /// Longest topic prefix a subscriber may subscribe to; a longer one closes its connection
    /// (a subscriber frame longer than a subscription to it, or than 512 bytes, ends the
    /// connection inside libzmq).
    #[arg(long, value_name = "BYTES", default_value_t = SubscriptionLimits::default().max_topic_bytes)]
    pub max_topic_bytes: usize,
    /// Most topics one subscriber connection may hold at once; one more closes the connection
    /// (the proxy keeps what each connection subscribed to, so this bounds its memory).
    #[arg(long, value_name = "N", default_value_t = SubscriptionLimits::default().max_topics_per_subscriber, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_topics_per_subscriber: usize,
    /// ZMTP heartbeat interval in seconds (fractions allowed; 0 disables); peers silent for
    /// three intervals are dropped.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub heartbeat: Duration,
    /// Permission bits of unix socket files, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// CURVE: the proxy's secret key (Z85, from `fanout keygen`; not readable by others).
    /// The publisher endpoints and tcp subscriber endpoints become CURVE servers; unix
    /// sockets stay protected by their file mode and group. The public key is logged.
    #[arg(long, value_name = "FILE", requires = "allow_publishers_file")]
    pub curve_secret_key_file: Option<PathBuf>,
    /// CURVE: the Z85 public keys allowed to publish, one a line (`#` comments), followed
    /// live: a key added is admitted within a second, a key removed is cut off.
    #[arg(long, value_name = "FILE", requires = "curve_secret_key_file")]
    pub allow_publishers_file: Option<PathBuf>,
    /// CURVE: the public keys allowed to subscribe over tcp, same format, followed live.
    /// Without it any client key may subscribe over tcp (still encrypted, and the subscriber
    /// still authenticates the proxy).
    #[arg(long, value_name = "FILE", requires = "curve_secret_key_file")]
    pub allow_subscribers_file: Option<PathBuf>,
    /// CURVE: follow the allow-lists through the API as well, in this ConfigMap (keys
    /// `publishers` and `subscribers`, the files' format; the controller sets it to the
    /// group's `<group>-curve-allow`). The files count until the ConfigMap's first list
    /// arrives, from then on only the ConfigMap: a revocation reaches the proxy within a
    /// second of the ConfigMap's rewrite, not at the kubelet's next refresh of the mounted
    /// files. Needs list and watch on that ConfigMap (a field selector on its name).
    #[arg(long, value_name = "NAME", requires_all = ["allow_lists_namespace", "curve_secret_key_file"])]
    pub allow_lists_configmap: Option<String>,
    /// CURVE: the namespace of `--allow-lists-configmap`.
    #[arg(long, value_name = "NAMESPACE", requires = "allow_lists_configmap")]
    pub allow_lists_namespace: Option<String>,
    /// Relay tree: the group whose relay this proxy may be. The proxy follows the leaves
    /// assigned to it (EndpointSlices labelled `fanout.dev/relay-for=GROUP` and
    /// `fanout.dev/relay=POD`) through the API and connects its subscriber side to each leaf's
    /// publisher port. Needs list and watch on EndpointSlices in the namespace.
    #[arg(long, value_name = "GROUP", requires_all = ["relay_namespace", "relay_pod"])]
    pub relay_group: Option<String>,
    /// Relay tree: the group's namespace.
    #[arg(long, value_name = "NAMESPACE", requires = "relay_group")]
    pub relay_namespace: Option<String>,
    /// Relay tree: this proxy's pod name (the downward API's `metadata.name`).
    #[arg(long, value_name = "POD", requires = "relay_group")]
    pub relay_pod: Option<String>,
}

/// The allow-list ConfigMap followed through the API, its names checked (they go into a
/// field selector: nothing but a name may).
fn allow_lists_configmap(
    namespace: &str,
    name: &str,
) -> crate::Result<Box<dyn crate::proxy::allow_lists::AllowListSource>> {
    if !is_dns1123_subdomain(name) {
        return Err(crate::proxy::ProxyError::Config(format!(
            "--allow-lists-configmap {name:?} is not an object name (at most 253 of [a-z0-9.-], alphanumeric at both ends)"
        ))
        .into());
    }
    if !(is_dns1123_subdomain(namespace) && namespace.len() <= 63 && !namespace.contains('.')) {
        return Err(crate::proxy::ProxyError::Config(format!(
            "--allow-lists-namespace {namespace:?} is not a namespace name (at most 63 of [a-z0-9-], alphanumeric at both ends)"
        ))
        .into());
    }
    Ok(Box::new(crate::proxy::allow_list_api::ConfigMapAllowLists::new(
        namespace.to_string(),
        name.to_string(),
    )))
}

/// A Kubernetes object name: at most 253 of `[a-z0-9.-]`, starting and ending alphanumeric.
fn is_dns1123_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|b| alphanumeric(b) || matches!(b, b'-' | b'.'))
}

/// The source of a relay's assignment, its names checked.
fn relay_assignment(
    namespace: &str,
    group: &str,
    pod: &str,
) -> crate::Result<Box<dyn crate::membership::MembershipSource>> {
    for (what, value) in [
        ("--relay-group", group),
        ("--relay-namespace", namespace),
        ("--relay-pod", pod),
    ] {
        if !crate::endpoint_list::is_label_value(value) {
            return Err(crate::proxy::ProxyError::Config(format!(
                "{what} {value:?} is not a label value (at most 63 of [A-Za-z0-9._-], alphanumeric at both ends)"
            ))
            .into());
        }
    }
    Ok(Box::new(
        crate::membership::kubernetes::GroupSource::relay_assignment(
            namespace.to_string(),
            group.to_string(),
            pod.to_string(),
        ),
    ))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal permission mode such as 660")),
    }
}

impl From<ProxyArgs> for ProxyConfig {
    fn from(args: ProxyArgs) -> Self {
        ProxyConfig {
            publishers: args.publishers,
            subscribers: args.subscribers,
            hwm: args.hwm,
            max_message_bytes: args.max_message_bytes,
            max_frames: args.max_frames,
            subscription_limits: SubscriptionLimits {
                max_topics: args.max_topics,
                max_topic_bytes: args.max_topic_bytes,
                max_topics_per_subscriber: args.max_topics_per_subscriber,
            },
            heartbeat: args.heartbeat,
            socket_mode: args.socket_mode,
            // Reading the key can fail: done in `run`.
            curve: None,
        }
    }
}

impl ProxyArgs {
    pub fn run(self) -> crate::Result<()> {
        let http = self.http;
        let curve = match (&self.curve_secret_key_file, &self.allow_publishers_file) {
            (Some(secret), Some(publishers)) => Some(CurveServerConfig {
                secret: crate::curve::read_secret_key_file(secret)?,
                allow_publishers: publishers.clone(),
                allow_subscribers: self.allow_subscribers_file.clone(),
            }),
            _ => None,
        };
        let relay_assignment = match (&self.relay_group, &self.relay_namespace, &self.relay_pod) {
            (Some(group), Some(namespace), Some(pod)) => Some(relay_assignment(namespace, group, pod)?),
            _ => None,
        };
        let allow_lists = match (&self.allow_lists_configmap, &self.allow_lists_namespace) {
            (Some(name), Some(namespace)) => Some(allow_lists_configmap(namespace, name)?),
            _ => None,
        };
        let config = ProxyConfig { curve, ..self.into() };
        let followers = crate::proxy::Followers {
            relay_assignment,
            allow_lists,
        };
        Ok(crate::proxy::run(config, http, followers)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    #[test]
    fn flags_parse_into_a_config() {
        let cli = Cli::try_parse_from([
            "proxy",
            "--publishers",
            "tcp://0.0.0.0:7100",
            "--publishers",
            "tcp://127.0.0.1:7200",
            "--subscribers",
            "ipc:///var/run/fanout/ns.g.sock",
            "--http",
            "0.0.0.0:9102",
            "--hwm",
            "500",
            "--max-message-bytes",
            "65536",
            "--heartbeat",
            "2.5",
            "--socket-mode",
            "600",
            "--max-topics-per-subscriber",
            "50",
        ])
        .expect("valid flags");
        assert_eq!(
            cli.args.http,
            Some("0.0.0.0:9102".parse().expect("literal address"))
        );
        let config = ProxyConfig::from(cli.args);
        assert_eq!(config.publishers, ["tcp://0.0.0.0:7100", "tcp://127.0.0.1:7200"]);
        assert_eq!(config.subscribers, ["ipc:///var/run/fanout/ns.g.sock"]);
        assert_eq!(config.hwm, 500);
        assert_eq!(config.max_message_bytes, 65536);
        assert_eq!(config.heartbeat, Duration::from_millis(2500));
        assert_eq!(config.socket_mode, 0o600);
        assert_eq!(config.subscription_limits.max_topics_per_subscriber, 50);
        assert_eq!(config.subscription_limits.max_topic_bytes, 256);
    }

    #[test]
    fn defaults_and_bad_values() {
        let cli = Cli::try_parse_from([
            "proxy",
            "--publishers",
            "tcp://*:7100",
            "--subscribers",
            "ipc:///x.sock",
        ])
        .expect("valid flags");
        assert_eq!(cli.args.socket_mode, 0o660);
        assert_eq!(cli.args.hwm, DEFAULT_HWM);
        assert!(Cli::try_parse_from(["proxy", "--subscribers", "ipc:///x.sock"]).is_err());
        let bad = |flag: &str, value: &str| {
            Cli::try_parse_from([
                "proxy",
                "--publishers",
                "tcp://*:1",
                "--subscribers",
                "ipc:///x",
                flag,
                value,
            ])
            .is_err()
        };
        assert!(bad("--socket-mode", "999"));
        assert!(bad("--socket-mode", "1777"));
        assert!(bad("--heartbeat", "-1"));
        assert!(bad("--heartbeat", "soon"));
        assert!(bad("--hwm", "-5"));
        assert!(bad("--max-message-bytes", "0"));
        assert!(bad("--max-topics-per-subscriber", "0"));
        // The CURVE flags come together.
        assert!(bad("--curve-secret-key-file", "/k"));
        assert!(bad("--allow-publishers-file", "/g"));
        assert!(bad("--allow-subscribers-file", "/g"));
        assert!(bad("--allow-lists-configmap", "g-curve-allow"));
        assert!(bad("--allow-lists-namespace", "net"));
        let with_curve = |extra: &[&str]| {
            let mut words = vec![
                "proxy",
                "--publishers",
                "tcp://*:1",
                "--subscribers",
                "ipc:///x",
                "--curve-secret-key-file",
                "/k",
                "--allow-publishers-file",
                "/g",
            ];
            words.extend(extra);
            Cli::try_parse_from(words)
        };
        let cli = with_curve(&[]).expect("valid CURVE flags");
        assert_eq!(cli.args.allow_publishers_file, Some(PathBuf::from("/g")));
        let cli = with_curve(&[
            "--allow-lists-configmap",
            "g-curve-allow",
            "--allow-lists-namespace",
            "net",
        ])
        .expect("valid API allow-list flags");
        assert_eq!(cli.args.allow_lists_configmap.as_deref(), Some("g-curve-allow"));
        assert_eq!(cli.args.allow_lists_namespace.as_deref(), Some("net"));
        // The ConfigMap and its namespace come together.
        assert!(with_curve(&["--allow-lists-configmap", "g-curve-allow"]).is_err());
        assert!(with_curve(&["--allow-lists-namespace", "net"]).is_err());
    }

    #[test]
    fn the_allow_list_configmap_and_namespace_must_be_names() {
        assert!(allow_lists_configmap("net", "updates-curve-allow").is_ok());
        assert!(allow_lists_configmap("net", &format!("{}-curve-allow", "g".repeat(63))).is_ok());
        for (namespace, name) in [
            ("net", "a,metadata.namespace!=x"),
            ("net", "Upper"),
            ("net", ""),
            ("net", "-leading"),
            ("a.b", "g-curve-allow"),
            (&"n".repeat(64), "g-curve-allow"),
            ("", "g-curve-allow"),
        ] {
            let err = allow_lists_configmap(namespace, name).err();
            assert!(
                err.as_ref()
                    .is_some_and(|err| err.to_string().contains("--allow-lists-")),
                "{namespace:?} {name:?}: {err:?}"
            );
        }
    }
}
