//! The live endpoint list: the contract between the controller, which writes it, and the
//! membership sources, which read it (publishers, `fanout endpoints`). Everything both sides
//! must agree on is here and nowhere else:
//!
//! - the labels and the `managed-by` value of the group's EndpointSlices, the name of the
//!   port publishers connect to;
//! - the name and key of the `<group>-endpoints` ConfigMap and its format (one `tcp://IP:PORT`
//!   a line, sorted), and where the proxies' CURVE public key and the group's message cap are
//!   published;
//! - the [`Endpoint`] type, a ZeroMQ endpoint checked once when it is made, and how an
//!   address renders as one;
//! - the one rule for which slice endpoints count as published ([`is_published`]);
//! - the relay tree's second tier: how a relay finds the leaves assigned to it
//!   ([`relay_slice_selector`]), in slices that the group's own selector never matches.
//!
//! # The relay tree
//!
//! A group in tree mode (`spec.relays`, see `relay_tree`) publishes two tiers:
//! - the **top tier**, in exactly the objects a flat group uses (the slices labelled
//!   `fanout.dev/group=<name>`, the `<name>-endpoints` ConfigMap): the relays only. Publishers,
//!   old and new, follow it unchanged and connect to the relays only;
//! - **one assignment per relay**: EndpointSlices labelled `fanout.dev/relay-for=<group>` and
//!   `fanout.dev/relay=<relay pod>`, without the `fanout.dev/group` and
//!   `kubernetes.io/service-name` labels, so that no publisher's selector (nor cluster DNS)
//!   ever lists a leaf. Each leaf appears in exactly one relay's assignment, once (its pod's
//!   primary address), and never in the top tier: a publisher reaching a leaf directly as well
//!   as through its relay would deliver every message twice.
//!
//! Longer than 500 lines for a reason: over 40 % of it is tests; the code, under 330 lines, is the
//! one home of the endpoint-list contract, which both the writer and the readers use.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Label on every object that belongs to a group (children, proxy pods, slices); its value is
/// the group's name.
pub const GROUP_LABEL: &str = "fanout.dev/group";
/// The standard label naming who manages an EndpointSlice.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on the slices the controller writes.
pub const SLICE_MANAGER: &str = "controller.fanout.dev";
/// The standard label tying an EndpointSlice to its Service (the group's headless Service).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Name of the port, in each slice, that publishers connect to.
pub const PUBLISH_PORT_NAME: &str = "publish";
/// Key of the ConfigMap entry that holds one `tcp://IP:PORT` a line.
pub const CONFIGMAP_KEY: &str = "endpoints";
/// With `security.curve`: the ConfigMap entry and the EndpointSlice annotation that hold the
/// proxies' CURVE public key (Z85), which publishers connect with.
pub const CONFIGMAP_CURVE_KEY: &str = "curve-public-key";
pub const CURVE_PUBLIC_KEY_ANNOTATION: &str = "fanout.dev/curve-public-key";
/// The EndpointSlice annotation that holds the group's `maxMessageBytes` (decimal): the
/// largest frame its proxies accept, which a publisher's frames of several messages (wire
/// version 4) must stay within.
pub const MAX_MESSAGE_BYTES_ANNOTATION: &str = "fanout.dev/max-message-bytes";

/// On a relay's assignment slices: the group the relay belongs to (instead of [`GROUP_LABEL`],
/// which would put the leaves in every publisher's list).
pub const RELAY_FOR_LABEL: &str = "fanout.dev/relay-for";
/// On a relay's assignment slices: the relay's pod name.
pub const RELAY_LABEL: &str = "fanout.dev/relay";

/// The label selector of the slices assigning leaves to relay pod `relay` of `group`, as the
/// relay watches them.
pub fn relay_slice_selector(group: &str, relay: &str) -> String {
    format!("{RELAY_FOR_LABEL}={group},{RELAY_LABEL}={relay},{SLICE_MANAGED_BY_LABEL}={SLICE_MANAGER}")
}

/// Whether `value` can be a label value (and so a relay pod's name can label its slices):
/// at most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether an equality-based label selector (`k=v,k2=v2`, or a bare `k` for "has the label")
/// as this module writes them matches `labels`: what the API server does with our selectors,
/// so tests can check which objects a reader sees.
pub fn selector_matches(selector: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    selector.split(',').all(|term| match term.split_once('=') {
        Some((key, value)) => labels.get(key).map(String::as_str) == Some(value),
        None => labels.contains_key(term),
    })
}

/// Name of the ConfigMap that lists a group's ready proxies.
pub fn configmap_name(group: &str) -> String {
    format!("{group}-endpoints")
}

/// The label selector of a group's EndpointSlices, as readers watch them.
pub fn slice_selector(group: &str) -> String {
    format!("{GROUP_LABEL}={group},{SLICE_MANAGED_BY_LABEL}={SLICE_MANAGER}")
}

/// A ZeroMQ endpoint a publisher can connect to: `tcp://HOST:PORT` (an IPv6 host in brackets)
/// or `ipc://PATH`. Only made through [`Endpoint::parse`] or [`Endpoint::tcp`], so every value
/// is valid. Orders and compares as its text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint(String);

/// Why a text is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {endpoint:?}: {reason}")]
pub struct InvalidEndpoint {
    pub endpoint: String,
    pub reason: &'static str,
}

impl Endpoint {
    /// `tcp://IP:PORT`, IPv6 in brackets.
    pub fn tcp(address: IpAddr, port: u16) -> Self {
        match address {
            IpAddr::V4(v4) => Self(format!("tcp://{v4}:{port}")),
            IpAddr::V6(v6) => Self(format!("tcp://[{v6}]:{port}")),
        }
    }

    /// `tcp://HOST:PORT` for a host as an EndpointSlice lists it: an IPv6 address is
    /// bracketed, anything else (IPv4, a name) is taken as it is and checked.
    pub fn from_host(host: &str, port: u16) -> Result<Self, InvalidEndpoint> {
        if host.parse::<Ipv6Addr>().is_ok() {
            Self::parse(&format!("tcp://[{host}]:{port}"))
        } else {
            Self::parse(&format!("tcp://{host}:{port}"))
        }
    }

    /// Checks `text` (see the type's documentation).
    pub fn parse(text: &str) -> Result<Self, InvalidEndpoint> {
        let invalid = |reason| InvalidEndpoint {
            endpoint: text.to_string(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| invalid("expected tcp://HOST:PORT"))?;
            if host.is_empty() {
                return Err(invalid("empty host"));
            }
            if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
                return Err(invalid("an IPv6 host must be in brackets"));
            }
            match port.parse::<u16>() {
                Ok(0) | Err(_) => Err(invalid("port must be 1..65535")),
                Ok(_) => Ok(Self(text.to_string())),
            }
        } else if let Some(path) = text.strip_prefix("ipc://") {
            if path.is_empty() {
                Err(invalid("empty ipc path"))
            } else {
                Ok(Self(text.to_string()))
            }
        } else {
            Err(invalid("expected tcp:// or ipc://"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Endpoint {
    type Err = InvalidEndpoint;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for Endpoint {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Both borrows keep the text's order, so a set of endpoints answers `contains("tcp://...")`.
impl Borrow<str> for Endpoint {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Borrow<String> for Endpoint {
    fn borrow(&self) -> &String {
        &self.0
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// One line of a list that is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    /// 1-based line number.
    pub line: usize,
    pub text: String,
    pub reason: &'static str,
}

/// The ConfigMap's `endpoints` value: one endpoint a line, sorted, no duplicates, each line
/// ending in a newline.
pub fn render_list<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> String {
    let sorted: BTreeSet<&Endpoint> = endpoints.into_iter().collect();
    sorted
        .into_iter()
        .map(|endpoint| format!("{endpoint}\n"))
        .collect()
}

/// Reads a list (the ConfigMap value, or a file holding it): the valid endpoints and the lines
/// that were skipped. Blank lines and `#` comments are ignored.
pub fn parse_list(text: &str) -> (BTreeSet<Endpoint>, Vec<InvalidLine>) {
    let mut members = BTreeSet::new();
    let mut invalid = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match Endpoint::parse(line) {
            Ok(endpoint) => {
                members.insert(endpoint);
            }
            Err(err) => invalid.push(InvalidLine {
                line: i + 1,
                text: line.to_string(),
                reason: err.reason,
            }),
        }
    }
    (members, invalid)
}

#[cfg(feature = "kubernetes")]
pub use self::kubernetes::*;

/// The parts of the contract spelled in Kubernetes types.
#[cfg(feature = "kubernetes")]
mod kubernetes {
    use super::{CONFIGMAP_KEY, Endpoint, InvalidLine, PUBLISH_PORT_NAME, parse_list};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
    use std::collections::BTreeSet;

    /// The one rule for which slice endpoints count as published, for the controller and for
    /// every reader: not known to be unready (`ready` absent means ready, as the EndpointSlice
    /// API says) and not terminating. The controller writes `ready` as "pod Ready and not
    /// terminating", so for its own slices this is exactly `ready: true`.
    pub fn is_published(conditions: Option<&EndpointConditions>) -> bool {
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        ready && !terminating
    }

    /// The port of a slice that publishers connect to: the one named `publish`, or the only
    /// port when there is just one.
    pub fn publish_port(slice: &EndpointSlice) -> Option<u16> {
        let ports = slice.ports.as_deref().unwrap_or_default();
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(PUBLISH_PORT_NAME))
            .or(if ports.len() == 1 { ports.first() } else { None })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    }

    /// The published endpoints one EndpointSlice lists.
    pub fn slice_members(slice: &EndpointSlice) -> BTreeSet<Endpoint> {
        let Some(port) = publish_port(slice) else {
            return BTreeSet::new();
        };
        slice
            .endpoints
            .iter()
            .filter(|endpoint| is_published(endpoint.conditions.as_ref()))
            .flat_map(|endpoint| endpoint.addresses.iter())
            .filter_map(|address| Endpoint::from_host(address, port).ok())
            .collect()
    }

    /// Pods with a published endpoint in the slice, with that endpoint's first address.
    pub fn published_pods(slice: &EndpointSlice) -> impl Iterator<Item = (&str, &str)> {
        slice
            .endpoints
            .iter()
            .filter(|endpoint| is_published(endpoint.conditions.as_ref()))
            .filter_map(|endpoint| {
                let pod = endpoint.target_ref.as_ref()?.name.as_deref()?;
                Some((pod, endpoint.addresses.first()?.as_str()))
            })
    }

    /// The endpoints a `<group>-endpoints` ConfigMap lists, and its lines that are not ones.
    pub fn configmap_members(configmap: &ConfigMap) -> (BTreeSet<Endpoint>, Vec<InvalidLine>) {
        let text = configmap
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIGMAP_KEY))
            .map(String::as_str)
            .unwrap_or("");
        parse_list(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> BTreeSet<Endpoint> {
        items.iter().map(|s| Endpoint::parse(s).unwrap()).collect()
    }

    #[test]
    fn endpoints_are_validated() {
        for ok in [
            "tcp://10.0.0.1:7100",
            "tcp://[fd00::1]:7100",
            "tcp://proxy.ns.svc:1",
            "ipc:///tmp/x.sock",
        ] {
            assert_eq!(Endpoint::parse(ok).map(|e| e.to_string()), Ok(ok.to_string()));
        }
        for bad in [
            "",
            "10.0.0.1:7100",
            "tcp://10.0.0.1",
            "tcp://:7100",
            "tcp://10.0.0.1:0",
            "tcp://10.0.0.1:70000",
            "tcp://fd00::1:7100",
            "ipc://",
            "udp://1.2.3.4:5",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_relay_selector_never_matches_what_the_group_selector_matches() {
        let relay = relay_slice_selector("g", "g-abcde");
        assert_eq!(
            relay,
            "fanout.dev/relay-for=g,fanout.dev/relay=g-abcde,endpointslice.kubernetes.io/managed-by=controller.fanout.dev"
        );
        let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let top = labels(&[(GROUP_LABEL, "g"), (SLICE_MANAGED_BY_LABEL, SLICE_MANAGER)]);
        let assignment = labels(&[
            (RELAY_FOR_LABEL, "g"),
            (RELAY_LABEL, "g-abcde"),
            (SLICE_MANAGED_BY_LABEL, SLICE_MANAGER),
        ]);
        assert!(selector_matches(&slice_selector("g"), &top));
        assert!(!selector_matches(&slice_selector("g"), &assignment));
        assert!(selector_matches(&relay, &assignment));
        assert!(!selector_matches(&relay, &top));
        assert!(!selector_matches(
            &relay_slice_selector("g", "g-other"),
            &assignment
        ));
        assert!(selector_matches(GROUP_LABEL, &top));
    }

    #[test]
    fn label_values_are_checked() {
        for ok in ["a", "g-abcde", "A.b_c-9", &"x".repeat(63)] {
            assert!(is_label_value(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b", "a b", &"x".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }

    #[test]
    fn addresses_render_with_ipv6_in_brackets() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(Endpoint::tcp(v4, 7100).as_str(), "tcp://10.0.0.1:7100");
        assert_eq!(Endpoint::tcp(v6, 7100).as_str(), "tcp://[fd00::1]:7100");
        assert_eq!(
            Endpoint::from_host("fd00::5", 1).unwrap().as_str(),
            "tcp://[fd00::5]:1"
        );
        assert_eq!(
            Endpoint::from_host("proxy.ns", 1).unwrap().as_str(),
            "tcp://proxy.ns:1"
        );
        assert!(Endpoint::from_host("10.0.0.1", 0).is_err());
        assert!(Endpoint::from_host("", 1).is_err());
    }

    #[test]
    fn a_set_of_endpoints_answers_for_text() {
        let set = list(&["tcp://10.0.0.1:7100"]);
        assert!(set.contains("tcp://10.0.0.1:7100"));
        let text: String = "tcp://10.0.0.1:7100".into();
        assert!(set.contains(&text));
    }

    #[test]
    fn the_list_is_sorted_deduplicated_and_parses_back() {
        let endpoints = [
            Endpoint::parse("tcp://10.0.0.2:7100").unwrap(),
            Endpoint::parse("tcp://[fd00::1]:7100").unwrap(),
            Endpoint::parse("tcp://10.0.0.10:7100").unwrap(),
            Endpoint::parse("tcp://10.0.0.2:7100").unwrap(),
        ];
        let text = render_list(&endpoints);
        assert_eq!(
            text,
            "tcp://10.0.0.10:7100\ntcp://10.0.0.2:7100\ntcp://[fd00::1]:7100\n"
        );
        assert_eq!(parse_list(&text), (endpoints.into_iter().collect(), vec![]));
        assert_eq!(render_list(&[]), "");
    }

    #[test]
    fn parsing_skips_comments_and_blanks_and_reports_bad_lines() {
        let text =
            "# proxies\n\ntcp://10.0.0.2:7100\n  tcp://10.0.0.1:7100  \nnot an endpoint\ntcp://10.0.0.2:0\n";
        let (members, invalid) = parse_list(text);
        assert_eq!(members, list(&["tcp://10.0.0.1:7100", "tcp://10.0.0.2:7100"]));
        let bad: Vec<_> = invalid.iter().map(|i| (i.line, i.text.as_str())).collect();
        assert_eq!(bad, [(5, "not an endpoint"), (6, "tcp://10.0.0.2:0")]);
        assert_eq!(parse_list(""), (BTreeSet::new(), vec![]));
    }

    #[cfg(feature = "kubernetes")]
    mod slices {
        use super::*;
        use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
        use k8s_openapi::api::discovery::v1::{
            Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
        };

        fn endpoint(ip: &str, ready: Option<bool>, terminating: Option<bool>) -> SliceEndpoint {
            SliceEndpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready,
                    serving: ready,
                    terminating,
                }),
                target_ref: Some(ObjectReference {
                    name: Some(format!("pod-{ip}")),
                    ..ObjectReference::default()
                }),
                ..Default::default()
            }
        }

        fn slice(
            address_type: &str,
            ports: Vec<(&str, i32)>,
            endpoints: Vec<SliceEndpoint>,
        ) -> EndpointSlice {
            EndpointSlice {
                address_type: address_type.to_string(),
                endpoints,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port)| EndpointPort {
                            name: Some(name.to_string()),
                            port: Some(port),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }
        }

        #[test]
        fn only_ready_non_terminating_endpoints_are_published() {
            let s = slice(
                "IPv4",
                vec![("publish", 7100)],
                vec![
                    endpoint("10.200.1.1", Some(true), Some(false)),
                    endpoint("10.200.1.2", Some(false), Some(false)),
                    endpoint("10.200.1.3", Some(true), Some(true)),
                    endpoint("10.200.1.4", None, None),
                ],
            );
            assert_eq!(
                slice_members(&s),
                list(&["tcp://10.200.1.1:7100", "tcp://10.200.1.4:7100"])
            );
            let pods: Vec<_> = published_pods(&s).map(|(pod, _)| pod).collect();
            assert_eq!(pods, ["pod-10.200.1.1", "pod-10.200.1.4"], "the same rule");
        }

        #[test]
        fn ipv6_addresses_are_bracketed() {
            let s = slice(
                "IPv6",
                vec![("publish", 7100)],
                vec![endpoint("fd00::5", Some(true), None)],
            );
            assert_eq!(slice_members(&s), list(&["tcp://[fd00::5]:7100"]));
        }

        #[test]
        fn the_publish_port_is_chosen_by_name() {
            let s = slice(
                "IPv4",
                vec![("http", 9102), ("publish", 7200)],
                vec![endpoint("10.200.1.1", Some(true), None)],
            );
            assert_eq!(slice_members(&s), list(&["tcp://10.200.1.1:7200"]));
            let unnamed_many = slice(
                "IPv4",
                vec![("a", 1), ("b", 2)],
                vec![endpoint("10.200.1.1", None, None)],
            );
            assert!(slice_members(&unnamed_many).is_empty());
            let no_ports = slice("IPv4", vec![], vec![endpoint("10.200.1.1", None, None)]);
            assert!(slice_members(&no_ports).is_empty());
        }

        #[test]
        fn configmap_lines_are_parsed_and_bad_lines_set_apart() {
            let cm = ConfigMap {
                data: Some(
                    [(
                        CONFIGMAP_KEY.to_string(),
                        "tcp://10.200.1.2:7100\n\n# comment\ntcp://10.200.1.1:7100\nnot-an-endpoint\n"
                            .to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            };
            let (members, invalid) = configmap_members(&cm);
            assert_eq!(members, list(&["tcp://10.200.1.1:7100", "tcp://10.200.1.2:7100"]));
            assert_eq!(invalid[0].text, "not-an-endpoint");
            assert!(configmap_members(&ConfigMap::default()).0.is_empty());
        }
    }
}
