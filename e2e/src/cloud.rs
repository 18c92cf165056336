//! A small OpenStack REST client for *verifying* what capow did, written against the public
//! API references and independent of capow's own client (`capow::openstack`), so a bug there
//! cannot hide itself. It logs in as the admin cloud of `$CAPOW_E2E_CLOUDS_YAML` and counts
//! servers, ports, trunks, networks, subnets, routers, security groups and volumes of every
//! project. Much faster than the `openstack` CLI (one HTTP request instead of a Python start),
//! which matters for the fault tests that count after every crash point.
//!
//! API references: compute https://docs.openstack.org/api-ref/compute/ (list servers with
//! `all_tenants` and `tags`), network https://docs.openstack.org/api-ref/network/v2/ (filters
//! by attribute and `tags`), block storage https://docs.openstack.org/api-ref/block-storage/v3/
//! (`all_tenants`, `metadata` filter).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::Env;

/// The Keystone v3 body of a password login scoped to a project, from the `auth` map of a
/// clouds.yaml cloud (`username`, `password`, `user_domain_name`, `project_name`,
/// `project_domain_name`). Keystone API reference, "Password authentication with scoped
/// authorization": <https://docs.openstack.org/api-ref/identity/v3/#password-authentication-with-scoped-authorization>.
pub fn password_auth(auth: &Value) -> Value {
    json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": auth["username"], "password": auth["password"],
            "domain": {"name": auth["user_domain_name"]}}}},
        "scope": {"project": {"name": auth["project_name"],
                              "domain": {"name": auth["project_domain_name"]}}}}})
}

/// A project-scoped Keystone session: the HTTP client, the token (`X-Subject-Token`) and the
/// public endpoint of every service type in the token's catalog (in the cloud's `region_name`
/// when it has one), without a trailing `/`.
pub struct Session {
    /// The client the login used (`timeout` of [`login`]).
    pub http: reqwest::Client,
    /// The token, for `X-Auth-Token`.
    pub token: String,
    /// Service type (`compute`, `network`, …) → public endpoint URL.
    pub endpoints: HashMap<String, String>,
}

/// Logs in as `cloud` of the clouds.yaml text `clouds_yaml` with [`password_auth`] at
/// `auth_url` (a proxy's, say), or at the cloud's own `auth.auth_url` when `None`. Requests of
/// the returned client time out after `timeout`.
///
/// # Errors
/// When the YAML or the cloud's `auth_url` is missing, or Keystone refuses.
pub async fn login(
    clouds_yaml: &str,
    cloud: &str,
    auth_url: Option<&str>,
    timeout: Duration,
) -> Result<Session> {
    let yaml: Value = serde_yaml::from_str(clouds_yaml)?;
    let c = &yaml["clouds"][cloud];
    let auth = &c["auth"];
    let auth_url = match auth_url {
        Some(u) => u,
        None => auth["auth_url"].as_str().context("auth_url")?,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(timeout).build()?;
    let resp = http
        .post(format!("{}/auth/tokens", auth_url.trim_end_matches('/')))
        .json(&password_auth(auth))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("Keystone refused {cloud}: {}", resp.status());
    }
    let token = resp
        .headers()
        .get("X-Subject-Token")
        .context("X-Subject-Token")?
        .to_str()?
        .to_owned();
    let body: Value = resp.json().await?;
    let region = c["region_name"].as_str();
    let mut endpoints = HashMap::new();
    for svc in body["token"]["catalog"].as_array().into_iter().flatten() {
        let Some(kind) = svc["type"].as_str() else {
            continue;
        };
        if let Some(e) = svc["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["interface"] == "public" && region.is_none_or(|r| e["region_id"] == r))
            && let Some(url) = e["url"].as_str()
        {
            endpoints.insert(kind.to_owned(), url.trim_end_matches('/').to_owned());
        }
    }
    Ok(Session {
        http,
        token,
        endpoints,
    })
}

/// An admin session: a token and the public endpoints of the catalog.
pub struct AdminCloud {
    http: reqwest::Client,
    token: String,
    endpoints: HashMap<String, String>,
}

impl AdminCloud {
    /// Logs in as `$CAPOW_E2E_ADMIN_CLOUD` (password auth, project scope).
    ///
    /// # Errors
    /// When clouds.yaml cannot be read or Keystone refuses.
    pub async fn login() -> Result<AdminCloud> {
        let env = Env::get();
        let yaml = std::fs::read_to_string(&env.clouds_yaml)?;
        let Session {
            http,
            token,
            endpoints,
        } = login(&yaml, &env.admin_cloud, None, Duration::from_secs(30)).await?;
        Ok(AdminCloud {
            http,
            token,
            endpoints,
        })
    }

    /// `GET <service endpoint><path>` as JSON.
    ///
    /// # Errors
    /// When the service is not in the catalog or answers with an error.
    pub async fn get(&self, service: &str, path: &str) -> Result<Value> {
        let base = self
            .endpoints
            .get(service)
            .with_context(|| format!("no {service} endpoint in the catalog"))?;
        let base = match service {
            "network" if !base.ends_with("/v2.0") => format!("{base}/v2.0"),
            _ => base.clone(),
        };
        let mut req = self
            .http
            .get(format!("{base}{path}"))
            .header("X-Auth-Token", &self.token);
        if service == "compute" {
            // Tags in server listings need 2.26; Cinder refuses a request that carries Nova's
            // microversion header, so only Nova gets it.
            req = req
                .header("OpenStack-API-Version", "compute 2.61")
                .header("X-OpenStack-Nova-API-Version", "2.61");
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("GET {service}{path}: {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Servers of every project carrying `tag` (deleted ones excluded, as Nova lists them).
    ///
    /// # Errors
    /// As [`AdminCloud::get`].
    pub async fn servers_tagged(&self, tag: &str) -> Result<Vec<Value>> {
        let v = self
            .get(
                "compute",
                &format!("/servers/detail?all_tenants=1&tags={}", enc(tag)),
            )
            .await?;
        Ok(v["servers"].as_array().cloned().unwrap_or_default())
    }

    /// Neutron resources of `kind` (`ports`, `trunks`, `networks`, `subnets`, `routers`,
    /// `security-groups`) matching `query` (e.g. `tags=capow-machine-uid%3D...` or
    /// `name=capow-ns-c1`), in every project.
    ///
    /// # Errors
    /// As [`AdminCloud::get`].
    pub async fn neutron(&self, kind: &str, query: &str) -> Result<Vec<Value>> {
        let v = self.get("network", &format!("/{kind}?{query}")).await?;
        let key = kind.replace('-', "_");
        Ok(v[key.as_str()].as_array().cloned().unwrap_or_default())
    }

    /// Neutron resources of `kind` carrying `tag`.
    ///
    /// # Errors
    /// As [`AdminCloud::get`].
    pub async fn neutron_tagged(&self, kind: &str, tag: &str) -> Result<Vec<Value>> {
        self.neutron(kind, &format!("tags={}", enc(tag))).await
    }

    /// The ports of the machines whose servers carry `tag`: those capow made (tagged with
    /// `tag`) and those Nova made with a server carrying `tag` (bound to it, untagged; capow's
    /// default `--port-creation auto`), each once.
    ///
    /// # Errors
    /// As [`AdminCloud::get`].
    pub async fn machine_ports(&self, tag: &str) -> Result<Vec<Value>> {
        let mut ports = self.neutron_tagged("ports", tag).await?;
        for server in self.servers_tagged(tag).await? {
            let id = server["id"].as_str().unwrap_or_default();
            for p in self
                .neutron("ports", &format!("device_id={}", enc(id)))
                .await?
            {
                if !ports.iter().any(|q| q["id"] == p["id"]) {
                    ports.push(p);
                }
            }
        }
        Ok(ports)
    }

    /// Neutron resources of `kind` named exactly `name`.
    ///
    /// # Errors
    /// As [`AdminCloud::get`].
    pub async fn neutron_named(&self, kind: &str, name: &str) -> Result<Vec<Value>> {
        self.neutron(kind, &format!("name={}", enc(name))).await
    }

    /// Volumes of every project carrying metadata `key=value` (status `deleting` included:
    /// a volume is gone only once Cinder no longer lists it).
    ///
    /// # Errors
    /// As [`AdminCloud::get`].
    pub async fn volumes_with_metadata(&self, key: &str, value: &str) -> Result<Vec<Value>> {
        let service = ["block-storage", "volumev3", "volume"]
            .into_iter()
            .find(|s| self.endpoints.contains_key(*s))
            .context("no block-storage endpoint in the catalog")?;
        let v = self
            .get(service, "/volumes/detail?all_tenants=1&limit=1000")
            .await?;
        Ok(v["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|vol| vol["metadata"][key] == value)
            .collect())
    }
}

/// Percent-encodes a query value (tags hold `=`).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
