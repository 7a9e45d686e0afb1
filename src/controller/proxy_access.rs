//! Pure: the proxies' access to the API. Two things make a group's proxies follow objects
//! through the API, and with either on the controller gives the group's proxy pods an identity
//! of their own and exactly the access that following needs:
//! - `spec.relays.enabled` (the default): a relay follows its assignment slices;
//! - `spec.security.curve`: every proxy follows the group's allow-list ConfigMap, so a
//!   revoked key is cut off within a second of the controller's rewrite, not at the kubelet's
//!   next refresh of the mounted file (about a minute; `proxy::allow_lists`).
//!
//! What the pods get then:
//! - ServiceAccount `<name>-proxy` (no automounted token);
//! - Role `<name>-proxy`: with relays, `list` and `watch` on the namespace's EndpointSlices;
//!   with CURVE, `list` and `watch` on the one ConfigMap `<name>-curve-allow` (`resourceNames`,
//!   which RBAC honours for a list or watch that selects `metadata.name`); nothing else (a
//!   watch and its relists need no `get`);
//! - RoleBinding `<name>-proxy` of the Role to the ServiceAccount;
//! - in the pod: a projected token (the ServiceAccount's, the cluster CA, the namespace)
//!   mounted into the proxy container only, at the path clients read in a pod; the flags of
//!   what it follows (with relays, the pod's own name from the downward API).
//!
//! Relay access is there always while relays are enabled, not only while the group is a tree:
//! whether a group is a tree changes with its size, and a pod template that changed with it
//! would restart every proxy of the group each time the group crosses `minProxies`, in the
//! middle of a scale-up. With relays disabled and CURVE off the pods are exactly as before
//! either existed: no ServiceAccount of their own, no token, no flags.

use super::keys::allow_list_configmap_name;
use super::objects::{Component, GroupId, Unrealisable, child_meta};
use crate::crd::FanoutGroup;
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, EnvVar, EnvVarSource, KeyToPath,
    ObjectFieldSelector, ProjectedVolumeSource, ServiceAccount, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

/// Where a pod's clients (kube-rs, client-go) look for the in-cluster token, CA and namespace.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The volume of that token.
pub const TOKEN_VOLUME: &str = "proxy-api-access";
/// The environment variable holding the pod's own name (downward API); the relay flag names
/// it as `$(POD_NAME)`, which the kubelet expands.
pub const POD_NAME_ENV: &str = "POD_NAME";
/// Lifetime asked of the projected token (the kubelet renews it at 80 %; the client rereads it).
pub const TOKEN_SECONDS: i64 = 3607;

/// Name of the group's proxy ServiceAccount, Role and RoleBinding.
pub fn proxy_identity_name(group: &str) -> String {
    format!("{group}-proxy")
}

/// Whether `group`'s proxies follow anything through the API (relays, or CURVE allow-lists).
pub fn needs_api(group: &FanoutGroup) -> bool {
    group.spec.relays.enabled || group.spec.security.curve
}

/// The ServiceAccount, Role and RoleBinding of a group whose proxies use the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyAccess {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub binding: RoleBinding,
}

/// The Role's rules: what relays and CURVE allow-lists each need.
fn rules(group: &FanoutGroup, id: &GroupId) -> Vec<PolicyRule> {
    let read = || vec!["list".to_string(), "watch".to_string()];
    let mut rules = Vec::new();
    if group.spec.relays.enabled {
        rules.push(PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".to_string()]),
            resources: Some(vec!["endpointslices".to_string()]),
            verbs: read(),
            ..PolicyRule::default()
        });
    }
    if group.spec.security.curve {
        rules.push(PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_string()]),
            resource_names: Some(vec![allow_list_configmap_name(&id.name)]),
            verbs: read(),
            ..PolicyRule::default()
        });
    }
    rules
}

/// The objects for `group`, or `None` when its proxies use no API.
pub fn proxy_access(group: &FanoutGroup, id: &GroupId) -> Result<Option<ProxyAccess>, Unrealisable> {
    if !needs_api(group) {
        return Ok(None);
    }
    let name = proxy_identity_name(&id.name);
    let meta = || child_meta(group, id, name.clone(), Component::Proxy);
    Ok(Some(ProxyAccess {
        service_account: ServiceAccount {
            metadata: meta()?,
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: meta()?,
            rules: Some(rules(group, id)),
        },
        binding: RoleBinding {
            metadata: meta()?,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_string(),
                kind: "Role".to_string(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_string(),
                name: name.clone(),
                namespace: Some(id.namespace.clone()),
                ..Subject::default()
            }]),
        },
    }))
}

/// The `fanout proxy` flags that make a proxy follow its assignment as a relay.
pub fn relay_args(id: &GroupId) -> Vec<String> {
    vec![
        "--relay-group".to_string(),
        id.name.clone(),
        "--relay-namespace".to_string(),
        id.namespace.clone(),
        "--relay-pod".to_string(),
        format!("$({POD_NAME_ENV})"),
    ]
}

/// The `fanout proxy` flags that make a proxy follow the group's allow-list ConfigMap.
pub fn allow_list_args(id: &GroupId) -> Vec<String> {
    vec![
        "--allow-lists-configmap".to_string(),
        allow_list_configmap_name(&id.name),
        "--allow-lists-namespace".to_string(),
        id.namespace.clone(),
    ]
}

/// What a relay's container gets besides the API access: its pod's own name, which the relay
/// flags name as `$(POD_NAME)`.
pub fn relay_env() -> Vec<EnvVar> {
    vec![EnvVar {
        name: POD_NAME_ENV.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_string(),
                api_version: Some("v1".to_string()),
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }]
}

/// What the proxy container and its pod get when the proxies use the API.
pub struct ProxyPodParts {
    pub service_account: String,
    pub volume: Volume,
    pub mount: VolumeMount,
}

pub fn proxy_pod_parts(id: &GroupId) -> ProxyPodParts {
    let item = |key: &str| KeyToPath {
        key: key.to_string(),
        path: key.to_string(),
        mode: None,
    };
    ProxyPodParts {
        service_account: proxy_identity_name(&id.name),
        volume: Volume {
            name: TOKEN_VOLUME.to_string(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            path: "token".to_string(),
                            expiration_seconds: Some(TOKEN_SECONDS),
                            audience: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".to_string(),
                            items: Some(vec![item("ca.crt")]),
                            optional: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "namespace".to_string(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.namespace".to_string(),
                                    api_version: Some("v1".to_string()),
                                }),
                                ..DownwardAPIVolumeFile::default()
                            }]),
                        }),
                        ..VolumeProjection::default()
                    },
                ]),
            }),
            ..Volume::default()
        },
        mount: VolumeMount {
            name: TOKEN_VOLUME.to_string(),
            mount_path: TOKEN_MOUNT.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::objects::tests_support::{build, group, group_with, id};
    use crate::crd::{FanoutGroupSpec, GroupSecurity, RelaySpec};

    fn spec(relays: bool, curve: bool) -> FanoutGroupSpec {
        FanoutGroupSpec {
            relays: RelaySpec {
                enabled: relays,
                ..RelaySpec::default()
            },
            security: GroupSecurity {
                curve,
                ..GroupSecurity::default()
            },
            ..FanoutGroupSpec::default()
        }
    }

    /// A rule as (api groups, resources, resource names, verbs).
    type Rule = (String, String, Option<Vec<String>>, Vec<String>);

    fn rules_of(access: &ProxyAccess) -> Vec<Rule> {
        access
            .role
            .rules
            .iter()
            .flatten()
            .map(|rule| {
                (
                    rule.api_groups.as_ref().unwrap().join(","),
                    rule.resources.as_ref().unwrap().join(","),
                    rule.resource_names.clone(),
                    rule.verbs.clone(),
                )
            })
            .collect()
    }

    fn read() -> Vec<String> {
        vec!["list".to_string(), "watch".to_string()]
    }

    #[test]
    fn the_role_allows_reading_endpointslices_and_nothing_else() {
        let access = proxy_access(&group(), &id())
            .unwrap()
            .expect("relays are enabled by default");
        assert_eq!(
            rules_of(&access),
            [(
                "discovery.k8s.io".to_string(),
                "endpointslices".to_string(),
                None,
                read()
            )]
        );
        assert_eq!(access.binding.role_ref.name, "updates-proxy");
        let subject = &access.binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "updates-proxy", Some("net"))
        );
        assert_eq!(
            access.service_account.automount_service_account_token,
            Some(false)
        );
        for meta in [
            &access.service_account.metadata,
            &access.role.metadata,
            &access.binding.metadata,
        ] {
            assert!(crate::controller::children::is_child(meta, &id()));
            assert!(meta.owner_references.is_some());
        }
    }

    #[test]
    fn curve_adds_reading_the_allow_list_configmap_by_name_only() {
        let allow_list = (
            String::new(),
            "configmaps".to_string(),
            Some(vec!["updates-curve-allow".to_string()]),
            read(),
        );
        let both = proxy_access(&group_with(spec(true, true)), &id())
            .unwrap()
            .expect("relays and CURVE");
        let rules = rules_of(&both);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1], allow_list);
        let curve_only = proxy_access(&group_with(spec(false, true)), &id())
            .unwrap()
            .expect("CURVE alone needs the API too");
        assert_eq!(rules_of(&curve_only), [allow_list]);
        assert!(
            proxy_access(&group_with(spec(false, false)), &id())
                .unwrap()
                .is_none()
        );
    }

    /// What a pod template gives the proxy container and the pod.
    struct PodView {
        args: String,
        env: Vec<String>,
        mounts: Vec<String>,
        account: Option<String>,
        volumes: Vec<String>,
    }

    fn pod_view(spec: FanoutGroupSpec) -> PodView {
        let ds = build(&group_with(spec));
        let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert!(
            init.volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != TOKEN_VOLUME),
            "the root init container never gets the token"
        );
        let proxy = &pod.containers[0];
        PodView {
            args: proxy.args.as_ref().unwrap().join(" "),
            env: proxy.env.iter().flatten().map(|e| e.name.clone()).collect(),
            mounts: proxy
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.clone())
                .collect(),
            account: pod.service_account_name.clone(),
            volumes: pod.volumes.iter().flatten().map(|v| v.name.clone()).collect(),
        }
    }

    #[test]
    fn only_the_proxy_container_of_a_relay_capable_group_gets_the_token_and_the_flags() {
        let relay = pod_view(FanoutGroupSpec::default());
        assert_eq!(relay.account.as_deref(), Some("updates-proxy"));
        assert!(
            relay
                .args
                .ends_with("--relay-group updates --relay-namespace net --relay-pod $(POD_NAME)"),
            "{}",
            relay.args
        );
        assert!(!relay.args.contains("--allow-lists"), "{}", relay.args);
        assert_eq!(relay.env, [POD_NAME_ENV]);
        assert!(relay.mounts.iter().any(|m| m == TOKEN_MOUNT));
        assert!(relay.volumes.iter().any(|v| v == TOKEN_VOLUME));

        let neither = pod_view(spec(false, false));
        assert_eq!(neither.account, None);
        assert!(neither.env.is_empty());
        assert!(
            !neither.args.contains("--relay") && !neither.args.contains("--allow-lists"),
            "{}",
            neither.args
        );
        assert!(neither.mounts.iter().all(|m| m != TOKEN_MOUNT));
        assert!(neither.volumes.iter().all(|v| v != TOKEN_VOLUME));
    }

    #[test]
    fn a_curve_group_follows_its_allow_list_configmap_with_or_without_relays() {
        let follow = "--allow-lists-configmap updates-curve-allow --allow-lists-namespace net";
        let curve_only = pod_view(spec(false, true));
        assert_eq!(curve_only.account.as_deref(), Some("updates-proxy"));
        assert!(curve_only.args.contains(follow), "{}", curve_only.args);
        assert!(!curve_only.args.contains("--relay"), "{}", curve_only.args);
        assert!(
            curve_only.env.is_empty(),
            "no relay, no POD_NAME: {:?}",
            curve_only.env
        );
        assert!(curve_only.mounts.iter().any(|m| m == TOKEN_MOUNT));

        let both = pod_view(spec(true, true));
        assert_eq!(both.account.as_deref(), Some("updates-proxy"));
        assert!(
            both.args.contains(follow) && both.args.contains("--relay-group updates"),
            "{}",
            both.args
        );
        assert_eq!(both.env, [POD_NAME_ENV]);
    }
}
