//! The group's allow-list ConfigMap followed through the API: what makes a revocation reach
//! every proxy within a second of the controller's rewrite, instead of at the kubelet's next
//! refresh of the mounted file (`allow_lists` says which source wins).
//!
//! One watch on one object: a field selector `metadata.name=<name>`, which is also what lets
//! RBAC restrict the proxies' `list` and `watch` to that name (`resourceNames`). Failures are
//! retried with [`WatchBackoff::per_node`] (at most 10 s apart: every proxy of the group does
//! this) and counted; the proxy keeps the last lists it has meanwhile. A relist is held until it is complete, so a restarted watch
//! never delivers a transient "no ConfigMap".

use super::allow_lists::{AllowListFeed, AllowListSource, AllowLists};
use super::{AllowListApiError, ProxyError};
use crate::membership::kubernetes::map_event;
use crate::watch_backoff::WatchBackoff;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;

/// What the watch says of the one object (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed<T> {
    /// The object as it now is.
    Present(T),
    /// The object is not there (deleted, or not found by a complete list).
    Absent,
}

/// Folds the watch events of one object into what it now is: an `Apply` at once, a relist
/// (`Init` .. `InitDone`) only once complete.
#[derive(Debug)]
pub struct OneObject<T> {
    /// During a relist: what it has found so far.
    relist: Option<Option<T>>,
}

impl<T> Default for OneObject<T> {
    fn default() -> Self {
        Self { relist: None }
    }
}

impl<T> OneObject<T> {
    pub fn apply(&mut self, event: watcher::Event<T>) -> Option<Observed<T>> {
        match event {
            watcher::Event::Apply(object) => Some(Observed::Present(object)),
            watcher::Event::Delete(_) => Some(Observed::Absent),
            watcher::Event::Init => {
                self.relist = Some(None);
                None
            }
            watcher::Event::InitApply(object) => {
                self.relist = Some(Some(object));
                None
            }
            watcher::Event::InitDone => Some(match self.relist.take().flatten() {
                Some(object) => Observed::Present(object),
                None => Observed::Absent,
            }),
        }
    }
}

/// The group's allow-list ConfigMap `name` in `namespace`, followed through the API with the
/// pod's own credentials (or `client`).
pub struct ConfigMapAllowLists {
    namespace: String,
    name: String,
    client: Option<Client>,
}

impl ConfigMapAllowLists {
    pub fn new(namespace: String, name: String) -> Self {
        Self {
            namespace,
            name,
            client: None,
        }
    }

    /// Uses this client instead of inferring one from the environment.
    pub fn with_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    async fn follow(self, feed: AllowListFeed, errors: Counter) -> Result<(), ProxyError> {
        let client = match self.client {
            Some(client) => client,
            None => Client::try_default().await.map_err(AllowListApiError::Client)?,
        };
        let (namespace, name) = (self.namespace, self.name);
        tracing::info!(%namespace, configmap = %name, "following the allow-lists through the API");
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher(api, config).backoff(WatchBackoff::per_node()).boxed();
        let mut object = OneObject::default();
        let mut delivered: Option<AllowLists> = None;
        let mut warned: Vec<String> = Vec::new();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    errors.inc();
                    tracing::warn!(error = %err, configmap = %name, "allow-list watch failed; keeping the lists in force and retrying");
                    continue;
                }
            };
            let lists = match object.apply(map_event(event, |cm| cm.data.clone())) {
                None => continue,
                Some(Observed::Absent) => {
                    tracing::warn!(%namespace, configmap = %name, "the allow-list ConfigMap is not there; keeping the lists in force");
                    continue;
                }
                Some(Observed::Present(data)) => {
                    let (lists, warnings) = AllowLists::from_configmap_data(data.as_ref());
                    if warnings != warned {
                        for warning in &warnings {
                            tracing::warn!(configmap = %name, %warning, "allow-list ConfigMap");
                        }
                        warned = warnings;
                    }
                    lists
                }
            };
            if delivered.as_ref() == Some(&lists) {
                continue;
            }
            tracing::info!(
                configmap = %name,
                publishers = lists.publishers.0.len(),
                subscribers = lists.subscribers.0.len(),
                "allow-lists from the API"
            );
            if !feed.deliver(lists.clone()) {
                return Ok(());
            }
            delivered = Some(lists);
        }
        Err(AllowListApiError::WatchEnded { namespace, name }.into())
    }
}

impl AllowListSource for ConfigMapAllowLists {
    fn run(
        self: Box<Self>,
        feed: AllowListFeed,
        errors: Counter,
    ) -> BoxFuture<'static, Result<(), ProxyError>> {
        Box::pin(self.follow(feed, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    #[test]
    fn an_apply_counts_at_once_and_a_relist_only_when_complete() {
        let mut one = OneObject::default();
        assert_eq!(one.apply(Event::Init), None);
        assert_eq!(one.apply(Event::InitApply(1)), None);
        assert_eq!(one.apply(Event::InitDone), Some(Observed::Present(1)));
        assert_eq!(one.apply(Event::Apply(2)), Some(Observed::Present(2)));
        assert_eq!(one.apply(Event::Delete(2)), Some(Observed::Absent));
        // A relist that finds nothing says so only when it is done.
        assert_eq!(one.apply(Event::Init), None);
        assert_eq!(one.apply(Event::InitDone), Some(Observed::Absent));
        // A relist does not remember the previous one's object.
        assert_eq!(one.apply(Event::Init), None);
        assert_eq!(one.apply(Event::InitApply(3)), None);
        assert_eq!(one.apply(Event::InitDone), Some(Observed::Present(3)));
        assert_eq!(one.apply(Event::Init), None);
        assert_eq!(one.apply(Event::InitDone), Some(Observed::Absent));
    }
}
