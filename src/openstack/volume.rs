//! Cinder (block storage v3): the volumes capow creates for root disks and volume block
//! devices. Cinder has no tags; ownership is the `capow-machine-uid` volume metadata.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::Result;
use super::session::{Request, Service, Session};

/// A Cinder volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Volume {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// `creating`, `available`, `in-use`, `error`, `deleting`, ...
    #[serde(default)]
    pub status: String,
    /// Size in GiB.
    #[serde(default)]
    pub size: i64,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Creation time (ISO 8601, without a zone: Cinder reports UTC).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// Body of `POST /v3/{project}/volumes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreateVolume {
    /// Name.
    pub name: String,
    /// Size in GiB.
    pub size: i32,
    /// Volume type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// Availability zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Image to copy onto the volume (bootable root volume).
    #[serde(rename = "imageRef", skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Metadata (capow's ownership keys).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Attachments {
    attachments: Vec<Attachment>,
}

/// A Cinder volume attachment (block storage API ≥ 3.27).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// Attachment UUID.
    pub id: String,
    /// Server the volume is (to be) attached to.
    #[serde(default)]
    pub instance: Option<String>,
    /// `reserved`, `attaching`, `attached`, ...
    #[serde(default)]
    pub status: String,
}

#[derive(Deserialize)]
struct VolumeEnvelope {
    volume: Volume,
}

#[derive(Deserialize)]
struct Volumes {
    volumes: Vec<Volume>,
}

/// Typed Cinder calls of a [`Session`].
#[derive(Clone, Debug)]
pub struct VolumeApi<'a> {
    session: &'a Session,
}

impl Session {
    /// Cinder calls.
    pub fn volume(&self) -> VolumeApi<'_> {
        VolumeApi { session: self }
    }
}

impl VolumeApi<'_> {
    /// `POST /volumes/{id}/metadata`: creates or replaces the metadata items in `items` and
    /// leaves the volume's other items alone (Block Storage API v3 reference, "Create metadata
    /// for volume").
    ///
    /// # Errors
    /// Any [`super::Error`] (404 when the volume is gone).
    pub async fn update_volume_metadata(
        &self,
        id: &str,
        items: &BTreeMap<String, String>,
    ) -> Result<()> {
        let req = Request::new(
            Service::BlockStorage,
            "volume_metadata_update",
            Method::POST,
            format!("/volumes/{id}/metadata"),
        )
        .json(json!({ "metadata": items }));
        self.session.send_empty(req).await
    }

    /// `POST /volumes`. Cinder answers 202 with status `creating`.
    ///
    /// # Errors
    /// [`super::Error::Api`] with 400 (bad type/zone), 404 (image), 413 (quota).
    pub async fn create_volume(&self, volume: &CreateVolume) -> Result<Volume> {
        let req = Request::new(
            Service::BlockStorage,
            "volume_create",
            Method::POST,
            "/volumes",
        )
        .json(json!({ "volume": volume }));
        Ok(self.session.send::<VolumeEnvelope>(req).await?.volume)
    }

    /// `GET /volumes/{id}`; `None` on 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_volume(&self, id: &str) -> Result<Option<Volume>> {
        let req = Request::new(
            Service::BlockStorage,
            "volume_get",
            Method::GET,
            format!("/volumes/{id}"),
        );
        match self.session.send::<VolumeEnvelope>(req).await {
            Ok(e) => Ok(Some(e.volume)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /volumes/detail?metadata={"key":"value"}`: volumes carrying that metadata pair.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_volumes_by_metadata(&self, key: &str, value: &str) -> Result<Vec<Volume>> {
        let filter = json!({ key: value }).to_string();
        let req = Request::new(
            Service::BlockStorage,
            "volume_list",
            Method::GET,
            "/volumes/detail",
        )
        .query("metadata", filter);
        let volumes = self.session.send::<Volumes>(req).await?.volumes;
        // Older Cinder ignores unknown filters: check the pair here as well.
        Ok(volumes
            .into_iter()
            .filter(|v| v.metadata.get(key).map(String::as_str) == Some(value))
            .collect())
    }

    /// `GET /attachments?volume_id=<id>` (microversion 3.27).
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_attachments(&self, volume: &str) -> Result<Vec<Attachment>> {
        let req = Request::new(
            Service::BlockStorage,
            "attachment_list",
            Method::GET,
            "/attachments",
        )
        .query("volume_id", volume)
        .microversion("volume 3.27");
        Ok(self.session.send::<Attachments>(req).await?.attachments)
    }

    /// `DELETE /attachments/{id}` (microversion 3.27); a 404 counts as done. Frees a volume
    /// that a failed server create left `reserved` (seen with Nova Zed).
    ///
    /// # Errors
    /// Any other [`super::Error`].
    pub async fn delete_attachment(&self, id: &str) -> Result<()> {
        let req = Request::new(
            Service::BlockStorage,
            "attachment_delete",
            Method::DELETE,
            format!("/attachments/{id}"),
        )
        .microversion("volume 3.27");
        match self.session.send_empty(req).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// `DELETE /volumes/{id}`; a 404 counts as done.
    ///
    /// # Errors
    /// Any other [`super::Error`] (400 while the volume is attached or still creating).
    pub async fn delete_volume(&self, id: &str) -> Result<()> {
        let req = Request::new(
            Service::BlockStorage,
            "volume_delete",
            Method::DELETE,
            format!("/volumes/{id}"),
        );
        match self.session.send_empty(req).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }
}
