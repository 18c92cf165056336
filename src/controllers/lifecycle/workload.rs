//! Clients of workload clusters, one per cluster, built from the cluster's `<cluster>-kubeconfig`
//! Secret (key `value`), the name and key CAPI and every control-plane provider use for the
//! admin kubeconfig (cluster-api v1.14.2 `util/secret/consts.go`, `Kubeconfig` purpose, and
//! `util/kubeconfig/kubeconfig.go`, `FromSecret`).
//!
//! Each entry keeps a reflector of the workload cluster's Nodes and one of the image warm-up
//! pods (namespace `capow-image-warmup`, label `app.kubernetes.io/name=capow-image-warmup`,
//! empty while warm-up is off), so a reconcile reads them from memory, and wakes the cluster's
//! reconcile when a Node's readiness or taints change (not on every status heartbeat) or a
//! warm-up pod's progress does.
//! The Secret is read again at most every [`SECRET_RECHECK`] (or at once after a workload
//! call failed); a new `resourceVersion` rebuilds the entry, whose watches end when it is
//! dropped. Memory: one client, one Node store and one warm-up pod store per cluster with a
//! lifecycle feature on that needs the workload cluster.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::api::cluster::OpenStackWorkerCluster;
use crate::kubeapi::Timeouts;

/// How long a Secret read stays trusted before the next reconcile reads it again (60 s).
pub const SECRET_RECHECK: Duration = Duration::from_secs(60);
/// How long a reconcile waits for a new entry's first Node list (30 s).
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(30);

/// Why the workload cluster cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The kubeconfig Secret does not exist (yet).
    #[error(
        "the workload cluster's kubeconfig Secret {0} does not exist yet (the control-plane provider writes it)"
    )]
    NoSecret(String),
    /// The Secret has no usable kubeconfig. Its content never appears in the message.
    #[error("the workload cluster's kubeconfig Secret {secret} is unusable: {why}")]
    BadSecret {
        /// `<namespace>/<name>`.
        secret: String,
        /// What is wrong, without the Secret's content.
        why: String,
    },
    /// Reading the Secret failed.
    #[error("failed to read the workload cluster's kubeconfig Secret {secret}: {message}")]
    SecretRead {
        /// `<namespace>/<name>`.
        secret: String,
        /// The API server's answer.
        message: String,
    },
    /// The workload API server did not answer in time.
    #[error(
        "the workload cluster's API server did not list its Nodes within {} s",
        FIRST_LIST_WAIT.as_secs()
    )]
    NotSynced,
}

/// A workload cluster's client and caches.
pub struct Workload {
    /// Admin client of the workload cluster.
    pub client: Client,
    /// Its Nodes.
    pub nodes: Store<Node>,
    /// Its image warm-up pods (`super::plan::WARMUP_NAMESPACE`).
    pub warmup_pods: Store<Pod>,
    secret_version: String,
    checked: Mutex<Instant>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Workload {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The cache of [`Workload`]s by cluster (`(namespace, cluster name)`).
pub struct Workloads {
    entries: Mutex<HashMap<(String, String), Arc<Workload>>>,
    trigger: mpsc::Sender<ObjectRef<OpenStackWorkerCluster>>,
    timeouts: Timeouts,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The kubeconfig Secret's name of cluster `cluster` (`<cluster>-kubeconfig`).
pub fn secret_name(cluster: &str) -> String {
    format!("{cluster}-kubeconfig")
}

impl Workloads {
    /// An empty cache; entries wake reconciles of their `OpenStackWorkerCluster` through
    /// `trigger`.
    pub fn new(
        trigger: mpsc::Sender<ObjectRef<OpenStackWorkerCluster>>,
        timeouts: Timeouts,
    ) -> Self {
        Workloads {
            entries: Mutex::new(HashMap::new()),
            trigger,
            timeouts,
        }
    }

    /// Clusters with an entry.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// True when no cluster has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entry of a cluster (its watches end).
    pub fn forget(&self, namespace: &str, cluster: &str) {
        lock(&self.entries).remove(&(namespace.to_owned(), cluster.to_owned()));
    }

    /// Keeps only the entries `keep` admits.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        lock(&self.entries).retain(|(ns, c), _| keep(ns, c));
    }

    /// Marks a cluster's Secret for a fresh read on the next [`Workloads::get`] (after a
    /// workload call failed, e.g. with rotated credentials).
    pub fn recheck(&self, namespace: &str, cluster: &str) {
        if let Some(e) = lock(&self.entries).get(&(namespace.to_owned(), cluster.to_owned())) {
            *lock(&e.checked) = Instant::now()
                .checked_sub(SECRET_RECHECK)
                .unwrap_or_else(Instant::now);
        }
    }

    /// The workload cluster of `namespace/cluster`, for the reconcile of `owner`, with its
    /// caches synced.
    ///
    /// # Errors
    /// [`WorkloadError`] when the Secret is missing or unusable, or the workload API server
    /// does not answer.
    pub async fn get(
        &self,
        mgmt: &Client,
        namespace: &str,
        cluster: &str,
        owner: ObjectRef<OpenStackWorkerCluster>,
    ) -> Result<Arc<Workload>, WorkloadError> {
        let key = (namespace.to_owned(), cluster.to_owned());
        let existing = lock(&self.entries).get(&key).cloned();
        if let Some(e) = &existing
            && lock(&e.checked).elapsed() < SECRET_RECHECK
        {
            return Ok(e.clone());
        }
        let name = secret_name(cluster);
        let full = format!("{namespace}/{name}");
        let secret = Api::<Secret>::namespaced(mgmt.clone(), namespace)
            .get_opt(&name)
            .await
            .map_err(|e| WorkloadError::SecretRead {
                secret: full.clone(),
                message: crate::controllers::describe_kube_error(&e),
            })?;
        let Some(secret) = secret else {
            lock(&self.entries).remove(&key);
            return Err(WorkloadError::NoSecret(full));
        };
        let version = secret.resource_version().unwrap_or_default();
        if let Some(e) = existing
            && e.secret_version == version
        {
            *lock(&e.checked) = Instant::now();
            return Ok(e);
        }
        let bad = |why: &str| WorkloadError::BadSecret {
            secret: full.clone(),
            why: why.to_owned(),
        };
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .ok_or_else(|| bad("it has no key value"))?;
        let text = std::str::from_utf8(&bytes.0).map_err(|_| bad("key value is not UTF-8"))?;
        // Parse errors are summarised: their text could quote the Secret's content.
        let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|_| {
            bad("key value is not a kubeconfig (YAML with clusters, users and contexts)")
        })?;
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|_| bad("its kubeconfig has no usable current context, cluster or credentials"))?;
        config.read_timeout = Some(self.timeouts.read);
        config.connect_timeout = Some(self.timeouts.read.min(Duration::from_secs(30)));
        config.write_timeout = Some(self.timeouts.read);
        let client = Client::try_from(config)
            .map_err(|_| bad("no client can be built from its kubeconfig"))?;
        let entry = Arc::new(self.start(client, version, owner));
        lock(&self.entries).insert(key, entry.clone());
        Ok(entry)
    }

    fn start(
        &self,
        client: Client,
        secret_version: String,
        owner: ObjectRef<OpenStackWorkerCluster>,
    ) -> Workload {
        let config = self.timeouts.watcher_config();
        let (nodes, node_writer) = reflector::store();
        let node_stream = watcher(Api::<Node>::all(client.clone()), config.clone())
            .default_backoff()
            .modify(crate::kubeapi::trim)
            .reflect(node_writer)
            .applied_objects();
        let (warmup_pods, pod_writer) = reflector::store();
        let pod_stream = watcher(
            Api::<Pod>::namespaced(client.clone(), super::plan::WARMUP_NAMESPACE),
            config.clone().labels(&format!(
                "app.kubernetes.io/name={}",
                super::plan::WARMUP_NAME
            )),
        )
        .default_backoff()
        .modify(crate::kubeapi::trim)
        .reflect(pod_writer)
        .applied_objects();
        let tasks = vec![
            tokio::spawn(wake_on_change(
                node_stream,
                node_fingerprint,
                self.trigger.clone(),
                owner.clone(),
            )),
            tokio::spawn(wake_on_change(
                pod_stream,
                warmup_pod_fingerprint,
                self.trigger.clone(),
                owner,
            )),
        ];
        Workload {
            client,
            nodes,
            warmup_pods,
            secret_version,
            checked: Mutex::new(Instant::now()),
            tasks,
        }
    }
}

/// What of a Node the lifecycle controller reacts to: its taints and its `Ready` status.
pub fn node_fingerprint(n: &Node) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let spec = n.spec.as_ref();
    for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        (&t.key, &t.value, &t.effect).hash(&mut h);
    }
    node_ready(n).hash(&mut h);
    h.finish()
}

/// What of a warm-up pod the lifecycle controller reacts to: its Node, image list, readiness
/// and the states of its init containers.
pub fn warmup_pod_fingerprint(p: &Pod) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .hash(&mut h);
    p.metadata.annotations.hash(&mut h);
    p.metadata.deletion_timestamp.is_some().hash(&mut h);
    let status = p.status.as_ref();
    for c in status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        (&c.type_, &c.status).hash(&mut h);
    }
    for c in status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        let state = c.state.as_ref();
        (
            &c.name,
            state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_ref()),
            state
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
        )
            .hash(&mut h);
    }
    h.finish()
}

/// True when the Node's `Ready` condition is `True`.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// When the Node's `Ready` condition turned `True` (its `lastTransitionTime`); `None` when it
/// is not `True` or has no time.
pub fn node_ready_since(n: &Node) -> Option<k8s_openapi::jiff::Timestamp> {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Sends `owner` on `trigger` whenever an object's fingerprint differs from the last one
/// seen for its name (at most 10 000 names are remembered); a full trigger channel drops the wake-up (the periodic requeue and the
/// next change catch up). Runs until the stream ends or the task is aborted.
async fn wake_on_change<K, S, E>(
    stream: S,
    fingerprint: fn(&K) -> u64,
    trigger: mpsc::Sender<ObjectRef<OpenStackWorkerCluster>>,
    owner: ObjectRef<OpenStackWorkerCluster>,
) where
    K: ResourceExt,
    S: futures::Stream<Item = Result<K, E>> + Send,
    E: std::fmt::Display,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(obj) => {
                // Names of deleted objects stay; a bound keeps that from growing forever (a
                // cleared map only costs one extra wake-up per object).
                if seen.len() > 10_000 {
                    seen.clear();
                }
                let f = fingerprint(&obj);
                if seen.insert(obj.name_any(), f) != Some(f) {
                    let _ = trigger.try_send(owner.clone());
                }
            }
            Err(e) => tracing::debug!(error = %e, cluster = %owner, "Workload watch error"),
        }
    }
}
