//! The status step every controller ends with: server-side apply of `status` (only when it
//! changed, condition timestamps aside) with capow's field manager.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::conditions;
use crate::controllers::{Error, FIELD_MANAGER};

/// Applies `after` as the status of `obj` (an `OpenStackWorkerMachine`, `…Cluster` or
/// `…MachineTemplate`) with capow's field manager, unless it equals `before` apart from
/// condition timestamps, so a steady state causes no writes.
///
/// # Errors
/// [`Error::Kube`] when the API server refuses the patch.
pub async fn write<K, S>(
    ctx: &crate::controllers::Context,
    obj: &K,
    before: &S,
    after: &S,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: conditions::WithConditions + serde::Serialize,
{
    write_at(ctx, obj, None, before, after).await.map(|_| ())
}

/// Like [`write`], but only while the object still has `resource_version` (when given): the
/// version is sent as a precondition, so a reconcile that started from a stale cache cannot
/// overwrite what a newer one wrote (the API server answers 409 Conflict instead). Returns the
/// object's new resourceVersion when it wrote, `None` when nothing changed.
///
/// # Errors
/// [`Error::Kube`] when the API server refuses the patch; a 409 when the object changed since
/// `resource_version` (see [`crate::controllers::is_conflict`]).
pub async fn write_at<K, S>(
    ctx: &crate::controllers::Context,
    obj: &K,
    resource_version: Option<&str>,
    before: &S,
    after: &S,
) -> Result<Option<String>, Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: conditions::WithConditions + serde::Serialize,
{
    if conditions::status_unchanged(before, after) {
        return Ok(None);
    }
    let mut patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": obj.name_any() },
        "status": after,
    });
    if let Some(rv) = resource_version {
        patch["metadata"]["resourceVersion"] = json!(rv);
    }
    let written = Api::<K>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("write status"))?;
    Ok(written.meta().resource_version.clone())
}
