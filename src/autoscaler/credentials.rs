//! Publishes each workload cluster's cluster-autoscaler credentials: for every CAPI Cluster
//! whose infrastructure is an `OpenStackWorkerCluster`, a Secret beside it with a client
//! certificate naming the cluster, capow's CA and a ready `--cloud-config` file
//! ([`crate::tls::cloud_config`]). Re-checked hourly so certificates renew before expiry; the
//! Secret is owned by the Cluster and goes with it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::{Client, ResourceExt};

use crate::capi::Cluster;
use crate::tls::{Ca, PublishSettings};

struct Ctx {
    client: Client,
    ca: Arc<Ca>,
    settings: PublishSettings,
}

/// How often a published Secret is checked again.
pub const RECHECK: Duration = Duration::from_secs(3600);

async fn reconcile(cluster: Arc<Cluster>, ctx: Arc<Ctx>) -> Result<Action, crate::tls::Error> {
    let is_ours = cluster
        .spec
        .infrastructure_ref
        .as_ref()
        .is_some_and(|r| r.kind == "OpenStackWorkerCluster");
    if !is_ours || cluster.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let published = crate::tls::publish(
        &ctx.client,
        &ctx.ca,
        &cluster,
        &ctx.settings,
        SystemTime::now(),
    )
    .await?;
    if published.reissued {
        tracing::info!(
            Cluster = %format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any()),
            secret = %published.secret_name,
            serial = %published.serial,
            "Published cluster-autoscaler credentials"
        );
    }
    Ok(Action::requeue(RECHECK))
}

fn error_policy(_c: Arc<Cluster>, error: &crate::tls::Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %error, "Publishing cluster-autoscaler credentials failed");
    Action::requeue(Duration::from_secs(30))
}

/// Runs the publisher until `shutdown` resolves, on the Clusters of the manager's shared
/// `caches`.
pub async fn run(
    client: Client,
    caches: &crate::caches::Caches,
    ca: Arc<Ca>,
    settings: PublishSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters = caches.clusters.subscribe().await;
    Controller::for_shared_stream(clusters, caches.clusters.store())
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            error_policy,
            Arc::new(Ctx {
                client,
                ca,
                settings,
            }),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "Credentials controller event");
            }
        })
        .await;
}
