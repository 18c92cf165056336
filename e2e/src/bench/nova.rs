//! A minimal Nova client for the benchmark's floor (servers POSTed straight at Nova, as the
//! project's user, through a counting proxy) and the admin-side observation of servers by name
//! prefix (straight at Nova, not counted against any system).
//!
//! API references: Keystone v3 password authentication
//! <https://docs.openstack.org/api-ref/identity/v3/#password-authentication-with-scoped-authorization>,
//! compute "Create Server", "List Servers Detailed" (`name` is a regular expression, `all_tenants`
//! for admins) and "Delete Server" <https://docs.openstack.org/api-ref/compute/>.

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cloud::{AdminCloud, login};

/// A project-scoped session of one cloud of clouds.yaml: a token and the compute endpoint.
pub struct Nova {
    http: reqwest::Client,
    token: String,
    compute: String,
}

impl Nova {
    /// Logs in as `cloud` of `clouds_yaml` (password), at `auth_url` (e.g. a proxy's).
    ///
    /// # Errors
    /// When the cloud is missing or Keystone refuses.
    pub async fn login(clouds_yaml: &str, cloud: &str, auth_url: &str) -> Result<Nova> {
        let mut session = login(
            clouds_yaml,
            cloud,
            Some(auth_url),
            std::time::Duration::from_secs(60),
        )
        .await?;
        let compute = session
            .endpoints
            .remove("compute")
            .context("no public compute endpoint in the catalog")?;
        Ok(Nova {
            http: session.http,
            token: session.token,
            compute,
        })
    }

    /// `POST /servers` with one network (Nova makes the port); returns the server's UUID.
    ///
    /// # Errors
    /// When Nova refuses.
    pub async fn create_server(
        &self,
        name: &str,
        flavor: &str,
        image: &str,
        network: &str,
    ) -> Result<String> {
        let body = json!({"server": {"name": name, "flavorRef": flavor, "imageRef": image,
                                     "networks": [{"uuid": network}]}});
        let resp = self
            .http
            .post(format!("{}/servers", self.compute))
            .header("X-Auth-Token", &self.token)
            .header("OpenStack-API-Version", "compute 2.61")
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("POST /servers: {status}: {text}");
        }
        let v: Value = serde_json::from_str(&text)?;
        Ok(v["server"]["id"]
            .as_str()
            .context("no server id in the answer")?
            .to_owned())
    }

    /// `DELETE /servers/{id}` (404 counts as done).
    ///
    /// # Errors
    /// When Nova refuses otherwise.
    pub async fn delete_server(&self, id: &str) -> Result<()> {
        let resp = self
            .http
            .delete(format!("{}/servers/{id}", self.compute))
            .header("X-Auth-Token", &self.token)
            .send()
            .await?;
        if !resp.status().is_success() && resp.status() != reqwest::StatusCode::NOT_FOUND {
            bail!("DELETE /servers/{id}: {}", resp.status());
        }
        Ok(())
    }
}

/// One server as the observer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status (`BUILD`, `ACTIVE`, `ERROR`, ...).
    pub status: String,
}

/// Servers of every project whose name starts with `prefix` (`[a-z0-9-]` only), as the admin
/// sees them, straight from Nova.
///
/// # Errors
/// When Nova answers with an error.
pub async fn servers_named(admin: &AdminCloud, prefix: &str) -> Result<Vec<Seen>> {
    let v = admin
        .get(
            "compute",
            &format!("/servers/detail?all_tenants=1&limit=1000&name=%5E{prefix}"),
        )
        .await?;
    Ok(v["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|s| Seen {
            id: s["id"].as_str().unwrap_or_default().to_owned(),
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            status: s["status"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

/// The IDs the benchmark boots with: flavor, image and network, looked up by name as the admin.
#[derive(Clone, Debug)]
pub struct BootIds {
    /// Flavor ID.
    pub flavor: String,
    /// Image ID.
    pub image: String,
    /// Network ID.
    pub network: String,
}

/// Resolves flavor, image and network names.
///
/// # Errors
/// When a name matches nothing.
pub async fn boot_ids(
    admin: &AdminCloud,
    flavor: &str,
    image: &str,
    network: &str,
) -> Result<BootIds> {
    let flavors = admin.get("compute", "/flavors/detail").await?;
    let flavor = flavors["flavors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == flavor)
        .and_then(|f| f["id"].as_str())
        .with_context(|| format!("no flavor {flavor}"))?
        .to_owned();
    let images = admin
        .get("image", &format!("/v2/images?name={image}"))
        .await?;
    let image = images["images"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| i["id"].as_str())
        .with_context(|| format!("no image {image}"))?
        .to_owned();
    let networks = admin.neutron_named("networks", network).await?;
    let network = networks
        .first()
        .and_then(|n| n["id"].as_str())
        .with_context(|| format!("no network {network}"))?
        .to_owned();
    Ok(BootIds {
        flavor,
        image,
        network,
    })
}
