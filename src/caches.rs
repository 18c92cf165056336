//! The manager's shared watch caches: one watch and one reflector store per kind the
//! controllers and the autoscaler index read (CAPI Clusters, MachineDeployments, MachineSets
//! and Machines; capow's OpenStackWorkerClusters, OpenStackWorkerMachines and
//! OpenStackWorkerMachineTemplates), fanned out to every consumer as a stream of triggers.
//!
//! Before these caches each consumer kept its own watch and store, so a manager with 10,000
//! machines held each Machine and OpenStackWorkerMachine two or three times (docs/benchmarks.md,
//! "Manager memory and CPU"). Here a kind is listed and watched once, cached once (trimmed by
//! [`crate::kubeapi::trim`]) and shared by reference (`Arc`).
//!
//! The fan-out is capow's own (ADR 0009, `docs/adr/0009-shared-watch-caches.md`): kube-runtime
//! 5's `store_shared`/`ReflectHandle` (feature `unstable-runtime-subscribe`) broadcasts object
//! references only and looks each up in the store when it is polled, so a deleted object is
//! never delivered, and a subscriber that joins after the first list (the controllers start
//! only once this replica leads, while the autoscaler index serves on every replica) receives
//! nothing for the objects that already exist. A [`Shared`] subscription starts with every
//! cached object, then receives each later event (applied or deleted objects alike) in the order
//! the store saw them, and the store is updated before a subscriber hears of a change, so a
//! reconcile woken by an event reads at least that version.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::machine::OpenStackWorkerMachine;
use crate::api::machine_template::OpenStackWorkerMachineTemplate;
use crate::capi::{Cluster, Machine, MachineDeployment, MachineSet};

/// A failure streak ends when no watch error came for this long (90 s: longer than the longest
/// gap between a failing watch's retries: kube-runtime's default backoff waits at most 30 s
/// between attempts (kube-runtime 5 `watcher.rs`, `DefaultBackoff`), and an attempt against an
/// unreachable API server fails within the client's 30 s connect timeout).
pub const STREAK_WINDOW: Duration = Duration::from_secs(90);

/// Health of one watch, from its stream: a *failure streak* starts with an error after
/// success and lasts while errors keep coming at most [`STREAK_WINDOW`] apart; any event ends
/// it at once.
///
/// kube-runtime's watcher re-opens a failed watch from its last resourceVersion without
/// emitting anything when nothing changed meanwhile, so a recovered, quiet watch is only told
/// apart from a failing one by its errors stopping; a watch that stays down keeps yielding an
/// error per retry. A watch whose connection hangs without an error is not detected until the
/// client's read timeout ends it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchHealth {
    first_error: Option<Instant>,
    last_error: Option<Instant>,
}

impl WatchHealth {
    /// An event arrived: the watch follows the API server.
    pub fn on_event(&mut self) {
        *self = WatchHealth::default();
    }

    /// The stream yielded an error at `now`.
    pub fn on_error(&mut self, now: Instant) {
        if self.stale_for(now).is_none() {
            self.first_error = Some(now);
        }
        self.last_error = Some(now);
    }

    /// How long the current failure streak has lasted at `now`; `None` when there is none.
    pub fn stale_for(&self, now: Instant) -> Option<Duration> {
        let (first, last) = (self.first_error?, self.last_error?);
        (now.saturating_duration_since(last) < STREAK_WINDOW)
            .then(|| now.saturating_duration_since(first))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What a kind needs to be cached here.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Cached for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// One kind's watch, store and subscribers. Cheap to clone; clones share all three.
pub struct Shared<K: Cached> {
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>>,
    health: Arc<Mutex<WatchHealth>>,
}

impl<K: Cached> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared {
            store: self.store.clone(),
            subscribers: self.subscribers.clone(),
            health: self.health.clone(),
        }
    }
}

impl<K: Cached> Shared<K> {
    /// Starts the watch of `api` with `config` and drives it until `shutdown`; watch errors are
    /// retried with kube-runtime's default backoff and recorded in [`Shared::health`].
    pub fn start(api: Api<K>, config: watcher::Config, shutdown: CancellationToken) -> Shared<K> {
        let (store, writer) = reflector::store();
        let shared = Shared {
            store,
            subscribers: Arc::default(),
            health: Arc::default(),
        };
        let events = watcher(api, config)
            .default_backoff()
            .modify(crate::kubeapi::trim);
        tokio::spawn(shared.clone().drive(events, writer, shutdown));
        shared
    }

    async fn drive<S>(
        self,
        events: S,
        mut writer: reflector::store::Writer<K>,
        shutdown: CancellationToken,
    ) where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    {
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(Err(e)) => {
                    lock(&self.health).on_error(Instant::now());
                    tracing::debug!(kind = %K::kind(&()), error = %e, "Watch error");
                }
                Some(Ok(event)) => {
                    lock(&self.health).on_event();
                    writer.apply_watcher_event(&event);
                    self.publish(&event);
                }
            }
        }
    }

    /// Sends the object of `event` (as the store now holds it, when it does) to every
    /// subscriber still listening.
    fn publish(&self, event: &watcher::Event<K>) {
        let obj = match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => self
                .store
                .get(&ObjectRef::from_obj(obj))
                .unwrap_or_else(|| Arc::new(obj.clone())),
            watcher::Event::Delete(obj) => Arc::new(obj.clone()),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        lock(&self.subscribers).retain(|s| s.send(obj.clone()).is_ok());
    }

    /// The store: every object of the kind, as last seen.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The watch's health, for callers that must not serve from a store that stopped following
    /// the API server (the autoscaler's `Refresh`).
    pub fn health(&self) -> Arc<Mutex<WatchHealth>> {
        self.health.clone()
    }

    /// Every cached object, then every object the watch applies or deletes from now on, once
    /// the store has its first full list (waits for it). An object may come twice (when it
    /// changed while the subscription started); the stream ends when the watch stops.
    pub async fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        // The store's readiness only fails when its writer is gone (the watch stopped); the
        // subscription then ends at once.
        let _ = self.store.wait_until_ready().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let current = {
            let mut subscribers = lock(&self.subscribers);
            subscribers.push(tx);
            self.store.state()
        };
        futures::stream::iter(current)
            .chain(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
    }

    /// [`Shared::subscribe`], passing an object only when `fingerprint` of it differs from
    /// the last one passed for the same object (kube-runtime's `predicate_filter` for shared
    /// streams); a `None` fingerprint always passes.
    pub async fn subscribe_changes(
        &self,
        fingerprint: impl Fn(&K) -> Option<u64> + Send + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        changes(self.subscribe().await, fingerprint, self.store())
    }
}

/// The objects of `objects` whose `fingerprint` changed since the last one of the same object
/// (by namespace, name and UID) passed. The fingerprints of objects no longer in `store`
/// (deleted) are forgotten once there are more than twice as many fingerprints as stored
/// objects (plus 1,024), so that churn cannot grow the map without bound.
pub fn changes<K: Cached>(
    objects: impl Stream<Item = Arc<K>> + Send + 'static,
    fingerprint: impl Fn(&K) -> Option<u64> + Send + 'static,
    store: Store<K>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    type Key = (Option<String>, Option<String>, Option<String>);
    let key = |meta: &kube::api::ObjectMeta| -> Key {
        (meta.namespace.clone(), meta.name.clone(), meta.uid.clone())
    };
    let mut seen: HashMap<Key, u64> = HashMap::new();
    objects.filter(move |obj| {
        let pass = match fingerprint(obj) {
            None => true,
            Some(fp) => seen.insert(key(obj.meta()), fp) != Some(fp),
        };
        if seen.len() > 2 * store.len() + 1024 {
            let live: std::collections::HashSet<Key> =
                store.state().iter().map(|o| key(o.meta())).collect();
            seen.retain(|k, _| live.contains(k));
        }
        std::future::ready(pass)
    })
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The shared caches of the manager: one [`Shared`] per kind, in one namespace or all.
#[derive(Clone)]
pub struct Caches {
    /// CAPI Clusters.
    pub clusters: Shared<Cluster>,
    /// CAPI MachineDeployments.
    pub machine_deployments: Shared<MachineDeployment>,
    /// CAPI MachineSets.
    pub machine_sets: Shared<MachineSet>,
    /// CAPI Machines.
    pub machines: Shared<Machine>,
    /// capow's OpenStackWorkerClusters.
    pub infra_clusters: Shared<OpenStackWorkerCluster>,
    /// capow's OpenStackWorkerMachines.
    pub infra_machines: Shared<OpenStackWorkerMachine>,
    /// capow's OpenStackWorkerMachineTemplates.
    pub templates: Shared<OpenStackWorkerMachineTemplate>,
}

impl Caches {
    /// Starts the watches (in `namespace`, or all namespaces) with `config` until `shutdown`.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        config: &watcher::Config,
        shutdown: &CancellationToken,
    ) -> Caches {
        Caches {
            clusters: Shared::start(api(client, namespace), config.clone(), shutdown.clone()),
            machine_deployments: Shared::start(
                api(client, namespace),
                config.clone(),
                shutdown.clone(),
            ),
            machine_sets: Shared::start(api(client, namespace), config.clone(), shutdown.clone()),
            machines: Shared::start(api(client, namespace), config.clone(), shutdown.clone()),
            infra_clusters: Shared::start(api(client, namespace), config.clone(), shutdown.clone()),
            infra_machines: Shared::start(api(client, namespace), config.clone(), shutdown.clone()),
            templates: Shared::start(api(client, namespace), config.clone(), shutdown.clone()),
        }
    }

    /// Waits until every store has its first full list.
    ///
    /// # Errors
    /// When a watch stopped before that.
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.clusters.store.wait_until_ready().await?;
        self.machine_deployments.store.wait_until_ready().await?;
        self.machine_sets.store.wait_until_ready().await?;
        self.machines.store.wait_until_ready().await?;
        self.infra_clusters.store.wait_until_ready().await?;
        self.infra_machines.store.wait_until_ready().await?;
        self.templates.store.wait_until_ready().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, rv: &str, data: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": rv,
                         "managedFields": [{"manager": "m", "operation": "Update"}]},
            "data": {"k": data}
        }))
        .unwrap()
    }

    fn names(objs: &[Arc<ConfigMap>]) -> Vec<String> {
        let mut v: Vec<String> = objs
            .iter()
            .map(|o| {
                format!(
                    "{}@{}",
                    o.metadata.name.clone().unwrap(),
                    o.metadata.resource_version.clone().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    }

    async fn next_n(
        s: &mut (impl Stream<Item = Arc<ConfigMap>> + Unpin),
        n: usize,
    ) -> Vec<Arc<ConfigMap>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                tokio::time::timeout(Duration::from_secs(5), s.next())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        out
    }

    /// Drives a [`Shared`] from a channel of events instead of a watch.
    fn shared_from(
        events: mpsc::UnboundedReceiver<Result<watcher::Event<ConfigMap>, watcher::Error>>,
    ) -> (Shared<ConfigMap>, CancellationToken) {
        let (store, writer) = reflector::store();
        let shared = Shared {
            store,
            subscribers: Arc::default(),
            health: Arc::default(),
        };
        let token = CancellationToken::new();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(events)
            .modify(crate::kubeapi::trim);
        tokio::spawn(shared.clone().drive(stream, writer, token.clone()));
        (shared, token)
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_the_cached_objects_then_every_change_deletes_included() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (shared, _token) = shared_from(rx);
        tx.send(Ok(watcher::Event::Init)).unwrap();
        tx.send(Ok(watcher::Event::InitApply(cm("a", "1", "x"))))
            .unwrap();
        tx.send(Ok(watcher::Event::InitApply(cm("b", "2", "x"))))
            .unwrap();
        tx.send(Ok(watcher::Event::InitDone)).unwrap();
        // A subscriber that joins after the first list (a controller starting on leadership).
        let mut late = std::pin::pin!(shared.subscribe().await);
        assert_eq!(names(&next_n(&mut late, 2).await), ["a@1", "b@2"]);
        // The store is trimmed and shared with the subscribers.
        let a = shared
            .store()
            .get(&ObjectRef::new("a").within("ns"))
            .unwrap();
        assert!(a.metadata.managed_fields.is_none());

        tx.send(Ok(watcher::Event::Apply(cm("a", "3", "y"))))
            .unwrap();
        tx.send(Ok(watcher::Event::Delete(cm("b", "4", "x"))))
            .unwrap();
        let later = next_n(&mut late, 2).await;
        assert_eq!(names(&later), ["a@3", "b@4"]);
        // The applied object is the store's own (shared, not copied); the deleted one is gone
        // from the store but still delivered.
        let a3 = shared
            .store()
            .get(&ObjectRef::new("a").within("ns"))
            .unwrap();
        assert!(Arc::ptr_eq(&later[0], &a3));
        assert!(
            shared
                .store()
                .get(&ObjectRef::new("b").within("ns"))
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_dropped_subscriber_does_not_stop_the_store_and_errors_mark_the_health() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (shared, _token) = shared_from(rx);
        tx.send(Ok(watcher::Event::Init)).unwrap();
        tx.send(Ok(watcher::Event::InitDone)).unwrap();
        let gone = shared.subscribe().await;
        drop(gone);
        let mut kept = std::pin::pin!(shared.subscribe().await);
        tx.send(Err(watcher::Error::NoResourceVersion)).unwrap();
        tx.send(Ok(watcher::Event::Apply(cm("a", "1", "x"))))
            .unwrap();
        assert_eq!(names(&next_n(&mut kept, 1).await), ["a@1"]);
        assert_eq!(lock(&shared.subscribers).len(), 1);
        // The event after the error ended the failure streak.
        assert_eq!(lock(&shared.health).stale_for(Instant::now()), None);
        tx.send(Err(watcher::Error::NoResourceVersion)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while lock(&shared.health).stale_for(Instant::now()).is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn changes_forgets_the_fingerprints_of_deleted_objects() {
        // 1,100 objects pass through, none of them in the store any more (all deleted): the
        // map is pruned past 1,024, so the first object, sent again unchanged, passes again.
        let mut objects: Vec<_> = (0..1100)
            .map(|i| Arc::new(cm(&format!("o{i}"), "1", "x")))
            .collect();
        objects.push(Arc::new(cm("o0", "1", "x")));
        objects.push(Arc::new(cm("o1099", "1", "x")));
        let (store, _writer) = reflector::store();
        let passed: Vec<_> = changes(
            futures::stream::iter(objects),
            |_: &ConfigMap| Some(1),
            store,
        )
        .collect()
        .await;
        // o0 again (forgotten), not o1099 (seen after the pruning).
        assert_eq!(passed.len(), 1101);
        assert_eq!(passed[1100].metadata.name.as_deref(), Some("o0"));
    }

    #[tokio::test]
    async fn changes_passes_an_object_only_when_its_fingerprint_moved() {
        let objects = futures::stream::iter(vec![
            Arc::new(cm("a", "1", "x")),
            Arc::new(cm("a", "2", "x")),
            Arc::new(cm("b", "3", "x")),
            Arc::new(cm("a", "4", "y")),
        ]);
        let fingerprint = |c: &ConfigMap| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            c.data.hash(&mut h);
            Some(h.finish())
        };
        let (store, _writer) = reflector::store();
        let passed: Vec<_> = changes(objects, fingerprint, store).collect().await;
        assert_eq!(names(&passed), ["a@1", "a@4", "b@3"]);
    }
}
