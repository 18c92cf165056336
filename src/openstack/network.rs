//! Neutron (network v2.0): networks, subnets, security groups and ports, by ID or by filter.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::Result;
use super::session::{Request, Service, Session};

/// A Neutron network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Network {
    /// Network UUID.
    pub id: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A Neutron subnet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Subnet {
    /// Subnet UUID.
    pub id: String,
    /// Subnet name.
    #[serde(default)]
    pub name: String,
    /// Network the subnet belongs to.
    #[serde(default)]
    pub network_id: String,
    /// CIDR.
    #[serde(default)]
    pub cidr: String,
}

/// A Neutron security group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SecurityGroup {
    /// Security group UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

/// A Neutron port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Port {
    /// Port UUID.
    pub id: String,
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Network UUID.
    #[serde(default)]
    pub network_id: String,
    /// Allocated addresses.
    #[serde(default)]
    pub fixed_ips: Vec<PortFixedIp>,
    /// Security group UUIDs.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// ID of the device (server) the port is bound to; empty when unbound.
    #[serde(default)]
    pub device_id: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Creation time (RFC 3339, `standard-attr-timestamp` extension).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// An address of a port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFixedIp {
    /// Subnet UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

/// Body of `POST /v2.0/ports` (the fields capow sets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreatePort {
    /// Port name.
    pub name: String,
    /// Network UUID.
    pub network_id: String,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Requested addresses; empty lets Neutron choose.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fixed_ips: Vec<PortFixedIp>,
    /// Security groups; `None` keeps the project's default group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    /// Administrative state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_state_up: Option<bool>,
    /// Port security.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_security_enabled: Option<bool>,
    /// vNIC type (`binding:vnic_type`).
    #[serde(rename = "binding:vnic_type", skip_serializing_if = "Option::is_none")]
    pub vnic_type: Option<String>,
}

/// Attribute and tag filters of a Neutron list call (Neutron API reference, "Filtering" and
/// "Filtering by Tags").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Exact-match attribute filters, e.g. `("name", "net1")`.
    pub attributes: Vec<(&'static str, String)>,
    /// All of these tags.
    pub tags: Vec<String>,
    /// Any of these tags.
    pub tags_any: Vec<String>,
    /// Not all of these tags.
    pub not_tags: Vec<String>,
    /// None of these tags.
    pub not_tags_any: Vec<String>,
}

impl ListFilter {
    /// A filter on one attribute.
    pub fn attribute(key: &'static str, value: impl Into<String>) -> Self {
        Self {
            attributes: vec![(key, value.into())],
            ..Self::default()
        }
    }

    fn apply(&self, mut req: Request) -> Request {
        for (k, v) in &self.attributes {
            req = req.query(k, v.clone());
        }
        for (key, tags) in [
            ("tags", &self.tags),
            ("tags-any", &self.tags_any),
            ("not-tags", &self.not_tags),
            ("not-tags-any", &self.not_tags_any),
        ] {
            if !tags.is_empty() {
                req = req.query(key, tags.join(","));
            }
        }
        req
    }
}

#[derive(Deserialize)]
struct Networks {
    networks: Vec<Network>,
}
#[derive(Deserialize)]
struct NetworkEnvelope {
    network: Network,
}
#[derive(Deserialize)]
struct Subnets {
    subnets: Vec<Subnet>,
}
#[derive(Deserialize)]
struct SubnetEnvelope {
    subnet: Subnet,
}
#[derive(Deserialize)]
struct SecurityGroups {
    security_groups: Vec<SecurityGroup>,
}
#[derive(Deserialize)]
struct SecurityGroupEnvelope {
    security_group: SecurityGroup,
}
#[derive(Deserialize)]
struct Ports {
    ports: Vec<Port>,
}
#[derive(Deserialize)]
struct PortEnvelope {
    port: Port,
}

/// Typed Neutron calls of a [`Session`].
#[derive(Clone, Debug)]
pub struct NetworkApi<'a> {
    session: &'a Session,
}

impl Session {
    /// Neutron calls.
    pub fn network(&self) -> NetworkApi<'_> {
        NetworkApi { session: self }
    }
}

macro_rules! get_or_none {
    ($session:expr, $op:literal, $path:expr, $env:ty, $field:ident) => {{
        let req = Request::new(Service::Network, $op, Method::GET, $path);
        match $session.send::<$env>(req).await {
            Ok(e) => Ok(Some(e.$field)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }};
}

impl NetworkApi<'_> {
    /// `GET /v2.0/networks/{id}`; `None` on 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_network(&self, id: &str) -> Result<Option<Network>> {
        get_or_none!(
            self.session,
            "network_get",
            format!("/networks/{id}"),
            NetworkEnvelope,
            network
        )
    }

    /// `GET /v2.0/networks?<filter>`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_networks(&self, filter: &ListFilter) -> Result<Vec<Network>> {
        let req = filter.apply(Request::new(
            Service::Network,
            "network_list",
            Method::GET,
            "/networks",
        ));
        Ok(self.session.send::<Networks>(req).await?.networks)
    }

    /// `GET /v2.0/subnets/{id}`; `None` on 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_subnet(&self, id: &str) -> Result<Option<Subnet>> {
        get_or_none!(
            self.session,
            "subnet_get",
            format!("/subnets/{id}"),
            SubnetEnvelope,
            subnet
        )
    }

    /// `GET /v2.0/subnets?<filter>`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_subnets(&self, filter: &ListFilter) -> Result<Vec<Subnet>> {
        let req = filter.apply(Request::new(
            Service::Network,
            "subnet_list",
            Method::GET,
            "/subnets",
        ));
        Ok(self.session.send::<Subnets>(req).await?.subnets)
    }

    /// `GET /v2.0/security-groups/{id}`; `None` on 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_security_group(&self, id: &str) -> Result<Option<SecurityGroup>> {
        get_or_none!(
            self.session,
            "security_group_get",
            format!("/security-groups/{id}"),
            SecurityGroupEnvelope,
            security_group
        )
    }

    /// `GET /v2.0/security-groups?<filter>`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_security_groups(&self, filter: &ListFilter) -> Result<Vec<SecurityGroup>> {
        let req = filter.apply(Request::new(
            Service::Network,
            "security_group_list",
            Method::GET,
            "/security-groups",
        ));
        Ok(self
            .session
            .send::<SecurityGroups>(req)
            .await?
            .security_groups)
    }

    /// `GET /v2.0/ports?<filter>`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_ports(&self, filter: &ListFilter) -> Result<Vec<Port>> {
        let req = filter.apply(Request::new(
            Service::Network,
            "port_list",
            Method::GET,
            "/ports",
        ));
        Ok(self.session.send::<Ports>(req).await?.ports)
    }

    /// `POST /v2.0/ports`.
    ///
    /// # Errors
    /// [`super::Error::Api`] with 400 (bad fixed IP or subnet), 404 (network), 409 (IP in use,
    /// or `OverQuota`).
    pub async fn create_port(&self, port: &CreatePort) -> Result<Port> {
        let req = Request::new(Service::Network, "port_create", Method::POST, "/ports")
            .json(json!({ "port": port }));
        Ok(self.session.send::<PortEnvelope>(req).await?.port)
    }

    /// `PUT /v2.0/ports/{id}/tags`: replaces the port's tags. Neutron before 2023.1 ignores tags
    /// in the create body (no `tag-creation` extension), so capow tags right after creating.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn set_port_tags(&self, id: &str, tags: &[String]) -> Result<()> {
        let req = Request::new(
            Service::Network,
            "port_tags_set",
            Method::PUT,
            format!("/ports/{id}/tags"),
        )
        .json(json!({ "tags": tags }));
        self.session.send_empty(req).await
    }

    /// `DELETE /v2.0/ports/{id}`; a 404 counts as done.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn delete_port(&self, id: &str) -> Result<()> {
        let req = Request::new(
            Service::Network,
            "port_delete",
            Method::DELETE,
            format!("/ports/{id}"),
        );
        match self.session.send_empty(req).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }
}
