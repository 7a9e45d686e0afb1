//! Pure: what a group's proxies need to be relays. A relay follows its assignment through the
//! API, so with `spec.relays.enabled` the controller gives the group's proxy pods an identity
//! of their own and exactly the access that following needs:
//! - ServiceAccount `<name>-proxy` (no automounted token);
//! - Role `<name>-proxy`: `list` and `watch` on the namespace's EndpointSlices, nothing else
//!   (a watch and its relists need no `get`);
//! - RoleBinding `<name>-proxy` of the Role to the ServiceAccount;
//! - in the pod: a projected token (the ServiceAccount's, the cluster CA, the namespace)
//!   mounted into the proxy container only, at the path clients read in a pod, and the
//!   relay flags with the pod's own name from the downward API.
//!
//! Always while relays are enabled, not only while the group is a tree: whether a group is a
//! tree changes with its size, and a pod template that changed with it would restart every
//! proxy of the group each time the group crosses `minProxies`, in the middle of a scale-up.
//! With `enabled: false` the pods are exactly as before relays existed: no ServiceAccount of
//! their own, no token, no flags.

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
pub const TOKEN_VOLUME: &str = "relay-api-access";
/// The environment variable holding the pod's own name (downward API); the relay flag names
/// it as `$(POD_NAME)`, which the kubelet expands.
pub const POD_NAME_ENV: &str = "POD_NAME";
/// Lifetime asked of the projected token (the kubelet renews it at 80 %; the client rereads it).
pub const TOKEN_SECONDS: i64 = 3607;

/// Name of the group's proxy ServiceAccount, Role and RoleBinding.
pub fn proxy_identity_name(group: &str) -> String {
    format!("{group}-proxy")
}

/// The ServiceAccount, Role and RoleBinding of a group whose proxies may relay.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayAccess {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub binding: RoleBinding,
}

/// The objects for `group`, or `None` with relays disabled.
pub fn relay_access(group: &FanoutGroup, id: &GroupId) -> Result<Option<RelayAccess>, Unrealisable> {
    if !group.spec.relays.enabled {
        return Ok(None);
    }
    let name = proxy_identity_name(&id.name);
    let meta = || child_meta(group, id, name.clone(), Component::Proxy);
    Ok(Some(RelayAccess {
        service_account: ServiceAccount {
            metadata: meta()?,
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: meta()?,
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["discovery.k8s.io".to_string()]),
                resources: Some(vec!["endpointslices".to_string()]),
                verbs: vec!["list".to_string(), "watch".to_string()],
                ..PolicyRule::default()
            }]),
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

/// What the proxy container and its pod get with relays enabled.
pub struct RelayPodParts {
    pub service_account: String,
    pub env: Vec<EnvVar>,
    pub volume: Volume,
    pub mount: VolumeMount,
}

pub fn relay_pod_parts(id: &GroupId) -> RelayPodParts {
    let item = |key: &str| KeyToPath {
        key: key.to_string(),
        path: key.to_string(),
        mode: None,
    };
    RelayPodParts {
        service_account: proxy_identity_name(&id.name),
        env: vec![EnvVar {
            name: POD_NAME_ENV.to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    api_version: Some("v1".to_string()),
                }),
                ..EnvVarSource::default()
            }),
            value: None,
        }],
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
    use crate::crd::{FanoutGroupSpec, RelaySpec};

    #[test]
    fn the_role_allows_reading_endpointslices_and_nothing_else() {
        let access = relay_access(&group(), &id())
            .unwrap()
            .expect("enabled by default");
        let rules = access.role.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].api_groups.as_deref(),
            Some(&["discovery.k8s.io".to_string()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["endpointslices".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["list", "watch"]);
        assert!(rules[0].resource_names.is_none());
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
    fn only_the_proxy_container_of_a_relay_capable_group_gets_the_token_and_the_flags() {
        let ds = build(&group());
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("updates-proxy"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let proxy = &pod.containers[0];
        let args = proxy.args.as_ref().unwrap().join(" ");
        assert!(
            args.ends_with("--relay-group updates --relay-namespace net --relay-pod $(POD_NAME)"),
            "{args}"
        );
        assert_eq!(proxy.env.as_ref().unwrap()[0].name, POD_NAME_ENV);
        let mounts: Vec<_> = proxy
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&TOKEN_MOUNT));
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert!(
            init.volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != TOKEN_VOLUME)
        );

        let off = group_with(FanoutGroupSpec {
            relays: RelaySpec {
                enabled: false,
                ..RelaySpec::default()
            },
            ..FanoutGroupSpec::default()
        });
        assert!(relay_access(&off, &id()).unwrap().is_none());
        let ds = build(&off);
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name, None);
        let proxy = &pod.containers[0];
        assert!(proxy.env.is_none());
        assert!(!proxy.args.as_ref().unwrap().join(" ").contains("--relay"));
        assert!(pod.volumes.iter().flatten().all(|v| v.name != TOKEN_VOLUME));
    }
}
