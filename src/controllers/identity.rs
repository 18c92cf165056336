//! The OpenStack identity of a controller's object: the identityRef of a Cluster's
//! `OpenStackWorkerCluster` and the [`Session`] its `clouds.yaml` Secret opens. Shared by the
//! machine, cluster and machine template controllers and the orphan sweep.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::api::cluster::OpenStackWorkerCluster;
use crate::api::common::OpenStackIdentityReference;
use crate::capi::Cluster;
use crate::controllers::{Context, Error};
use crate::openstack::{CloudConfig, Session};

/// The identityRef of the `OpenStackWorkerCluster` that Cluster `ns/cluster_name` names as
/// its `spec.infrastructureRef`; `None` when the Cluster, its infrastructure reference or the
/// `OpenStackWorkerCluster` does not exist (yet).
///
/// # Errors
/// [`Error::Kube`] when the API server fails.
pub(crate) async fn identity_of_cluster(
    ctx: &Context,
    ns: &str,
    cluster_name: &str,
) -> Result<Option<OpenStackIdentityReference>, Error> {
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cluster) = clusters
        .get_opt(cluster_name)
        .await
        .map_err(Error::kube("get the Cluster"))?
    else {
        return Ok(None);
    };
    let Some(r) = cluster
        .spec
        .infrastructure_ref
        .filter(|r| r.kind == "OpenStackWorkerCluster")
    else {
        return Ok(None);
    };
    let api: Api<OpenStackWorkerCluster> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .get_opt(&r.name)
        .await
        .map_err(Error::kube("get the OpenStackWorkerCluster"))?
        .map(|c| c.spec.identity_ref))
}

/// The OpenStack session of `identity` (a Secret with `clouds.yaml` and optional `cacert`).
///
/// # Errors
/// [`Error::InvalidIdentity`] when the Secret or its keys are missing or unusable (messages
/// name the field); [`Error::Kube`] when the API server fails.
pub async fn session(
    ctx: &Context,
    ns: &str,
    identity: Option<&OpenStackIdentityReference>,
) -> Result<Session, Error> {
    let identity = identity.ok_or_else(|| Error::InvalidIdentity {
        field: "spec.identityRef".into(),
        message: "is required".into(),
    })?;
    let invalid = |message: String| Error::InvalidIdentity {
        field: "spec.identityRef".into(),
        message,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets
        .get_opt(&identity.name)
        .await
        .map_err(Error::kube("get the identity Secret"))?
        .ok_or_else(|| invalid(format!("Secret {ns}/{} does not exist", identity.name)))?;
    let data = secret.data.unwrap_or_default();
    let yaml = data.get("clouds.yaml").ok_or_else(|| {
        invalid(format!(
            "Secret {ns}/{} has no key \"clouds.yaml\"",
            identity.name
        ))
    })?;
    let yaml = std::str::from_utf8(&yaml.0).map_err(|_| {
        invalid(format!(
            "key clouds.yaml of Secret {ns}/{} is not UTF-8",
            identity.name
        ))
    })?;
    let cloud =
        CloudConfig::from_clouds_yaml(yaml, &identity.cloud_name, identity.region.as_deref())
            .map_err(|e| invalid(format!("Secret {ns}/{}: {e}", identity.name)))?;
    let cacert = data.get("cacert").map(|c| c.0.as_slice());
    let label = crate::openstack::IdentityLabel {
        identity: format!("{ns}/{}", identity.name),
        cloud: identity.cloud_name.clone(),
        region: identity.region.clone().unwrap_or_default(),
    };
    ctx.clouds
        .session(cloud, cacert, Some(&label))
        .map_err(|e| invalid(format!("Secret {ns}/{}: {e}", identity.name)))
}
