//! The FanoutGroup custom resource (`fanout.dev/v1alpha1`): the Rust types, their schema with
//! defaults and admission rules (OpenAPI bounds plus CEL), and `fanout crd`.
//!
//! Defaults live in the schema (through `#[serde(default = ..)]`, which schemars copies into the
//! OpenAPI `default`), so the API server fills them in and `kubectl get -o yaml` shows them; the
//! controller uses the same functions when it reads an object, so both sides agree.

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of the custom resource.
pub const GROUP: &str = "fanout.dev";
/// Label on every object that belongs to a group (defined with the endpoint-list contract).
pub use crate::endpoint_list::GROUP_LABEL;
/// Default root of the groups' socket directories, and the prefix admission requires of
/// `socketDir` (the controller's `--socket-root` may narrow it).
pub const DEFAULT_SOCKET_ROOT: &str = "/var/run/fanout";

/// A fanout group: one ZeroMQ proxy per selected node, and the live list of their endpoints.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fanout.dev",
    version = "v1alpha1",
    kind = "FanoutGroup",
    namespaced,
    shortname = "fg",
    status = "FanoutGroupStatus",
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredProxies", description = "proxies the DaemonSet wants"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyProxies", description = "proxies that are ready"),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.publishedEndpoints", description = "ready endpoints published"),
    printcolumn(name = "Relays", type_ = "integer", json_path = ".status.relays", description = "proxies relaying to the others (0: flat)"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "A fanout group: one ZeroMQ proxy per selected node and the live list of their endpoints",
    // Only size(): CEL cost estimation treats metadata.name as unbounded, so a regex here could
    // push the rule over the apiserver's cost budget. The Service named after the group
    // enforces the DNS-1035 form; a group whose name breaks it is reported `Degraded`.
    validation = Rule::new("self.metadata.name.size() <= 50").message("metadata.name must be at most 50 characters: it names the DaemonSet, the headless Service and the EndpointSlices")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.publisherPort != self.httpPort").message("publisherPort and httpPort must differ"),
    validation = Rule::new("!has(self.subscriberPort) || (self.subscriberPort != self.publisherPort && self.subscriberPort != self.httpPort)").message("subscriberPort must differ from publisherPort and httpPort"),
    // The proxy's per-peer byte bound (`fanout::proxy::MAX_QUEUED_BYTES_PER_PEER`, 256 MiB);
    // a test checks the literal against the constant.
    validation = Rule::new("self.highWaterMark * self.maxMessageBytes <= 268435456").message("highWaterMark x maxMessageBytes must be at most 268435456 (256 MiB): it bounds what one peer's queue can hold"),
)]
pub struct FanoutGroupSpec {
    /// Container image of the proxy container (runs `fanout proxy`). When absent the controller
    /// uses its own proxy image (`--default-proxy-image`). Another image is admitted only when
    /// the controller's allow-list (`--allowed-proxy-image`) names it; the pod's root init
    /// container always runs the controller's own image, never this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Node labels a node must carry to run a proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the proxy pods. When absent, the controller's default
    /// (`--default-proxy-tolerations`, none unless the admin set some). Tolerating the
    /// control-plane taint is refused unless the controller allows it (`--allow-control-plane`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// TCP port of the proxy's XSUB socket, where publishers connect.
    #[serde(default = "default_publisher_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub publisher_port: i32,

    /// Run the proxy in the node's network namespace (the endpoints are then the node IPs).
    /// Refused unless the controller allows it (`--allow-host-network`).
    #[serde(default)]
    pub host_network: bool,

    /// Directory on the node under which the group gets its own directory
    /// `<socketDir>/<namespace>.<name>`, holding the subscriber socket `<namespace>.<name>.sock`.
    /// Absolute and normalized, `/var/run/fanout` or below it with no `.` in a directory name
    /// below it (so never inside another group's directory; admission), and inside the
    /// controller's `--socket-root` (checked by the controller).
    #[serde(default = "default_socket_dir")]
    #[x_kube(
        validation = Rule::new("self.startsWith('/') && !self.endsWith('/') && !self.contains('//') && !self.matches('(^|/)[.][.]?(/|$)')").message("socketDir must be a normalized absolute path: no trailing '/', no '//', no '.' or '..' segment"),
        // The init container hands the group's directory below this one to the proxy user.
        validation = Rule::new("self == '/var/run/fanout' || self.startsWith('/var/run/fanout/')").message("socketDir must be /var/run/fanout or a directory below it"),
        // Each group's own directory is `<socketDir>/<namespace>.<name>` and its proxy owns it:
        // a dot below the root could put this group inside another's (`policy::enters_a_group_dir`).
        validation = Rule::new("!self.matches('^/var/run/fanout/.*[.]')").message("socketDir must not have a '.' in a directory name below /var/run/fanout: <namespace>.<name> directories are the groups' own"),
    )]
    #[schemars(length(max = 64))]
    pub socket_dir: String,

    /// Group (gid) that may connect to the subscriber socket. The proxy pod's init container
    /// makes the group's directory owned by the proxy user (65532) and this group with mode
    /// 2750 (setgid, so the socket inherits the group) and the pod joins the group; node-local
    /// agents then connect when they run with this gid among their groups (and never as uid
    /// 65532). When absent the directory is 65532:65532 with mode 0750, and agents connect with
    /// gid 65532 among their supplemental groups. 0 (root) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    #[x_kube(validation = Rule::new("self != 0").message("socketGroup must not be 0 (root)"))]
    pub socket_group: Option<i64>,

    /// Optional TCP port of an additional XPUB socket for subscribers off the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub subscriber_port: Option<i32>,

    /// Port of the proxy's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: i32,

    /// ZeroMQ high-water mark (messages queued per peer before dropping). With
    /// `maxMessageBytes` it bounds one peer's queue: their product is at most 256 MiB.
    #[serde(default = "default_high_water_mark")]
    #[schemars(range(min = 1, max = 1000000))]
    pub high_water_mark: i32,

    /// Largest message the proxy accepts, in bytes, all frames together (and at most 64
    /// frames). A larger message is dropped whole and counted; a single frame above it ends
    /// the sender's connection.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_message_bytes: i64,

    /// ZeroMQ heartbeat interval in seconds (dead peers are dropped after three missed beats).
    #[serde(default = "default_heartbeat_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub heartbeat_seconds: i32,

    /// Most endpoints one EndpointSlice holds.
    #[serde(default = "default_endpoints_per_slice")]
    #[schemars(range(min = 1, max = 1000))]
    pub endpoints_per_slice: i32,

    /// Also publish the ready endpoints in the ConfigMap `<name>-endpoints` (key `endpoints`).
    #[serde(default = "default_true")]
    pub config_map: bool,

    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// PriorityClass of the proxy pods. Refused unless the controller allows it
    /// (`--allowed-priority-class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Who may publish and subscribe over TCP: CURVE (authentication and encryption).
    #[serde(default)]
    pub security: GroupSecurity,

    /// The relay tree for large groups: from `minProxies` ready proxies on, publishers reach
    /// about √N relays and each relay forwards to its share of the other proxies.
    #[serde(default)]
    pub relays: RelaySpec,
}

/// `spec.relays`: when a group becomes a two-tier tree.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// Let the group become a tree. The proxy pods then run with the group's ServiceAccount
    /// `<name>-proxy`, allowed to list and watch the EndpointSlices of the namespace (a relay
    /// follows its assignment through the API), and with CURVE the group's own key may publish
    /// (relays authenticate to their leaves with it). `false`: always flat, and the proxies get
    /// no API access for relaying (with CURVE they still read the allow-list ConfigMap).
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Ready proxies from which the group is a tree (below: flat, publishers connect to every
    /// proxy). About √N of them become relays.
    #[serde(default = "default_min_proxies")]
    #[schemars(range(min = 2, max = 100000))]
    pub min_proxies: i32,
}

impl Default for RelaySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            min_proxies: default_min_proxies(),
        }
    }
}

/// `spec.security`: CURVE on the proxies' TCP ports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.curve || (!has(self.allowedPublishers) && !has(self.allowedSubscribers))").message("allowedPublishers and allowedSubscribers need curve: true"),
)]
pub struct GroupSecurity {
    /// Make the publisher port (and the TCP subscriber port) CURVE servers: the controller
    /// creates the group's key pair in the Secret `<name>-curve`, mounts it into the proxies
    /// and publishes the public key with the endpoint list (annotation
    /// `fanout.dev/curve-public-key` on the EndpointSlices, key `curve-public-key` in the
    /// ConfigMap, `status.curvePublicKey`). Only keys in `allowedPublishers` may publish.
    /// The proxies follow the allow-lists through the API (ServiceAccount `<name>-proxy`,
    /// allowed to list and watch the one ConfigMap `<name>-curve-allow`).
    /// Off by default in this alpha API; production groups should turn it on.
    #[serde(default)]
    pub curve: bool,

    /// The publishers' public keys: Secrets in the group's namespace labelled
    /// `fanout.dev/public-key: "true"`, each with a `public.key` (Z85), named here or selected
    /// by label. Followed live: a key removed here (or its Secret deleted or unlabelled) has its
    /// connections closed within a second of the controller rewriting the allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_publishers: Option<KeySecrets>,

    /// The same for subscribers on the TCP subscriber port (`subscriberPort`). Node-local
    /// agents on the unix socket are governed by its file mode and group, not by CURVE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_subscribers: Option<KeySecrets>,
}

/// Public-key Secrets, by name or by label (either or both; the union counts).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeySecrets {
    /// Names of Secrets in the group's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 253)))]
    pub secret_names: Vec<String>,
    /// A label selector over the Secrets in the group's namespace (beside the required
    /// `fanout.dev/public-key: "true"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// What the controller observed and published for a group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanoutGroupStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Proxies the DaemonSet wants (nodes selected).
    #[serde(default)]
    pub desired_proxies: i32,
    /// Proxies that are ready.
    #[serde(default)]
    pub ready_proxies: i32,
    /// Ready endpoints published in the EndpointSlices (and the ConfigMap).
    #[serde(default)]
    pub published_endpoints: i32,
    /// `Ready`, `Progressing` and `Degraded`. A list-map keyed by `type`, so that server-side
    /// apply merges conditions by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// With `security.curve`: the proxies' CURVE public key (Z85), what publishers connect with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_public_key: Option<String>,
    /// Public-key Secrets that `security` names or selects but that give no usable key, each
    /// as `<field> <secret>: <why>` (field `allowedPublishers` or `allowedSubscribers`). Those
    /// keys are not admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved_keys: Vec<String>,
    /// Proxies that relay to the others (the relay tree's top tier); 0 while the group is flat.
    #[serde(default)]
    pub relays: i32,
}

pub fn default_publisher_port() -> i32 {
    7100
}
pub fn default_socket_dir() -> String {
    DEFAULT_SOCKET_ROOT.into()
}
pub fn default_http_port() -> i32 {
    9102
}
pub fn default_high_water_mark() -> i32 {
    1000
}
pub fn default_max_message_bytes() -> i64 {
    crate::proxy::DEFAULT_MAX_MESSAGE_BYTES
}
pub fn default_heartbeat_seconds() -> i32 {
    5
}
pub fn default_endpoints_per_slice() -> i32 {
    100
}
pub fn default_min_proxies() -> i32 {
    64
}
fn default_true() -> bool {
    true
}

impl Default for FanoutGroupSpec {
    /// The spec of `spec: {}` after the API server applied the schema defaults.
    fn default() -> Self {
        Self {
            image: None,
            node_selector: None,
            tolerations: None,
            publisher_port: default_publisher_port(),
            host_network: false,
            socket_dir: default_socket_dir(),
            socket_group: None,
            subscriber_port: None,
            http_port: default_http_port(),
            high_water_mark: default_high_water_mark(),
            max_message_bytes: default_max_message_bytes(),
            heartbeat_seconds: default_heartbeat_seconds(),
            endpoints_per_slice: default_endpoints_per_slice(),
            config_map: true,
            resources: None,
            priority_class_name: None,
            security: GroupSecurity::default(),
            relays: RelaySpec::default(),
        }
    }
}

/// The CustomResourceDefinition as YAML, exactly what `crds/fanoutgroup.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&FanoutGroup::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_default_to_a_tree_from_64_proxies_and_the_threshold_is_bounded() {
        let crd = serde_json::to_value(FanoutGroup::crd()).unwrap();
        let relays = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["relays"]["properties"];
        assert_eq!(relays["minProxies"]["minimum"], 2.0);
        assert_eq!(relays["minProxies"]["maximum"], 100000.0);
        assert_eq!(relays["minProxies"]["default"], 64);
        assert_eq!(relays["enabled"]["default"], true);
        let spec: FanoutGroupSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.relays, RelaySpec::default());
        assert!(spec.relays.enabled);
        let spec: FanoutGroupSpec = serde_json::from_str(r#"{"relays": {"minProxies": 9}}"#).unwrap();
        assert_eq!((spec.relays.enabled, spec.relays.min_proxies), (true, 9));
    }

    #[test]
    fn socket_group_is_optional_and_bounded_to_a_gid() {
        let crd = serde_json::to_value(FanoutGroup::crd()).unwrap();
        let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["socketGroup"];
        assert_eq!(field["minimum"], 0.0);
        assert_eq!(field["maximum"], 2147483647.0);
        assert!(field.get("default").is_none());
        let spec: FanoutGroupSpec = serde_json::from_str(r#"{"socketGroup": 2000}"#).unwrap();
        assert_eq!(spec.socket_group, Some(2000));
        assert_eq!(
            serde_json::from_str::<FanoutGroupSpec>("{}")
                .unwrap()
                .socket_group,
            None
        );
    }
}
