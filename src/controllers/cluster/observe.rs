//! Observe step of the cluster controller (reads only): the owner Cluster, whether the cloud
//! takes tags in create requests, the existing network, router and external network the spec
//! names, and what capow already created for the cluster (found by the ownership tags, else by
//! the ownership description, see [`plan::Owner`]).

use kube::api::{Api, ListParams};

use super::plan::{self, Owner, RouterLookup};
use crate::api::cluster::{NetworkStatus, NetworkStatusWithSubnets, OpenStackWorkerClusterSpec};
use crate::api::common::NetworkParam;
use crate::capi::{self, Cluster};
use crate::controllers::{Context, Error, invalid, resolve};
use crate::openstack::Session;
use crate::openstack::network::{
    ListFilter, Network, Router, SecurityGroup, Subnet, TaggedResource,
};

/// The Cluster `name` in `ns`; `None` when it does not exist.
///
/// # Errors
/// [`Error::Kube`] when the API server fails.
pub async fn cluster(ctx: &Context, ns: &str, name: &str) -> Result<Option<Cluster>, Error> {
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), ns);
    clusters
        .get_opt(name)
        .await
        .map_err(Error::kube("get the Cluster"))
}

/// The [`Owner`] of what capow creates for Cluster `ns/cluster_name` (`cluster_uid`), asking
/// Neutron (through the session's lookup cache) whether it loads the `tag-creation` extension.
///
/// # Errors
/// [`Error::OpenStack`] when the extension lookup fails.
pub async fn owner(
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
    Ok(Owner::new(
        ns,
        cluster_name,
        cluster_uid,
        extra_tags,
        tag_on_create,
    ))
}

/// The existing network `p` (`spec.network`) with the subnets `spec.subnets` names, or all of
/// its subnets when none are named.
///
/// # Errors
/// [`Error::InvalidSpec`] when the network or a subnet does not resolve, or the network has no
/// subnet; [`Error::OpenStack`] when a lookup fails.
pub async fn existing_network(
    session: &Session,
    spec: &OpenStackWorkerClusterSpec,
    p: &NetworkParam,
) -> Result<NetworkStatusWithSubnets, Error> {
    let found = resolve::resolve_network(session, p, "spec.network").await?;
    let (id, name) = (found.id, found.name);
    let mut subnets = Vec::new();
    for (i, s) in spec.subnets.iter().enumerate() {
        let subnet =
            resolve::resolve_subnet(session, s, &id, &format!("spec.subnets[{i}]")).await?;
        subnets.push(plan::subnet_status(subnet));
    }
    if subnets.is_empty() {
        subnets = subnets_of(session, &id)
            .await?
            .into_iter()
            .map(plan::subnet_status)
            .collect();
    }
    if subnets.is_empty() {
        return Err(invalid(
            "spec.network",
            format!("network {id} has no subnet"),
        ));
    }
    Ok(NetworkStatusWithSubnets {
        id,
        name,
        managed: false,
        subnets,
    })
}

/// The subnets of network `network_id`.
///
/// # Errors
/// [`Error::OpenStack`] when the listing fails.
pub async fn subnets_of(session: &Session, network_id: &str) -> Result<Vec<Subnet>, Error> {
    session
        .network()
        .list_subnets(&ListFilter::attribute("network_id", network_id.to_owned()))
        .await
        .map_err(Error::openstack("list subnets"))
}

/// The networks capow created for the cluster: by the ownership tags, else by the ownership
/// description (several after a create repeated over a lost answer).
///
/// # Errors
/// [`Error::OpenStack`] when a listing fails.
pub async fn networks(session: &Session, owner: &Owner) -> Result<Vec<Network>, Error> {
    let net = session.network();
    let failed = || Error::openstack("look up the cluster network");
    let found = net
        .list_networks(&plan::tag_filter(&owner.tags))
        .await
        .map_err(failed())?;
    if !found.is_empty() {
        return Ok(found);
    }
    net.list_networks(&owner.description_filter())
        .await
        .map_err(failed())
}

/// The routers capow created for the cluster, found like [`networks`].
///
/// # Errors
/// [`Error::OpenStack`] when a listing fails.
pub async fn routers(session: &Session, owner: &Owner) -> Result<Vec<Router>, Error> {
    let net = session.network();
    let failed = || Error::openstack("look up the cluster router");
    let found = net
        .list_routers(&plan::tag_filter(&owner.tags))
        .await
        .map_err(failed())?;
    if !found.is_empty() {
        return Ok(found);
    }
    net.list_routers(&owner.description_filter())
        .await
        .map_err(failed())
}

/// The security groups named `name` capow created for the cluster, found like [`networks`].
///
/// # Errors
/// [`Error::OpenStack`] when a listing fails.
pub async fn security_groups(
    session: &Session,
    owner: &Owner,
    name: &str,
) -> Result<Vec<SecurityGroup>, Error> {
    let net = session.network();
    let failed = || Error::openstack("look up the worker security group");
    let mut filter = plan::tag_filter(&owner.tags);
    filter.attributes.push(("name", name.to_owned()));
    let found = net.list_security_groups(&filter).await.map_err(failed())?;
    if !found.is_empty() {
        return Ok(found);
    }
    let mut filter = owner.description_filter();
    filter.attributes.push(("name", name.to_owned()));
    net.list_security_groups(&filter).await.map_err(failed())
}

/// The existing router `spec.router` names.
///
/// # Errors
/// [`Error::InvalidSpec`] when no router has the ID, or not exactly one has the name;
/// [`Error::OpenStack`] when a lookup fails.
pub async fn existing_router(session: &Session, lookup: RouterLookup<'_>) -> Result<Router, Error> {
    let net = session.network();
    match lookup {
        RouterLookup::Id(id) => net
            .get_router(id)
            .await
            .map_err(Error::openstack("get the router"))?
            .ok_or_else(|| invalid("spec.router.id", format!("router {id:?} does not exist"))),
        RouterLookup::Name(name) => {
            let found = net
                .list_routers(&ListFilter::attribute("name", name.to_owned()))
                .await
                .map_err(Error::openstack("list routers"))?;
            plan::named_router(found, name).map_err(|(field, message)| invalid(field, message))
        }
    }
}

/// The external network of the cluster's router: `spec.externalNetwork`, else the cloud's only
/// external network; `None` when the cloud has none.
///
/// # Errors
/// [`Error::InvalidSpec`] when `spec.externalNetwork` does not resolve or the cloud has several
/// external networks and the spec names none; [`Error::OpenStack`] when a lookup fails.
pub async fn external_network(
    session: &Session,
    spec: &OpenStackWorkerClusterSpec,
) -> Result<Option<NetworkStatus>, Error> {
    if let Some(p) = &spec.external_network {
        let found = resolve::resolve_network(session, p, "spec.externalNetwork").await?;
        return Ok(Some(NetworkStatus {
            id: found.id,
            name: found.name,
        }));
    }
    let found = session
        .network()
        .list_networks(&ListFilter::attribute("router:external", "true"))
        .await
        .map_err(Error::openstack("list external networks"))?;
    plan::sole_external_network(found).map_err(|(field, message)| invalid(field, message))
}

/// A resource of a [`TaggedResource`] kind, as far as ownership is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// UUID.
    pub id: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Description.
    pub description: String,
}

/// The `kind` resources `filter` selects (networks, subnets, routers, security groups; none
/// for other kinds).
///
/// # Errors
/// The listing's [`crate::openstack::Error`].
async fn described(
    session: &Session,
    kind: TaggedResource,
    filter: &ListFilter,
) -> Result<Vec<Described>, crate::openstack::Error> {
    let net = session.network();
    let d = |id, tags, description| Described {
        id,
        tags,
        description,
    };
    Ok(match kind {
        TaggedResource::Network => net
            .list_networks(filter)
            .await?
            .into_iter()
            .map(|x| d(x.id, x.tags, x.description))
            .collect(),
        TaggedResource::Subnet => net
            .list_subnets(filter)
            .await?
            .into_iter()
            .map(|x| d(x.id, x.tags, x.description))
            .collect(),
        TaggedResource::Router => net
            .list_routers(filter)
            .await?
            .into_iter()
            .map(|x| d(x.id, x.tags, x.description))
            .collect(),
        TaggedResource::SecurityGroup => net
            .list_security_groups(filter)
            .await?
            .into_iter()
            .map(|x| d(x.id, x.tags, x.description))
            .collect(),
        TaggedResource::Port | TaggedResource::Trunk => Vec::new(),
    })
}

/// The `kind` resources carrying the ownership `tags` (see [`plan::tags`]) or the ownership
/// `description`: first those found by tag, then those found only by description.
///
/// # Errors
/// [`Error::OpenStack`] with `action` when a listing fails.
pub async fn owned(
    session: &Session,
    kind: TaggedResource,
    tags: &[String],
    description: &str,
    action: &'static str,
) -> Result<Vec<Described>, Error> {
    let mut found = described(session, kind, &plan::tag_filter(tags))
        .await
        .map_err(Error::openstack(action))?;
    for x in described(
        session,
        kind,
        &ListFilter::attribute("description", description.to_owned()),
    )
    .await
    .map_err(Error::openstack(action))?
    {
        if !found.iter().any(|f| f.id == x.id) {
            found.push(x);
        }
    }
    Ok(found)
}

/// The IDs of [`owned`] resources.
///
/// # Errors
/// As [`owned`].
pub async fn owned_ids(
    session: &Session,
    kind: TaggedResource,
    tags: &[String],
    description: &str,
    action: &'static str,
) -> Result<Vec<String>, Error> {
    let found = owned(session, kind, tags, description, action).await?;
    Ok(plan::unique_ids(found.into_iter().map(|x| x.id)))
}

/// How many `OpenStackWorkerMachine`s of Cluster `cluster_name` (by the CAPI cluster-name
/// label) are left in `ns`.
///
/// # Errors
/// [`Error::Kube`] when the listing fails.
pub async fn machines_left(ctx: &Context, ns: &str, cluster_name: &str) -> Result<usize, Error> {
    let machines: Api<crate::api::machine::OpenStackWorkerMachine> =
        Api::namespaced(ctx.client.clone(), ns);
    Ok(machines
        .list(
            &ListParams::default().labels(&format!("{}={cluster_name}", capi::CLUSTER_NAME_LABEL)),
        )
        .await
        .map_err(Error::kube("list the cluster's machines"))?
        .items
        .len())
}
