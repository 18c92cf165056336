//! The orphan sweep: OpenStack resources capow tagged for a machine that no longer exists.
//!
//! A machine's own deletion removes everything it made, and a cluster's deletion sweeps what is
//! tagged with the cluster. What neither sees is a resource of a machine that is gone while its
//! cluster lives on: a server whose create was still in flight in Nova when the manager died and
//! whose machine was deleted before the server appeared, a port or volume of a machine removed
//! while capow was not running, a duplicate made before capow detected duplicates. This sweep
//! finds them.
//!
//! Every [`SweepConfig::interval`], for each `OpenStackWorkerCluster` that has an owner
//! `Cluster`, it lists (in the cluster's identity) the servers, ports and trunks tagged
//! `capow-cluster-uid=<Cluster UID>` and the volumes with that metadata, then lists the
//! `OpenStackWorkerMachine`s. A resource is an orphan when its `capow-machine-uid` names no
//! existing machine and it is older than [`SweepConfig::grace`]. The OpenStack listings come
//! first: a machine always exists before its resources, so a resource seen there whose machine
//! is missing from the later machine listing really has lost its machine. Resources of Clusters
//! this manager does not know (another management cluster sharing the project, another
//! namespace of a namespaced manager) are never considered, and nothing without capow's tags is
//! ever touched.
//!
//! A cluster is swept only while its owner `Cluster` exists with the UID the object names and
//! neither is paused nor being moved ([`sweepable`]), checked before the OpenStack listings and
//! again after the machine listing: `clusterctl move` pauses the source's Cluster and then
//! deletes the source's machines (cluster-api v1.14.2 `cmd/clusterctl/client/cluster/mover.go`,
//! `move`), so a source whose machines vanished during a sweep sees the pause on the second
//! check and leaves the moved servers to the target. On the target, moved resources carry the
//! previous Cluster UID until their machine adopts them, and an adopting machine retags each
//! resource with the new machine and Cluster UIDs in one call, so the target's sweep (which
//! lists by the new Cluster UID) never sees one without its machine.
//!
//! In [`SweepMode::Delete`] orphans are deleted (servers first; a port or volume still attached
//! waits for the next round), in [`SweepMode::Report`] only reported. Either way each orphan gets
//! a Warning event on the `OpenStackWorkerCluster` and is counted in
//! `capow_orphans_total{kind, action}`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::machine::OpenStackWorkerMachine;
use crate::api::ownership;
use crate::controllers::{Context, Error, identity};
use crate::openstack::Session;
use crate::openstack::network::{ListFilter, TaggedResource};

/// What the sweep does with an orphan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SweepMode {
    /// No sweep.
    Off,
    /// Report orphans (event, metric, log) and leave them.
    Report,
    /// Delete orphans, with an event and a metric each.
    #[default]
    Delete,
}

/// Settings of the orphan sweep.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// What to do with orphans.
    pub mode: SweepMode,
    /// Time between two sweeps, in seconds.
    pub interval: Duration,
    /// Minimum age of a resource before it counts as an orphan, in seconds (covers a machine
    /// whose resources are being created right now and the settle time of a lost create).
    pub grace: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            mode: SweepMode::Delete,
            interval: Duration::from_secs(300),
            grace: Duration::from_secs(600),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrphanLabels {
    kind: &'static str,
    action: &'static str,
}

/// `capow_orphans_total{kind="server|port|trunk|volume", action="deleted|reported"}`.
#[derive(Clone, Debug, Default)]
pub struct OrphanMetrics {
    orphans: Family<OrphanLabels, Counter>,
}

impl OrphanMetrics {
    /// Registers `orphans` (a counter) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "orphans",
            "OpenStack resources tagged by capow for a machine that no longer exists, by kind and by what the sweep did",
            self.orphans.clone(),
        );
    }

    fn count(&self, kind: &'static str, action: &'static str) {
        self.orphans
            .get_or_create(&OrphanLabels { kind, action })
            .inc();
    }
}

/// One orphan found by a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    /// `server`, `port`, `trunk` or `volume`.
    pub kind: &'static str,
    /// OpenStack UUID.
    pub id: String,
    /// UID of the `OpenStackWorkerMachine` it was made for.
    pub machine_uid: String,
}

/// Something capow tagged, as the sweep sees it.
#[derive(Clone, Debug)]
pub struct Tagged {
    /// `server`, `port`, `trunk` or `volume`.
    pub kind: &'static str,
    /// OpenStack UUID.
    pub id: String,
    /// The machine UID from the `capow-machine-uid=` tag or metadata; `None` when absent.
    pub machine_uid: Option<String>,
    /// Creation time as OpenStack reports it; `None` when unknown (never an orphan then).
    pub created: Option<String>,
}

/// Parses an OpenStack creation time: RFC 3339, or Cinder's form without a zone (UTC).
fn parse_created(s: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    s.parse::<k8s_openapi::jiff::Timestamp>().ok().or_else(|| {
        s.parse::<k8s_openapi::jiff::civil::DateTime>()
            .ok()
            .and_then(|dt| dt.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    })
}

/// The orphans among `found`: resources whose machine UID is not in `machines` and that are
/// older than `grace` at `now`. Resources without a machine UID or a parsable creation time are
/// never orphans.
pub fn orphans(
    found: &[Tagged],
    machines: &HashSet<String>,
    now: k8s_openapi::jiff::Timestamp,
    grace: Duration,
) -> Vec<Orphan> {
    found
        .iter()
        .filter_map(|t| {
            let uid = t.machine_uid.as_ref()?;
            if machines.contains(uid) {
                return None;
            }
            let created = parse_created(t.created.as_deref()?)?;
            let age = std::time::Duration::try_from(now.duration_since(created)).ok()?;
            (age >= grace).then(|| Orphan {
                kind: t.kind,
                id: t.id.clone(),
                machine_uid: uid.clone(),
            })
        })
        .collect()
}

fn machine_uid_of_tags(tags: &[String]) -> Option<String> {
    ownership::machine_uid_of_tags(tags).map(str::to_owned)
}

/// Whether the resources of `infra` may be swept now: its owner Cluster (`cluster`, as read
/// from the API server; `None` when it does not exist) is the one with `owner_uid`, neither it
/// nor `infra` is paused, and `infra` is not being deleted by `clusterctl move`. A paused
/// Cluster is CAPI's "hands off" (clusterctl move pauses before it deletes anything), and a
/// Cluster that is gone or re-created is not the owner the tags name.
pub fn sweepable(
    infra: &OpenStackWorkerCluster,
    owner_uid: &str,
    cluster: Option<&crate::capi::Cluster>,
) -> bool {
    let annotations = infra.annotations();
    cluster.is_some_and(|c| c.uid().as_deref() == Some(owner_uid) && !c.is_paused())
        && !crate::capi::has_paused_annotation(annotations)
        && !annotations.contains_key(crate::capi::DELETE_FOR_MOVE_ANNOTATION)
}

/// The owner Cluster of `infra` as the API server has it now, and the owner's UID the object
/// names; `None` for an object without an owner Cluster.
async fn owner_now(
    ctx: &Context,
    infra: &OpenStackWorkerCluster,
) -> Result<Option<(Option<crate::capi::Cluster>, String)>, Error> {
    let Some(owner) = infra
        .owner_references()
        .iter()
        .find(|o| o.kind == "Cluster" && o.api_version.starts_with("cluster.x-k8s.io/"))
    else {
        return Ok(None);
    };
    let clusters: Api<crate::capi::Cluster> =
        Api::namespaced(ctx.client.clone(), &infra.namespace().unwrap_or_default());
    let cluster = clusters
        .get_opt(&owner.name)
        .await
        .map_err(Error::kube("get the Cluster"))?;
    Ok(Some((cluster, owner.uid.clone())))
}

/// Everything tagged for the cluster with `cluster_uid` in the cloud of `session`.
async fn tagged(session: &Session, cluster_uid: &str) -> Result<Vec<Tagged>, Error> {
    let cluster_tag = format!("{}{cluster_uid}", ownership::CLUSTER_UID_TAG_PREFIX);
    let filter = ListFilter {
        tags: vec![ownership::MANAGED_TAG.to_owned(), cluster_tag.clone()],
        ..ListFilter::default()
    };
    let mut out = Vec::new();
    for s in session
        .compute()
        .list_servers_by_tags(&[ownership::MANAGED_TAG, &cluster_tag])
        .await
        .map_err(Error::openstack("list the cluster's servers"))?
        .into_iter()
        .filter(|s| !s.is_gone())
    {
        out.push(Tagged {
            kind: "server",
            machine_uid: machine_uid_of_tags(&s.tags),
            created: s.created.clone(),
            id: s.id,
        });
    }
    let net = session.network();
    for t in net
        .list_trunks(&filter)
        .await
        .map_err(Error::openstack("list the cluster's trunks"))?
    {
        out.push(Tagged {
            kind: "trunk",
            machine_uid: machine_uid_of_tags(&t.tags),
            created: t.created_at.clone(),
            id: t.id,
        });
    }
    for p in net
        .list_ports(&filter)
        .await
        .map_err(Error::openstack("list the cluster's ports"))?
    {
        out.push(Tagged {
            kind: "port",
            machine_uid: machine_uid_of_tags(&p.tags),
            created: p.created_at.clone(),
            id: p.id,
        });
    }
    for v in session
        .volume()
        .list_volumes_by_metadata(ownership::METADATA_CLUSTER_UID, cluster_uid)
        .await
        .map_err(Error::openstack("list the cluster's volumes"))?
        .into_iter()
        .filter(|v| v.status != "deleting")
    {
        out.push(Tagged {
            kind: "volume",
            machine_uid: v.metadata.get(ownership::METADATA_MACHINE_UID).cloned(),
            created: v.created_at.clone(),
            id: v.id,
        });
    }
    Ok(out)
}

/// Deletes one orphan. A port or volume still attached to a server (whose deletion this sweep
/// just started) fails with 409 and is left for the next round.
async fn delete(session: &Session, o: &Orphan) -> Result<(), crate::openstack::Error> {
    match o.kind {
        "server" => session.compute().delete_server(&o.id).await,
        "trunk" => session.network().delete(TaggedResource::Trunk, &o.id).await,
        "port" => session.network().delete(TaggedResource::Port, &o.id).await,
        _ => session.volume().delete_volume(&o.id).await,
    }
}

/// One sweep over every cluster in scope. Returns the orphans found.
///
/// # Errors
/// [`Error::Kube`] when listing clusters or machines fails. OpenStack errors of one cluster are
/// logged and that cluster is skipped this round.
pub async fn sweep_once(
    ctx: &Context,
    namespace: Option<&str>,
    config: &SweepConfig,
    metrics: &OrphanMetrics,
) -> Result<Vec<Orphan>, Error> {
    let (clusters, machines): (Api<OpenStackWorkerCluster>, Api<OpenStackWorkerMachine>) =
        match namespace {
            Some(ns) => (
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
            ),
            None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
        };
    let clusters = clusters
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list OpenStackWorkerClusters"))?;
    let mut found = Vec::new();
    for c in &clusters.items {
        let Some((cluster, owner_uid)) = owner_now(ctx, c).await? else {
            continue;
        };
        if !sweepable(c, &owner_uid, cluster.as_ref()) {
            tracing::debug!(OpenStackWorkerCluster = %format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()), "Orphan sweep skips a paused, moving or ownerless cluster");
            continue;
        }
        let ns = c.namespace().unwrap_or_default();
        let listed = async {
            let session = identity::session(ctx, &ns, Some(&c.spec.identity_ref)).await?;
            tagged(&session, &owner_uid).await.map(|t| (session, t))
        }
        .await;
        match listed {
            Ok((session, t)) => found.push((c, session, t)),
            Err(e) => {
                tracing::warn!(OpenStackWorkerCluster = %format!("{ns}/{}", c.name_any()), error = %e, "Orphan sweep skipped a cluster");
            }
        }
    }
    // After the OpenStack listings, so that no resource seen above belongs to a machine created
    // after this listing (see the module docs).
    let machine_uids: HashSet<String> = machines
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list OpenStackWorkerMachines"))?
        .items
        .iter()
        .filter_map(|m| m.uid())
        .collect();
    // Again after the machine listing: a Cluster paused (clusterctl move) or re-created since
    // the first check may have lost its machines to another management cluster meanwhile.
    let mut still = Vec::with_capacity(found.len());
    for (c, session, t) in found {
        match owner_now(ctx, c).await? {
            Some((cluster, owner_uid)) if sweepable(c, &owner_uid, cluster.as_ref()) => {
                still.push((c, session, t));
            }
            _ => {
                tracing::info!(OpenStackWorkerCluster = %format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()), "Orphan sweep drops a cluster paused or moved during the sweep");
            }
        }
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut all = Vec::new();
    for (c, session, t) in still {
        for o in orphans(&t, &machine_uids, now, config.grace) {
            let (action, verb) = match config.mode {
                SweepMode::Delete => match delete(&session, &o).await {
                    Ok(()) => ("deleted", "Deleted"),
                    Err(e) => {
                        tracing::info!(kind = o.kind, id = %o.id, error = %e, "Orphan not deleted yet");
                        continue;
                    }
                },
                _ => ("reported", "Found"),
            };
            metrics.count(o.kind, action);
            tracing::warn!(kind = o.kind, id = %o.id, machine_uid = %o.machine_uid, action, "Orphan");
            let kind = match o.kind {
                "server" => "Server",
                "port" => "Port",
                "trunk" => "Trunk",
                _ => "Volume",
            };
            ctx.event_about(
                &c.object_ref(&()),
                crate::controllers::openstack_ref(kind, &o.id),
                EventType::Warning,
                if action == "deleted" {
                    "OrphanDeleted"
                } else {
                    "OrphanFound"
                },
                "OrphanSweep",
                format!(
                    "{verb} {} {} tagged for OpenStackWorkerMachine UID {}, which no longer exists",
                    o.kind, o.id, o.machine_uid
                ),
            )
            .await;
            all.push(o);
        }
    }
    Ok(all)
}

/// Runs [`sweep_once`] every `config.interval` until `shutdown` resolves (nothing in
/// [`SweepMode::Off`]).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    config: SweepConfig,
    metrics: OrphanMetrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if config.mode == SweepMode::Off {
        return;
    }
    let sweeps = async {
        let mut interval = tokio::time::interval(config.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(e) = sweep_once(&ctx, namespace.as_deref(), &config, &metrics).await {
                tracing::warn!(error = %e, "Orphan sweep failed");
            }
        }
    };
    tokio::select! {
        () = sweeps => {}
        () = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: &'static str, id: &str, uid: Option<&str>, created: Option<&str>) -> Tagged {
        Tagged {
            kind,
            id: id.into(),
            machine_uid: uid.map(Into::into),
            created: created.map(Into::into),
        }
    }

    #[test]
    fn paused_moving_and_re_created_clusters_are_not_swept() {
        let cluster = |uid: &str, paused: bool| -> crate::capi::Cluster {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
                "metadata": {"name": "c1", "namespace": "ns", "uid": uid},
                "spec": {"paused": paused}
            }))
            .unwrap()
        };
        let infra = |annotations: serde_json::Value| -> OpenStackWorkerCluster {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
                "kind": "OpenStackWorkerCluster",
                "metadata": {"name": "c1", "namespace": "ns", "annotations": annotations},
                "spec": {"identityRef": {"name": "cloud", "cloudName": "c"}}
            }))
            .unwrap()
        };
        let plain = infra(serde_json::json!({}));
        let live = cluster("u1", false);
        assert!(sweepable(&plain, "u1", Some(&live)));
        assert!(!sweepable(&plain, "u1", None), "the Cluster is gone");
        assert!(
            !sweepable(&plain, "u1", Some(&cluster("u2", false))),
            "the Cluster was re-created"
        );
        assert!(
            !sweepable(&plain, "u1", Some(&cluster("u1", true))),
            "the Cluster is paused (clusterctl move)"
        );
        for annotation in [
            crate::capi::PAUSED_ANNOTATION,
            crate::capi::DELETE_FOR_MOVE_ANNOTATION,
        ] {
            let annotated = infra(serde_json::json!({ annotation: "" }));
            assert!(!sweepable(&annotated, "u1", Some(&live)), "{annotation}");
        }
    }

    #[test]
    fn only_old_resources_of_missing_machines_are_orphans() {
        let now: k8s_openapi::jiff::Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let machines: HashSet<String> = ["alive".to_owned()].into();
        let found = vec![
            t("server", "s1", Some("gone"), Some("2026-11-30T11:00:00Z")),
            t("server", "s2", Some("alive"), Some("2026-11-30T11:00:00Z")),
            t("port", "p1", Some("gone"), Some("2026-11-30T11:59:30Z")),
            // Cinder's creation time has no zone.
            t(
                "volume",
                "v1",
                Some("gone"),
                Some("2026-11-30T11:00:00.000000"),
            ),
            t("trunk", "t1", None, Some("2026-11-30T11:00:00Z")),
            t("port", "p2", Some("gone"), None),
        ];
        let o = orphans(&found, &machines, now, Duration::from_secs(600));
        assert_eq!(
            o.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["s1", "v1"],
            "s2's machine exists, p1 is younger than the grace period, t1 names no machine, p2 has no age"
        );
        assert_eq!(o[0].machine_uid, "gone");
    }
}
