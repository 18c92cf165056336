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

/// Resolves a server group by ID or by name (exactly one must match) to its UUID.
///
/// # Errors
/// [`Error::InvalidSpec`] (`spec.serverGroup...`) when it does not exist or is ambiguous.
pub(crate) async fn resolve_server_group(
    session: &Session,
    p: &crate::api::common::ServerGroupParam,
) -> Result<String, Error> {
    let compute = session.compute();
    match (&p.id, &p.filter) {
        (Some(id), _) => compute
            .get_server_group(id)
            .await
            .map_err(Error::openstack("get the server group"))?
            .map(|g| g.id)
            .ok_or_else(|| {
                invalid(
                    "spec.serverGroup.id",
                    format!("server group {id:?} does not exist"),
                )
            }),
        (None, Some(f)) => {
            let all = compute
                .list_server_groups()
                .await
                .map_err(Error::openstack("list server groups"))?;
            let found = all.into_iter().filter(|g| g.name == f.name).collect();
            exactly_one(
                found,
                "spec.serverGroup.filter.name",
                "server group",
                &format!("name={}", f.name),
            )
            .map(|g| g.id)
        }
        (None, None) => Err(invalid(
            "spec.serverGroup",
            "one of id or filter is required",
        )),
    }
}

/// Resolves a flavor by ID or by name.
///
/// # Errors
/// [`Error::InvalidSpec`] (`spec.flavor...`) when it does not exist or is ambiguous.
pub async fn resolve_flavor(session: &Session, p: &FlavorParam) -> Result<Flavor, Error> {
    let compute = session.compute();
    match (&p.id, &p.filter) {
        (Some(id), _) => compute
            .get_flavor(id)
            .await
            .map_err(Error::openstack("get the flavor"))?
            .ok_or_else(|| invalid("spec.flavor.id", format!("flavor {id:?} does not exist"))),
        (None, Some(f)) => {
            let all = compute
                .list_flavors()
                .await
                .map_err(Error::openstack("list flavors"))?;
            let found = all.into_iter().filter(|x| x.name == f.name).collect();
            exactly_one(
                found,
                "spec.flavor.filter.name",
                "flavor",
                &format!("name={}", f.name),
            )
        }
        (None, None) => Err(invalid("spec.flavor", "one of id or filter is required")),
    }
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
    match (&p.id, &p.filter) {
        (Some(id), _) => {
            let found = image
                .get_image(id)
                .await
                .map_err(Error::openstack("get the image"))?;
            match found {
                None => Err(invalid(
                    "spec.image.id",
                    format!("image {id:?} does not exist"),
                )),
                Some(i) if i.status != "active" => Err(invalid(
                    "spec.image.id",
                    format!("image {id:?} is {}, not active", i.status),
                )),
                Some(i) => Ok(i),
            }
        }
        (None, Some(f)) => {
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
        }
        (None, None) => Err(invalid("spec.image", "one of id or filter is required")),
    }
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
    match (&p.id, &p.filter) {
        (Some(id), _) => net
            .get_network(id)
            .await
            .map_err(Error::openstack("get the network"))?
            .ok_or_else(|| {
                invalid(
                    format!("{field}.id"),
                    format!("network {id:?} does not exist"),
                )
            }),
        (None, Some(f)) => {
            let mut filter = neutron_filter(&f.tags);
            push_attr(&mut filter, "name", &f.name);
            push_attr(&mut filter, "description", &f.description);
            push_attr(&mut filter, "project_id", &f.project_id);
            let found = net
                .list_networks(&filter)
                .await
                .map_err(Error::openstack("list networks"))?;
            exactly_one(
                found,
                &format!("{field}.filter"),
                "network",
                &filter.to_string(),
            )
        }
        (None, None) => Err(invalid(field, "one of id or filter is required")),
    }
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
    match (&p.id, &p.filter) {
        (Some(id), _) => {
            let subnet = net
                .get_subnet(id)
                .await
                .map_err(Error::openstack("get the subnet"))?
                .ok_or_else(|| {
                    invalid(
                        format!("{field}.id"),
                        format!("subnet {id:?} does not exist"),
                    )
                })?;
            if subnet.network_id != network_id {
                return Err(invalid(
                    format!("{field}.id"),
                    format!(
                        "subnet {id:?} belongs to network {}, not the port's network {network_id}",
                        subnet.network_id
                    ),
                ));
            }
            Ok(subnet)
        }
        (None, Some(f)) => {
            let mut filter = neutron_filter(&f.tags);
            filter
                .attributes
                .push(("network_id", network_id.to_owned()));
            push_attr(&mut filter, "name", &f.name);
            push_attr(&mut filter, "description", &f.description);
            push_attr(&mut filter, "project_id", &f.project_id);
            push_attr(&mut filter, "cidr", &f.cidr);
            push_attr(&mut filter, "gateway_ip", &f.gateway_ip);
            push_attr(
                &mut filter,
                "ip_version",
                &f.ip_version.map(|v| v.to_string()),
            );
            let found = net
                .list_subnets(&filter)
                .await
                .map_err(Error::openstack("list subnets"))?;
            exactly_one(
                found,
                &format!("{field}.filter"),
                "subnet",
                &filter.to_string(),
            )
        }
        (None, None) => Err(invalid(field, "one of id or filter is required")),
    }
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
    match (&p.id, &p.filter) {
        (Some(id), _) => net
            .get_security_group(id)
            .await
            .map_err(Error::openstack("get the security group"))?
            .map(|g| g.id)
            .ok_or_else(|| {
                invalid(
                    format!("{field}.id"),
                    format!("security group {id:?} does not exist"),
                )
            }),
        (None, Some(f)) => {
            let mut filter = neutron_filter(&f.tags);
            push_attr(&mut filter, "name", &f.name);
            push_attr(&mut filter, "description", &f.description);
            push_attr(&mut filter, "project_id", &f.project_id);
            let found = net
                .list_security_groups(&filter)
                .await
                .map_err(Error::openstack("list security groups"))?;
            exactly_one(
                found,
                &format!("{field}.filter"),
                "security group",
                &filter.to_string(),
            )
            .map(|g| g.id)
        }
        (None, None) => Err(invalid(field, "one of id or filter is required")),
    }
}

/// A Neutron list filter with the tag filters of a CAPO `*Filter`.
fn neutron_filter(tags: &crate::api::common::NeutronTagFilter) -> ListFilter {
    ListFilter {
        tags: tags.tags.clone(),
        tags_any: tags.tags_any.clone(),
        not_tags: tags.not_tags.clone(),
        not_tags_any: tags.not_tags_any.clone(),
        ..ListFilter::default()
    }
}

/// Adds `key=value` to `filter` when `value` is set and not empty.
fn push_attr(filter: &mut ListFilter, key: &'static str, value: &Option<String>) {
    if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
        filter.attributes.push((key, v.clone()));
    }
}
