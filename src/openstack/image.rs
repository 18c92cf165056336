//! Glance (image v2): images by ID or by name and tags.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::error::Result;
use super::session::{Request, Service, Session};

/// A Glance image. Glance v2 returns custom properties (`os_type`, `hw_architecture`, ...) as
/// top-level keys; they are kept in `properties`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Image {
    /// Image UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// `queued`, `saving`, `active`, `killed`, `deleted`, `deactivated`, ...
    #[serde(default)]
    pub status: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Every other attribute and property.
    #[serde(flatten)]
    pub properties: BTreeMap<String, Value>,
}

impl Image {
    /// A string property, e.g. `os_type` or `hw_architecture`.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key).and_then(Value::as_str)
    }
}

#[derive(Deserialize)]
struct Images {
    images: Vec<Image>,
}

/// Typed Glance calls of a [`Session`].
#[derive(Clone, Debug)]
pub struct ImageApi<'a> {
    session: &'a Session,
}

impl Session {
    /// Glance calls.
    pub fn image(&self) -> ImageApi<'_> {
        ImageApi { session: self }
    }
}

impl ImageApi<'_> {
    /// `GET /v2/images/{id}`; `None` on 404.
    ///
    /// # Errors
    /// Any [`super::Error`] other than 404.
    pub async fn get_image(&self, id: &str) -> Result<Option<Image>> {
        let req = Request::new(
            Service::Image,
            "image_get",
            Method::GET,
            format!("/images/{id}"),
        );
        match self.session.send::<Image>(req).await {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v2/images?status=active&name=<name>&tag=<t>...`: active images matching the name
    /// (if given) and carrying every tag.
    ///
    /// # Errors
    /// Any [`super::Error`].
    pub async fn list_active_images(
        &self,
        name: Option<&str>,
        tags: &[String],
    ) -> Result<Vec<Image>> {
        let mut req = Request::new(Service::Image, "image_list", Method::GET, "/images")
            .query("status", "active")
            .query("limit", "100");
        if let Some(name) = name {
            req = req.query("name", name);
        }
        for t in tags {
            req = req.query("tag", t.clone());
        }
        Ok(self.session.send::<Images>(req).await?.images)
    }
}
