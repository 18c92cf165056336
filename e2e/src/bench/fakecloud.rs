//! A recorded cloud state served on loopback, for the benchmark's memory and CPU part
//! ([`super::scale`]): Keystone, Nova, Neutron and Glance answering a fixed set of ACTIVE
//! servers (thousands) with their ports, in the shapes the real e2e cloud gives (Nova 2.61
//! `servers/detail` with tags, addresses and availability zone; Neutron ports with `device_id`
//! and fixed IPs). Nothing changes: writes answer 403, so a manager that tried to create or
//! delete something would show it in the counts instead of changing the state.
//!
//! Every request is counted by method and normalized path (as [`crate::osproxy`] counts).
//! The server list is rendered once; a filter (`tags`, `name`, `id`) selects from it.
//!
//! API references: <https://docs.openstack.org/api-ref/identity/v3/>,
//! <https://docs.openstack.org/api-ref/compute/>, <https://docs.openstack.org/api-ref/network/v2/>,
//! <https://docs.openstack.org/api-ref/image/v2/>.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

/// The project of the fake token.
pub const PROJECT: &str = "0b5e4e1f2a3b4c5d8e9f0a1b2c3d4e5f";
/// The network every server is on.
pub const NETWORK_ID: &str = "5d0f1b9e-0000-4000-8000-00000000c0de";
/// The subnet of [`NETWORK_ID`].
pub const SUBNET_ID: &str = "5d0f1b9e-0000-4000-8000-00000005b0e7";
/// Flavor ID (m1.tiny).
pub const FLAVOR_ID: &str = "1";
/// Image ID.
pub const IMAGE_ID: &str = "66e2abef-0000-4000-8000-0000000001a6";

/// One server of the state.
#[derive(Clone, Debug)]
pub struct FakeServer {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Its port's UUID.
    pub port_id: String,
    /// Its fixed IPv4 address.
    pub ip: String,
}

impl FakeServer {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "status": "ACTIVE", "tenant_id": PROJECT,
            "user_id": "b1e2", "created": "2026-11-30T12:00:00Z", "updated": "2026-11-30T12:00:05Z",
            "hostId": "3f0c", "OS-EXT-AZ:availability_zone": "nova",
            "OS-EXT-STS:task_state": null, "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:power_state": 1,
            "flavor": {"original_name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1, "ephemeral": 0, "swap": 0, "extra_specs": {}},
            "image": {"id": IMAGE_ID}, "key_name": null, "metadata": self.metadata, "tags": self.tags,
            "addresses": {"osdev-net": [{"addr": self.ip, "version": 4, "OS-EXT-IPS:type": "fixed",
                                         "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}]},
            "security_groups": [{"name": "default"}], "locked": false, "description": null,
            "links": [], "config_drive": "", "progress": 0, "accessIPv4": "", "accessIPv6": "",
            "os-extended-volumes:volumes_attached": [], "trusted_image_certificates": null,
            "host_status": "UP", "OS-SRV-USG:launched_at": "2026-11-30T12:00:05.000000"})
    }

    fn port_json(&self) -> Value {
        json!({
            "id": self.port_id, "name": format!("{}-0", self.name), "network_id": NETWORK_ID,
            "tenant_id": PROJECT, "project_id": PROJECT, "mac_address": "fa:16:3e:00:00:01",
            "admin_state_up": true, "status": "ACTIVE", "device_id": self.id,
            "device_owner": "compute:nova", "fixed_ips": [{"subnet_id": SUBNET_ID, "ip_address": self.ip}],
            "security_groups": [], "tags": self.tags, "description": "", "binding:vnic_type": "normal",
            "port_security_enabled": true, "allowed_address_pairs": [], "extra_dhcp_opts": [],
            "created_at": "2026-11-30T12:00:00Z", "updated_at": "2026-11-30T12:00:05Z",
            "revision_number": 3})
    }
}

struct Shared {
    origin: String,
    servers: Vec<FakeServer>,
    by_id: HashMap<String, usize>,
    all_servers: Bytes,
    all_ports: Bytes,
    counts: Mutex<BTreeMap<String, u64>>,
}

/// The running fake; stops when dropped.
pub struct FakeCloud {
    /// `http://127.0.0.1:<port>`.
    pub origin: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCloud {
    /// Serves `servers` on a free loopback port.
    ///
    /// # Errors
    /// When binding fails.
    pub async fn start(servers: Vec<FakeServer>) -> anyhow::Result<FakeCloud> {
        FakeCloud::start_on(servers, 0).await
    }

    /// Serves `servers` on loopback port `port` (0: a free one).
    ///
    /// # Errors
    /// When binding fails.
    pub async fn start_on(servers: Vec<FakeServer>, port: u16) -> anyhow::Result<FakeCloud> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let all_servers = serde_json::to_vec(
            &json!({"servers": servers.iter().map(FakeServer::to_json).collect::<Vec<_>>()}),
        )?
        .into();
        let all_ports = serde_json::to_vec(
            &json!({"ports": servers.iter().map(FakeServer::port_json).collect::<Vec<_>>()}),
        )?
        .into();
        let by_id = servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let shared = Arc::new(Shared {
            origin: origin.clone(),
            servers,
            by_id,
            all_servers,
            all_ports,
            counts: Mutex::new(BTreeMap::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeCloud {
            origin,
            shared,
            task,
        })
    }

    /// Keystone's `auth_url`.
    pub fn auth_url(&self) -> String {
        format!("{}/identity/v3", self.origin)
    }

    /// A clouds.yaml with cloud `cloud` pointing at the fake (any password works).
    pub fn clouds_yaml(&self, cloud: &str) -> String {
        format!(
            "clouds:\n  {cloud}:\n    auth:\n      auth_url: {}\n      username: demo\n      password: fake\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    interface: public\n    identity_api_version: 3\n",
            self.auth_url()
        )
    }

    /// Requests so far, `"<METHOD> <normalized path>"` → count.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        match self.shared.counts.lock() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_map(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn catalog(origin: &str) -> Value {
    let entry = |kind: &str, url: String| {
        json!({"type": kind, "name": kind, "id": kind, "endpoints": [
            {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": url, "id": format!("{kind}-public")},
            {"interface": "internal", "region": "RegionOne", "region_id": "RegionOne", "url": url, "id": format!("{kind}-internal")}]})
    };
    json!([
        entry("identity", format!("{origin}/identity/v3")),
        entry("compute", format!("{origin}/compute/v2.1")),
        entry("network", format!("{origin}/network")),
        entry("image", format!("{origin}/image")),
        entry("placement", format!("{origin}/placement")),
        entry("block-storage", format!("{origin}/volume/v3/{PROJECT}")),
        entry("volumev3", format!("{origin}/volume/v3/{PROJECT}")),
    ])
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = query_map(req.uri().query());
    let key = format!("{method} {}", crate::osproxy::normalize_path(&path, ""));
    if let Ok(mut c) = shared.counts.lock() {
        *c.entry(key).or_default() += 1;
    }
    let q = |k: &str| query.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());

    if path.ends_with("/auth/tokens") {
        let expires = k8s_openapi::jiff::Timestamp::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(24))
            .map(|t| t.to_string())
            .unwrap_or_default();
        let body = json!({"token": {"methods": ["password"], "expires_at": expires,
            "issued_at": k8s_openapi::jiff::Timestamp::now().to_string(),
            "user": {"id": "b1e2", "name": "demo", "domain": {"id": "default", "name": "Default"}},
            "project": {"id": PROJECT, "name": "demo", "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r1", "name": "member"}, {"id": "r2", "name": "reader"}],
            "catalog": catalog(&shared.origin)}});
        let mut r = json_response(
            if method == axum::http::Method::POST {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            body.to_string(),
        );
        r.headers_mut().insert(
            "X-Subject-Token",
            header::HeaderValue::from_static("fake-bench-token"),
        );
        return r;
    }
    if method != axum::http::Method::GET {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"forbidden": {"message": "the recorded cloud state is read-only", "code": 403}})
                .to_string(),
        );
    }
    // Version discovery (unauthenticated `GET` of each endpoint), which gophercloud v2 clients
    // such as CAPO's make before their first call: the documents Nova, Neutron and Glance
    // serve (Compute API "API Versions", Networking API "List API versions", Image API
    // "Version history").
    let origin = &shared.origin;
    match path.as_str() {
        "/compute/v2.1" | "/compute/v2.1/" => {
            return json_response(
                StatusCode::OK,
                json!({"version": {"id": "v2.1", "status": "CURRENT", "version": "2.96",
                    "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                    "links": [{"rel": "self", "href": format!("{origin}/compute/v2.1/")}]}})
                .to_string(),
            );
        }
        "/network" | "/network/" => {
            return json_response(
                StatusCode::OK,
                json!({"versions": [{"id": "v2.0", "status": "CURRENT",
                    "links": [{"rel": "self", "href": format!("{origin}/network/v2.0/")}]}]})
                .to_string(),
            );
        }
        "/image" | "/image/" => {
            return json_response(
                StatusCode::OK,
                json!({"versions": [{"id": "v2.16", "status": "CURRENT",
                    "links": [{"rel": "self", "href": format!("{origin}/image/v2/")}]}]})
                .to_string(),
            );
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/compute/v2.1") {
        return compute(&shared, rest, &q);
    }
    if let Some(rest) = path.strip_prefix("/network") {
        let rest = rest.strip_prefix("/v2.0").unwrap_or(rest);
        return network(&shared, rest, &q);
    }
    if path.starts_with("/image") {
        return json_response(
            StatusCode::OK,
            json!({"images": [{"id": IMAGE_ID, "name": "osdev-tiny", "status": "active",
                "visibility": "public", "disk_format": "qcow2", "container_format": "bare",
                "min_disk": 0, "min_ram": 0, "size": 200704, "tags": [], "os_type": "linux",
                "architecture": "x86_64"}]})
            .to_string(),
        );
    }
    json_response(
        StatusCode::NOT_FOUND,
        json!({"itemNotFound": {"message": format!("no {path} here"), "code": 404}}).to_string(),
    )
}

fn flavor() -> Value {
    json!({"id": FLAVOR_ID, "name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1,
           "OS-FLV-EXT-DATA:ephemeral": 0, "swap": 0, "rxtx_factor": 1.0,
           "os-flavor-access:is_public": true, "extra_specs": {}, "links": []})
}

/// Nova's `name` filter is a regular expression searched in the name (compute API reference,
/// "List Servers"); the fake understands the literal names with optional `^` and `$` anchors
/// that capow and CAPO send.
fn name_matches(filter: &str, name: &str) -> bool {
    let (start, rest) = match filter.strip_prefix('^') {
        Some(r) => (true, r),
        None => (false, filter),
    };
    let (end, literal) = match rest.strip_suffix('$') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    match (start, end) {
        (true, true) => name == literal,
        (true, false) => name.starts_with(literal),
        (false, true) => name.ends_with(literal),
        (false, false) => name.contains(literal),
    }
}

fn compute(shared: &Shared, rest: &str, q: &dyn Fn(&str) -> Option<String>) -> Response {
    match rest {
        "/servers/detail" | "/servers" => {
            let tags = q("tags");
            let name = q("name");
            if tags.is_none() && name.is_none() {
                return json_response(StatusCode::OK, shared.all_servers.clone());
            }
            let want: Vec<String> = tags
                .map(|t| t.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            let selected: Vec<Value> = shared
                .servers
                .iter()
                .filter(|s| want.iter().all(|t| s.tags.contains(t)))
                .filter(|s| name.as_ref().is_none_or(|n| name_matches(n, &s.name)))
                .map(FakeServer::to_json)
                .collect();
            json_response(StatusCode::OK, json!({"servers": selected}).to_string())
        }
        "/flavors/detail" | "/flavors" => {
            json_response(StatusCode::OK, json!({"flavors": [flavor()]}).to_string())
        }
        "/os-availability-zone" => json_response(
            StatusCode::OK,
            json!({"availabilityZoneInfo": [{"zoneName": "nova", "zoneState": {"available": true}, "hosts": null}]})
                .to_string(),
        ),
        "" | "/" => json_response(
            StatusCode::OK,
            json!({"version": {"id": "v2.1", "status": "CURRENT", "version": "2.93", "min_version": "2.1"}})
                .to_string(),
        ),
        other => {
            if let Some(id) = other.strip_prefix("/servers/") {
                let id = id.split('/').next().unwrap_or("");
                if let Some(&i) = shared.by_id.get(id) {
                    return json_response(
                        StatusCode::OK,
                        json!({"server": shared.servers[i].to_json()}).to_string(),
                    );
                }
            }
            if other.starts_with("/flavors/") {
                return json_response(StatusCode::OK, json!({"flavor": flavor()}).to_string());
            }
            json_response(
                StatusCode::NOT_FOUND,
                json!({"itemNotFound": {"message": "not found", "code": 404}}).to_string(),
            )
        }
    }
}

fn network(shared: &Shared, rest: &str, q: &dyn Fn(&str) -> Option<String>) -> Response {
    let network = json!({"id": NETWORK_ID, "name": "osdev-net", "status": "ACTIVE", "subnets": [SUBNET_ID],
        "tenant_id": PROJECT, "project_id": PROJECT, "admin_state_up": true, "shared": false,
        "router:external": false, "port_security_enabled": true, "mtu": 1450, "tags": [],
        "description": "", "availability_zones": ["nova"]});
    let subnet = json!({"id": SUBNET_ID, "name": "osdev-subnet", "network_id": NETWORK_ID,
        "cidr": "10.0.0.0/16", "ip_version": 4, "gateway_ip": "10.0.0.1", "enable_dhcp": true,
        "tenant_id": PROJECT, "project_id": PROJECT, "tags": [], "description": "",
        "allocation_pools": [{"start": "10.0.0.2", "end": "10.0.255.254"}], "dns_nameservers": []});
    match rest {
        "/ports" => {
            // Neutron filters a port listing by any attribute; these are the ones the two
            // managers send (CAPO looks a known port up by `id`, a new one by `name`).
            let device = q("device_id");
            let tags = q("tags");
            let name = q("name");
            let id = q("id");
            if device.is_none() && tags.is_none() && name.is_none() && id.is_none() {
                return json_response(StatusCode::OK, shared.all_ports.clone());
            }
            let want: Vec<String> = tags
                .map(|t| t.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            let selected: Vec<Value> = shared
                .servers
                .iter()
                .filter(|s| device.as_ref().is_none_or(|d| &s.id == d))
                .filter(|s| want.iter().all(|t| s.tags.contains(t)))
                .filter(|s| name.as_ref().is_none_or(|n| *n == format!("{}-0", s.name)))
                .filter(|s| id.as_ref().is_none_or(|i| *i == s.port_id))
                .map(FakeServer::port_json)
                .collect();
            json_response(StatusCode::OK, json!({"ports": selected}).to_string())
        }
        "/networks" => json_response(StatusCode::OK, json!({"networks": [network]}).to_string()),
        "/subnets" => json_response(StatusCode::OK, json!({"subnets": [subnet]}).to_string()),
        "/extensions" => json_response(
            StatusCode::OK,
            json!({"extensions": [{"alias": "standard-attr-tag", "name": "Tag support"}]})
                .to_string(),
        ),
        "/security-groups" | "/trunks" | "/routers" | "/floatingips" => {
            let key = rest.trim_start_matches('/').replace('-', "_");
            json_response(StatusCode::OK, json!({ key: [] }).to_string())
        }
        other => {
            if other.starts_with("/networks/") {
                return json_response(StatusCode::OK, json!({"network": network}).to_string());
            }
            if other.starts_with("/subnets/") {
                return json_response(StatusCode::OK, json!({"subnet": subnet}).to_string());
            }
            json_response(
                StatusCode::NOT_FOUND,
                json!({"NeutronError": {"message": "not found", "type": "NotFound"}}).to_string(),
            )
        }
    }
}
