//! The three size writes of the externalgrpc service (`NodeGroupIncreaseSize`,
//! `NodeGroupDeleteNodes`, `NodeGroupDecreaseTargetSize`), made safe against cancellation and
//! against concurrent writers.
//!
//! - **Cancellation.** cluster-autoscaler gives every RPC a deadline (`grpc_timeout` of its
//!   externalgrpc cloud config, 5 s by default; cluster-autoscaler-1.36.1
//!   `cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`), and tonic drops the handler's
//!   future when the deadline passes or the client goes away. A write run inside the handler
//!   could stop after marking Machines with `cluster.x-k8s.io/delete-machine` and before
//!   lowering replicas, leaving marks that make a later scale-down delete Machines CA did not
//!   choose ([`super::marks`]). [`detached`] runs each write as a Tokio task the handler only
//!   awaits: dropping the handler does not stop it, so `NodeGroupDeleteNodes` either finishes
//!   (marks and replicas) or undoes its marks.
//! - **Concurrent writers.** replicas are written through the `scale` subresource with the
//!   resourceVersion that was read (a merge patch carrying `metadata.resourceVersion` is a
//!   precondition there: k8s.io/apiextensions-apiserver v0.36
//!   `pkg/registry/customresource/etcd.go`, `scaleUpdatedObjectInfo`), so a user's or a
//!   controller's write between capow's read and write is never overwritten: the API server
//!   answers 409 Conflict and capow reads again, re-checks the limits with the fresh size and
//!   writes again (at most [`CONFLICT_ATTEMPTS`] times).
//! - **Serialisation.** writes to one group run one at a time (a lock per group id).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tonic::Status;

use super::index::{GroupKind, NodeGroup};
use super::marks::{self, Mark};
use super::service::Snapshots;
use super::written::WrittenSizes;
use crate::capi::{MachineDeployment, MachineSet};

/// Bound of the mark-and-scale phase of `NodeGroupDeleteNodes` (60 s); past it, the marks are
/// undone. Shorter than [`marks::MARK_GRACE`], so the sweeper never takes a mark that a running
/// write still needs.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// How often a size write is retried after 409 Conflict.
pub const CONFLICT_ATTEMPTS: usize = 5;

/// A size change that was written: `(from, to)` replicas.
pub type Resized = (i32, i32);

/// Runs `write` as its own Tokio task and waits for it: the write completes (or undoes itself)
/// even when the caller's future is dropped.
///
/// # Errors
/// The write's own error; `Internal` when the task panicked.
pub async fn detached<T, F>(write: F) -> Result<T, Status>
where
    F: Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(write)
        .await
        .map_err(|e| Status::internal(format!("the write task failed: {e}")))?
}

enum WriteError {
    Conflict,
    Failed(Status),
}

/// Writes node-group sizes and deletion marks. Cheap to clone; clones share the locks.
#[derive(Clone)]
pub struct Writer {
    client: kube::Client,
    sources: Arc<dyn Snapshots>,
    written: Arc<WrittenSizes>,
    locks: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
}

impl Writer {
    /// A writer using `client`, reading the watched objects from `sources` and remembering
    /// its writes in `written`.
    pub fn new(
        client: kube::Client,
        sources: Arc<dyn Snapshots>,
        written: Arc<WrittenSizes>,
    ) -> Self {
        Self {
            client,
            sources,
            written,
            locks: Arc::default(),
        }
    }

    async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .await
            .entry(id.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// `spec.replicas` and the resourceVersion from the `scale` subresource (not the cache:
    /// writes must not act on stale sizes).
    async fn read(&self, group: &NodeGroup) -> Result<(i32, Option<String>), Status> {
        let scale = match group.kind {
            GroupKind::MachineDeployment => {
                Api::<MachineDeployment>::namespaced(self.client.clone(), &group.namespace)
                    .get_scale(&group.name)
                    .await
            }
            GroupKind::MachineSet => {
                Api::<MachineSet>::namespaced(self.client.clone(), &group.namespace)
                    .get_scale(&group.name)
                    .await
            }
        }
        .map_err(|e| {
            Status::unavailable(format!("failed to read the scale of {}: {e}", group.id))
        })?;
        Ok((
            scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            scale.metadata.resource_version,
        ))
    }

    /// Writes `spec.replicas` with `version` as precondition, and remembers the size until the
    /// stores show it ([`WrittenSizes`], given the stores' state from before the write).
    async fn write(
        &self,
        group: &NodeGroup,
        replicas: i32,
        version: Option<&str>,
    ) -> Result<(), WriteError> {
        let before = self.sources.snapshot();
        let patch = Patch::Merge(json!({
            "metadata": { "resourceVersion": version },
            "spec": { "replicas": replicas },
        }));
        let pp = PatchParams::default();
        let scale = match group.kind {
            GroupKind::MachineDeployment => {
                Api::<MachineDeployment>::namespaced(self.client.clone(), &group.namespace)
                    .patch_scale(&group.name, &pp, &patch)
                    .await
            }
            GroupKind::MachineSet => {
                Api::<MachineSet>::namespaced(self.client.clone(), &group.namespace)
                    .patch_scale(&group.name, &pp, &patch)
                    .await
            }
        };
        match scale {
            Ok(scale) => {
                self.written.record(
                    group,
                    replicas,
                    scale.metadata.resource_version.as_deref(),
                    &before,
                );
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Err(WriteError::Conflict),
            Err(e) => Err(WriteError::Failed(Status::unavailable(format!(
                "failed to scale {} to {replicas}: {e}",
                group.id
            )))),
        }
    }

    /// Reads the size, asks `decide` for the new one, writes it with the version read; reads
    /// and decides again after a conflict. No write when `decide` keeps the size.
    async fn resize_from(
        &self,
        group: &NodeGroup,
        mut read: (i32, Option<String>),
        decide: impl Fn(i32) -> Result<i32, Status>,
    ) -> Result<Resized, Status> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let (current, version) = read;
            let desired = decide(current)?;
            if desired == current {
                return Ok((current, current));
            }
            match self.write(group, desired, version.as_deref()).await {
                Ok(()) => return Ok((current, desired)),
                Err(WriteError::Conflict) => {
                    tracing::debug!(group = %group.id, "Scale write conflicted; reading again");
                    read = self.read(group).await?;
                }
                Err(WriteError::Failed(s)) => return Err(s),
            }
        }
        Err(Status::aborted(format!(
            "{} kept changing while capow wrote its size ({CONFLICT_ATTEMPTS} conflicts)",
            group.id
        )))
    }

    /// Changes the size of `group` to `decide(current replicas)`, under the group's lock.
    ///
    /// # Errors
    /// `decide`'s refusal; `Unavailable` when the API server fails; `Aborted` after
    /// [`CONFLICT_ATTEMPTS`] conflicts.
    pub async fn resize(
        &self,
        group: &NodeGroup,
        decide: impl Fn(i32) -> Result<i32, Status>,
    ) -> Result<Resized, Status> {
        let _held = self.lock(&group.id).await;
        let read = self.read(group).await?;
        self.resize_from(group, read, decide).await
    }

    /// `NodeGroupDeleteNodes`: marks `machines` with `cluster.x-k8s.io/delete-machine` and
    /// lowers replicas by their number, never below the group's min; on any failure (also
    /// after [`WRITE_DEADLINE`]) removes the marks this call set, so nothing is left that a
    /// later scale-down could act on. Run it [`detached`].
    ///
    /// # Errors
    /// `FailedPrecondition` below min; `Unavailable` when the API server fails;
    /// `DeadlineExceeded` past [`WRITE_DEADLINE`]; `Aborted` after [`CONFLICT_ATTEMPTS`].
    pub async fn delete_nodes(
        &self,
        group: &NodeGroup,
        machines: &[String],
    ) -> Result<Resized, Status> {
        let _held = self.lock(&group.id).await;
        let n = i32::try_from(machines.len()).unwrap_or(i32::MAX);
        let decide = |current: i32| {
            if current - n < group.min_size {
                Err(Status::failed_precondition(format!(
                    "deleting {n} node(s) would take {} below its min size {} (replicas {current})",
                    group.id, group.min_size
                )))
            } else {
                Ok(current - n)
            }
        };
        let read = self.read(group).await?;
        decide(read.0)?;
        let stored: HashMap<String, Arc<crate::capi::Machine>> = self
            .sources
            .snapshot()
            .machines
            .into_iter()
            .filter(|m| m.namespace().as_deref() == Some(group.namespace.as_str()))
            .map(|m| (m.name_any(), m))
            .collect();
        let mut set: Vec<(String, String)> = Vec::with_capacity(machines.len());
        let outcome = tokio::time::timeout(WRITE_DEADLINE, async {
            for m in machines {
                match marks::mark(
                    &self.client,
                    &group.namespace,
                    m,
                    stored.get(m).map(|m| m.as_ref()),
                )
                .await
                {
                    Ok(Mark::Set(v)) => set.push((m.clone(), v)),
                    Ok(Mark::AlreadyOurs(_) | Mark::Foreign) => {}
                    Err(e) => {
                        return Err(Status::unavailable(format!(
                            "failed to mark Machine {}/{m} for deletion: {e}",
                            group.namespace
                        )));
                    }
                }
            }
            self.resize_from(group, read, decide).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "deleting nodes of {} did not finish within {} s",
                group.id,
                WRITE_DEADLINE.as_secs()
            )))
        });
        if outcome.is_err() {
            // Unmark, so CAPI does not prefer these Machines on some later scale-down.
            for (m, v) in &set {
                if let Err(e) = marks::unmark(&self.client, &group.namespace, m, v).await {
                    tracing::warn!(machine = %format!("{}/{m}", group.namespace), error = %e,
                        "Failed to undo a delete-machine mark; the sweeper retries");
                }
            }
        }
        outcome
    }
}
