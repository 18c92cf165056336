//! Reflector stores of the objects the node-group index is built from, kept current by
//! watches (kube-runtime `reflector`), and the [`Snapshots`] implementation over them.

use std::fmt::Debug;

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

/// The stores.
#[derive(Clone)]
pub struct Stores {
    machine_deployments: Store<MachineDeployment>,
    machine_sets: Store<MachineSet>,
    machines: Store<Machine>,
    infra_machines: Store<OpenStackWorkerMachine>,
    templates: Store<OpenStackWorkerMachineTemplate>,
    infra_clusters: Store<OpenStackWorkerCluster>,
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

fn spawn_reflector<K>(api: Api<K>, shutdown: CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .applied_objects();
    tokio::spawn(drive(stream, shutdown));
    reader
}

async fn drive<S, T, E>(stream: S, shutdown: CancellationToken)
where
    S: Stream<Item = Result<T, E>> + Send,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            item = stream.next() => match item {
                Some(Err(e)) => tracing::debug!(error = %e, "Autoscaler watch error"),
                Some(Ok(_)) => {}
                None => break,
            },
        }
    }
}

impl Stores {
    /// Starts the watches (in `namespace`, or all namespaces) until `shutdown`.
    pub fn start(client: &Client, namespace: Option<&str>, shutdown: &CancellationToken) -> Stores {
        Stores {
            machine_deployments: spawn_reflector(api(client, namespace), shutdown.clone()),
            machine_sets: spawn_reflector(api(client, namespace), shutdown.clone()),
            machines: spawn_reflector(api(client, namespace), shutdown.clone()),
            infra_machines: spawn_reflector(api(client, namespace), shutdown.clone()),
            templates: spawn_reflector(api(client, namespace), shutdown.clone()),
            infra_clusters: spawn_reflector(api(client, namespace), shutdown.clone()),
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
}
