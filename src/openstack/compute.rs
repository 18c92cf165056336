//! Nova (compute v2.1, microversion 2.61): servers, flavors, keypairs, and the batched server
//! cache that keeps polling at one list call per cloud and interval.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::error::Result;
use super::session::{Request, Service, Session};

/// A Nova server as capow reads it (`GET /servers/{id}`, microversion 2.61).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Server {
    /// Server UUID.
    pub id: String,
    /// Server name.
    #[serde(default)]
    pub name: String,
    /// Status: `BUILD`, `ACTIVE`, `ERROR`, `SHUTOFF`, `DELETED`, `SOFT_DELETED`, ...
    #[serde(default)]
    pub status: String,
    /// Addresses by network name.
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<ServerAddress>>,
    /// The fault of an `ERROR` server.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Server metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Server tags (microversion ≥ 2.26).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Availability zone (`OS-EXT-AZ:availability_zone`).
    #[serde(default, rename = "OS-EXT-AZ:availability_zone")]
    pub availability_zone: Option<String>,
    /// Task in progress (`OS-EXT-STS:task_state`), e.g. `deleting`.
    #[serde(default, rename = "OS-EXT-STS:task_state")]
    pub task_state: Option<String>,
    /// When Nova created the server (ISO 8601, e.g. `2026-11-30T15:04:05Z`).
    #[serde(default)]
    pub created: Option<String>,
}

/// One address of a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ServerAddress {
    /// The IP address.
    pub addr: String,
    /// IP version, 4 or 6.
    #[serde(default)]
    pub version: u8,
    /// `fixed` or `floating` (`OS-EXT-IPS:type`).
    #[serde(default, rename = "OS-EXT-IPS:type")]
    pub kind: Option<String>,
}

/// Why a server went to `ERROR`, as Nova recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Fault {
    /// HTTP-like code, e.g. 500 for "No valid host was found".
    #[serde(default)]
    pub code: u16,
    /// The fault message, e.g. "No valid host was found. There are not enough hosts available."
    #[serde(default)]
    pub message: String,
}

impl Server {
    /// True for a server Nova has deleted or is deleting.
    pub fn is_gone(&self) -> bool {
        matches!(self.status.as_str(), "DELETED" | "SOFT_DELETED")
            || self.task_state.as_deref() == Some("deleting")
    }
}

/// A Nova flavor (`GET /flavors/{id}`, microversion 2.61 includes `extra_specs`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Flavor {
    /// Flavor ID.
    pub id: String,
    /// Flavor name.
    #[serde(default)]
    pub name: String,
    /// Virtual CPUs.
    #[serde(default)]
    pub vcpus: u32,
    /// Memory in MiB.
    #[serde(default)]
    pub ram: u64,
    /// Root disk in GiB (0 means the image size, typical for boot-from-volume flavors).
    #[serde(default)]
    pub disk: u64,
    /// Ephemeral disk in GiB (`OS-FLV-EXT-DATA:ephemeral`).
    #[serde(default, rename = "OS-FLV-EXT-DATA:ephemeral")]
    pub ephemeral: u64,
    /// Extra specs (microversion ≥ 2.61), e.g. `pci_passthrough:alias`, `resources:VGPU`.
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

/// One entry of `networks` of `POST /servers` (Compute API v2.1, "Create Server"): a port
/// created beforehand (`port`), or a network on which Nova creates the port (`uuid`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NetworkAttachment {
    /// Attach this Neutron port (UUID).
    Port {
        /// Neutron port UUID.
        port: String,
    },
    /// Nova creates a port on this Neutron network (UUID) and deletes it with the server.
    Network {
        /// Neutron network UUID.
        uuid: String,
    },
}

/// One entry of `security_groups` of `POST /servers`: Nova applies the group, named by name
/// or UUID, to the ports it creates (not to ports passed in `networks[].port`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecurityGroupRef {
    /// Security group name or UUID (capow sends UUIDs).
    pub name: String,
}

/// Body of `POST /servers` (the fields capow sets).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CreateServer {
    /// Server name.
    pub name: String,
    /// Flavor ID.
    #[serde(rename = "flavorRef")]
    pub flavor_ref: String,
    /// Image ID (omitted when booting from volume).
    #[serde(rename = "imageRef", skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    /// Ports to attach or networks to create ports on, in order.
    pub networks: Vec<NetworkAttachment>,
    /// Security groups of the ports Nova creates (omitted: Nova applies the project's
    /// `default` group, as Neutron does for a port created without groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<SecurityGroupRef>,
    /// Keypair name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Base64-encoded user data (max 65535 bytes encoded, Nova limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Metadata (keys and values ≤ 255 characters).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Tags (microversion ≥ 2.52), each ≤ 60 characters, at most 50.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Whether to attach a config drive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<bool>,
    /// Availability zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Block device mapping (boot from volume, extra disks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block_device_mapping_v2: Vec<BlockDeviceMapping>,
}

/// One entry of `block_device_mapping_v2` (compute API reference, "Create Server").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlockDeviceMapping {
    /// `volume`, `image` or `blank`.
    pub source_type: String,
    /// `volume` or `local`.
    pub destination_type: String,
    /// Source UUID (volume or image); absent for `blank`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// 0 for the boot device; -1 (omitted here as `None`) for others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_index: Option<i32>,
    /// Size in GiB of a `blank`/`local` disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<i32>,
    /// Delete the volume with the server.
    pub delete_on_termination: bool,
    /// Device tag visible in the guest's metadata (microversion ≥ 2.42).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A Nova server group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ServerGroup {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// `affinity`, `anti-affinity`, `soft-affinity` or `soft-anti-affinity` (microversion ≥ 2.64).
    #[serde(default)]
    pub policy: Option<String>,
}

#[derive(Deserialize)]
struct ServerGroupEnvelope {
    server_group: ServerGroup,
}

#[derive(Deserialize)]
struct ServerGroupsEnvelope {
    server_groups: Vec<ServerGroup>,
}

/// A Nova availability zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AvailabilityZone {
    /// Name.
    #[serde(rename = "zoneName")]
    pub name: String,
    /// Whether it is available.
    #[serde(rename = "zoneState", default)]
    pub state: ZoneState,
}

/// State of an availability zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ZoneState {
    /// True when servers can be scheduled there.
    #[serde(default)]
    pub available: bool,
}

#[derive(Deserialize)]
struct AvailabilityZones {
    #[serde(rename = "availabilityZoneInfo")]
    zones: Vec<AvailabilityZone>,
}

#[derive(Deserialize)]
struct ServerEnvelope {
    server: Server,
}

#[derive(Deserialize)]
struct ServersEnvelope {
    servers: Vec<Server>,
}

#[derive(Deserialize)]
struct CreatedEnvelope {
    server: Created,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct FlavorEnvelope {
    flavor: Flavor,
}

#[derive(Deserialize)]
struct FlavorsEnvelope {
    flavors: Vec<Flavor>,
}

/// Nova server listing, batched: one `GET /servers/detail?tags=<tag>` per interval serves the
/// state of every capow server of the session's project to every reconcile that asks.
#[derive(Default)]
pub struct ServerCache {
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    fetched_at: Option<Instant>,
    servers: HashMap<String, Server>,
}

/// Typed Nova calls of a [`Session`].
#[derive(Clone, Debug)]
pub struct Compute<'a> {
    session: &'a Session,
}

impl Session {
    /// Nova calls.
    pub fn compute(&self) -> Compute<'_> {
        Compute { session: self }
    }
}

impl Compute<'_> {
    /// `GET /servers/{id}`; `None` when Nova answers 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_server(&self, id: &str) -> Result<Option<Server>> {
        let req = Request::new(
            Service::Compute,
            "server_get",
            Method::GET,
            format!("/servers/{id}"),
        );
        match self.session.send::<ServerEnvelope>(req).await {
            Ok(e) => Ok(Some(e.server)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /servers/detail?tags=<all of tags>`: servers carrying every tag in `tags`.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_servers_by_tags(&self, tags: &[&str]) -> Result<Vec<Server>> {
        let req = Request::new(
            Service::Compute,
            "server_list",
            Method::GET,
            "/servers/detail",
        )
        .query("tags", tags.join(","));
        Ok(self.session.send::<ServersEnvelope>(req).await?.servers)
    }

    /// `POST /servers`; returns the new server's UUID. Nova answers 202 at once and builds the
    /// server asynchronously.
    ///
    /// # Errors
    /// [`super::Error::Api`] with 400 (bad flavor/image/network), 403 or 413 (quota), 409.
    pub async fn create_server(
        &self,
        server: &CreateServer,
        scheduler_hints: &serde_json::Map<String, Value>,
    ) -> Result<String> {
        let mut body = json!({ "server": server });
        if !scheduler_hints.is_empty() {
            body["os:scheduler_hints"] = Value::Object(scheduler_hints.clone());
        }
        let req =
            Request::new(Service::Compute, "server_create", Method::POST, "/servers").json(body);
        Ok(self.session.send::<CreatedEnvelope>(req).await?.server.id)
    }

    /// `DELETE /servers/{id}`; a 404 counts as done.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn delete_server(&self, id: &str) -> Result<()> {
        let req = Request::new(
            Service::Compute,
            "server_delete",
            Method::DELETE,
            format!("/servers/{id}"),
        );
        match self.session.send_empty(req).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `PUT /servers/{id}/tags` (microversion ≥ 2.26): replaces every tag of the server in one
    /// call, so a reader sees either the old tags or the new ones (compute API reference,
    /// "Replace Tags").
    ///
    /// # Errors
    /// Any [`super::Error`] (404 when the server is gone, 400 for a tag Nova refuses).
    pub async fn set_server_tags(&self, id: &str, tags: &[String]) -> Result<()> {
        let req = Request::new(
            Service::Compute,
            "server_tags_set",
            Method::PUT,
            format!("/servers/{id}/tags"),
        )
        .json(json!({ "tags": tags }));
        self.session.send_empty(req).await
    }

    /// `POST /servers/{id}/metadata`: creates or replaces the metadata items in `items` and
    /// leaves the server's other items alone (compute API reference, "Create or Update Metadata
    /// Items").
    ///
    /// # Errors
    /// Any [`super::Error`] (404 when the server is gone).
    pub async fn update_server_metadata(
        &self,
        id: &str,
        items: &BTreeMap<String, String>,
    ) -> Result<()> {
        let req = Request::new(
            Service::Compute,
            "server_metadata_update",
            Method::POST,
            format!("/servers/{id}/metadata"),
        )
        .json(json!({ "metadata": items }));
        self.session.send_empty(req).await
    }

    /// `GET /flavors/{id}`; `None` when Nova answers 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_flavor(&self, id: &str) -> Result<Option<Flavor>> {
        let req = Request::new(
            Service::Compute,
            "flavor_get",
            Method::GET,
            format!("/flavors/{id}"),
        );
        match self.session.send::<FlavorEnvelope>(req).await {
            Ok(e) => Ok(Some(e.flavor)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /flavors/detail` (public and, for admins, all flavors the project can use).
    /// Nova has no name filter, so callers match by name themselves.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        let req = Request::new(
            Service::Compute,
            "flavor_list",
            Method::GET,
            "/flavors/detail",
        );
        Ok(self.session.send::<FlavorsEnvelope>(req).await?.flavors)
    }

    /// `GET /os-server-groups/{id}`; `None` on 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_server_group(&self, id: &str) -> Result<Option<ServerGroup>> {
        let req = Request::new(
            Service::Compute,
            "server_group_get",
            Method::GET,
            format!("/os-server-groups/{id}"),
        );
        match self.session.send::<ServerGroupEnvelope>(req).await {
            Ok(e) => Ok(Some(e.server_group)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /os-server-groups` (the project's groups; Nova has no name filter).
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_server_groups(&self) -> Result<Vec<ServerGroup>> {
        let req = Request::new(
            Service::Compute,
            "server_group_list",
            Method::GET,
            "/os-server-groups",
        )
        .query("limit", "1000");
        Ok(self
            .session
            .send::<ServerGroupsEnvelope>(req)
            .await?
            .server_groups)
    }

    /// `GET /os-availability-zone`: the compute availability zones.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_availability_zones(&self) -> Result<Vec<AvailabilityZone>> {
        let req = Request::new(
            Service::Compute,
            "availability_zone_list",
            Method::GET,
            "/os-availability-zone",
        );
        Ok(self.session.send::<AvailabilityZones>(req).await?.zones)
    }

    /// `GET /os-keypairs/{name}`: true when the keypair exists for the user.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn keypair_exists(&self, name: &str) -> Result<bool> {
        let req = Request::new(
            Service::Compute,
            "keypair_get",
            Method::GET,
            format!("/os-keypairs/{name}"),
        );
        match self.session.send::<Value>(req).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The state of server `id` from a listing of all servers tagged `tag` that is at most
    /// `max_age` old; refreshes the listing (one API call, shared by concurrent callers) when
    /// it is older. Falls back to a direct GET when the listing does not contain the server,
    /// so a server that lost its tag is never taken for deleted.
    ///
    /// # Errors
    /// Any [`super::Error`] of the list or the fallback GET.
    pub async fn cached_server(
        &self,
        id: &str,
        tag: &str,
        max_age: Duration,
    ) -> Result<Option<Server>> {
        let cache = &self.session.servers;
        {
            let mut state = cache.state.lock().await;
            let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < max_age);
            if !fresh {
                let servers = self.list_servers_by_tags(&[tag]).await?;
                state.servers = servers.into_iter().map(|s| (s.id.clone(), s)).collect();
                state.fetched_at = Some(Instant::now());
            }
            // The listing can omit the fault of an ERROR server (seen on Nova Zed with a tag
            // filter); only a direct GET is sure to carry it.
            if let Some(server) = state.servers.get(id)
                && !(server.status == "ERROR" && server.fault.is_none())
            {
                return Ok(Some(server.clone()));
            }
        }
        self.get_server(id).await
    }

    /// Servers of the cached listing of all servers tagged `tag` (at most `max_age` old; one
    /// API call refreshes it, shared by concurrent callers) that also carry `with_tag`. Unlike
    /// [`Compute::cached_server`] this never falls back to a direct call, so callers that must
    /// be sure nothing exists list again with [`Compute::list_servers_by_tags`].
    ///
    /// # Errors
    /// Any [`super::Error`] of the list call.
    pub async fn cached_servers_with_tag(
        &self,
        tag: &str,
        with_tag: &str,
        max_age: Duration,
    ) -> Result<Vec<Server>> {
        let mut state = self.session.servers.state.lock().await;
        let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < max_age);
        if !fresh {
            let servers = self.list_servers_by_tags(&[tag]).await?;
            state.servers = servers.into_iter().map(|s| (s.id.clone(), s)).collect();
            state.fetched_at = Some(Instant::now());
        }
        Ok(state
            .servers
            .values()
            .filter(|s| s.tags.iter().any(|t| t == with_tag))
            .cloned()
            .collect())
    }

    /// Forgets the cached listing, so the next [`Compute::cached_server`] lists again (used
    /// after a create or delete changes what the listing would show).
    pub async fn invalidate_server_cache(&self) {
        self.session.servers.state.lock().await.fetched_at = None;
    }
}
