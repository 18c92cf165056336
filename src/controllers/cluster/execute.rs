//! Execute step of the cluster controller: the calls that change something, in Kubernetes (the
//! recorded Cluster UID) and in Neutron (network, subnets, router and its interfaces, worker
//! security group and its rules, adoption, deletion). Each one is safe to repeat: what capow
//! created is found again by its ownership tags or description ([`observe`]) before anything
//! new is made, a resource created twice (a create repeated after a lost answer) is deleted,
//! and deletes treat "already gone" as done.

use kube::api::Api;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::plan::{self, Owner, SubnetStep};
use super::{CONTROLLER, observe};
use crate::api::cluster::{
    ManagedSecurityGroups, OpenStackWorkerCluster, OpenStackWorkerClusterSpec, SecurityGroupStatus,
    SubnetStatus,
};
use crate::controllers::{Context, Error, FaultPoint, invalid};
use crate::openstack::Session;
use crate::openstack::network::{Network, Router, SecurityGroup, TaggedResource};

/// Records `uid` in [`plan::CLUSTER_UID_ANNOTATION`] (server-side apply, capow's field
/// manager), before anything is created under it or once what carried an earlier UID is
/// adopted.
///
/// # Errors
/// [`Error::Kube`] when the API server refuses the patch.
pub async fn record_uid(ctx: &Context, c: &OpenStackWorkerCluster, uid: &str) -> Result<(), Error> {
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

/// Moves the network, subnets, router and security group capow created for this cluster under
/// the Cluster UID `previous` to the owner Cluster's current UID (`owner`): `clusterctl move`
/// and restores re-create the Cluster with a new UID (cluster-api v1.14.2
/// `cmd/clusterctl/client/cluster/mover.go`, `createTargetObject`), and capow finds and deletes
/// these resources by the UID tag and the ownership description. A resource is adopted when it
/// carries the previous UID tag or description *and* its description names this cluster
/// (`<namespace>/<name>`) with the previous UID ([`plan::adoptable`]), so an annotation copied
/// to another cluster adopts nothing. Each gets the new ownership tags (other tags kept) in one
/// replace-all call, then the new description; the caller records the new UID only after every
/// resource moved, so a crash makes the next reconcile adopt again. The machines' servers,
/// ports, trunks and volumes are not touched here: each machine adopts its own, in one call per
/// resource that names the new machine and cluster UIDs together (see `adopt` in
/// `src/controllers/machine/execute.rs`), so the orphan sweep never sees a resource of the new
/// cluster whose machine UID names no machine.
///
/// # Errors
/// [`Error::OpenStack`] when a listing or an update fails.
pub async fn adopt(
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
        let found = observe::owned(
            session,
            kind,
            &old_tags,
            &old_description,
            "look up the cluster's resources",
        )
        .await?;
        for x in found {
            let (id, description) = (x.id, x.description);
            if !plan::adoptable(&description, &old_description, &owner.description) {
                tracing::warn!(%id, what, %description, "Not adopting a resource tagged with the previous Cluster UID: its description names another cluster");
                continue;
            }
            net.set_tags(
                kind,
                &id,
                &crate::api::ownership::retagged(&x.tags, &owner.tags),
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
            owner.uid_tag()
        ),
    )
    .await;
    Ok(())
}

/// Deletes resources capow created twice for the cluster (`ids`; `kept` is the one kept), with
/// a log line and the duplicate metric each.
///
/// # Errors
/// [`Error::OpenStack`] when a delete fails.
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

/// Replaces the tags of `id` with the owner's, unless it already carries them all (a cloud
/// without `tag-creation`, or a crash between create and tag).
///
/// # Errors
/// [`Error::OpenStack`] with `action` when the tag call fails.
async fn tag(
    session: &Session,
    owner: &Owner,
    kind: TaggedResource,
    id: &str,
    tags: &[String],
    action: &'static str,
) -> Result<(), Error> {
    if owner.tagged(tags) {
        return Ok(());
    }
    session
        .network()
        .set_tags(kind, id, &owner.tags)
        .await
        .map_err(Error::openstack(action))
}

/// What [`keep_or_create`] needs of a Neutron resource capow creates once per cluster.
trait Created {
    /// The resource kind.
    const KIND: TaggedResource;
    /// What people call it in logs, e.g. `security group`.
    const WHAT: &'static str;
    /// The action of a failed tag call, e.g. `tag the network`.
    const TAG_ACTION: &'static str;
    /// UUID.
    fn id(&self) -> &str;
    /// Tags.
    fn tags(&self) -> &[String];
    /// Creation time (RFC 3339), when Neutron reports it.
    fn created_at(&self) -> Option<String>;
}

macro_rules! created {
    ($t:ty, $kind:expr, $what:literal, $tag_action:literal) => {
        impl Created for $t {
            const KIND: TaggedResource = $kind;
            const WHAT: &'static str = $what;
            const TAG_ACTION: &'static str = $tag_action;
            fn id(&self) -> &str {
                &self.id
            }
            fn tags(&self) -> &[String] {
                &self.tags
            }
            fn created_at(&self) -> Option<String> {
                self.created_at.clone()
            }
        }
    };
}

created!(
    Network,
    TaggedResource::Network,
    "network",
    "tag the network"
);
created!(Router, TaggedResource::Router, "router", "tag the router");
created!(
    SecurityGroup,
    TaggedResource::SecurityGroup,
    "security group",
    "tag the security group"
);

/// The oldest of the resources capow `found` for one purpose (the others, left by a create
/// repeated after a lost answer, are deleted as duplicates), else the one `create` makes;
/// tagged with the owner's tags.
///
/// # Errors
/// [`Error::OpenStack`] when a delete or the tag call fails; `create`'s error.
async fn keep_or_create<T: Created, F: std::future::Future<Output = Result<T, Error>>>(
    ctx: &Context,
    session: &Session,
    owner: &Owner,
    found: Vec<T>,
    create: impl FnOnce() -> F,
) -> Result<T, Error> {
    let (kept, duplicates) = plan::oldest(found, |x| (x.created_at(), x.id().to_owned()));
    let kept = match kept {
        Some(k) => {
            let ids = duplicates.iter().map(|d| d.id().to_owned()).collect();
            delete_duplicates(ctx, session, T::KIND, T::WHAT, k.id(), ids).await?;
            k
        }
        None => create().await?,
    };
    tag(
        session,
        owner,
        T::KIND,
        kept.id(),
        kept.tags(),
        T::TAG_ACTION,
    )
    .await?;
    Ok(kept)
}

/// The cluster's network, named `base`: the oldest one capow created before (others are
/// deleted as duplicates), else a new one; tagged.
///
/// # Errors
/// [`Error::OpenStack`] when a lookup, the create, a delete or the tag call fails.
pub async fn ensure_network(
    ctx: &Context,
    session: &Session,
    spec: &OpenStackWorkerClusterSpec,
    owner: &Owner,
    base: &str,
) -> Result<Network, Error> {
    let found = observe::networks(session, owner).await?;
    keep_or_create(ctx, session, owner, found, || async {
        let n = session
            .network()
            .create_network(&plan::network_request(spec, owner, base))
            .await
            .map_err(Error::openstack("create the network"))?;
        tracing::info!(network = %n.id, "Created network");
        ctx.config
            .maybe_crash(FaultPoint::ClusterAfterNetworkCreate);
        Ok(n)
    })
    .await
}

/// `spec.managedSubnets` in the network `network_id`: each kept when the network has a subnet
/// with its CIDR, else created ([`plan::subnet_steps`]); tagged. Returned in spec order.
///
/// # Errors
/// [`Error::InvalidSpec`] at `spec.managedSubnets[i]` when Neutron refuses a subnet (400);
/// [`Error::OpenStack`] when another call fails.
pub async fn ensure_subnets(
    ctx: &Context,
    session: &Session,
    spec: &OpenStackWorkerClusterSpec,
    network_id: &str,
    owner: &Owner,
    base: &str,
) -> Result<Vec<SubnetStatus>, Error> {
    let existing = observe::subnets_of(session, network_id).await?;
    let mut subnets = Vec::new();
    for step in plan::subnet_steps(&spec.managed_subnets, &existing, network_id, owner, base) {
        let subnet = match step {
            SubnetStep::Keep(s) => s,
            SubnetStep::Create { index, request } => {
                let s = session
                    .network()
                    .create_subnet(&request)
                    .await
                    .map_err(|e| match &e {
                        crate::openstack::Error::Api(a) if a.status.as_u16() == 400 => {
                            invalid(format!("spec.managedSubnets[{index}]"), a.message.clone())
                        }
                        _ => Error::openstack("create a subnet")(e),
                    })?;
                tracing::info!(subnet = %s.id, cidr = %s.cidr, "Created subnet");
                ctx.config.maybe_crash(FaultPoint::ClusterAfterSubnetCreate);
                s
            }
        };
        tag(
            session,
            owner,
            TaggedResource::Subnet,
            &subnet.id,
            &subnet.tags,
            "tag a subnet",
        )
        .await?;
        subnets.push(plan::subnet_status(subnet));
    }
    Ok(subnets)
}

/// The cluster's router, named `base`, with its gateway on `external_network`: the oldest one
/// capow created before (others are deleted as duplicates: a duplicate holds an external
/// address but never got an interface, interfaces go to the router kept), else a new one;
/// tagged.
///
/// # Errors
/// [`Error::OpenStack`] when a lookup, the create, a delete or the tag call fails.
pub async fn ensure_router(
    ctx: &Context,
    session: &Session,
    spec: &OpenStackWorkerClusterSpec,
    owner: &Owner,
    base: &str,
    external_network: &str,
) -> Result<Router, Error> {
    let found = observe::routers(session, owner).await?;
    keep_or_create(ctx, session, owner, found, || async {
        let request = plan::router_request(spec, owner, base, external_network);
        let r = session
            .network()
            .create_router(&request)
            .await
            .map_err(Error::openstack("create the router"))?;
        tracing::info!(router = %r.id, "Created router");
        ctx.config.maybe_crash(FaultPoint::ClusterAfterRouterCreate);
        Ok(r)
    })
    .await
}

/// Attaches each of `subnets` to `router` (an interface that exists counts as done), with the
/// crash point `after_each` (fault injection in tests) after each attach.
///
/// # Errors
/// [`Error::OpenStack`] when an attach fails.
pub async fn attach_subnets(
    ctx: &Context,
    session: &Session,
    router: &str,
    subnets: &[SubnetStatus],
    after_each: Option<FaultPoint>,
) -> Result<(), Error> {
    for s in subnets {
        session
            .network()
            .add_router_interface(router, &s.id)
            .await
            .map_err(Error::openstack("attach a subnet to the router"))?;
        if let Some(point) = after_each {
            ctx.config.maybe_crash(point);
        }
    }
    Ok(())
}

/// The worker security group `name` with the rules `spec` asks for: found or created
/// (`security_group`), then its rules made equal to the desired ones (`sync_rules`).
///
/// # Errors
/// As `security_group` and `sync_rules`.
pub async fn ensure_security_group(
    ctx: &Context,
    session: &Session,
    spec: &ManagedSecurityGroups,
    owner: &Owner,
    name: &str,
) -> Result<SecurityGroupStatus, Error> {
    let group = security_group(ctx, session, owner, name).await?;
    sync_rules(ctx, session, spec, &group.id).await?;
    Ok(SecurityGroupStatus {
        id: group.id,
        name: group.name,
    })
}

/// The worker security group `name`: the oldest one capow created before (others are deleted
/// as duplicates), else a new one; tagged.
///
/// # Errors
/// [`Error::OpenStack`] when a lookup, the create, a delete or the tag call fails.
async fn security_group(
    ctx: &Context,
    session: &Session,
    owner: &Owner,
    name: &str,
) -> Result<SecurityGroup, Error> {
    let found = observe::security_groups(session, owner, name).await?;
    keep_or_create(ctx, session, owner, found, || async {
        let g = session
            .network()
            .create_security_group(&plan::security_group_request(name, owner))
            .await
            .map_err(Error::openstack("create the worker security group"))?;
        tracing::info!(security_group = %g.id, "Created security group");
        ctx.config
            .maybe_crash(FaultPoint::ClusterAfterSecurityGroupCreate);
        Ok(g)
    })
    .await
}

/// Makes the rules of `group` those [`plan::desired_rules`] asks for ([`plan::rule_changes`]):
/// deletes the others (Neutron's default egress rules stay), then creates the missing ones.
///
/// # Errors
/// [`Error::InvalidSpec`] at `spec.managedSecurityGroups.workerNodesSecurityGroupRules` when
/// Neutron refuses a rule (400); [`Error::OpenStack`] when another call fails.
async fn sync_rules(
    ctx: &Context,
    session: &Session,
    spec: &ManagedSecurityGroups,
    group: &str,
) -> Result<(), Error> {
    let net = session.network();
    let existing = net
        .list_security_group_rules(group)
        .await
        .map_err(Error::openstack("list security group rules"))?;
    let (create, delete) = plan::rule_changes(&plan::desired_rules(spec, group), &existing);
    for id in delete {
        net.delete_security_group_rule(&id)
            .await
            .map_err(Error::openstack("delete a security group rule"))?;
    }
    for (key, description) in create {
        net.create_security_group_rule(&key.create(group, description))
            .await
            .map_err(|e| match &e {
                crate::openstack::Error::Api(a) if a.status.as_u16() == 400 => invalid(
                    "spec.managedSecurityGroups.workerNodesSecurityGroupRules",
                    a.message.clone(),
                ),
                _ => Error::openstack("create a security group rule")(e),
            })?;
        ctx.config
            .maybe_crash(FaultPoint::ClusterAfterSecurityGroupRuleCreate);
    }
    Ok(())
}

/// Deletes servers, trunks, ports and volumes still tagged with the cluster (left by machines
/// deleted without capow, or by a crash). Returns false while servers or volumes are going. A
/// failed listing fails the sweep (the finalizer stays): releasing it with resources unseen
/// would leave them behind for good.
///
/// # Errors
/// [`Error::OpenStack`] when a listing or a delete fails.
pub async fn sweep(session: &Session, tags: &[String], cluster_uid: &str) -> Result<bool, Error> {
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
        .list_trunks(&plan::tag_filter(tags))
        .await
        .map_err(Error::openstack("look up the cluster's trunks"))?
    {
        net.delete(TaggedResource::Trunk, &t.id)
            .await
            .map_err(Error::openstack("delete an orphaned trunk"))?;
    }
    for p in net
        .list_ports(&plan::tag_filter(tags))
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

/// Deletes `kind` resource `id`; a 409 (still in use, e.g. by a port Nova is still releasing)
/// is [`Error::DeletionInProgress`].
///
/// # Errors
/// [`Error::DeletionInProgress`] on 409; [`Error::OpenStack`] with `action` on any other
/// failure.
async fn delete_in_use(
    session: &Session,
    kind: TaggedResource,
    id: &str,
    action: &'static str,
) -> Result<(), Error> {
    match session.network().delete(kind, id).await {
        Err(e) if e.status().map(|s| s.as_u16()) == Some(409) => Err(Error::DeletionInProgress),
        Err(e) => Err(Error::openstack(action)(e)),
        Ok(()) => Ok(()),
    }
}

/// Deletes what capow created for the cluster, in reverse order of creation: the worker
/// security group, the routers' interfaces on the managed subnets (also those on an existing
/// router, `status_router`), the routers, the networks (Neutron deletes a network's subnets
/// with it). Only resources carrying the cluster's ownership `tags` or, when a crash came
/// between create and tag, its ownership `description` are touched.
///
/// # Errors
/// [`Error::DeletionInProgress`] while a security group or network is still in use;
/// [`Error::OpenStack`] when a listing or another call fails.
pub async fn delete_cluster_resources(
    ctx: &Context,
    session: &Session,
    tags: &[String],
    description: &str,
    status_router: Option<&crate::api::cluster::RouterStatus>,
) -> Result<(), Error> {
    let net = session.network();
    let groups = observe::owned_ids(
        session,
        TaggedResource::SecurityGroup,
        tags,
        description,
        "look up security groups",
    )
    .await?;
    for id in groups {
        delete_in_use(
            session,
            TaggedResource::SecurityGroup,
            &id,
            "delete the worker security group",
        )
        .await?;
        ctx.config
            .maybe_crash(FaultPoint::ClusterAfterSecurityGroupDelete);
    }
    let managed_subnets = observe::owned_ids(
        session,
        TaggedResource::Subnet,
        tags,
        description,
        "look up subnets",
    )
    .await?;
    let routers = observe::owned_ids(
        session,
        TaggedResource::Router,
        tags,
        description,
        "look up routers",
    )
    .await?;
    for router in &plan::routers_to_detach(&routers, status_router) {
        for subnet in &managed_subnets {
            net.remove_router_interface(router, subnet)
                .await
                .map_err(Error::openstack("detach a subnet from the router"))?;
            ctx.config
                .maybe_crash(FaultPoint::ClusterAfterRouterInterfaceRemove);
        }
    }
    for id in routers {
        net.delete(TaggedResource::Router, &id)
            .await
            .map_err(Error::openstack("delete the router"))?;
        ctx.config.maybe_crash(FaultPoint::ClusterAfterRouterDelete);
    }
    let networks = observe::owned_ids(
        session,
        TaggedResource::Network,
        tags,
        description,
        "look up networks",
    )
    .await?;
    for id in networks {
        delete_in_use(session, TaggedResource::Network, &id, "delete the network").await?;
        ctx.config
            .maybe_crash(FaultPoint::ClusterAfterNetworkDelete);
    }
    Ok(())
}
