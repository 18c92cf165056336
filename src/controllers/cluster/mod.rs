//! The `OpenStackWorkerCluster` controller: the workers' network, subnets, router and managed
//! security group, and the failure domains (the CAPI v1beta2 InfraCluster contract, cluster-api
//! v1.14.2 `docs/book/src/developer/providers/contracts/infra-cluster.md`). No load balancer and
//! no floating IP: the control plane is hosted and its provider writes
//! `spec.controlPlaneEndpoint` (see [`crate::api::cluster`]).
//!
//! Everything capow creates carries the tags `capow` and `capow-cluster-uid=<Cluster UID>`, is
//! found again by them (never duplicated after a crash), and is deleted in reverse order on
//! deletion, after capow has swept any server, port or volume still tagged with the cluster.
//! The UID those tags carry is recorded on the object ([`plan::CLUSTER_UID_ANNOTATION`]), so a
//! Cluster re-created under a new UID (`clusterctl move`, a restore) adopts what it had
//! instead of creating it again (docs/adr/0004-adoption-after-move.md). A paused Cluster's
//! object is neither reconciled nor deleted, and the copy `clusterctl move` deletes from the
//! source releases its finalizer without touching OpenStack.

pub mod autoscaler;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerRunConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use crate::api::cluster::{
    ClusterInitialization, NetworkStatus, NetworkStatusWithSubnets, OpenStackWorkerCluster,
    OpenStackWorkerClusterStatus, RouterStatus, SecurityGroupStatus, SubnetStatus,
};
use crate::api::common::SubnetParam;
use crate::api::conditions::{self, reasons};
use crate::capi::{self, Cluster};
use crate::controllers::{Context, Error, identity, invalid, resolve, status};
use crate::openstack::Session;
use crate::openstack::network::{
    AllocationPool, CreateNetwork, CreateRouter, CreateSecurityGroup, CreateSubnet,
    ExternalGatewayInfo, ListFilter, PortFixedIp, TaggedResource,
};

/// Finalizer capow puts on every `OpenStackWorkerCluster`.
pub const FINALIZER: &str = "openstackworkercluster.infrastructure.cluster.x-k8s.io";
const CONTROLLER: &str = "openstackworkercluster";

struct Outcome {
    ready: bool,
    reason: &'static str,
    message: String,
    requeue: Option<Duration>,
}

fn owner_cluster(c: &OpenStackWorkerCluster) -> Option<(String, String)> {
    c.owner_references()
        .iter()
        .find(|o| o.kind == "Cluster" && o.api_version.split('/').next() == Some(capi::GROUP))
        .map(|o| (o.name.clone(), o.uid.clone()))
}

async fn reconcile(c: Arc<OpenStackWorkerCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = c.namespace().unwrap_or_default();
    let api: Api<OpenStackWorkerCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let span = tracing::info_span!("reconcile", OpenStackWorkerCluster = %format!("{ns}/{}", c.name_any()));
    let bound = ctx.config.reconcile_timeout;
    let run = finalizer(&api, FINALIZER, c, |event| async {
        match event {
            FinalizerEvent::Apply(c) => apply(c, &ctx).await,
            FinalizerEvent::Cleanup(c) => match cleanup(c.clone(), &ctx).await {
                Err(e) if !matches!(e, Error::DeletionInProgress) => {
                    Err(report_delete(&ctx, &c, e).await)
                }
                other => other,
            },
        }
    })
    .instrument(span);
    match tokio::time::timeout(bound, run).await {
        Ok(result) => result.map_err(|e| Error::Finalizer(Box::new(e))),
        Err(_) => Err(Error::TimedOut(bound)),
    }
}

fn error_policy(c: Arc<OpenStackWorkerCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    if !matches!(error.unwrap_finalizer(), Error::DeletionInProgress) {
        ctx.metrics.failure(CONTROLLER, error.category());
        tracing::warn!(OpenStackWorkerCluster = %format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()), error = %error, "Reconcile failed");
    }
    Action::requeue(error.retry_after(&ctx.config))
}

async fn apply(c: Arc<OpenStackWorkerCluster>, ctx: &Context) -> Result<Action, Error> {
    let before = c.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let result = run(&c, ctx, &mut status).await;
    let autoscaler_requeue = autoscaler::reconcile(&c, ctx, &mut status).await;
    let generation = c.meta().generation;
    let (ready, reason, message) = match &result {
        Ok(o) => (o.ready, o.reason, o.message.clone()),
        Err(e) => (false, e.reason(), e.to_string()),
    };
    let paused = reason == reasons::PAUSED;
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::PAUSED,
            paused,
            if paused {
                reasons::PAUSED
            } else {
                reasons::NOT_PAUSED
            },
            "",
            generation,
        ),
    );
    if !paused {
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(
                conditions::READY,
                ready,
                reason,
                message.clone(),
                generation,
            ),
        );
    }
    status.observed_generation = generation;
    status::write(ctx, &*c, &before, &status).await?;
    let previous = before
        .conditions
        .iter()
        .find(|x| x.type_ == conditions::READY)
        .map(|x| x.reason.clone());
    if previous.as_deref() != Some(reason) || result.is_err() {
        let type_ = if result.is_err() {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = if message.is_empty() {
            reason.to_owned()
        } else {
            message
        };
        ctx.event(&c.object_ref(&()), type_, reason, "Reconcile", note)
            .await;
    }
    result.map(|o| {
        let requeue = match (o.requeue, autoscaler_requeue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        requeue.map_or_else(Action::await_change, Action::requeue)
    })
}

async fn run(
    c: &OpenStackWorkerCluster,
    ctx: &Context,
    status: &mut OpenStackWorkerClusterStatus,
) -> Result<Outcome, Error> {
    let waiting = |reason, message: String, requeue| Outcome {
        ready: false,
        reason,
        message,
        requeue,
    };
    if capi::has_paused_annotation(c.annotations()) {
        return Ok(waiting(reasons::PAUSED, "paused".into(), None));
    }
    let ns = c.namespace().unwrap_or_default();
    let Some((cluster_name, cluster_uid)) = owner_cluster(c) else {
        return Ok(waiting(
            reasons::WAITING_FOR_OWNER,
            "waiting for a Cluster to own this object".into(),
            None,
        ));
    };
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(cluster) = clusters
        .get_opt(&cluster_name)
        .await
        .map_err(Error::kube("get the Cluster"))?
        && cluster.is_paused()
    {
        return Ok(waiting(
            reasons::PAUSED,
            "the Cluster is paused".into(),
            None,
        ));
    }
    let session = identity::session(ctx, &ns, Some(&c.spec.identity_ref)).await?;
    session
        .authenticate()
        .await
        .map_err(Error::openstack("authenticate with Keystone"))?;

    let owner = Owner::new(&session, &ns, &cluster_name, &cluster_uid, &c.spec.tags).await?;
    let annotation = c.annotations().get(plan::CLUSTER_UID_ANNOTATION);
    match plan::recorded(annotation.map(String::as_str), &cluster_uid) {
        plan::Recorded::Current => {}
        plan::Recorded::Missing => record_uid(ctx, c, &cluster_uid).await?,
        plan::Recorded::Previous(previous) => {
            adopt(ctx, &session, c, &owner, (&ns, &cluster_name), previous).await?;
            record_uid(ctx, c, &cluster_uid).await?;
        }
    }
    let base = plan::base_name(&ns, &cluster_name);
    let network = ensure_network(ctx, &session, c, &owner, &base).await?;
    status.network = Some(network.clone());
    let (router, external) = ensure_router(ctx, &session, c, &network, &owner, &base).await?;
    status.router = router;
    status.external_network = external;
    status.worker_security_group = match &c.spec.managed_security_groups {
        Some(spec) => Some(
            ensure_security_group(ctx, &session, spec, &owner, &format!("{base}-worker")).await?,
        ),
        None => None,
    };
    let zones = session
        .compute()
        .list_availability_zones()
        .await
        .map_err(Error::openstack("list availability zones"))?;
    status.failure_domains = plan::failure_domains(&zones);
    status.initialization = Some(ClusterInitialization {
        provisioned: Some(true),
    });
    Ok(Outcome {
        ready: true,
        reason: reasons::READY,
        message: format!(
            "network {} with {} subnet(s){}",
            network.id,
            network.subnets.len(),
            if c.spec
                .control_plane_endpoint
                .as_ref()
                .is_some_and(|e| !e.host.is_empty())
            {
                ""
            } else {
                "; waiting for the control-plane provider to set spec.controlPlaneEndpoint"
            }
        ),
        requeue: Some(ctx.config.resync),
    })
}

/// How capow marks what it creates for one cluster, so that it finds it again after a crash.
///
/// Neutron accepts tags in a create request only with the `tag-creation` extension (2023.1 and
/// later, https://docs.openstack.org/api-ref/network/v2/#tag-extension-tags); older clouds need
/// a second call to tag the resource, and a crash between the two would leave an untagged
/// resource that no tag lookup finds. The description, which every Neutron create accepts and
/// every listing can filter on, therefore carries the cluster's UID as well
/// ([`plan::ownership_description`]), and lookups try the tags first, then the description.
struct Owner {
    /// capow's tags, the cluster UID tag, then the spec's extra tags.
    tags: Vec<String>,
    /// The description every created resource gets.
    description: String,
    /// Whether the cloud takes `tags` in create requests.
    tag_on_create: bool,
}

impl Owner {
    async fn new(
        session: &Session,
        ns: &str,
        cluster_name: &str,
        cluster_uid: &str,
        extra_tags: &[String],
    ) -> Result<Owner, Error> {
        let tag_on_create = session
            .with_lookup_cache()
            .network()
            .has_extension("tag-creation")
            .await
            .map_err(Error::openstack("look up the tag-creation extension"))?;
        Ok(Owner {
            tags: plan::tags(cluster_uid, extra_tags),
            description: plan::ownership_description(ns, cluster_name, cluster_uid),
            tag_on_create,
        })
    }

    /// The tags to send in a create request, when the cloud takes them there.
    fn create_tags(&self) -> Option<&[String]> {
        self.tag_on_create.then_some(self.tags.as_slice())
    }

    /// The filter that finds resources created before a crash left them untagged.
    fn description_filter(&self) -> ListFilter {
        ListFilter::attribute("description", self.description.clone())
    }

    /// Whether `tags` already hold every tag of this owner (then no tag call is needed).
    fn tagged(&self, tags: &[String]) -> bool {
        self.tags.iter().all(|t| tags.contains(t))
    }
}

/// Records `uid` in [`plan::CLUSTER_UID_ANNOTATION`] (server-side apply, capow's field
/// manager), before anything is created under it or once what carried an earlier UID is
/// adopted.
///
/// # Errors
/// [`Error::Kube`] when the API server refuses the patch.
async fn record_uid(ctx: &Context, c: &OpenStackWorkerCluster, uid: &str) -> Result<(), Error> {
    let api: Api<OpenStackWorkerCluster> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "OpenStackWorkerCluster",
        "metadata": {
            "name": c.name_any(),
            "annotations": { plan::CLUSTER_UID_ANNOTATION: uid },
        },
    });
    api.patch(
        &c.name_any(),
        &kube::api::PatchParams::apply(crate::controllers::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("record the Cluster UID annotation"))?;
    Ok(())
}

/// The `(id, tags, description)` of the `kind` resources `filter` selects.
async fn described(
    session: &Session,
    kind: TaggedResource,
    filter: &ListFilter,
) -> Result<Vec<(String, Vec<String>, String)>, Error> {
    let net = session.network();
    let failed = Error::openstack("look up the cluster's resources");
    Ok(match kind {
        TaggedResource::Network => net
            .list_networks(filter)
            .await
            .map_err(failed)?
            .into_iter()
            .map(|x| (x.id, x.tags, x.description))
            .collect(),
        TaggedResource::Subnet => net
            .list_subnets(filter)
            .await
            .map_err(failed)?
            .into_iter()
            .map(|x| (x.id, x.tags, x.description))
            .collect(),
        TaggedResource::Router => net
            .list_routers(filter)
            .await
            .map_err(failed)?
            .into_iter()
            .map(|x| (x.id, x.tags, x.description))
            .collect(),
        TaggedResource::SecurityGroup => net
            .list_security_groups(filter)
            .await
            .map_err(failed)?
            .into_iter()
            .map(|x| (x.id, x.tags, x.description))
            .collect(),
        TaggedResource::Port | TaggedResource::Trunk => Vec::new(),
    })
}

/// Moves the network, subnets, router and security group capow created for this cluster under
/// the Cluster UID `previous` to the owner Cluster's current UID (`owner`): `clusterctl move`
/// and restores re-create the Cluster with a new UID (cluster-api v1.14.2
/// `cmd/clusterctl/client/cluster/mover.go`, `createTargetObject`), and capow finds and deletes
/// these resources by the UID tag and the ownership description. A resource is adopted when it
/// carries the previous UID tag or description *and* its description names this cluster
/// (`<namespace>/<name>`) with the previous UID, so an annotation copied to another cluster
/// adopts nothing. Each gets the new ownership tags (other tags kept) in one replace-all call,
/// then the new description; the caller records the new UID only after every resource moved,
/// so a crash makes the next reconcile adopt again. The machines' servers, ports, trunks and
/// volumes are not touched here: each machine adopts its own, in one call per resource that
/// names the new machine and cluster UIDs together (see `adopt` in
/// `src/controllers/machine/execute.rs`), so the orphan sweep never sees a resource of the new
/// cluster whose machine UID names no machine.
///
/// # Errors
/// [`Error::OpenStack`] when a listing or an update fails.
async fn adopt(
    ctx: &Context,
    session: &Session,
    c: &OpenStackWorkerCluster,
    owner: &Owner,
    (ns, cluster_name): (&str, &str),
    previous: &str,
) -> Result<(), Error> {
    let net = session.network();
    let old_description = plan::ownership_description(ns, cluster_name, previous);
    let old_tags = plan::tags(previous, &[]);
    let mut adopted: Vec<String> = Vec::new();
    for (kind, what) in [
        (TaggedResource::Network, "network"),
        (TaggedResource::Subnet, "subnet"),
        (TaggedResource::Router, "router"),
        (TaggedResource::SecurityGroup, "security group"),
    ] {
        let mut found = described(session, kind, &tag_filter(&old_tags)).await?;
        for x in described(
            session,
            kind,
            &ListFilter::attribute("description", old_description.clone()),
        )
        .await?
        {
            if !found.iter().any(|f| f.0 == x.0) {
                found.push(x);
            }
        }
        for (id, tags, description) in found {
            if description != old_description && description != owner.description {
                tracing::warn!(%id, what, %description, "Not adopting a resource tagged with the previous Cluster UID: its description names another cluster");
                continue;
            }
            net.set_tags(
                kind,
                &id,
                &crate::api::ownership::retagged(&tags, &owner.tags),
            )
            .await
            .map_err(Error::openstack("retag a cluster resource"))?;
            net.set_description(kind, &id, &owner.description)
                .await
                .map_err(Error::openstack("update a cluster resource's description"))?;
            adopted.push(format!("{what} {id}"));
        }
    }
    if adopted.is_empty() {
        return Ok(());
    }
    tracing::info!(previous, adopted = %adopted.join(", "), "Adopted the cluster's OpenStack resources");
    ctx.event(
        &c.object_ref(&()),
        EventType::Normal,
        "Adopted",
        "Adopt",
        format!(
            "Adopted {} that capow created for Cluster {ns}/{cluster_name} under UID {previous} \
             (the Cluster was re-created with a new UID, as clusterctl move and restores do); \
             they now carry {}",
            adopted.join(", "),
            owner.tags.get(1).map(String::as_str).unwrap_or_default()
        ),
    )
    .await;
    Ok(())
}

/// Keeps the oldest of several resources capow created for the same purpose (by Neutron's
/// `created_at`, then ID) and returns it with the others, which a create repeated after a lost
/// answer left behind.
fn oldest<T>(
    mut found: Vec<T>,
    key: impl Fn(&T) -> (Option<String>, String),
) -> (Option<T>, Vec<T>) {
    found.sort_by_key(|t| key(t));
    if found.is_empty() {
        return (None, found);
    }
    let first = found.remove(0);
    (Some(first), found)
}

/// Deletes resources capow created twice for the cluster, with a Warning event each.
async fn delete_duplicates(
    ctx: &Context,
    session: &Session,
    kind: TaggedResource,
    what: &str,
    kept: &str,
    ids: Vec<String>,
) -> Result<(), Error> {
    for id in ids {
        session
            .network()
            .delete(kind, &id)
            .await
            .map_err(Error::openstack("delete a duplicate network resource"))?;
        tracing::warn!(%id, kept, what, "Deleted a duplicate");
        ctx.metrics.duplicate_deleted(CONTROLLER);
    }
    Ok(())
}

fn tag_filter(tags: &[String]) -> ListFilter {
    // The UID tag alone identifies the cluster; the extra tags are not part of the lookup.
    ListFilter {
        tags: tags.iter().take(2).cloned().collect(),
        ..ListFilter::default()
    }
}

async fn resolve_subnet_param(
    session: &Session,
    p: &SubnetParam,
    network_id: &str,
    field: &str,
) -> Result<SubnetStatus, Error> {
    let subnet = resolve::resolve_subnet(session, p, network_id, field).await?;
    Ok(SubnetStatus {
        id: subnet.id,
        name: subnet.name,
        cidr: subnet.cidr,
    })
}

async fn ensure_network(
    ctx: &Context,
    session: &Session,
    c: &OpenStackWorkerCluster,
    owner: &Owner,
    base: &str,
) -> Result<NetworkStatusWithSubnets, Error> {
    let net = session.network();
    let spec = &c.spec;
    if let Some(p) = &spec.network {
        let found = resolve::resolve_network(session, p, "spec.network").await?;
        let (id, name) = (found.id, found.name);
        let mut subnets = Vec::new();
        for (i, s) in spec.subnets.iter().enumerate() {
            subnets
                .push(resolve_subnet_param(session, s, &id, &format!("spec.subnets[{i}]")).await?);
        }
        if subnets.is_empty() {
            subnets = net
                .list_subnets(&ListFilter::attribute("network_id", id.clone()))
                .await
                .map_err(Error::openstack("list subnets"))?
                .into_iter()
                .map(|s| SubnetStatus {
                    id: s.id,
                    name: s.name,
                    cidr: s.cidr,
                })
                .collect();
        }
        if subnets.is_empty() {
            return Err(invalid(
                "spec.network",
                format!("network {id} has no subnet"),
            ));
        }
        return Ok(NetworkStatusWithSubnets {
            id,
            name,
            managed: false,
            subnets,
        });
    }
    if !plan::manages_network(spec) {
        return Err(invalid(
            "spec",
            "set network (an existing network) or managedSubnets (capow creates the network)",
        ));
    }
    let mut found = net
        .list_networks(&tag_filter(&owner.tags))
        .await
        .map_err(Error::openstack("look up the cluster network"))?;
    if found.is_empty() {
        found = net
            .list_networks(&owner.description_filter())
            .await
            .map_err(Error::openstack("look up the cluster network"))?;
    }
    let (network, duplicates) = oldest(found, |n| (n.created_at.clone(), n.id.clone()));
    let network = match network {
        Some(n) => {
            let ids = duplicates.into_iter().map(|d| d.id).collect();
            delete_duplicates(ctx, session, TaggedResource::Network, "network", &n.id, ids).await?;
            n
        }
        None => {
            let body = CreateNetwork {
                name: base.to_owned(),
                admin_state_up: true,
                description: owner.description.clone(),
                tags: owner.create_tags().map(<[String]>::to_vec),
                mtu: spec.managed_network.as_ref().and_then(|m| m.mtu),
                port_security_enabled: spec
                    .managed_network
                    .as_ref()
                    .and_then(|m| m.port_security_enabled),
            };
            let n = net
                .create_network(&body)
                .await
                .map_err(Error::openstack("create the network"))?;
            tracing::info!(network = %n.id, "Created network");
            ctx.config
                .maybe_crash(crate::controllers::FaultPoint::ClusterAfterNetworkCreate);
            n
        }
    };
    if !owner.tagged(&network.tags) {
        net.set_tags(TaggedResource::Network, &network.id, &owner.tags)
            .await
            .map_err(Error::openstack("tag the network"))?;
    }
    let existing = net
        .list_subnets(&ListFilter::attribute("network_id", network.id.clone()))
        .await
        .map_err(Error::openstack("list subnets"))?;
    let mut subnets = Vec::new();
    for (i, want) in spec.managed_subnets.iter().enumerate() {
        let subnet = match existing.iter().find(|s| s.cidr == want.cidr) {
            Some(s) => s.clone(),
            None => {
                let body = CreateSubnet {
                    network_id: network.id.clone(),
                    name: format!("{base}-{i}"),
                    cidr: want.cidr.clone(),
                    ip_version: if want.cidr.contains(':') { 6 } else { 4 },
                    description: owner.description.clone(),
                    tags: owner.create_tags().map(<[String]>::to_vec),
                    dns_nameservers: want.dns_nameservers.clone(),
                    allocation_pools: want
                        .allocation_pools
                        .iter()
                        .map(|p| AllocationPool {
                            start: p.start.clone(),
                            end: p.end.clone(),
                        })
                        .collect(),
                };
                let s = net.create_subnet(&body).await.map_err(|e| match &e {
                    crate::openstack::Error::Api(a) if a.status.as_u16() == 400 => {
                        invalid(format!("spec.managedSubnets[{i}]"), a.message.clone())
                    }
                    _ => Error::OpenStack {
                        action: "create a subnet",
                        source: e,
                    },
                })?;
                tracing::info!(subnet = %s.id, cidr = %s.cidr, "Created subnet");
                ctx.config
                    .maybe_crash(crate::controllers::FaultPoint::ClusterAfterSubnetCreate);
                s
            }
        };
        if !owner.tagged(&subnet.tags) {
            net.set_tags(TaggedResource::Subnet, &subnet.id, &owner.tags)
                .await
                .map_err(Error::openstack("tag a subnet"))?;
        }
        subnets.push(SubnetStatus {
            id: subnet.id,
            name: subnet.name,
            cidr: subnet.cidr,
        });
    }
    Ok(NetworkStatusWithSubnets {
        id: network.id,
        name: network.name,
        managed: true,
        subnets,
    })
}

async fn ensure_router(
    ctx: &Context,
    session: &Session,
    c: &OpenStackWorkerCluster,
    network: &NetworkStatusWithSubnets,
    owner: &Owner,
    base: &str,
) -> Result<(Option<RouterStatus>, Option<NetworkStatus>), Error> {
    let net = session.network();
    let spec = &c.spec;
    if let Some(p) = &spec.router {
        let router = match (&p.id, &p.filter) {
            (Some(id), _) => net
                .get_router(id)
                .await
                .map_err(Error::openstack("get the router"))?
                .ok_or_else(|| {
                    invalid("spec.router.id", format!("router {id:?} does not exist"))
                })?,
            (None, Some(f)) => {
                let mut found = net
                    .list_routers(&ListFilter::attribute("name", f.name.clone()))
                    .await
                    .map_err(Error::openstack("list routers"))?;
                match found.len() {
                    1 => found.remove(0),
                    0 => {
                        return Err(invalid(
                            "spec.router.filter.name",
                            format!("no router named {:?}", f.name),
                        ));
                    }
                    n => {
                        return Err(invalid(
                            "spec.router.filter.name",
                            format!("{n} routers named {:?}", f.name),
                        ));
                    }
                }
            }
            (None, None) => return Err(invalid("spec.router", "one of id or filter is required")),
        };
        if network.managed {
            for s in &network.subnets {
                net.add_router_interface(&router.id, &s.id)
                    .await
                    .map_err(Error::openstack("attach a subnet to the router"))?;
            }
        }
        let ips = gateway_ips(&router);
        return Ok((
            Some(RouterStatus {
                id: router.id,
                name: router.name,
                managed: false,
                ips,
            }),
            None,
        ));
    }
    if !network.managed || spec.enable_external_network == Some(false) {
        return Ok((None, None));
    }
    let external = match &spec.external_network {
        Some(p) => {
            let found = resolve::resolve_network(session, p, "spec.externalNetwork").await?;
            Some((found.id, found.name))
        }
        None => {
            let mut found = net
                .list_networks(&ListFilter::attribute("router:external", "true"))
                .await
                .map_err(Error::openstack("list external networks"))?;
            match found.len() {
                0 => None,
                1 => {
                    let n = found.remove(0);
                    Some((n.id, n.name))
                }
                n => {
                    return Err(invalid(
                        "spec.externalNetwork",
                        format!(
                            "the cloud has {n} external networks; name one (or set enableExternalNetwork: false)"
                        ),
                    ));
                }
            }
        }
    };
    let Some((ext_id, ext_name)) = external else {
        return Ok((None, None));
    };
    let mut found = net
        .list_routers(&tag_filter(&owner.tags))
        .await
        .map_err(Error::openstack("look up the cluster router"))?;
    if found.is_empty() {
        found = net
            .list_routers(&owner.description_filter())
            .await
            .map_err(Error::openstack("look up the cluster router"))?;
    }
    let (router, duplicates) = oldest(found, |r| (r.created_at.clone(), r.id.clone()));
    let router = match router {
        Some(r) => {
            // A duplicate holds an external address; it never got an interface (interfaces go
            // to the router kept here).
            let ids = duplicates.into_iter().map(|d| d.id).collect();
            delete_duplicates(ctx, session, TaggedResource::Router, "router", &r.id, ids).await?;
            r
        }
        None => {
            let ips = spec
                .managed_router
                .as_ref()
                .map(|r| r.external_ips.clone())
                .unwrap_or_default();
            let body = CreateRouter {
                name: base.to_owned(),
                external_gateway_info: ExternalGatewayInfo {
                    network_id: ext_id.clone(),
                    external_fixed_ips: ips
                        .into_iter()
                        .map(|ip| PortFixedIp {
                            subnet_id: None,
                            ip_address: Some(ip),
                        })
                        .collect(),
                },
                description: owner.description.clone(),
                tags: owner.create_tags().map(<[String]>::to_vec),
            };
            let r = net
                .create_router(&body)
                .await
                .map_err(Error::openstack("create the router"))?;
            tracing::info!(router = %r.id, "Created router");
            ctx.config
                .maybe_crash(crate::controllers::FaultPoint::ClusterAfterRouterCreate);
            r
        }
    };
    if !owner.tagged(&router.tags) {
        net.set_tags(TaggedResource::Router, &router.id, &owner.tags)
            .await
            .map_err(Error::openstack("tag the router"))?;
    }
    for s in &network.subnets {
        net.add_router_interface(&router.id, &s.id)
            .await
            .map_err(Error::openstack("attach a subnet to the router"))?;
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::ClusterAfterRouterInterfaceAdd);
    }
    let ips = gateway_ips(&router);
    Ok((
        Some(RouterStatus {
            id: router.id,
            name: router.name,
            managed: true,
            ips,
        }),
        Some(NetworkStatus {
            id: ext_id,
            name: ext_name,
        }),
    ))
}

fn gateway_ips(router: &crate::openstack::network::Router) -> Vec<String> {
    router
        .external_gateway_info
        .as_ref()
        .map(|g| {
            g.external_fixed_ips
                .iter()
                .filter_map(|f| f.ip_address.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn ensure_security_group(
    ctx: &Context,
    session: &Session,
    spec: &crate::api::cluster::ManagedSecurityGroups,
    owner: &Owner,
    name: &str,
) -> Result<SecurityGroupStatus, Error> {
    let net = session.network();
    let mut filter = tag_filter(&owner.tags);
    filter.attributes.push(("name", name.to_owned()));
    let mut found = net
        .list_security_groups(&filter)
        .await
        .map_err(Error::openstack("look up the worker security group"))?;
    if found.is_empty() {
        let mut filter = owner.description_filter();
        filter.attributes.push(("name", name.to_owned()));
        found = net
            .list_security_groups(&filter)
            .await
            .map_err(Error::openstack("look up the worker security group"))?;
    }
    let (group, duplicates) = oldest(found, |g| (g.created_at.clone(), g.id.clone()));
    let group = match group {
        Some(g) => {
            let ids = duplicates.into_iter().map(|d| d.id).collect();
            delete_duplicates(
                ctx,
                session,
                TaggedResource::SecurityGroup,
                "security group",
                &g.id,
                ids,
            )
            .await?;
            g
        }
        None => {
            let g = net
                .create_security_group(&CreateSecurityGroup {
                    name: name.to_owned(),
                    description: owner.description.clone(),
                    tags: owner.create_tags().map(<[String]>::to_vec),
                })
                .await
                .map_err(Error::openstack("create the worker security group"))?;
            tracing::info!(security_group = %g.id, "Created security group");
            ctx.config
                .maybe_crash(crate::controllers::FaultPoint::ClusterAfterSecurityGroupCreate);
            g
        }
    };
    if !owner.tagged(&group.tags) {
        net.set_tags(TaggedResource::SecurityGroup, &group.id, &owner.tags)
            .await
            .map_err(Error::openstack("tag the security group"))?;
    }
    let existing = net
        .list_security_group_rules(&group.id)
        .await
        .map_err(Error::openstack("list security group rules"))?;
    let (create, delete) = plan::rule_changes(&plan::desired_rules(spec, &group.id), &existing);
    for id in delete {
        net.delete_security_group_rule(&id)
            .await
            .map_err(Error::openstack("delete a security group rule"))?;
    }
    for (key, description) in create {
        net.create_security_group_rule(&key.create(&group.id, description))
            .await
            .map_err(|e| match &e {
                crate::openstack::Error::Api(a) if a.status.as_u16() == 400 => invalid(
                    "spec.managedSecurityGroups.workerNodesSecurityGroupRules",
                    a.message.clone(),
                ),
                _ => Error::OpenStack {
                    action: "create a security group rule",
                    source: e,
                },
            })?;
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::ClusterAfterSecurityGroupRuleCreate);
    }
    Ok(SecurityGroupStatus {
        id: group.id,
        name: group.name,
    })
}

/// Writes why a deletion step failed into the `Ready` condition (with an event), so that a
/// cluster held by its finalizer says why; passes the error through.
async fn report_delete(ctx: &Context, c: &OpenStackWorkerCluster, e: Error) -> Error {
    let before = c.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let message = format!(
        "deletion is blocked: {e}; capow retries and keeps the finalizer until it succeeds"
    );
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::READY,
            false,
            reasons::DELETING,
            message.clone(),
            c.meta().generation,
        ),
    );
    if let Err(write) = status::write(ctx, c, &before, &status).await {
        tracing::warn!(error = %write, "Failed to write status while deleting");
    }
    ctx.event(
        &c.object_ref(&()),
        EventType::Warning,
        e.reason(),
        "Delete",
        message,
    )
    .await;
    e
}

async fn cleanup(c: Arc<OpenStackWorkerCluster>, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    if c.annotations()
        .contains_key(capi::DELETE_FOR_MOVE_ANNOTATION)
    {
        // clusterctl move deletes the source's copy once the target management cluster has
        // its own; the OpenStack resources now belong to the target.
        tracing::info!(
            "Releasing the finalizer without touching OpenStack: clusterctl move deletes this copy of the object"
        );
        return Ok(Action::await_change());
    }
    if capi::has_paused_annotation(c.annotations()) {
        return Err(Error::DeletionBlocked(Box::new(invalid(
            "metadata.annotations",
            format!(
                "{} is set; deletion waits until it is removed",
                capi::PAUSED_ANNOTATION
            ),
        ))));
    }
    let Some((cluster_name, cluster_uid)) = owner_cluster(&c) else {
        // Never owned by a Cluster: nothing was ever created (creation waits for the owner).
        return Ok(Action::await_change());
    };
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &ns);
    if clusters
        .get_opt(&cluster_name)
        .await
        .map_err(Error::kube("get the Cluster"))?
        .is_some_and(|cluster| cluster.is_paused())
    {
        // CAPI's contract: nothing reconciles a paused Cluster's objects, their deletion
        // included (clusterctl move pauses the source's Cluster before it deletes anything).
        return Err(Error::DeletionBlocked(Box::new(invalid(
            "Cluster spec.paused",
            "is true; deletion waits until the Cluster is resumed",
        ))));
    }
    // The cluster-autoscaler first, so that it stops scaling while the cluster goes.
    autoscaler::cleanup(&c, ctx).await?;
    let status = c.status.clone().unwrap_or_default();
    // Machines first: CAPI deletes them before the infrastructure cluster, but an
    // OpenStackWorkerMachine still finishing its own cleanup must not lose its network.
    let machines: Api<crate::api::machine::OpenStackWorkerMachine> =
        Api::namespaced(ctx.client.clone(), &ns);
    let left = machines
        .list(
            &ListParams::default().labels(&format!("{}={cluster_name}", capi::CLUSTER_NAME_LABEL)),
        )
        .await
        .map_err(Error::kube("list the cluster's machines"))?
        .items
        .len();
    if left > 0 {
        tracing::info!(
            machines = left,
            "Waiting for the cluster's machines to be deleted"
        );
        return Err(Error::DeletionInProgress);
    }
    let session = match identity::session(ctx, &ns, Some(&c.spec.identity_ref)).await {
        Ok(s) => s,
        Err(e) if status.initialization.is_none() && status.network.is_none() => {
            tracing::info!(error = %e, "Releasing the finalizer: nothing was created in OpenStack");
            return Ok(Action::await_change());
        }
        Err(e) => return Err(Error::DeletionBlocked(Box::new(e))),
    };
    // A Cluster re-created under a new UID and deleted before its resources were adopted:
    // adopt them first, so that the deletion below finds them.
    if let plan::Recorded::Previous(previous) = plan::recorded(
        c.annotations()
            .get(plan::CLUSTER_UID_ANNOTATION)
            .map(String::as_str),
        &cluster_uid,
    ) {
        let owner = Owner::new(&session, &ns, &cluster_name, &cluster_uid, &c.spec.tags).await?;
        adopt(ctx, &session, &c, &owner, (&ns, &cluster_name), previous).await?;
    }
    let tags = plan::tags(&cluster_uid, &[]);
    if !sweep(&session, &tags, &cluster_uid).await? {
        return Err(Error::DeletionInProgress);
    }
    let description = plan::ownership_description(&ns, &cluster_name, &cluster_uid);
    let net = session.network();
    // Security group, router, subnets, network: only those carrying the cluster's tag or, when
    // a crash came between create and tag, its ownership description.
    let mut groups = net
        .list_security_groups(&tag_filter(&tags))
        .await
        .map_err(Error::openstack("look up security groups"))?;
    groups.extend(
        net.list_security_groups(&ListFilter::attribute("description", description.clone()))
            .await
            .map_err(Error::openstack("look up security groups"))?,
    );
    for id in unique_ids(groups.into_iter().map(|g| g.id)) {
        if let Err(e) = net.delete(TaggedResource::SecurityGroup, &id).await {
            if e.status().map(|s| s.as_u16()) == Some(409) {
                return Err(Error::DeletionInProgress);
            }
            return Err(Error::OpenStack {
                action: "delete the worker security group",
                source: e,
            });
        }
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::ClusterAfterSecurityGroupDelete);
    }
    let mut subnets = net
        .list_subnets(&tag_filter(&tags))
        .await
        .map_err(Error::openstack("look up subnets"))?;
    subnets.extend(
        net.list_subnets(&ListFilter::attribute("description", description.clone()))
            .await
            .map_err(Error::openstack("look up subnets"))?,
    );
    let managed_subnets = unique_ids(subnets.into_iter().map(|s| s.id));
    let mut routers = net
        .list_routers(&tag_filter(&tags))
        .await
        .map_err(Error::openstack("look up routers"))?;
    routers.extend(
        net.list_routers(&ListFilter::attribute("description", description.clone()))
            .await
            .map_err(Error::openstack("look up routers"))?,
    );
    let routers = unique_ids(routers.into_iter().map(|r| r.id));
    // An existing (unmanaged) router got interfaces on the managed subnets: detach them too.
    let mut all_routers = routers.clone();
    if let Some(r) = status.router.as_ref().filter(|r| !r.managed) {
        all_routers.push(r.id.clone());
    }
    for router in &all_routers {
        for subnet in &managed_subnets {
            net.remove_router_interface(router, subnet)
                .await
                .map_err(Error::openstack("detach a subnet from the router"))?;
            ctx.config
                .maybe_crash(crate::controllers::FaultPoint::ClusterAfterRouterInterfaceRemove);
        }
    }
    for id in routers {
        net.delete(TaggedResource::Router, &id)
            .await
            .map_err(Error::openstack("delete the router"))?;
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::ClusterAfterRouterDelete);
    }
    let mut networks = net
        .list_networks(&tag_filter(&tags))
        .await
        .map_err(Error::openstack("look up networks"))?;
    networks.extend(
        net.list_networks(&ListFilter::attribute("description", description))
            .await
            .map_err(Error::openstack("look up networks"))?,
    );
    for id in unique_ids(networks.into_iter().map(|n| n.id)) {
        if let Err(e) = net.delete(TaggedResource::Network, &id).await {
            if e.status().map(|s| s.as_u16()) == Some(409) {
                return Err(Error::DeletionInProgress);
            }
            return Err(Error::OpenStack {
                action: "delete the network",
                source: e,
            });
        }
        ctx.config
            .maybe_crash(crate::controllers::FaultPoint::ClusterAfterNetworkDelete);
    }
    ctx.event(
        &c.object_ref(&()),
        EventType::Normal,
        "Deleted",
        "Delete",
        "Deleted the cluster's OpenStack resources",
    )
    .await;
    Ok(Action::await_change())
}

/// `ids` without repeats, in first-seen order.
fn unique_ids(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Deletes servers, trunks, ports and volumes still tagged with the cluster (left by machines
/// deleted without capow, or by a crash). Returns false while servers or volumes are going. A
/// failed listing fails the sweep (the finalizer stays): releasing it with resources unseen
/// would leave them behind for good.
async fn sweep(session: &Session, tags: &[String], cluster_uid: &str) -> Result<bool, Error> {
    let compute = session.compute();
    let uid_tag = tags.get(1).cloned().unwrap_or_default();
    let servers = compute
        .list_servers_by_tags(&[&uid_tag])
        .await
        .map_err(Error::openstack("look up the cluster's servers"))?;
    if !servers.is_empty() {
        for s in servers.iter().filter(|s| !s.is_gone()) {
            tracing::warn!(server = %s.id, "Deleting an orphaned server of the cluster");
            compute
                .delete_server(&s.id)
                .await
                .map_err(Error::openstack("delete an orphaned server"))?;
        }
        return Ok(false);
    }
    let net = session.network();
    for t in net
        .list_trunks(&tag_filter(tags))
        .await
        .map_err(Error::openstack("look up the cluster's trunks"))?
    {
        net.delete(TaggedResource::Trunk, &t.id)
            .await
            .map_err(Error::openstack("delete an orphaned trunk"))?;
    }
    for p in net
        .list_ports(&tag_filter(tags))
        .await
        .map_err(Error::openstack("look up the cluster's ports"))?
    {
        net.delete(TaggedResource::Port, &p.id)
            .await
            .map_err(Error::openstack("delete an orphaned port"))?;
    }
    let volumes = session
        .volume()
        .list_volumes_by_metadata(crate::api::ownership::METADATA_CLUSTER_UID, cluster_uid)
        .await
        .map_err(Error::openstack("look up the cluster's volumes"))?;
    for v in volumes.iter().filter(|v| v.status != "deleting") {
        session
            .volume()
            .delete_volume(&v.id)
            .await
            .map_err(Error::openstack("delete an orphaned volume"))?;
    }
    Ok(volumes.is_empty())
}

/// Runs the controller until `shutdown` resolves. Watches `OpenStackWorkerCluster`s and the
/// Clusters that own them (pause, ownership).
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (api, clusters): (Api<OpenStackWorkerCluster>, Api<Cluster>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let filter = capi::ClusterEventFilter::default();
    // Status writes of capow's own do not trigger reconciles (see `own_changes`).
    let (store, writer) = kube::runtime::reflector::store();
    let watch = ctx.config.kube.watcher_config();
    let objects = watcher::watcher(api, watch.clone())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(crate::controllers::own_changes, Default::default());
    Controller::for_stream(objects, store)
        .with_config(ControllerRunConfig::default().concurrency(ctx.config.concurrency))
        .owns(deployments, autoscaler::owned_watch(watch.clone()))
        .watches(clusters, watch, move |cluster: Cluster| {
            if !filter.relevant(&cluster) {
                return None;
            }
            cluster
                .spec
                .infrastructure_ref
                .as_ref()
                .filter(|r| r.kind == "OpenStackWorkerCluster" && !r.name.is_empty())
                .map(|r| ObjectRef::new(&r.name).within(&cluster.namespace().unwrap_or_default()))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "Controller event");
            }
        })
        .await;
}
