//! Reflector stores of the objects the node-group index is built from, kept current by
//! watches (kube-runtime `reflector`), and the [`Snapshots`] implementation over them, with
//! the watches' health ([`WatchHealth`]): how long they have been failing, so that `Refresh`
//! can refuse to serve sizes from stores that stopped following the API server.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::index::Snapshot;
use super::service::Snapshots;
use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::machine::OpenStackWorkerMachine;
use crate::api::machine_template::OpenStackWorkerMachineTemplate;
use crate::capi::{Machine, MachineDeployment, MachineSet};

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

/// The stores.
#[derive(Clone)]
pub struct Stores {
    machine_deployments: Store<MachineDeployment>,
    machine_sets: Store<MachineSet>,
    machines: Store<Machine>,
    infra_machines: Store<OpenStackWorkerMachine>,
    templates: Store<OpenStackWorkerMachineTemplate>,
    infra_clusters: Store<OpenStackWorkerCluster>,
    clusters: Store<crate::capi::Cluster>,
    health: Vec<Arc<Mutex<WatchHealth>>>,
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

fn spawn_reflector<K>(
    api: Api<K>,
    config: &watcher::Config,
    shutdown: CancellationToken,
    health: &mut Vec<Arc<Mutex<WatchHealth>>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config.clone())).default_backoff();
    let slot = Arc::new(Mutex::new(WatchHealth::default()));
    health.push(slot.clone());
    tokio::spawn(drive(stream, slot, shutdown));
    reader
}

fn lock(slot: &Mutex<WatchHealth>) -> std::sync::MutexGuard<'_, WatchHealth> {
    match slot.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn drive<S, T, E>(stream: S, health: Arc<Mutex<WatchHealth>>, shutdown: CancellationToken)
where
    S: Stream<Item = Result<T, E>> + Send,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            item = stream.next() => match item {
                Some(Err(e)) => {
                    lock(&health).on_error(Instant::now());
                    tracing::debug!(error = %e, "Autoscaler watch error");
                }
                Some(Ok(_)) => lock(&health).on_event(),
                None => break,
            },
        }
    }
}

impl Stores {
    /// Starts the watches (in `namespace`, or all namespaces) until `shutdown`, with the default
    /// client timeouts ([`crate::kubeapi::Timeouts`]).
    pub fn start(client: &Client, namespace: Option<&str>, shutdown: &CancellationToken) -> Stores {
        Stores::start_with(
            client,
            namespace,
            shutdown,
            &crate::kubeapi::Timeouts::default().watcher_config(),
        )
    }

    /// [`Stores::start`] with the watcher configuration `config`.
    pub fn start_with(
        client: &Client,
        namespace: Option<&str>,
        shutdown: &CancellationToken,
        config: &watcher::Config,
    ) -> Stores {
        let mut h = Vec::new();
        Stores {
            machine_deployments: spawn_reflector(
                api(client, namespace),
                config,
                shutdown.clone(),
                &mut h,
            ),
            machine_sets: spawn_reflector(api(client, namespace), config, shutdown.clone(), &mut h),
            machines: spawn_reflector(api(client, namespace), config, shutdown.clone(), &mut h),
            infra_machines: spawn_reflector(
                api(client, namespace),
                config,
                shutdown.clone(),
                &mut h,
            ),
            templates: spawn_reflector(api(client, namespace), config, shutdown.clone(), &mut h),
            infra_clusters: spawn_reflector(
                api(client, namespace),
                config,
                shutdown.clone(),
                &mut h,
            ),
            clusters: spawn_reflector(api(client, namespace), config, shutdown.clone(), &mut h),
            health: h,
        }
    }

    /// Waits until every store has its first full list.
    ///
    /// # Errors
    /// When a watch ended before that.
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.machine_deployments.wait_until_ready().await?;
        self.machine_sets.wait_until_ready().await?;
        self.machines.wait_until_ready().await?;
        self.infra_machines.wait_until_ready().await?;
        self.templates.wait_until_ready().await?;
        self.infra_clusters.wait_until_ready().await?;
        self.clusters.wait_until_ready().await?;
        Ok(())
    }
}

impl Snapshots for Stores {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            machine_deployments: self.machine_deployments.state(),
            machine_sets: self.machine_sets.state(),
            machines: self.machines.state(),
            infra_machines: self.infra_machines.state(),
            templates: self.templates.state(),
            infra_clusters: self.infra_clusters.state(),
        }
    }

    fn cluster_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.clusters
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
            // A Cluster being deleted counts as gone: its autoscaler must stop at once.
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .and_then(|c| c.metadata.uid.clone())
    }

    fn stale_for(&self) -> Option<Duration> {
        let now = Instant::now();
        self.health
            .iter()
            .filter_map(|h| lock(h).stale_for(now))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_streak_lasts_while_errors_keep_coming() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = WatchHealth::default();
        assert_eq!(h.stale_for(t0), None);
        // Retries fail every 30 s (the backoff's cap).
        for s in [0, 1, 3, 7, 15, 31, 61, 91] {
            h.on_error(at(s));
        }
        assert_eq!(h.stale_for(at(100)), Some(Duration::from_secs(100)));
        // The errors stop (the watch resumed quietly): the streak ends after the window.
        assert_eq!(h.stale_for(at(91) + STREAK_WINDOW), None);
        // A new error later starts a new streak.
        h.on_error(at(300));
        assert_eq!(h.stale_for(at(310)), Some(Duration::from_secs(10)));
        // Any event ends it at once (e.g. the relist after 410 Gone).
        h.on_event();
        assert_eq!(h.stale_for(at(311)), None);
    }
}
