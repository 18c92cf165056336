//! Neutron (network v2.0): networks, subnets, routers, security groups and their rules, ports
//! and trunks, by ID or by filter, and the tags and descriptions capow marks them with.

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
    /// Description (capow writes its ownership marker here, see the cluster controller).
    #[serde(default)]
    pub description: String,
    /// Creation time (RFC 3339, `standard-attr-timestamp` extension).
    #[serde(default)]
    pub created_at: Option<String>,
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
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Description (capow writes its ownership marker here, see the cluster controller).
    #[serde(default)]
    pub description: String,
}

/// A Neutron security group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SecurityGroup {
    /// Security group UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Description (capow writes its ownership marker here, see the cluster controller).
    #[serde(default)]
    pub description: String,
    /// Creation time (RFC 3339, `standard-attr-timestamp` extension).
    #[serde(default)]
    pub created_at: Option<String>,
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

/// A Neutron router.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Router {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// External gateway.
    #[serde(default)]
    pub external_gateway_info: Option<ExternalGatewayInfo>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Description (capow writes its ownership marker here, see the cluster controller).
    #[serde(default)]
    pub description: String,
    /// Creation time (RFC 3339, `standard-attr-timestamp` extension).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// Gateway of a router.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalGatewayInfo {
    /// External network UUID.
    pub network_id: String,
    /// Gateway addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_fixed_ips: Vec<PortFixedIp>,
}

/// A security group rule as Neutron returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SecurityGroupRule {
    /// UUID.
    pub id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// Protocol, `None` for any.
    #[serde(default)]
    pub protocol: Option<String>,
    /// First port.
    #[serde(default)]
    pub port_range_min: Option<i32>,
    /// Last port.
    #[serde(default)]
    pub port_range_max: Option<i32>,
    /// Remote group.
    #[serde(default)]
    pub remote_group_id: Option<String>,
    /// Remote CIDR.
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
}

/// Body of `POST /v2.0/security-group-rules`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreateSecurityGroupRule {
    /// Group the rule belongs to.
    pub security_group_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` or `IPv6`.
    pub ethertype: String,
    /// Protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// First port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_range_min: Option<i32>,
    /// Last port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_range_max: Option<i32>,
    /// Remote group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_group_id: Option<String>,
    /// Remote CIDR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix: Option<String>,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A Neutron trunk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Trunk {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Parent port.
    #[serde(default)]
    pub port_id: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Creation time (RFC 3339, `standard-attr-timestamp` extension).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// Resource kinds that carry Neutron tags (`/v2.0/<kind>/<id>/tags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaggedResource {
    /// `networks`.
    Network,
    /// `subnets`.
    Subnet,
    /// `routers`.
    Router,
    /// `security-groups`.
    SecurityGroup,
    /// `ports`.
    Port,
    /// `trunks`.
    Trunk,
}

impl TaggedResource {
    fn path(self) -> &'static str {
        match self {
            TaggedResource::Network => "networks",
            TaggedResource::Subnet => "subnets",
            TaggedResource::Router => "routers",
            TaggedResource::SecurityGroup => "security-groups",
            TaggedResource::Port => "ports",
            TaggedResource::Trunk => "trunks",
        }
    }

    /// The resource's key in request and response bodies (`network`, `security_group`, ...).
    fn singular(self) -> &'static str {
        match self {
            TaggedResource::Network => "network",
            TaggedResource::Subnet => "subnet",
            TaggedResource::Router => "router",
            TaggedResource::SecurityGroup => "security_group",
            TaggedResource::Port => "port",
            TaggedResource::Trunk => "trunk",
        }
    }
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
    /// MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Allowed address pairs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_address_pairs: Vec<serde_json::Value>,
    /// Host binding (`binding:host_id`).
    #[serde(rename = "binding:host_id", skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// Binding profile (`binding:profile`).
    #[serde(
        rename = "binding:profile",
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    pub profile: serde_json::Map<String, serde_json::Value>,
    /// `propagate_uplink_status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagate_uplink_status: Option<bool>,
    /// Extra attributes (CAPO `valueSpecs`), merged into the body.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Body of `POST /v2.0/networks` (the fields capow sets), sent as `{"network": <this>}`
/// (Networking API v2.0, "Create network",
/// <https://docs.openstack.org/api-ref/network/v2/#create-network>).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreateNetwork {
    /// Network name.
    pub name: String,
    /// Administrative state; capow always creates networks up (`true`).
    pub admin_state_up: bool,
    /// Description (capow writes its ownership marker here, see the cluster controller).
    pub description: String,
    /// Tags; `None` omits the field (clouds without the `tag-creation` extension refuse it
    /// in a create request, so the caller tags in a second call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// MTU in bytes; omitted: the cloud's default (`net-mtu-writable` extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// Port security default of the network's ports; omitted: the cloud's default
    /// (`port-security` extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_security_enabled: Option<bool>,
}

/// An IP range of a subnet, both ends included (Networking API v2.0, "Create subnet",
/// `allocation_pools`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AllocationPool {
    /// First address, e.g. `10.6.0.10`.
    pub start: String,
    /// Last address, e.g. `10.6.0.200`.
    pub end: String,
}

/// Body of `POST /v2.0/subnets` (the fields capow sets), sent as `{"subnet": <this>}`
/// (Networking API v2.0, "Create subnet",
/// <https://docs.openstack.org/api-ref/network/v2/#create-subnet>).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreateSubnet {
    /// Network UUID the subnet belongs to.
    pub network_id: String,
    /// Subnet name.
    pub name: String,
    /// CIDR, e.g. `10.6.0.0/24` or `fd00:6::/64`.
    pub cidr: String,
    /// IP version: `4` or `6` (a JSON number).
    pub ip_version: u8,
    /// Description (capow writes its ownership marker here, see the cluster controller).
    pub description: String,
    /// Tags; `None` omits the field (see [`CreateNetwork::tags`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// DNS servers handed out by DHCP (addresses); omitted when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_nameservers: Vec<String>,
    /// Allocation pools; omitted when empty (Neutron then allocates the whole CIDR minus the
    /// gateway).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocation_pools: Vec<AllocationPool>,
}

/// Body of `POST /v2.0/routers` (the fields capow sets), sent as `{"router": <this>}`
/// (Networking API v2.0, "Create router",
/// <https://docs.openstack.org/api-ref/network/v2/#create-router>).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreateRouter {
    /// Router name.
    pub name: String,
    /// The external network and, optionally, the gateway's fixed addresses
    /// (`external_fixed_ips` is omitted when empty: Neutron picks one).
    pub external_gateway_info: ExternalGatewayInfo,
    /// Description (capow writes its ownership marker here, see the cluster controller).
    pub description: String,
    /// Tags; `None` omits the field (see [`CreateNetwork::tags`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// Body of `POST /v2.0/security-groups`, sent as `{"security_group": <this>}` (Networking
/// API v2.0, "Create security group",
/// <https://docs.openstack.org/api-ref/network/v2/#create-security-group>). Neutron adds
/// its default egress rules (IPv4 and IPv6, any protocol) to every new group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreateSecurityGroup {
    /// Group name.
    pub name: String,
    /// Description (capow writes its ownership marker here, see the cluster controller).
    pub description: String,
    /// Tags; `None` omits the field (see [`CreateNetwork::tags`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
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

    /// The tag filters as `(query key, tags)`, in the order Neutron documents them.
    fn tag_filters(&self) -> [(&'static str, &[String]); 4] {
        [
            ("tags", &self.tags),
            ("tags-any", &self.tags_any),
            ("not-tags", &self.not_tags),
            ("not-tags-any", &self.not_tags_any),
        ]
    }

    fn apply(&self, mut req: Request) -> Request {
        for (k, v) in &self.attributes {
            req = req.query(k, v.clone());
        }
        for (key, tags) in self.tag_filters() {
            if !tags.is_empty() {
                req = req.query(key, tags.join(","));
            }
        }
        req
    }
}

/// The filter as people read it, in the query's own terms, e.g. `name=net1, tags=a,b` (an
/// empty filter is `(none)`), so a message can say "no network matches the filter name=net1".
/// Values longer than 1 KiB are cut.
impl std::fmt::Display for ListFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attributes = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={}", super::error::capped(v)));
        let tags = self
            .tag_filters()
            .into_iter()
            .filter(|(_, tags)| !tags.is_empty())
            .map(|(k, tags)| format!("{k}={}", super::error::capped(&tags.join(","))));
        let parts: Vec<String> = attributes.chain(tags).collect();
        if parts.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&parts.join(", "))
        }
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
struct Routers {
    routers: Vec<Router>,
}
#[derive(Deserialize)]
struct RouterEnvelope {
    router: Router,
}
#[derive(Deserialize)]
struct Rules {
    security_group_rules: Vec<SecurityGroupRule>,
}
#[derive(Deserialize)]
struct RuleEnvelope {
    security_group_rule: SecurityGroupRule,
}
#[derive(Deserialize)]
struct Trunks {
    trunks: Vec<Trunk>,
}
#[derive(Deserialize)]
struct TrunkEnvelope {
    trunk: Trunk,
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

    /// `GET /v2.0/extensions/{alias}`: true when the extension is loaded (e.g. `trunk`).
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn has_extension(&self, alias: &str) -> Result<bool> {
        let req = Request::new(
            Service::Network,
            "extension_get",
            Method::GET,
            format!("/extensions/{alias}"),
        );
        match self.session.send::<serde_json::Value>(req).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v2.0/<kind>/{id}/tags`: replaces the tags of any tagged resource.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn set_tags(&self, kind: TaggedResource, id: &str, tags: &[String]) -> Result<()> {
        let req = Request::new(
            Service::Network,
            "tags_set",
            Method::PUT,
            format!("/{}/{id}/tags", kind.path()),
        )
        .json(json!({ "tags": tags }));
        self.session.send_empty(req).await
    }

    /// `PUT /v2.0/<kind>/{id}` with only `description`: replaces the resource's description
    /// (every Neutron resource capow creates has one; Networking API reference, "Update
    /// network" and its siblings).
    ///
    /// # Errors
    /// Any [`super::Error`] (404 when the resource is gone).
    pub async fn set_description(
        &self,
        kind: TaggedResource,
        id: &str,
        description: &str,
    ) -> Result<()> {
        let req = Request::new(
            Service::Network,
            "description_set",
            Method::PUT,
            format!("/{}/{id}", kind.path()),
        )
        .json(json!({ kind.singular(): { "description": description } }));
        self.session.send_empty(req).await
    }

    /// `DELETE /v2.0/<kind>/{id}` for any resource kind; a 404 counts as done.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404 (409 while the resource is still in use).
    pub async fn delete(&self, kind: TaggedResource, id: &str) -> Result<()> {
        let op = match kind {
            TaggedResource::Network => "network_delete",
            TaggedResource::Subnet => "subnet_delete",
            TaggedResource::Router => "router_delete",
            TaggedResource::SecurityGroup => "security_group_delete",
            TaggedResource::Port => "port_delete",
            TaggedResource::Trunk => "trunk_delete",
        };
        let req = Request::new(
            Service::Network,
            op,
            Method::DELETE,
            format!("/{}/{id}", kind.path()),
        );
        match self.session.send_empty(req).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `POST /v2.0/networks`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn create_network(&self, body: &CreateNetwork) -> Result<Network> {
        let req = Request::new(
            Service::Network,
            "network_create",
            Method::POST,
            "/networks",
        )
        .json(json!({ "network": body }));
        Ok(self.session.send::<NetworkEnvelope>(req).await?.network)
    }

    /// `POST /v2.0/subnets`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn create_subnet(&self, body: &CreateSubnet) -> Result<Subnet> {
        let req = Request::new(Service::Network, "subnet_create", Method::POST, "/subnets")
            .json(json!({ "subnet": body }));
        Ok(self.session.send::<SubnetEnvelope>(req).await?.subnet)
    }

    /// `GET /v2.0/routers/{id}`; `None` on 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_router(&self, id: &str) -> Result<Option<Router>> {
        get_or_none!(
            self.session,
            "router_get",
            format!("/routers/{id}"),
            RouterEnvelope,
            router
        )
    }

    /// `GET /v2.0/routers?<filter>`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_routers(&self, filter: &ListFilter) -> Result<Vec<Router>> {
        let req = filter.apply(Request::new(
            Service::Network,
            "router_list",
            Method::GET,
            "/routers",
        ));
        Ok(self.session.send::<Routers>(req).await?.routers)
    }

    /// `POST /v2.0/routers`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn create_router(&self, body: &CreateRouter) -> Result<Router> {
        let req = Request::new(Service::Network, "router_create", Method::POST, "/routers")
            .json(json!({ "router": body }));
        Ok(self.session.send::<RouterEnvelope>(req).await?.router)
    }

    /// `PUT /v2.0/routers/{id}/add_router_interface` with a subnet. A 400 "already has a port
    /// on subnet" counts as done.
    ///
    /// # Errors
    /// Any other [`super::Error`].
    pub async fn add_router_interface(&self, router: &str, subnet: &str) -> Result<()> {
        let req = Request::new(
            Service::Network,
            "router_interface_add",
            Method::PUT,
            format!("/routers/{router}/add_router_interface"),
        )
        .json(json!({ "subnet_id": subnet }));
        match self.session.send_empty(req).await {
            Err(super::Error::Api(e)) if e.message.contains("already has a port") => Ok(()),
            other => other,
        }
    }

    /// `PUT /v2.0/routers/{id}/remove_router_interface`; "not found" counts as done.
    ///
    /// # Errors
    /// Any other [`super::Error`].
    pub async fn remove_router_interface(&self, router: &str, subnet: &str) -> Result<()> {
        let req = Request::new(
            Service::Network,
            "router_interface_remove",
            Method::PUT,
            format!("/routers/{router}/remove_router_interface"),
        )
        .json(json!({ "subnet_id": subnet }));
        match self.session.send_empty(req).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `POST /v2.0/security-groups`, with `tags` in the body when given (only clouds with the
    /// `tag-creation` extension accept them there).
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn create_security_group(&self, body: &CreateSecurityGroup) -> Result<SecurityGroup> {
        let req = Request::new(
            Service::Network,
            "security_group_create",
            Method::POST,
            "/security-groups",
        )
        .json(json!({ "security_group": body }));
        Ok(self
            .session
            .send::<SecurityGroupEnvelope>(req)
            .await?
            .security_group)
    }

    /// `GET /v2.0/security-group-rules?security_group_id=<id>`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_security_group_rules(&self, group: &str) -> Result<Vec<SecurityGroupRule>> {
        let req = Request::new(
            Service::Network,
            "security_group_rule_list",
            Method::GET,
            "/security-group-rules",
        )
        .query("security_group_id", group);
        Ok(self.session.send::<Rules>(req).await?.security_group_rules)
    }

    /// `POST /v2.0/security-group-rules`.
    ///
    /// # Errors
    /// Any [`super::Error`] (409 when an identical rule exists).
    pub async fn create_security_group_rule(
        &self,
        rule: &CreateSecurityGroupRule,
    ) -> Result<SecurityGroupRule> {
        let req = Request::new(
            Service::Network,
            "security_group_rule_create",
            Method::POST,
            "/security-group-rules",
        )
        .json(json!({ "security_group_rule": rule }));
        Ok(self
            .session
            .send::<RuleEnvelope>(req)
            .await?
            .security_group_rule)
    }

    /// `DELETE /v2.0/security-group-rules/{id}`; a 404 counts as done.
    ///
    /// # Errors
    /// Any other [`super::Error`].
    pub async fn delete_security_group_rule(&self, id: &str) -> Result<()> {
        let req = Request::new(
            Service::Network,
            "security_group_rule_delete",
            Method::DELETE,
            format!("/security-group-rules/{id}"),
        );
        match self.session.send_empty(req).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `GET /v2.0/trunks?<filter>`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_trunks(&self, filter: &ListFilter) -> Result<Vec<Trunk>> {
        let req = filter.apply(Request::new(
            Service::Network,
            "trunk_list",
            Method::GET,
            "/trunks",
        ));
        Ok(self.session.send::<Trunks>(req).await?.trunks)
    }

    /// `POST /v2.0/trunks` with `port` as parent.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn create_trunk(&self, name: &str, port: &str) -> Result<Trunk> {
        let req = Request::new(Service::Network, "trunk_create", Method::POST, "/trunks")
            .json(json!({ "trunk": { "name": name, "port_id": port } }));
        Ok(self.session.send::<TrunkEnvelope>(req).await?.trunk)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The body as it goes on the wire, e.g. `{"network": {...}}`.
    fn wire(key: &str, body: &impl Serialize) -> serde_json::Value {
        json!({ key: body })
    }

    #[test]
    fn a_network_create_names_the_fields_neutron_documents_and_omits_unset_options() {
        let mut body = CreateNetwork {
            name: "capow-ns-c1".into(),
            admin_state_up: true,
            description: "Created by capow".into(),
            ..CreateNetwork::default()
        };
        assert_eq!(
            wire("network", &body),
            json!({"network": {
                "name": "capow-ns-c1",
                "admin_state_up": true,
                "description": "Created by capow",
            }})
        );
        body.tags = Some(vec!["capow".into(), "capow-cluster-uid=u1".into()]);
        body.mtu = Some(1450);
        body.port_security_enabled = Some(false);
        assert_eq!(
            wire("network", &body),
            json!({"network": {
                "name": "capow-ns-c1",
                "admin_state_up": true,
                "description": "Created by capow",
                "tags": ["capow", "capow-cluster-uid=u1"],
                "mtu": 1450,
                "port_security_enabled": false,
            }})
        );
    }

    #[test]
    fn a_subnet_create_sends_ip_version_as_a_number_and_omits_empty_lists() {
        let mut body = CreateSubnet {
            network_id: "net-1".into(),
            name: "capow-ns-c1-0".into(),
            cidr: "10.6.0.0/24".into(),
            ip_version: 4,
            description: "d".into(),
            ..CreateSubnet::default()
        };
        assert_eq!(
            wire("subnet", &body),
            json!({"subnet": {
                "network_id": "net-1",
                "name": "capow-ns-c1-0",
                "cidr": "10.6.0.0/24",
                "ip_version": 4,
                "description": "d",
            }})
        );
        body.tags = Some(vec!["capow".into()]);
        body.dns_nameservers = vec!["10.0.0.53".into()];
        body.allocation_pools = vec![AllocationPool {
            start: "10.6.0.10".into(),
            end: "10.6.0.200".into(),
        }];
        assert_eq!(
            wire("subnet", &body)["subnet"],
            json!({
                "network_id": "net-1",
                "name": "capow-ns-c1-0",
                "cidr": "10.6.0.0/24",
                "ip_version": 4,
                "description": "d",
                "tags": ["capow"],
                "dns_nameservers": ["10.0.0.53"],
                "allocation_pools": [{"start": "10.6.0.10", "end": "10.6.0.200"}],
            })
        );
    }

    #[test]
    fn a_router_create_sets_the_gateway_and_only_the_fixed_ips_asked_for() {
        let mut body = CreateRouter {
            name: "capow-ns-c1".into(),
            external_gateway_info: ExternalGatewayInfo {
                network_id: "ext-1".into(),
                external_fixed_ips: Vec::new(),
            },
            description: "d".into(),
            tags: None,
        };
        assert_eq!(
            wire("router", &body),
            json!({"router": {
                "name": "capow-ns-c1",
                "external_gateway_info": {"network_id": "ext-1"},
                "description": "d",
            }})
        );
        body.external_gateway_info.external_fixed_ips = vec![PortFixedIp {
            subnet_id: None,
            ip_address: Some("172.24.4.10".into()),
        }];
        body.tags = Some(vec!["capow".into()]);
        assert_eq!(
            wire("router", &body)["router"],
            json!({
                "name": "capow-ns-c1",
                "external_gateway_info": {
                    "network_id": "ext-1",
                    "external_fixed_ips": [{"ip_address": "172.24.4.10"}],
                },
                "description": "d",
                "tags": ["capow"],
            })
        );
    }

    #[test]
    fn a_security_group_create_carries_tags_only_when_given() {
        let mut body = CreateSecurityGroup {
            name: "capow-ns-c1-worker".into(),
            description: "d".into(),
            tags: None,
        };
        assert_eq!(
            wire("security_group", &body),
            json!({"security_group": {"name": "capow-ns-c1-worker", "description": "d"}})
        );
        body.tags = Some(vec!["capow".into()]);
        assert_eq!(
            wire("security_group", &body)["security_group"]["tags"],
            json!(["capow"])
        );
    }

    #[test]
    fn filters_read_as_their_query() {
        let filter = ListFilter {
            attributes: vec![("name", "net1".into()), ("router:external", "true".into())],
            tags: vec!["a".into(), "b".into()],
            not_tags_any: vec!["old".into()],
            ..ListFilter::default()
        };
        assert_eq!(
            format!("no network matches the filter {filter}"),
            "no network matches the filter name=net1, router:external=true, tags=a,b, not-tags-any=old"
        );
        assert_eq!(ListFilter::default().to_string(), "(none)");
    }
}
