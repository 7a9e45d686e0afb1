//! Pure: what the cluster admin lets a FanoutGroup ask for, and the check of a group against it.
//! No I/O.
//!
//! Whoever may create a FanoutGroup must not get more than the admin gave the controller: the
//! proxy pod runs a root init container on a hostPath of every selected node, so the image that
//! runs it, the host directory, the host network, the priority and the nodes reached are all
//! decided here, from the controller's flags (set by the chart), and a group asking for more is
//! refused with the reason in its status.
//!
//! Longer than 500 lines for a reason: over half of it is tests, one per refusal; the code is the
//! one place that decides what the admin allows a group, under 350 lines.

use crate::crd::FanoutGroupSpec;
use k8s_openapi::api::core::v1::Toleration;

pub use crate::crd::DEFAULT_SOCKET_ROOT;
/// Taints that mark control-plane nodes (the current key and the legacy one).
pub const CONTROL_PLANE_TAINTS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// The admin's bounds on proxy pods (from `fanout controller`'s flags).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyPolicy {
    /// The controller's own proxy image (`--default-proxy-image`, by digest when the chart
    /// knows it). The root init container always runs it, and so do proxies of groups that
    /// name no image. Without it no DaemonSet is written.
    pub own_image: Option<String>,
    /// Further images `spec.image` may name ([`image_allowed_by`]): an exact reference, every
    /// digest (`repo@*`) or tag (`repo:*`) of one repository, every repository below a path
    /// (`registry.example.com/proxies/*`), or `*`.
    pub allowed_images: Vec<String>,
    /// Every group's `socketDir` must be this directory or below it.
    pub socket_root: String,
    /// Whether `spec.hostNetwork: true` is allowed.
    pub allow_host_network: bool,
    /// PriorityClasses `spec.priorityClassName` may name (none by default).
    pub allowed_priority_classes: Vec<String>,
    /// Tolerations of groups that set none.
    pub default_tolerations: Vec<Toleration>,
    /// Whether proxies may tolerate the control-plane taint (and so run on those nodes).
    pub allow_control_plane: bool,
}

impl Default for ProxyPolicy {
    /// The narrowest policy: only the own image, the default root, no host network, no
    /// priority class, no tolerations, no control plane.
    fn default() -> Self {
        Self {
            own_image: None,
            allowed_images: Vec::new(),
            socket_root: DEFAULT_SOCKET_ROOT.to_string(),
            allow_host_network: false,
            allowed_priority_classes: Vec::new(),
            default_tolerations: Vec::new(),
            allow_control_plane: false,
        }
    }
}

/// Why the policy refuses a group. Reported as the `Degraded` reason and in a warning Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "no trusted proxy image: the controller needs --default-proxy-image (the chart sets it) to run the socket-directory init container"
    )]
    NoProxyImage,
    #[error(
        "spec.image {0:?} is not allowed: the controller allows its own proxy image and --allowed-proxy-image entries only"
    )]
    ImageNotAllowed(String),
    #[error("spec.socketDir {dir:?} is not a normalized absolute path inside the socket root {root:?}")]
    SocketDirOutsideRoot { dir: String, root: String },
    #[error(
        "spec.socketDir {dir:?} has a directory name with a '.' below the socket root {root:?}: \
         names <namespace>.<name> are the groups' own directories, and one group's socketDir \
         must never lie inside another group's directory"
    )]
    SocketDirInGroupDir { dir: String, root: String },
    #[error("spec.socketGroup 0 is refused: it would give the root group access to the socket directory")]
    SocketGroupRoot,
    #[error("spec.hostNetwork is not allowed by the controller (--allow-host-network)")]
    HostNetworkNotAllowed,
    #[error("spec.priorityClassName {0:?} is not allowed by the controller (--allowed-priority-class)")]
    PriorityClassNotAllowed(String),
    #[error(
        "the tolerations tolerate the control-plane taint {0}: not allowed by the controller (--allow-control-plane)"
    )]
    ControlPlaneNotAllowed(&'static str),
    #[error(
        "spec.highWaterMark {hwm} x spec.maxMessageBytes {max_message_bytes} lets one peer's queue hold more than 256 MiB; lower either"
    )]
    QueueTooLarge { hwm: i32, max_message_bytes: i64 },
}

impl Refused {
    /// The CamelCase reason used in conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::NoProxyImage => "NoProxyImage",
            Refused::ImageNotAllowed(_) => "ProxyImageNotAllowed",
            Refused::SocketDirOutsideRoot { .. } => "SocketDirOutsideRoot",
            Refused::SocketDirInGroupDir { .. } => "SocketDirInGroupDir",
            Refused::SocketGroupRoot => "SocketGroupRoot",
            Refused::HostNetworkNotAllowed => "HostNetworkNotAllowed",
            Refused::PriorityClassNotAllowed(_) => "PriorityClassNotAllowed",
            Refused::ControlPlaneNotAllowed(_) => "ControlPlaneNotAllowed",
            Refused::QueueTooLarge { .. } => "QueueTooLarge",
        }
    }
}

/// What the policy admitted: the values the DaemonSet is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// Image of the proxy container.
    pub proxy_image: String,
    /// Image of the root init container: always the controller's own.
    pub init_image: String,
    /// The admin's socket root (normalized): the host directory the init container walks down
    /// from, and the one hostPath volume of the pod.
    pub socket_root: String,
    /// The group's own host directory: `<socketDir>/<namespace>.<name>`, below `socket_root`.
    pub socket_dir: String,
    pub tolerations: Vec<Toleration>,
}

/// `path` is absolute and normalized: no empty, `.` or `..` segment, no trailing `/`, not `/`.
pub fn is_normalized_absolute(path: &str) -> bool {
    match path.strip_prefix('/') {
        Some(rest) => {
            !rest.is_empty()
                && rest
                    .split('/')
                    .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
        }
        None => false,
    }
}

/// `dir` is `root` or below it (both normalized).
pub fn is_within(dir: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    is_normalized_absolute(dir)
        && (dir == root || dir.strip_prefix(root).is_some_and(|rest| rest.starts_with('/')))
}

/// Whether `dir` (within `root`) names a directory with a `.` below `root`: the shape of a
/// group's own directory `<namespace>.<name>` (namespaces and group names have no `.`), so such
/// a `socketDir` could lie inside another group's directory, which that group's proxy owns.
pub fn enters_a_group_dir(dir: &str, root: &str) -> bool {
    dir.strip_prefix(root.trim_end_matches('/'))
        .is_some_and(|below| below.contains('.'))
}

/// The directory of one group below `socket_dir`. Namespace names have no `.` and group
/// names are DNS-1035 labels, so `<namespace>.<name>` names one group only.
pub fn group_socket_dir(socket_dir: &str, namespace: &str, name: &str) -> String {
    format!("{}/{namespace}.{name}", socket_dir.trim_end_matches('/'))
}

/// Whether `toleration` tolerates the taint `key` (no value) with effect `effect`, by the
/// scheduler's rules.
pub fn tolerates(toleration: &Toleration, key: &str, effect: &str) -> bool {
    let effect_matches = toleration
        .effect
        .as_deref()
        .is_none_or(|wanted| wanted.is_empty() || wanted == effect);
    let exists = toleration.operator.as_deref() == Some("Exists");
    let key_matches = match toleration.key.as_deref() {
        None | Some("") => exists,
        Some(wanted) => wanted == key,
    };
    let value_matches = exists || toleration.value.as_deref().is_none_or(str::is_empty);
    effect_matches && key_matches && value_matches
}

/// An image reference split into its repository (registry and path), tag and digest:
/// `reg:5000/a/b:1.2@sha256:f0` is `("reg:5000/a/b", Some("1.2"), Some("sha256:f0"))`. A `:`
/// before the last `/` is a registry port, not a tag.
fn split_reference(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_segment = name.rfind('/').map_or(0, |slash| slash + 1);
    match name[last_segment..].rfind(':') {
        Some(colon) => {
            let at = last_segment + colon;
            (&name[..at], Some(&name[at + 1..]), digest)
        }
        None => (name, None, digest),
    }
}

/// The kinds of `--allowed-proxy-image` entry.
enum ImagePattern<'a> {
    Any,
    /// `<path>/*`: every repository below the path (the prefix keeps its `/`).
    Below(&'a str),
    /// `<repository>:*`: every tag of exactly this repository.
    AnyTag(&'a str),
    /// `<repository>@*`: every digest of exactly this repository.
    AnyDigest(&'a str),
    Exact(&'a str),
}

impl<'a> ImagePattern<'a> {
    /// The entry's kind, or why it is not one. A `*` anywhere else would be a plain string
    /// prefix, and `registry/fanout*` would also allow the sibling `registry/fanout-evil`.
    fn parse(entry: &'a str) -> Result<Self, String> {
        let pattern = if entry == "*" {
            Self::Any
        } else if let Some(path) = entry.strip_suffix("/*") {
            Self::Below(&entry[..path.len() + 1])
        } else if let Some(repository) = entry.strip_suffix(":*") {
            Self::AnyTag(repository)
        } else if let Some(repository) = entry.strip_suffix("@*") {
            Self::AnyDigest(repository)
        } else {
            Self::Exact(entry)
        };
        let bare = match pattern {
            Self::Any => "",
            Self::Below(rest) | Self::AnyTag(rest) | Self::AnyDigest(rest) | Self::Exact(rest) => rest,
        };
        let whole_repository = |repository: &str| {
            let (name, tag, digest) = split_reference(repository);
            name == repository && tag.is_none() && digest.is_none()
        };
        if bare.contains('*') {
            return Err(format!(
                "{entry:?}: a `*` may only end an entry as `/*`, `:*` or `@*`, or be the whole \
                 entry; as a plain prefix `registry/fanout*` would also allow `registry/fanout-evil`"
            ));
        }
        match pattern {
            Self::Exact("") | Self::Below("/") => Err(format!("{entry:?} names no image")),
            Self::AnyTag(repository) | Self::AnyDigest(repository)
                if !whole_repository(repository) || repository.is_empty() =>
            {
                Err(format!(
                    "{entry:?}: before `:*` or `@*` comes a repository alone (no tag, no digest)"
                ))
            }
            pattern => Ok(pattern),
        }
    }

    fn allows(&self, image: &str) -> bool {
        let (repository, tag, digest) = split_reference(image);
        match *self {
            Self::Any => true,
            Self::Below(path) => repository.starts_with(path),
            Self::AnyTag(wanted) => repository == wanted && tag.is_some(),
            Self::AnyDigest(wanted) => repository == wanted && digest.is_some(),
            Self::Exact(wanted) => image == wanted,
        }
    }
}

/// Checks an `--allowed-proxy-image` entry (the controller refuses to start with a bad one).
pub fn parse_image_pattern(entry: &str) -> Result<String, String> {
    ImagePattern::parse(entry).map(|_| entry.to_string())
}

/// Whether the allow-list entry `entry` allows `image`. An entry that is not a valid pattern
/// allows nothing.
pub fn image_allowed_by(entry: &str, image: &str) -> bool {
    ImagePattern::parse(entry).is_ok_and(|pattern| pattern.allows(image))
}

impl ProxyPolicy {
    fn image_allowed(&self, image: &str) -> bool {
        self.own_image.as_deref() == Some(image)
            || self
                .allowed_images
                .iter()
                .any(|entry| image_allowed_by(entry, image))
    }

    /// Checks the group `namespace/name` with `spec` against the policy.
    pub fn admit(&self, spec: &FanoutGroupSpec, namespace: &str, name: &str) -> Result<Admitted, Refused> {
        let own = self
            .own_image
            .as_deref()
            .filter(|image| !image.is_empty())
            .ok_or(Refused::NoProxyImage)?;
        let proxy_image = match spec.image.as_deref() {
            None => own,
            Some(image) if self.image_allowed(image) => image,
            Some(image) => return Err(Refused::ImageNotAllowed(image.to_string())),
        };
        if !is_within(&spec.socket_dir, &self.socket_root) {
            return Err(Refused::SocketDirOutsideRoot {
                dir: spec.socket_dir.clone(),
                root: self.socket_root.clone(),
            });
        }
        if enters_a_group_dir(&spec.socket_dir, &self.socket_root) {
            return Err(Refused::SocketDirInGroupDir {
                dir: spec.socket_dir.clone(),
                root: self.socket_root.clone(),
            });
        }
        if spec.socket_group == Some(0) {
            return Err(Refused::SocketGroupRoot);
        }
        // Admission checks this too (CEL); an older CRD without the rule must not give the
        // proxies a configuration they refuse to start with.
        if crate::proxy::queue_bound_exceeded(spec.high_water_mark.into(), spec.max_message_bytes) {
            return Err(Refused::QueueTooLarge {
                hwm: spec.high_water_mark,
                max_message_bytes: spec.max_message_bytes,
            });
        }
        if spec.host_network && !self.allow_host_network {
            return Err(Refused::HostNetworkNotAllowed);
        }
        if let Some(class) = &spec.priority_class_name
            && !self.allowed_priority_classes.contains(class)
        {
            return Err(Refused::PriorityClassNotAllowed(class.clone()));
        }
        let tolerations = spec
            .tolerations
            .clone()
            .unwrap_or_else(|| self.default_tolerations.clone());
        if !self.allow_control_plane
            && let Some(taint) = CONTROL_PLANE_TAINTS
                .into_iter()
                .find(|taint| tolerations.iter().any(|t| tolerates(t, taint, "NoSchedule")))
        {
            return Err(Refused::ControlPlaneNotAllowed(taint));
        }
        Ok(Admitted {
            proxy_image: proxy_image.to_string(),
            init_image: own.to_string(),
            socket_root: self.socket_root.trim_end_matches('/').to_string(),
            socket_dir: group_socket_dir(&spec.socket_dir, namespace, name),
            tolerations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ProxyPolicy {
        ProxyPolicy {
            own_image: Some("reg/fanout@sha256:abc".into()),
            ..ProxyPolicy::default()
        }
    }

    fn admit(policy: &ProxyPolicy, spec: FanoutGroupSpec) -> Result<Admitted, Refused> {
        policy.admit(&spec, "net", "updates")
    }

    fn toleration(key: Option<&str>, operator: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(str::to_string),
            operator: operator.map(str::to_string),
            effect: effect.map(str::to_string),
            ..Toleration::default()
        }
    }

    #[test]
    fn the_default_group_runs_the_own_image_in_its_own_directory() {
        let admitted = admit(&policy(), FanoutGroupSpec::default()).unwrap();
        assert_eq!(
            admitted,
            Admitted {
                proxy_image: "reg/fanout@sha256:abc".into(),
                init_image: "reg/fanout@sha256:abc".into(),
                socket_root: "/var/run/fanout".into(),
                socket_dir: "/var/run/fanout/net.updates".into(),
                tolerations: vec![],
            }
        );
    }

    #[test]
    fn spec_image_needs_the_allow_list_and_never_reaches_the_init_container() {
        let mine = || FanoutGroupSpec {
            image: Some("evil/root:1".into()),
            ..FanoutGroupSpec::default()
        };
        let refused = admit(&policy(), mine()).unwrap_err();
        assert_eq!(refused, Refused::ImageNotAllowed("evil/root:1".into()));
        assert_eq!(refused.reason(), "ProxyImageNotAllowed");
        assert!(refused.to_string().contains("evil/root:1"));

        for entry in ["evil/root:1", "evil/*"] {
            let allowing = ProxyPolicy {
                allowed_images: vec![entry.into()],
                ..policy()
            };
            let admitted = admit(&allowing, mine()).unwrap();
            assert_eq!(admitted.proxy_image, "evil/root:1", "{entry}");
            assert_eq!(admitted.init_image, "reg/fanout@sha256:abc", "{entry}");
        }
        let other = ProxyPolicy {
            allowed_images: vec!["evil/root:2".into(), "evil/root:1x*".into()],
            ..policy()
        };
        assert!(admit(&other, mine()).is_err());
        // Naming the own image explicitly is always fine.
        let own = FanoutGroupSpec {
            image: Some("reg/fanout@sha256:abc".into()),
            ..FanoutGroupSpec::default()
        };
        assert!(admit(&policy(), own).is_ok());
    }

    #[test]
    fn an_allow_list_entry_never_allows_a_sibling_repository() {
        let cases: [(&str, &[&str], &[&str]); 6] = [
            (
                "registry/fanout",
                &["registry/fanout"],
                &[
                    "registry/fanout-evil",
                    "registry/fanout:1",
                    "registry/fanout/x",
                    "registry/fanoutx@sha256:1",
                ],
            ),
            (
                "registry/fanout@*",
                &["registry/fanout@sha256:0123", "registry/fanout:1@sha256:0123"],
                &[
                    "registry/fanout",
                    "registry/fanout:1",
                    "registry/fanout-evil@sha256:0123",
                    "registry/fanout/x@sha256:1",
                ],
            ),
            (
                "registry/fanout:*",
                &["registry/fanout:1.2", "registry/fanout:latest"],
                &[
                    "registry/fanout",
                    "registry/fanout-evil:1",
                    "registry/fanout/x:1",
                    "registry/fanout@sha256:1",
                ],
            ),
            (
                "registry/proxies/*",
                &["registry/proxies/a:1", "registry/proxies/a/b@sha256:1"],
                &[
                    "registry/proxies-evil/a:1",
                    "registry/proxies",
                    "registry/proxiesx/a",
                ],
            ),
            (
                "reg:5000/*",
                &["reg:5000/fanout:1"],
                &["reg:50000/fanout:1", "reg/fanout:1"],
            ),
            (
                "reg:5000/fanout:*",
                &["reg:5000/fanout:1"],
                &["reg:5000/fanout-evil:1", "reg:5000/fanout"],
            ),
        ];
        for (entry, allowed, refused) in cases {
            assert_eq!(parse_image_pattern(entry).as_deref(), Ok(entry));
            for image in allowed {
                assert!(image_allowed_by(entry, image), "{entry} should allow {image}");
            }
            for image in refused {
                assert!(!image_allowed_by(entry, image), "{entry} must not allow {image}");
            }
        }
        assert!(image_allowed_by("*", "anything/at:all"));
        // A `*` that would be a plain string prefix is refused, and allows nothing.
        for bad in [
            "registry/fanout*",
            "registry/fan*out",
            "*/fanout",
            "registry/fanout:1*",
            "",
            "/*",
            ":*",
            "a:1:*",
            "a@sha256:1@*",
        ] {
            let err = parse_image_pattern(bad);
            assert!(err.is_err(), "{bad:?} accepted");
            assert!(!image_allowed_by(bad, "registry/fanout-evil"), "{bad:?}");
        }
        assert!(
            parse_image_pattern("registry/fanout*")
                .unwrap_err()
                .contains("registry/fanout-evil")
        );
    }

    #[test]
    fn without_an_own_image_nothing_is_admitted_even_with_spec_image() {
        let spec = FanoutGroupSpec {
            image: Some("evil/root:1".into()),
            ..FanoutGroupSpec::default()
        };
        let open = ProxyPolicy {
            allowed_images: vec!["*".into()],
            ..ProxyPolicy::default()
        };
        assert_eq!(admit(&open, spec), Err(Refused::NoProxyImage));
        let empty = ProxyPolicy {
            own_image: Some(String::new()),
            ..ProxyPolicy::default()
        };
        assert_eq!(
            admit(&empty, FanoutGroupSpec::default()),
            Err(Refused::NoProxyImage)
        );
    }

    #[test]
    fn socket_dir_must_stay_inside_the_root() {
        for bad in [
            "/etc/kubernetes/manifests",
            "/var/lib/kubelet/pod-resources",
            "/var/run/fanoutx",
            "/var/run/fanout/../../etc",
            "/var/run/fanout/./x",
            "/var/run/fanout//x",
            "/var/run/fanout/",
            "var/run/fanout",
            "/",
        ] {
            let spec = FanoutGroupSpec {
                socket_dir: bad.into(),
                ..FanoutGroupSpec::default()
            };
            let refused = admit(&policy(), spec).unwrap_err();
            assert_eq!(refused.reason(), "SocketDirOutsideRoot", "{bad}");
        }
        let spec = FanoutGroupSpec {
            socket_dir: "/var/run/fanout/team-a".into(),
            ..FanoutGroupSpec::default()
        };
        assert_eq!(
            admit(&policy(), spec).unwrap().socket_dir,
            "/var/run/fanout/team-a/net.updates"
        );
        let narrower = ProxyPolicy {
            socket_root: "/var/run/fanout/team-a/".into(),
            ..policy()
        };
        assert!(admit(&narrower, FanoutGroupSpec::default()).is_err());
    }

    #[test]
    fn a_socket_dir_inside_another_groups_directory_is_refused() {
        for nested in [
            "/var/run/fanout/net.other",
            "/var/run/fanout/net.other/deeper",
            "/var/run/fanout/team/a.b",
            "/var/run/fanout/.hidden-but-normalized",
        ] {
            let spec = FanoutGroupSpec {
                socket_dir: nested.into(),
                ..FanoutGroupSpec::default()
            };
            let refused = admit(&policy(), spec).unwrap_err();
            assert_eq!(refused.reason(), "SocketDirInGroupDir", "{nested}");
            assert!(refused.to_string().contains(nested), "{refused}");
        }
        // Dots in the admin's own root are the admin's business.
        let dotted_root = ProxyPolicy {
            socket_root: "/var/run/fanout.d".into(),
            ..policy()
        };
        let spec = FanoutGroupSpec {
            socket_dir: "/var/run/fanout.d/team".into(),
            ..FanoutGroupSpec::default()
        };
        assert_eq!(
            admit(&dotted_root, spec).unwrap().socket_dir,
            "/var/run/fanout.d/team/net.updates"
        );
    }

    #[test]
    fn two_groups_never_share_a_directory() {
        let a = policy()
            .admit(&FanoutGroupSpec::default(), "net", "updates")
            .unwrap();
        let b = policy()
            .admit(&FanoutGroupSpec::default(), "net", "other")
            .unwrap();
        let c = policy()
            .admit(&FanoutGroupSpec::default(), "other", "updates")
            .unwrap();
        assert_ne!(a.socket_dir, b.socket_dir);
        assert_ne!(a.socket_dir, c.socket_dir);
        assert_ne!(b.socket_dir, c.socket_dir);
    }

    #[test]
    fn a_queue_bound_above_256_mib_is_refused() {
        let at_bound = FanoutGroupSpec {
            high_water_mark: 4096,
            max_message_bytes: 65536,
            ..FanoutGroupSpec::default()
        };
        assert!(admit(&policy(), at_bound).is_ok());
        let above = FanoutGroupSpec {
            high_water_mark: 4097,
            max_message_bytes: 65536,
            ..FanoutGroupSpec::default()
        };
        let refused = admit(&policy(), above).expect_err("refused");
        assert_eq!(refused.reason(), "QueueTooLarge");
        assert!(refused.to_string().contains("4097"), "{refused}");
    }

    #[test]
    fn socket_group_zero_is_refused() {
        let spec = FanoutGroupSpec {
            socket_group: Some(0),
            ..FanoutGroupSpec::default()
        };
        assert_eq!(admit(&policy(), spec), Err(Refused::SocketGroupRoot));
    }

    #[test]
    fn host_network_and_priority_class_need_the_admin() {
        let host = || FanoutGroupSpec {
            host_network: true,
            ..FanoutGroupSpec::default()
        };
        assert_eq!(admit(&policy(), host()), Err(Refused::HostNetworkNotAllowed));
        let allowing = ProxyPolicy {
            allow_host_network: true,
            ..policy()
        };
        assert!(admit(&allowing, host()).is_ok());

        let critical = || FanoutGroupSpec {
            priority_class_name: Some("system-node-critical".into()),
            ..FanoutGroupSpec::default()
        };
        assert_eq!(
            admit(&policy(), critical()),
            Err(Refused::PriorityClassNotAllowed("system-node-critical".into()))
        );
        let allowing = ProxyPolicy {
            allowed_priority_classes: vec!["system-node-critical".into()],
            ..policy()
        };
        assert!(admit(&allowing, critical()).is_ok());
    }

    #[test]
    fn tolerations_default_from_the_admin_and_stay_off_the_control_plane() {
        let everything = toleration(None, Some("Exists"), None);
        let control_plane = toleration(
            Some("node-role.kubernetes.io/control-plane"),
            Some("Exists"),
            Some("NoSchedule"),
        );
        let master = toleration(Some("node-role.kubernetes.io/master"), None, None);
        let no_schedule_all = toleration(None, Some("Exists"), Some("NoSchedule"));
        for bad in [&everything, &control_plane, &master, &no_schedule_all] {
            let spec = FanoutGroupSpec {
                tolerations: Some(vec![bad.clone()]),
                ..FanoutGroupSpec::default()
            };
            let refused = admit(&policy(), spec).unwrap_err();
            assert_eq!(refused.reason(), "ControlPlaneNotAllowed", "{bad:?}");
        }
        let harmless = [
            toleration(Some("dedicated"), Some("Exists"), None),
            toleration(None, Some("Exists"), Some("NoExecute")),
            toleration(
                Some("node-role.kubernetes.io/control-plane"),
                Some("Exists"),
                Some("NoExecute"),
            ),
            Toleration {
                value: Some("x".into()),
                ..toleration(Some("node-role.kubernetes.io/control-plane"), Some("Equal"), None)
            },
        ];
        let spec = FanoutGroupSpec {
            tolerations: Some(harmless.to_vec()),
            ..FanoutGroupSpec::default()
        };
        assert_eq!(admit(&policy(), spec).unwrap().tolerations, harmless);

        // The admin's default applies when the group sets none, and is checked as well.
        let defaults = ProxyPolicy {
            default_tolerations: vec![harmless[0].clone()],
            ..policy()
        };
        let admitted = admit(&defaults, FanoutGroupSpec::default()).unwrap();
        assert_eq!(admitted.tolerations, [harmless[0].clone()]);
        let everywhere = ProxyPolicy {
            default_tolerations: vec![everything.clone()],
            ..policy()
        };
        assert!(admit(&everywhere, FanoutGroupSpec::default()).is_err());
        let control_plane_ok = ProxyPolicy {
            allow_control_plane: true,
            ..everywhere
        };
        assert_eq!(
            admit(&control_plane_ok, FanoutGroupSpec::default())
                .unwrap()
                .tolerations,
            [everything]
        );
    }
}
