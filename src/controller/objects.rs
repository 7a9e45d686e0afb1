//! Pure: a FanoutGroup → the objects the controller wants to exist (DaemonSet, headless Service,
//! endpoints ConfigMap, the CURVE allow-list ConfigMap and the server key Secret's metadata),
//! with the labels and owner reference every child carries. No I/O.
//!
//! Longer than 500 lines for a reason: more than half of it is tests, and the DaemonSet is one
//! pod spec's worth of fields that a reader should see in one place.

use super::keys::{
    ALLOW_LIST_MOUNT, ALLOW_PUBLISHERS_KEY, ALLOW_SUBSCRIBERS_KEY, PUBLIC_KEY_LABEL, PUBLIC_KEY_LABEL_VALUE,
    SERVER_KEY_MOUNT, allow_list_configmap_name, server_secret_name,
};
use super::policy::{Admitted, Refused};
use crate::crd::FanoutGroup;
use crate::curve::SECRET_KEY_FILE;
use crate::endpoint_list::{CONFIGMAP_CURVE_KEY, CONFIGMAP_KEY, GROUP_LABEL, PUBLISH_PORT_NAME};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    HostPathVolumeSource, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// The one field manager for every server-side apply the controller makes, and the value of
/// `app.kubernetes.io/managed-by` on every child (how `children` knows its own).
pub const FIELD_MANAGER: &str = "fanout-controller";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// `app.kubernetes.io/part-of` of every child: the same as on the chart's objects.
pub const PART_OF: &str = "fanout";
/// Name of the proxy container and of its ports.
pub const PROXY_CONTAINER: &str = "proxy";
pub const SUBSCRIBE_PORT_NAME: &str = "subscribe";
pub const HTTP_PORT_NAME: &str = "http";
/// Fixed unprivileged uid/gid of the proxy (the distroless "nonroot" user).
pub const PROXY_UID: i64 = 65532;
/// Mode of the socket directory without `socketGroup`: the proxy user creates sockets, its
/// group may only reach them. Agents connect without write access to the directory, so none
/// is granted (a group member could otherwise unlink the proxy's socket and plant its own).
pub const SOCKET_DIR_MODE: u32 = 0o750;
/// Mode with `socketGroup`: as above plus setgid, so every socket created inside inherits
/// the group and agents in it can connect (with the proxy's `--socket-mode`, default 0660).
pub const SOCKET_DIR_MODE_SHARED: u32 = 0o2750;
/// Time a proxy gets after SIGTERM to flush and close its sockets.
pub const TERMINATION_GRACE_SECONDS: i64 = 30;
/// Name of the init container that hands the socket directory to the proxy user.
pub const PREPARE_SOCKET_DIR_CONTAINER: &str = "prepare-socket-dir";
/// Volume (hostPath `spec.socketDir`) holding the subscriber socket.
/// The pod's one hostPath volume: the admin's socket root. The init container mounts all of it
/// (it walks down from the root); the proxy only its own group's directory, as a subPath.
pub const SOCKET_ROOT_VOLUME: &str = "socket-root";
/// Volumes of the server secret key and of the allow-lists (`security.curve`).
pub const SERVER_KEY_VOLUME: &str = "curve-key";
pub const ALLOW_LIST_VOLUME: &str = "curve-allow";

/// Why a group cannot be turned into objects. Reported as the `Degraded` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrealisable {
    /// The controller's policy refuses what the group asks for.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the FanoutGroup has no {0}")]
    MissingMetadata(&'static str),
    #[error(
        "name {0:?} cannot name a Service: it must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, ending with a letter or digit)"
    )]
    InvalidName(String),
    #[error("publisherPort {0} is not a TCP port")]
    InvalidPort(i32),
    /// `security.curve` and a Secret of the server key's name that is no usable key of ours.
    #[error("{0}")]
    CurveKeyUnusable(String),
}

impl Unrealisable {
    /// The CamelCase reason used in conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Unrealisable::Refused(refused) => refused.reason(),
            Unrealisable::MissingMetadata(_) => "MissingMetadata",
            Unrealisable::InvalidName(_) => "InvalidName",
            Unrealisable::InvalidPort(_) => "InvalidPort",
            Unrealisable::CurveKeyUnusable(_) => "CurveKeyUnusable",
        }
    }
}

/// A group's namespace and name: what its children are named after (checked once, [`GroupId::of`])
/// and the one key of everything the controller keeps per group ([`GroupId::key_of`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    pub namespace: String,
    pub name: String,
}

impl GroupId {
    /// Any group's key, valid name or not (what is remembered about a group, its metrics).
    pub fn key_of(group: &FanoutGroup) -> Self {
        Self {
            namespace: group.namespace().unwrap_or_default(),
            name: group.name_any(),
        }
    }

    /// The group's id when children can be named after it: name and namespace present, the
    /// name a DNS-1035 label.
    pub fn of(group: &FanoutGroup) -> Result<Self, Unrealisable> {
        let name = group
            .meta()
            .name
            .clone()
            .ok_or(Unrealisable::MissingMetadata("name"))?;
        if !is_dns1035_label(&name) {
            return Err(Unrealisable::InvalidName(name));
        }
        let namespace = group
            .namespace()
            .ok_or(Unrealisable::MissingMetadata("namespace"))?;
        Ok(Self { namespace, name })
    }
    pub fn configmap_name(&self) -> String {
        crate::endpoint_list::configmap_name(&self.name)
    }
    /// File name of the node-local subscriber socket.
    pub fn socket_file(&self) -> String {
        format!("{}.{}.sock", self.namespace, self.name)
    }
}

/// A Service name: 1-63 of `[a-z0-9-]`, starting with a letter, not ending with '-'. (The CRD
/// cannot check this cheaply in CEL, see crd.rs.)
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Which part of a group a child is (`app.kubernetes.io/component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The DaemonSet and its pods.
    Proxy,
    /// The headless Service, the EndpointSlices and the ConfigMap.
    EndpointList,
}

impl Component {
    pub fn label(self) -> &'static str {
        match self {
            Component::Proxy => "proxy",
            Component::EndpointList => "endpoint-list",
        }
    }
}

/// Labels on every child object (and on the proxy pods).
pub fn child_labels(name: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (GROUP_LABEL.to_string(), name.to_string()),
        ("app.kubernetes.io/name".to_string(), "fanout-proxy".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
        (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
        (COMPONENT_LABEL.to_string(), component.label().to_string()),
        (PART_OF_LABEL.to_string(), PART_OF.to_string()),
    ])
}

/// The owner reference (controller=true) that ties a child to its group, so garbage
/// collection removes children with the group and `.owns()`-style watches map back.
pub fn owner_reference(group: &FanoutGroup) -> Result<OwnerReference, Unrealisable> {
    let uid = group
        .meta()
        .uid
        .clone()
        .ok_or(Unrealisable::MissingMetadata("uid"))?;
    Ok(OwnerReference {
        api_version: FanoutGroup::api_version(&()).into_owned(),
        kind: FanoutGroup::kind(&()).into_owned(),
        name: group.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Metadata of a child: name, namespace, labels, owner.
pub fn child_meta(
    group: &FanoutGroup,
    id: &GroupId,
    name: String,
    component: Component,
) -> Result<ObjectMeta, Unrealisable> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(id.namespace.clone()),
        labels: Some(child_labels(&id.name, component)),
        owner_references: Some(vec![owner_reference(group)?]),
        ..ObjectMeta::default()
    })
}

/// The `fanout proxy` arguments for a group whose own socket directory is `socket_dir` (after
/// the `proxy` subcommand word).
pub fn proxy_args(group: &FanoutGroup, id: &GroupId, socket_dir: &str) -> Vec<String> {
    let spec = &group.spec;
    let socket = format!("{socket_dir}/{}", id.socket_file());
    let mut args = vec![
        "proxy".to_string(),
        "--publishers".to_string(),
        format!("tcp://*:{}", spec.publisher_port),
        "--subscribers".to_string(),
        format!("ipc://{socket}"),
    ];
    if let Some(port) = spec.subscriber_port {
        args.push("--subscribers".to_string());
        args.push(format!("tcp://*:{port}"));
    }
    args.extend([
        "--http".to_string(),
        format!("0.0.0.0:{}", spec.http_port),
        "--hwm".to_string(),
        spec.high_water_mark.to_string(),
        "--max-message-bytes".to_string(),
        spec.max_message_bytes.to_string(),
        "--heartbeat".to_string(),
        spec.heartbeat_seconds.to_string(),
    ]);
    if spec.security.curve {
        args.extend([
            "--curve-secret-key-file".to_string(),
            format!("{SERVER_KEY_MOUNT}/{SECRET_KEY_FILE}"),
            "--allow-publishers-file".to_string(),
            format!("{ALLOW_LIST_MOUNT}/{ALLOW_PUBLISHERS_KEY}"),
        ]);
        if spec.subscriber_port.is_some() {
            args.extend([
                "--allow-subscribers-file".to_string(),
                format!("{ALLOW_LIST_MOUNT}/{ALLOW_SUBSCRIBERS_KEY}"),
            ]);
        }
    }
    if spec.security.curve {
        args.extend(super::proxy_access::allow_list_args(id));
    }
    if spec.relays.enabled {
        args.extend(super::proxy_access::relay_args(id));
    }
    args
}

/// With `security.curve`: the volumes of the server secret key (read-only, 0440 to the pod's
/// fsGroup, the proxy's own group) and of the allow-lists, and where the proxy mounts them.
fn curve_volumes(id: &GroupId) -> (Vec<Volume>, Vec<VolumeMount>) {
    let volumes = vec![
        Volume {
            name: SERVER_KEY_VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(server_secret_name(&id.name)),
                // Only the secret half reaches the pod; 0400 becomes 0440 with the fsGroup.
                items: Some(vec![KeyToPath {
                    key: SECRET_KEY_FILE.to_string(),
                    path: SECRET_KEY_FILE.to_string(),
                    mode: Some(0o400),
                }]),
                default_mode: Some(0o400),
                optional: Some(false),
            }),
            ..Volume::default()
        },
        Volume {
            name: ALLOW_LIST_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: allow_list_configmap_name(&id.name),
                default_mode: Some(0o444),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mounts = vec![
        mount(SERVER_KEY_VOLUME, SERVER_KEY_MOUNT),
        mount(ALLOW_LIST_VOLUME, ALLOW_LIST_MOUNT),
    ];
    (volumes, mounts)
}

/// Group and mode the socket directory gets: `socketGroup` with setgid when set, otherwise
/// the proxy's own group.
pub fn socket_dir_group_and_mode(group: &FanoutGroup) -> (i64, u32) {
    match group.spec.socket_group {
        Some(gid) => (gid, SOCKET_DIR_MODE_SHARED),
        None => (PROXY_UID, SOCKET_DIR_MODE),
    }
}

/// The arguments of the init container: `fanout prepare-socket-dir ...` on the group's own
/// directory, walking down from the admin's socket root.
pub fn prepare_socket_dir_args(group: &FanoutGroup, admitted: &Admitted) -> Vec<String> {
    let (gid, mode) = socket_dir_group_and_mode(group);
    vec![
        crate::proxy::socket_dir::SUBCOMMAND.to_string(),
        "--root".to_string(),
        admitted.socket_root.clone(),
        "--path".to_string(),
        admitted.socket_dir.clone(),
        "--uid".to_string(),
        PROXY_UID.to_string(),
        "--gid".to_string(),
        gid.to_string(),
        "--mode".to_string(),
        format!("{mode:04o}"),
    ]
}

/// The whole socket root, for the init container.
fn socket_root_mount(admitted: &Admitted) -> VolumeMount {
    VolumeMount {
        name: SOCKET_ROOT_VOLUME.to_string(),
        mount_path: admitted.socket_root.clone(),
        ..VolumeMount::default()
    }
}

/// The group's own directory only, for the proxy: a subPath of the root volume, which the
/// kubelet resolves without following symlinks out of the volume, when the proxy starts (after
/// the init container checked the way down). A hostPath of the group's directory instead would
/// have the kubelet create it, following whatever lies on the way, before any check ran.
fn group_dir_mount(admitted: &Admitted) -> VolumeMount {
    let below_root = admitted
        .socket_dir
        .strip_prefix(&admitted.socket_root)
        .unwrap_or(&admitted.socket_dir)
        .trim_start_matches('/');
    VolumeMount {
        name: SOCKET_ROOT_VOLUME.to_string(),
        mount_path: admitted.socket_dir.clone(),
        sub_path: Some(below_root.to_string()),
        ..VolumeMount::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..SeccompProfile::default()
    }
}

/// The init container that makes the kubelet's root-owned 0755 hostPath directory usable by the
/// non-root proxy. The one root process of the pod: it runs our own binary (the image has no
/// shell), with CAP_CHOWN and CAP_FOWNER only, and exits. `admitted.init_image` is always the
/// controller's own image, whatever `spec.image` says.
fn prepare_socket_dir_container(group: &FanoutGroup, admitted: &Admitted) -> Container {
    let quantity = |text: &str| Quantity(text.to_string());
    Container {
        name: PREPARE_SOCKET_DIR_CONTAINER.to_string(),
        image: Some(admitted.init_image.clone()),
        command: Some(vec!["fanout".to_string()]),
        args: Some(prepare_socket_dir_args(group, admitted)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity("10m")),
                ("memory".to_string(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), quantity("64Mi"))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: Some(vec!["CHOWN".to_string(), "FOWNER".to_string()]),
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![socket_root_mount(admitted)]),
        ..Container::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(port),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

fn tcp_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// How a changed proxy template rolls out, node by node. Without hostNetwork, a surge: the new
/// pod starts beside the old one (its own pod IP, its own ports), takes the unix socket path
/// over (`proxy::ipc`), and the old pod is stopped only once the new one is Ready, so local
/// subscribers lose only their reconnect to the same path; `maxUnavailable: 0` is what makes
/// it a surge, and 10 % of the nodes (at least one) change at a time. With hostNetwork the two
/// pods would want the same node ports, so the old pod goes first (10 % of the nodes at a
/// time), and each node's subscribers lose the whole replace cycle.
pub fn update_strategy(host_network: bool) -> DaemonSetUpdateStrategy {
    let ten_percent = || Some(IntOrString::String("10%".to_string()));
    let rolling_update = if host_network {
        RollingUpdateDaemonSet {
            max_unavailable: ten_percent(),
            max_surge: Some(IntOrString::Int(0)),
        }
    } else {
        RollingUpdateDaemonSet {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: ten_percent(),
        }
    };
    DaemonSetUpdateStrategy {
        type_: Some("RollingUpdate".to_string()),
        rolling_update: Some(rolling_update),
    }
}

/// The proxy DaemonSet of a group, with what the controller's policy `admitted` of it
/// (images, the group's own socket directory, tolerations).
pub fn daemon_set(group: &FanoutGroup, admitted: &Admitted) -> Result<DaemonSet, Unrealisable> {
    let id = GroupId::of(group)?;
    let spec = &group.spec;
    let labels = child_labels(&id.name, Component::Proxy);
    let selector = BTreeMap::from([
        (GROUP_LABEL.to_string(), id.name.clone()),
        ("app.kubernetes.io/name".to_string(), "fanout-proxy".to_string()),
    ]);

    let mut ports = vec![tcp_port(PUBLISH_PORT_NAME, spec.publisher_port)];
    if let Some(port) = spec.subscriber_port {
        ports.push(tcp_port(SUBSCRIBE_PORT_NAME, port));
    }
    ports.push(tcp_port(HTTP_PORT_NAME, spec.http_port));
    let (mut extra_volumes, mut extra_mounts) = if spec.security.curve {
        curve_volumes(&id)
    } else {
        (Vec::new(), Vec::new())
    };
    // With relays or CURVE: the pod's identity and its API token (proxy_access).
    let api_access = super::proxy_access::needs_api(group).then(|| super::proxy_access::proxy_pod_parts(&id));
    if let Some(access) = &api_access {
        extra_volumes.push(access.volume.clone());
        extra_mounts.push(access.mount.clone());
    }

    let container = Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(admitted.proxy_image.clone()),
        command: Some(vec!["fanout".to_string()]),
        args: Some(proxy_args(group, &id, &admitted.socket_dir)),
        ports: Some(ports),
        readiness_probe: Some(http_probe("/readyz", spec.http_port, 2, 2)),
        liveness_probe: Some(http_probe("/healthz", spec.http_port, 10, 3)),
        resources: spec.resources.clone(),
        // A relay's own pod name, for its flags.
        env: spec.relays.enabled.then(super::proxy_access::relay_env),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            std::iter::once(group_dir_mount(admitted))
                .chain(extra_mounts)
                .collect(),
        ),
        ..Container::default()
    };

    let pod_security = PodSecurityContext {
        // With `socketGroup` every container of the pod has the group: the init container needs
        // it for the kernel to keep setgid when it chmods the directory (it lacks CAP_FSETID).
        supplemental_groups: spec.socket_group.map(|gid| vec![gid]),
        // With CURVE the proxy's group reads the mounted secret key (the kubelet makes the
        // Secret volume's files root:fsGroup 0440; fsGroup does not touch hostPath volumes).
        fs_group: spec.security.curve.then_some(PROXY_UID),
        ..PodSecurityContext::default()
    };
    let pod = PodSpec {
        init_containers: Some(vec![prepare_socket_dir_container(group, admitted)]),
        containers: vec![container],
        security_context: (pod_security != PodSecurityContext::default()).then_some(pod_security),
        host_network: spec.host_network.then_some(true),
        // With hostNetwork the pod still resolves cluster names.
        dns_policy: spec.host_network.then(|| "ClusterFirstWithHostNet".to_string()),
        node_selector: spec.node_selector.clone().filter(|selector| !selector.is_empty()),
        tolerations: Some(admitted.tolerations.clone()),
        priority_class_name: spec.priority_class_name.clone(),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        // The API token is mounted into the proxy container only (proxy_access).
        automount_service_account_token: Some(false),
        service_account_name: api_access.as_ref().map(|access| access.service_account.clone()),
        enable_service_links: Some(false),
        volumes: Some(
            std::iter::once(Volume {
                name: SOCKET_ROOT_VOLUME.to_string(),
                host_path: Some(HostPathVolumeSource {
                    path: admitted.socket_root.clone(),
                    type_: Some("DirectoryOrCreate".to_string()),
                }),
                ..Volume::default()
            })
            .chain(extra_volumes)
            .collect(),
        ),
        ..PodSpec::default()
    };

    Ok(DaemonSet {
        metadata: child_meta(group, &id, id.name.clone(), Component::Proxy)?,
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            update_strategy: Some(update_strategy(spec.host_network)),
            ..DaemonSetSpec::default()
        }),
        status: None,
    })
}

/// The selector-less headless Service named after the group: the EndpointSlices point at it
/// (`kubernetes.io/service-name`), so cluster DNS resolves `<name>.<ns>.svc` to the proxies.
pub fn headless_service(group: &FanoutGroup) -> Result<Service, Unrealisable> {
    let id = GroupId::of(group)?;
    Ok(Service {
        metadata: child_meta(group, &id, id.name.clone(), Component::EndpointList)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            // No selector: the kube EndpointSlice controller leaves this Service to us.
            selector: None,
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                name: Some(PUBLISH_PORT_NAME.to_string()),
                port: group.spec.publisher_port,
                target_port: Some(IntOrString::Int(group.spec.publisher_port)),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            // Publishers want not-ready proxies out of DNS too; the slices carry readiness.
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The ConfigMap `<name>-endpoints` with the given (already rendered) endpoint list, and the
/// proxies' CURVE public key when the group has one.
pub fn endpoints_configmap(
    group: &FanoutGroup,
    endpoints: String,
    server_key: Option<&crate::curve::PublicKey>,
) -> Result<ConfigMap, Unrealisable> {
    let id = GroupId::of(group)?;
    let mut data = BTreeMap::from([(CONFIGMAP_KEY.to_string(), endpoints)]);
    if let Some(key) = server_key {
        data.insert(CONFIGMAP_CURVE_KEY.to_string(), key.to_z85());
    }
    Ok(ConfigMap {
        metadata: child_meta(group, &id, id.configmap_name(), Component::EndpointList)?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The most data a ConfigMap may hold: the API server refuses one whose data and binaryData
/// values add up to more than 1 MiB (core validation's `MaxSecretSize`, which ConfigMaps share;
/// against kube-apiserver 1.37.2 a 1 048 576-byte value was accepted, one byte more refused).
pub const CONFIGMAP_DATA_LIMIT: usize = 1024 * 1024;

/// Bytes of `config_map`'s data as the API server counts them against [`CONFIGMAP_DATA_LIMIT`]:
/// the values of data and binaryData (not the keys).
pub fn configmap_data_size(config_map: &ConfigMap) -> usize {
    let data = config_map.data.iter().flatten().map(|(_, value)| value.len());
    let binary = config_map
        .binary_data
        .iter()
        .flatten()
        .map(|(_, value)| value.0.len());
    data.chain(binary).sum()
}

/// The group's server key Secret `<name>-curve` as it is created: labelled and owned like
/// every child, marked as a public-key Secret (the controller's Secret watch sees it), and
/// immutable. No data: the writer fills in a fresh key pair when it creates it, so no secret
/// key ever passes through a plan.
pub fn server_key_secret(group: &FanoutGroup) -> Result<Secret, Unrealisable> {
    let id = GroupId::of(group)?;
    let mut metadata = child_meta(group, &id, server_secret_name(&id.name), Component::Proxy)?;
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(PUBLIC_KEY_LABEL.to_string(), PUBLIC_KEY_LABEL_VALUE.to_string());
    Ok(Secret {
        metadata,
        immutable: Some(true),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    })
}

/// The ConfigMap `<name>-curve-allow` that the proxies mount and follow: the publishers' and
/// the subscribers' allow-lists, rendered (`keys::allow_list`).
pub fn allow_list_configmap(
    group: &FanoutGroup,
    publishers: String,
    subscribers: String,
) -> Result<ConfigMap, Unrealisable> {
    let id = GroupId::of(group)?;
    Ok(ConfigMap {
        metadata: child_meta(group, &id, allow_list_configmap_name(&id.name), Component::Proxy)?,
        data: Some(BTreeMap::from([
            (ALLOW_PUBLISHERS_KEY.to_string(), publishers),
            (ALLOW_SUBSCRIBERS_KEY.to_string(), subscribers),
        ])),
        ..ConfigMap::default()
    })
}

/// Fixtures shared by the controller's unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::crd::{FanoutGroup, FanoutGroupSpec};

    /// Group `net/updates` with `spec`, as the API server would return it.
    pub fn group_with(spec: FanoutGroupSpec) -> FanoutGroup {
        let mut group = FanoutGroup::new("updates", spec);
        group.metadata.namespace = Some("net".into());
        group.metadata.uid = Some("uid-1".into());
        group.metadata.generation = Some(3);
        group
    }

    pub fn group() -> FanoutGroup {
        group_with(FanoutGroupSpec::default())
    }

    /// The id of [`group`]'s group.
    pub fn id() -> super::GroupId {
        super::GroupId {
            namespace: "net".into(),
            name: "updates".into(),
        }
    }

    /// A policy with the own image `img:1` that allows everything else the tests ask for.
    pub fn open_policy() -> crate::controller::policy::ProxyPolicy {
        crate::controller::policy::ProxyPolicy {
            own_image: Some("img:1".into()),
            allowed_images: vec!["*".into()],
            allow_host_network: true,
            allowed_priority_classes: vec!["system-node-critical".into()],
            allow_control_plane: true,
            ..Default::default()
        }
    }

    /// The DaemonSet of `group` under [`open_policy`].
    pub fn build(group: &FanoutGroup) -> k8s_openapi::api::apps::v1::DaemonSet {
        let id = super::GroupId::of(group).unwrap();
        let admitted = open_policy().admit(&group.spec, &id.namespace, &id.name).unwrap();
        super::daemon_set(group, &admitted).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{build, group_with as group};
    use super::*;
    use crate::crd::FanoutGroupSpec;

    fn container(ds: &DaemonSet) -> &Container {
        &ds.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn group_names_must_be_service_names() {
        for good in ["a", "updates", "port-updates-2"] {
            assert!(is_dns1035_label(good), "{good}");
        }
        for bad in ["", "2fast", "has.dot", "Upper", "trailing-", &"x".repeat(64)] {
            assert!(!is_dns1035_label(bad), "{bad}");
        }
        let mut g = group(FanoutGroupSpec::default());
        g.metadata.name = Some("a.b".into());
        assert_eq!(GroupId::of(&g), Err(Unrealisable::InvalidName("a.b".into())));
    }

    #[test]
    fn args_follow_the_spec() {
        let ds = build(&group(FanoutGroupSpec::default()));
        let args = container(&ds).args.clone().unwrap();
        assert_eq!(
            args,
            [
                "proxy",
                "--publishers",
                "tcp://*:7100",
                "--subscribers",
                "ipc:///var/run/fanout/net.updates/net.updates.sock",
                "--http",
                "0.0.0.0:9102",
                "--hwm",
                "1000",
                "--max-message-bytes",
                "65536",
                "--heartbeat",
                "5",
                "--relay-group",
                "updates",
                "--relay-namespace",
                "net",
                "--relay-pod",
                "$(POD_NAME)"
            ]
        );
        assert_eq!(
            container(&ds).command.as_deref(),
            Some(&["fanout".to_string()][..])
        );
    }

    #[test]
    fn subscriber_port_adds_a_tcp_subscriber_socket_and_port() {
        let spec = FanoutGroupSpec {
            subscriber_port: Some(7200),
            socket_dir: "/var/run/fanout/x".into(),
            ..FanoutGroupSpec::default()
        };
        let ds = build(&group(spec));
        let c = container(&ds);
        let args = c.args.clone().unwrap();
        let subs: Vec<_> = args
            .windows(2)
            .filter(|w| w[0] == "--subscribers")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(
            subs,
            [
                "ipc:///var/run/fanout/x/net.updates/net.updates.sock",
                "tcp://*:7200"
            ]
        );
        let names: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["publish", "subscribe", "http"]);
    }

    #[test]
    fn spec_image_reaches_the_proxy_only_and_the_init_container_runs_the_own_image() {
        let spec = FanoutGroupSpec {
            image: Some("mine:2".into()),
            ..FanoutGroupSpec::default()
        };
        let ds = build(&group(spec));
        assert_eq!(container(&ds).image.as_deref(), Some("mine:2"));
        assert_eq!(init_container(&ds).image.as_deref(), Some("img:1"));
    }

    #[test]
    fn pod_is_locked_down_and_tolerates_what_the_policy_admitted() {
        let ds = build(&group(FanoutGroupSpec::default()));
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let sc = container(&ds).security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.run_as_user, Some(PROXY_UID));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(
            pod.tolerations.as_deref(),
            Some(&[][..]),
            "the policy's default: none"
        );
        assert_eq!(pod.host_network, None);
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(TERMINATION_GRACE_SECONDS)
        );
        let volume = &pod.volumes.as_ref().unwrap()[0];
        let host_path = volume.host_path.as_ref().unwrap();
        assert_eq!(host_path.path, "/var/run/fanout", "the admin's root");
        assert_eq!(host_path.type_.as_deref(), Some("DirectoryOrCreate"));
        let mount = &container(&ds).volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.sub_path.as_deref()
            ),
            (
                volume.name.as_str(),
                "/var/run/fanout/net.updates",
                Some("net.updates")
            ),
            "the proxy sees its own group's directory only"
        );
        let ready = container(&ds).readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::Int(9102));
        let live = container(&ds).liveness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
    }

    fn pod_spec(ds: &DaemonSet) -> &PodSpec {
        ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn init_container(ds: &DaemonSet) -> &Container {
        let inits = pod_spec(ds).init_containers.as_ref().unwrap();
        assert_eq!(inits.len(), 1);
        &inits[0]
    }

    #[test]
    fn init_container_prepares_the_socket_dir_as_root_with_two_capabilities() {
        let ds = build(&group(FanoutGroupSpec::default()));
        let init = init_container(&ds);
        assert_eq!(init.name, PREPARE_SOCKET_DIR_CONTAINER);
        assert_eq!(init.image.as_deref(), Some("img:1"), "the controller's own image");
        assert_eq!(init.command.as_deref(), Some(&["fanout".to_string()][..]));
        assert_eq!(
            init.args.clone().unwrap(),
            [
                "prepare-socket-dir",
                "--root",
                "/var/run/fanout",
                "--path",
                "/var/run/fanout/net.updates",
                "--uid",
                "65532",
                "--gid",
                "65532",
                "--mode",
                "0750"
            ]
        );
        assert_eq!(
            init.security_context,
            Some(SecurityContext {
                run_as_non_root: Some(false),
                run_as_user: Some(0),
                run_as_group: Some(0),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: Some(vec!["CHOWN".into(), "FOWNER".into()]),
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..SecurityContext::default()
            })
        );
        let volume = &pod_spec(&ds).volumes.as_ref().unwrap()[0];
        let mount = &init.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.sub_path.as_deref()
            ),
            (volume.name.as_str(), "/var/run/fanout", None),
            "the init container walks down from the whole root"
        );
        let resources = init.resources.clone().unwrap();
        assert_eq!(resources.requests.unwrap()["cpu"], Quantity("10m".into()));
        assert_eq!(resources.limits.unwrap()["memory"], Quantity("64Mi".into()));
        assert!(init.ports.is_none() && init.readiness_probe.is_none());
        assert_eq!(
            pod_spec(&ds).security_context,
            None,
            "no extra group without socketGroup"
        );
        // The proxy itself stays non-root whatever the init container does.
        let sc = container(&ds).security_context.clone().unwrap();
        assert_eq!(
            (sc.run_as_user, sc.run_as_non_root),
            (Some(PROXY_UID), Some(true))
        );
        assert_eq!(sc.capabilities.unwrap().add, None);
    }

    #[test]
    fn socket_group_owns_the_dir_with_setgid_and_joins_the_pod() {
        let spec = FanoutGroupSpec {
            socket_group: Some(2000),
            socket_dir: "/var/run/fanout/x".into(),
            ..FanoutGroupSpec::default()
        };
        let ds = build(&group(spec));
        let args = init_container(&ds).args.clone().unwrap();
        assert_eq!(
            args[1..],
            [
                "--root",
                "/var/run/fanout",
                "--path",
                "/var/run/fanout/x/net.updates",
                "--uid",
                "65532",
                "--gid",
                "2000",
                "--mode",
                "2750"
            ]
        );
        let pod_security = pod_spec(&ds).security_context.clone().unwrap();
        assert_eq!(pod_security.supplemental_groups, Some(vec![2000]));
        assert_eq!(
            init_container(&ds).volume_mounts.as_ref().unwrap()[0].mount_path,
            "/var/run/fanout"
        );
        let mount = &container(&ds).volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.sub_path.as_deref()),
            ("/var/run/fanout/x/net.updates", Some("x/net.updates"))
        );
    }

    /// The contract between the DaemonSet and the binary: the init container's arguments parse
    /// as `fanout prepare-socket-dir` and ask for what the controller means.
    #[test]
    #[cfg(feature = "cli")]
    fn init_container_args_parse_as_the_subcommand() {
        use crate::cli::prepare_socket_dir::PrepareSocketDirArgs;
        #[derive(clap::Parser)]
        struct Fanout {
            #[command(subcommand)]
            command: Subcommand,
        }
        #[derive(clap::Subcommand)]
        enum Subcommand {
            #[command(name = crate::proxy::socket_dir::SUBCOMMAND)]
            PrepareSocketDir(PrepareSocketDirArgs),
        }
        for (socket_group, gid, mode) in [(None, 65532, 0o750), (Some(2000), 2000, 0o2750)] {
            let spec = FanoutGroupSpec {
                socket_group,
                ..FanoutGroupSpec::default()
            };
            let ds = build(&group(spec));
            let argv = std::iter::once("fanout".to_string()).chain(init_container(&ds).args.clone().unwrap());
            let Subcommand::PrepareSocketDir(args) =
                <Fanout as clap::Parser>::try_parse_from(argv).unwrap().command;
            assert_eq!(
                args,
                PrepareSocketDirArgs {
                    root: "/var/run/fanout".into(),
                    path: "/var/run/fanout/net.updates".into(),
                    uid: 65532,
                    gid,
                    mode,
                }
            );
        }
    }

    #[test]
    fn narrowed_spec_reaches_the_pod() {
        let spec = FanoutGroupSpec {
            tolerations: Some(vec![]),
            host_network: true,
            node_selector: Some(BTreeMap::from([("role".into(), "edge".into())])),
            priority_class_name: Some("system-node-critical".into()),
            ..FanoutGroupSpec::default()
        };
        let ds = build(&group(spec));
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.tolerations.as_deref(), Some(&[][..]));
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert_eq!(pod.node_selector.as_ref().unwrap()["role"], "edge");
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
        // Two pods of one node would want the same host ports: no surge with hostNetwork.
        let rolling = ds.spec.unwrap().update_strategy.unwrap().rolling_update.unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::String("10%".into())));
        assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    }

    #[test]
    fn children_are_labelled_and_owned_by_the_group() {
        let g = group(FanoutGroupSpec::default());
        let ds = build(&g);
        let svc = headless_service(&g).unwrap();
        let cm = endpoints_configmap(&g, String::new(), None).unwrap();
        for meta in [&ds.metadata, &svc.metadata, &cm.metadata] {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[GROUP_LABEL], "updates");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "fanout-controller");
            assert_eq!(labels["app.kubernetes.io/part-of"], "fanout");
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("FanoutGroup", "uid-1")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("net"));
        }
        assert_eq!(cm.metadata.name.as_deref(), Some("updates-endpoints"));
        let component =
            |meta: &ObjectMeta| meta.labels.as_ref().unwrap()["app.kubernetes.io/component"].clone();
        assert_eq!(component(&ds.metadata), "proxy");
        let template = ds.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        assert_eq!(component(template), "proxy");
        assert_eq!(component(&svc.metadata), "endpoint-list");
        assert_eq!(component(&cm.metadata), "endpoint-list");
        let svc_spec = svc.spec.unwrap();
        assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"));
        assert!(svc_spec.selector.is_none());
        // A surge: the new proxy starts beside the old one and takes the socket over.
        let strategy = ds.spec.unwrap().update_strategy.unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let rolling = strategy.rolling_update.unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(rolling.max_surge, Some(IntOrString::String("10%".into())));
    }
}
