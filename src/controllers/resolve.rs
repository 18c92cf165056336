//! The resolvers of CAPO's `*Param` references that several controllers share (the machine,
//! cluster and machine template controllers): a flavor, image, network, subnet, security group
//! or server group given by ID, or by a filter that must match exactly one (`exactly_one`).
//! I/O through the OpenStack [`Session`] only; failures are [`Error::InvalidSpec`] naming the
//! field, or [`Error::OpenStack`].

use crate::api::common::{FlavorParam, ImageParam, NetworkParam, SecurityGroupParam, SubnetParam};
use crate::controllers::{Error, invalid};
use crate::openstack::Session;
use crate::openstack::compute::Flavor;
use crate::openstack::network::ListFilter;

/// The one element of `found`, or an [`Error::InvalidSpec`] at `field` that names what was
/// looked for (`what`, e.g. `network`) and echoes the filter (`filter`, e.g.
/// `name=osdev-net, tags=a,b`).
fn exactly_one<T>(mut found: Vec<T>, field: &str, what: &str, filter: &str) -> Result<T, Error> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(invalid(
            field,
            format!("no {what} matches the filter {filter}"),
        )),
        n => Err(invalid(
            field,
            format!("{n} {what}s match the filter {filter}; it must select exactly one"),
        )),
    }
}

/// The lookup of a CAPO `*Param` at `field` (e.g. `spec.flavor`): by its `id` with `get`
/// ([`Error::InvalidSpec`] at `{field}.id` naming the `what` when it does not exist), by its
/// `filter` with `list` (which applies [`exactly_one`]), and an [`Error::InvalidSpec`] at
/// `field` when neither is set.
async fn id_or_filter<F, T>(
    id: &Option<String>,
    filter: &Option<F>,
    field: &str,
    what: &str,
    get: impl AsyncFnOnce(&str) -> Result<Option<T>, Error>,
    list: impl AsyncFnOnce(&F) -> Result<T, Error>,
) -> Result<T, Error> {
    match (id, filter) {
        (Some(id), _) => get(id).await?.ok_or_else(|| {
            invalid(
                format!("{field}.id"),
                format!("{what} {id:?} does not exist"),
            )
        }),
        (None, Some(f)) => list(f).await,
        (None, None) => Err(invalid(field, "one of id or filter is required")),
    }
}

/// Resolves a server group by ID or by name (exactly one must match) to its UUID.
///
/// # Errors
/// [`Error::InvalidSpec`] (`spec.serverGroup...`) when it does not exist or is ambiguous.
pub(crate) async fn resolve_server_group(
    session: &Session,
    p: &crate::api::common::ServerGroupParam,
) -> Result<String, Error> {
    let compute = session.compute();
    let group = id_or_filter(
        &p.id,
        &p.filter,
        "spec.serverGroup",
        "server group",
        async |id| {
            compute
                .get_server_group(id)
                .await
                .map_err(Error::openstack("get the server group"))
        },
        async |f| {
            let all = compute
                .list_server_groups()
                .await
                .map_err(Error::openstack("list server groups"))?;
            exactly_one(
                all.into_iter().filter(|g| g.name == f.name).collect(),
                "spec.serverGroup.filter.name",
                "server group",
                &format!("name={}", f.name),
            )
        },
    )
    .await?;
    Ok(group.id)
}

/// Resolves a flavor by ID or by name.
///
/// # Errors
/// [`Error::InvalidSpec`] (`spec.flavor...`) when it does not exist or is ambiguous.
pub async fn resolve_flavor(session: &Session, p: &FlavorParam) -> Result<Flavor, Error> {
    let compute = session.compute();
    id_or_filter(
        &p.id,
        &p.filter,
        "spec.flavor",
        "flavor",
        async |id| {
            compute
                .get_flavor(id)
                .await
                .map_err(Error::openstack("get the flavor"))
        },
        async |f| {
            let all = compute
                .list_flavors()
                .await
                .map_err(Error::openstack("list flavors"))?;
            exactly_one(
                all.into_iter().filter(|x| x.name == f.name).collect(),
                "spec.flavor.filter.name",
                "flavor",
                &format!("name={}", f.name),
            )
        },
    )
    .await
}

/// Resolves an image like [`resolve_image_full`], to its UUID.
///
/// # Errors
/// As [`resolve_image_full`].
pub(crate) async fn resolve_image(session: &Session, p: &ImageParam) -> Result<String, Error> {
    resolve_image_full(session, p).await.map(|i| i.id)
}

/// Resolves an image by ID or by name and tags; it must be active.
///
/// # Errors
/// [`Error::InvalidSpec`] (`spec.image...`) when it does not exist, is not active or the filter
/// is ambiguous.
pub async fn resolve_image_full(
    session: &Session,
    p: &ImageParam,
) -> Result<crate::openstack::image::Image, Error> {
    let image = session.image();
    id_or_filter(
        &p.id,
        &p.filter,
        "spec.image",
        "image",
        async |id| {
            let found = image
                .get_image(id)
                .await
                .map_err(Error::openstack("get the image"))?;
            match found {
                Some(i) if i.status != "active" => Err(invalid(
                    "spec.image.id",
                    format!("image {id:?} is {}, not active", i.status),
                )),
                found => Ok(found),
            }
        },
        async |f| {
            let found = image
                .list_active_images(f.name.as_deref(), &f.tags)
                .await
                .map_err(Error::openstack("list images"))?;
            let mut filter = Vec::new();
            if let Some(name) = &f.name {
                filter.push(format!("name={name}"));
            }
            if !f.tags.is_empty() {
                filter.push(format!("tags={}", f.tags.join(",")));
            }
            exactly_one(
                found,
                "spec.image.filter",
                "active image",
                &filter.join(", "),
            )
        },
    )
    .await
}

/// Resolves a network by ID or filter (exactly one must match).
///
/// # Errors
/// [`Error::InvalidSpec`] naming `field` when it does not exist or the filter is ambiguous.
pub(crate) async fn resolve_network(
    session: &Session,
    p: &NetworkParam,
    field: &str,
) -> Result<crate::openstack::network::Network, Error> {
    let net = session.network();
    id_or_filter(
        &p.id,
        &p.filter,
        field,
        "network",
        async |id| {
            net.get_network(id)
                .await
                .map_err(Error::openstack("get the network"))
        },
        async |f| {
            let filter = neutron_filter(&f.tags, named(&f.name, &f.description, &f.project_id));
            let found = net
                .list_networks(&filter)
                .await
                .map_err(Error::openstack("list networks"))?;
            one_found(found, field, "network", &filter)
        },
    )
    .await
}

/// Resolves a subnet of `network_id` by ID or filter (exactly one must match).
///
/// # Errors
/// [`Error::InvalidSpec`] naming `field` when it does not exist, belongs to another network,
/// or the filter is ambiguous.
pub(crate) async fn resolve_subnet(
    session: &Session,
    p: &SubnetParam,
    network_id: &str,
    field: &str,
) -> Result<crate::openstack::network::Subnet, Error> {
    let net = session.network();
    id_or_filter(
        &p.id,
        &p.filter,
        field,
        "subnet",
        async |id| {
            let subnet = net
                .get_subnet(id)
                .await
                .map_err(Error::openstack("get the subnet"))?;
            match subnet {
                Some(s) if s.network_id != network_id => Err(invalid(
                    format!("{field}.id"),
                    format!(
                        "subnet {id:?} belongs to network {}, not the port's network {network_id}",
                        s.network_id
                    ),
                )),
                subnet => Ok(subnet),
            }
        },
        async |f| {
            let attributes = std::iter::once(("network_id", Some(network_id.to_owned())))
                .chain(named(&f.name, &f.description, &f.project_id))
                .chain([
                    ("cidr", f.cidr.clone()),
                    ("gateway_ip", f.gateway_ip.clone()),
                    ("ip_version", f.ip_version.map(|v| v.to_string())),
                ]);
            let filter = neutron_filter(&f.tags, attributes);
            let found = net
                .list_subnets(&filter)
                .await
                .map_err(Error::openstack("list subnets"))?;
            one_found(found, field, "subnet", &filter)
        },
    )
    .await
}

/// Resolves a security group by ID or filter (exactly one must match) to its UUID.
///
/// # Errors
/// [`Error::InvalidSpec`] naming `field` when it does not exist or the filter is ambiguous.
pub(crate) async fn resolve_security_group(
    session: &Session,
    p: &SecurityGroupParam,
    field: &str,
) -> Result<String, Error> {
    let net = session.network();
    let group = id_or_filter(
        &p.id,
        &p.filter,
        field,
        "security group",
        async |id| {
            net.get_security_group(id)
                .await
                .map_err(Error::openstack("get the security group"))
        },
        async |f| {
            let filter = neutron_filter(&f.tags, named(&f.name, &f.description, &f.project_id));
            let found = net
                .list_security_groups(&filter)
                .await
                .map_err(Error::openstack("list security groups"))?;
            one_found(found, field, "security group", &filter)
        },
    )
    .await?;
    Ok(group.id)
}

/// [`exactly_one`] of what a Neutron list with `filter` found, at `{field}.filter`.
fn one_found<T>(found: Vec<T>, field: &str, what: &str, filter: &ListFilter) -> Result<T, Error> {
    exactly_one(found, &format!("{field}.filter"), what, &filter.to_string())
}

/// The `name`, `description` and `project_id` attributes every CAPO Neutron `*Filter` has.
fn named(
    name: &Option<String>,
    description: &Option<String>,
    project_id: &Option<String>,
) -> [(&'static str, Option<String>); 3] {
    [
        ("name", name.clone()),
        ("description", description.clone()),
        ("project_id", project_id.clone()),
    ]
}

/// A Neutron list filter with the tag filters of a CAPO `*Filter` and the `attributes` that
/// are set and not empty, in their order.
fn neutron_filter(
    tags: &crate::api::common::NeutronTagFilter,
    attributes: impl IntoIterator<Item = (&'static str, Option<String>)>,
) -> ListFilter {
    ListFilter {
        tags: tags.tags.clone(),
        tags_any: tags.tags_any.clone(),
        not_tags: tags.not_tags.clone(),
        not_tags_any: tags.not_tags_any.clone(),
        attributes: attributes
            .into_iter()
            .filter_map(|(key, value)| Some((key, value.filter(|v| !v.is_empty())?)))
            .collect(),
    }
}
