//! Reflector stores of the objects the node-group index is built from, kept current by the
//! manager's shared watch caches ([`crate::caches`]), and the [`Snapshots`] implementation over them, with
//! the watches' health ([`WatchHealth`]): how long they have been failing, so that `Refresh`
//! can refuse to serve sizes from stores that stopped following the API server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::index::Snapshot;
use super::service::Snapshots;
use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::machine::OpenStackWorkerMachine;
use crate::api::machine_template::OpenStackWorkerMachineTemplate;
use crate::caches::Caches;
use crate::capi::{Machine, MachineDeployment, MachineSet};

pub use crate::caches::{STREAK_WINDOW, WatchHealth};

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

fn lock(slot: &Mutex<WatchHealth>) -> std::sync::MutexGuard<'_, WatchHealth> {
    match slot.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
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
        Stores::from_caches(&Caches::start(client, namespace, config, shutdown))
    }

    /// The stores of the manager's shared `caches` (no watch of its own).
    pub fn from_caches(caches: &Caches) -> Stores {
        Stores {
            machine_deployments: caches.machine_deployments.store(),
            machine_sets: caches.machine_sets.store(),
            machines: caches.machines.store(),
            infra_machines: caches.infra_machines.store(),
            templates: caches.templates.store(),
            infra_clusters: caches.infra_clusters.store(),
            clusters: caches.clusters.store(),
            health: vec![
                caches.machine_deployments.health(),
                caches.machine_sets.health(),
                caches.machines.health(),
                caches.infra_machines.health(),
                caches.templates.health(),
                caches.infra_clusters.health(),
                caches.clusters.health(),
            ],
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
