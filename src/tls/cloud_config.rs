//! The per-cluster Secret that a cluster-autoscaler mounts to reach capow: its client
//! certificate, capow's CA, and a ready `--cloud-config` file.
//!
//! The Secret is `<cluster>-capow-autoscaler` in the Cluster's namespace, of type
//! `kubernetes.io/tls`. Its keys are `tls.crt`, `tls.key`, `ca.crt` and `cloud-config`. It has
//! the label `cluster.x-k8s.io/cluster-name` and an ownerReference to the CAPI Cluster, so the
//! garbage collector deletes it with the Cluster. Mount it at [`DEFAULT_MOUNT_DIR`] and pass
//! `--cloud-provider=externalgrpc --cloud-config=/etc/capow-autoscaler/cloud-config`.
//!
//! The cloud-config format is CA's (cluster-autoscaler-1.36.1
//! `cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`, `cloudConfig` and
//! `newExternalGrpcCloudProviderClient`). `address` is `host:port`, and CA checks the server
//! certificate against `host`. `cert`, `key` and `cacert` are file paths. `grpc_timeout` must be
//! a Go duration string: it is a `metav1.Duration`, which parses only strings, and a file CA
//! cannot parse makes `BuildExternalGrpc` exit the process.
//!
//! CA reads these files once, at start. When [`publish`] re-issues the certificate
//! ([`Published::reissued`]), the cluster-autoscaler must be restarted to use it. The old
//! certificate stays valid until its own `notAfter`, so the restart is not urgent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

use super::ca::{SECRET_TYPE, rfc3339, secret_ref, secret_str};
use super::server::{client_config_from_pem, verify_client_cert};
use super::{
    CA_CRT, Ca, CertPolicy, ClusterIdentity, Error, FIELD_MANAGER, IssuedCert, TLS_CRT, TLS_KEY,
    Validity,
};
use crate::capi::{CLUSTER_NAME_LABEL, Cluster};

/// Default directory the Secret is mounted at in the cluster-autoscaler pod.
pub const DEFAULT_MOUNT_DIR: &str = "/etc/capow-autoscaler";
/// Secret key (and file name) of the cloud-config.
pub const CLOUD_CONFIG_KEY: &str = "cloud-config";
/// Suffix of the Secret's name after the Cluster's name.
pub const SECRET_NAME_SUFFIX: &str = "-capow-autoscaler";
/// The `grpc_timeout` written into every cloud-config: CA's per-RPC deadline (CA's default too,
/// `defaultGRPCTimeout` in cluster-autoscaler-1.36.1
/// `cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`).
pub const GRPC_TIMEOUT: &str = "5s";

/// Name of the Secret of Cluster `cluster_name`: `<cluster>-capow-autoscaler`.
pub fn secret_name(cluster_name: &str) -> String {
    format!("{cluster_name}{SECRET_NAME_SUFFIX}")
}

/// CA's `--cloud-config` file (YAML with these exact keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudConfig {
    /// capow's externalgrpc Service, `host:port`. The server certificate must name `host`.
    pub address: String,
    /// Path of the client certificate (PEM).
    pub cert: String,
    /// Path of the client key (PEM).
    pub key: String,
    /// Path of the CA certificate that verifies the server (PEM).
    pub cacert: String,
    /// Per-RPC deadline as a Go duration string, e.g. `5s`.
    #[serde(default)]
    pub grpc_timeout: String,
}

impl CloudConfig {
    /// The cloud-config for the Secret mounted at `mount_dir`: `cert`, `key` and `cacert` are
    /// `<mount_dir>/tls.crt`, `<mount_dir>/tls.key` and `<mount_dir>/ca.crt`, and
    /// `grpc_timeout` is [`GRPC_TIMEOUT`].
    pub fn for_mount(address: &str, mount_dir: &str) -> CloudConfig {
        let dir = mount_dir.trim_end_matches('/');
        CloudConfig {
            address: address.to_owned(),
            cert: format!("{dir}/{TLS_CRT}"),
            key: format!("{dir}/{TLS_KEY}"),
            cacert: format!("{dir}/{CA_CRT}"),
            grpc_timeout: GRPC_TIMEOUT.to_owned(),
        }
    }

    /// The YAML text.
    ///
    /// # Errors
    /// [`Error::CloudConfigYaml`].
    pub fn to_yaml(&self) -> Result<String, Error> {
        serde_yaml::to_string(self).map_err(|source| Error::CloudConfigYaml {
            action: "encode",
            source,
        })
    }

    /// Parses the YAML text.
    ///
    /// # Errors
    /// [`Error::CloudConfigYaml`].
    pub fn from_yaml(text: &str) -> Result<CloudConfig, Error> {
        serde_yaml::from_str(text).map_err(|source| Error::CloudConfigYaml {
            action: "decode",
            source,
        })
    }

    /// The host part of `address`, split as Go's `net.SplitHostPort` does. That host is the
    /// name CA's client checks the server certificate against. Accepted forms are
    /// `host:port` and `[host]:port`. The port must be a number from 1 to 65535.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`].
    pub fn host(&self) -> Result<&str, Error> {
        let invalid = |reason| Error::InvalidAddress {
            address: self.address.clone(),
            reason,
        };
        let (host, port) = if let Some(rest) = self.address.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| invalid("missing ']'"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("missing port"))?;
            (host, port)
        } else {
            let (host, port) = self
                .address
                .rsplit_once(':')
                .ok_or_else(|| invalid("missing port"))?;
            if host.contains(':') {
                return Err(invalid("too many colons (write IPv6 hosts as [host]:port)"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(host),
            _ => Err(invalid("the port is not a number from 1 to 65535")),
        }
    }

    /// Builds the client TLS config the way CA does: it reads the three files, presents the
    /// certificate, trusts `cacert`, and offers ALPN `h2`. It also returns the server name
    /// to check, which is the host of `address`. Meant for tests and tools.
    ///
    /// # Errors
    /// [`Error::ReadFile`], [`Error::InvalidAddress`], or as [`client_config_from_pem`].
    pub fn client_config(&self) -> Result<(Arc<ClientConfig>, ServerName<'static>), Error> {
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
                path: path.into(),
                source,
            })
        };
        let host = self.host()?;
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|_| Error::InvalidAddress {
                address: self.address.clone(),
                reason: "the host is neither a DNS name nor an IP address",
            })?;
        let config =
            client_config_from_pem(&read(&self.cert)?, &read(&self.key)?, &read(&self.cacert)?)?;
        Ok((config, server_name))
    }
}

/// Where the per-cluster Secrets point CA, and how long their certificates live.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishSettings {
    /// capow's externalgrpc address as CA reaches it, `host:port` (e.g.
    /// `capow-autoscaler.capow-system.svc:8086`); `host` must be a SAN of the serving
    /// certificate.
    pub address: String,
    /// Where the Secret is mounted in the cluster-autoscaler pod.
    pub mount_dir: String,
    /// Lifetime and renewal of the client certificates.
    pub policy: CertPolicy,
}

impl PublishSettings {
    /// Settings for `address` with [`DEFAULT_MOUNT_DIR`] and [`CertPolicy::client_default`].
    pub fn new(address: impl Into<String>) -> PublishSettings {
        PublishSettings {
            address: address.into(),
            mount_dir: DEFAULT_MOUNT_DIR.to_owned(),
            policy: CertPolicy::client_default(),
        }
    }
}

/// The result of [`publish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Name of the Secret, in the Cluster's namespace.
    pub secret_name: String,
    /// Serial number (hex) of the client certificate in the Secret. A new value means the
    /// cluster-autoscaler must restart to pick it up. A pod-template annotation with this
    /// value does that.
    pub serial: String,
    /// Validity of that certificate.
    pub validity: Validity,
    /// True if this call issued a new certificate (first publish, renewal, or the old one was
    /// unusable).
    pub reissued: bool,
}

/// The identity of a CAPI Cluster read from the API server (namespace, name and UID).
///
/// # Errors
/// [`Error::InvalidClusterIdentity`] if it has no namespace, no `metadata.uid` (read it from
/// the API server) or invalid names.
pub fn cluster_identity(cluster: &Cluster) -> Result<ClusterIdentity, Error> {
    ClusterIdentity::new(
        cluster.namespace().unwrap_or_default(),
        cluster.name_any(),
        cluster.uid().unwrap_or_default(),
    )
}

/// The per-cluster Secret for `cluster` holding `cert` (pure).
///
/// # Errors
/// [`Error::InvalidClusterIdentity`] if the Cluster has no namespace or no `metadata.uid` (the
/// ownerReference needs it), [`Error::InvalidAddress`] for a bad `settings.address`, or
/// [`Error::CloudConfigYaml`].
pub fn cluster_secret(
    cluster: &Cluster,
    ca: &Ca,
    cert: &IssuedCert,
    settings: &PublishSettings,
) -> Result<Secret, Error> {
    let id = cluster_identity(cluster)?;
    let uid = cluster.uid().ok_or_else(|| Error::InvalidClusterIdentity {
        value: id.to_string(),
        reason: "the Cluster has no metadata.uid (read it from the API server)",
    })?;
    let cloud_config = CloudConfig::for_mount(&settings.address, &settings.mount_dir);
    cloud_config.host()?;
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let data = BTreeMap::from([
        (TLS_CRT.to_owned(), bytes(cert.cert_pem())),
        (TLS_KEY.to_owned(), bytes(cert.key_pem())),
        (CA_CRT.to_owned(), bytes(ca.cert_pem())),
        (CLOUD_CONFIG_KEY.to_owned(), bytes(&cloud_config.to_yaml()?)),
    ]);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&id.name)),
            namespace: Some(id.namespace.clone()),
            labels: Some(BTreeMap::from([
                (CLUSTER_NAME_LABEL.to_owned(), id.name.clone()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                ),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: format!("{}/{}", crate::capi::GROUP, crate::capi::VERSION),
                kind: "Cluster".to_owned(),
                name: id.name.clone(),
                uid,
                controller: Some(true),
                // Not set: blocking owner deletion needs `update` on clusters/finalizers, and
                // the Secret has no reason to hold up the Cluster's deletion.
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    })
}

/// The client certificate in `existing`, if it can stay: it is readable, its key matches, it
/// is signed by `ca` and valid at `now`, it names `id`, and it is not due for renewal.
/// Otherwise it returns why not.
fn reusable_cert(
    existing: &Secret,
    ca: &Ca,
    id: &ClusterIdentity,
    policy: &CertPolicy,
    now: SystemTime,
) -> Result<IssuedCert, &'static str> {
    let name = secret_ref(&id.namespace, &secret_name(&id.name));
    let cert_pem = secret_str(existing, TLS_CRT, &name).map_err(|_| "tls.crt is missing")?;
    let key_pem = secret_str(existing, TLS_KEY, &name).map_err(|_| "tls.key is missing")?;
    let cert = IssuedCert::from_pem(cert_pem, key_pem, "client")
        .map_err(|_| "the certificate or key is unreadable")?;
    cert.certified_key()
        .map_err(|_| "the key does not match the certificate")?;
    verify_client_cert(ca, cert.cert_der(), now)
        .map_err(|_| "the certificate is not valid under the current CA")?;
    if ClusterIdentity::from_peer_certificate(cert.cert_der())
        .ok()
        .as_ref()
        != Some(id)
    {
        return Err("the certificate names another cluster");
    }
    if policy.needs_renewal(cert.validity(), now) {
        return Err("the certificate is due for renewal");
    }
    Ok(cert)
}

/// Makes sure the per-cluster Secret of `cluster` exists and is current. If the Secret holds
/// a client certificate that can stay, it keeps that certificate. Otherwise it issues a new
/// one. It then server-side applies the whole Secret (field manager `capow`, forced: capow
/// is the only writer of this Secret, and forcing takes back fields that someone edited by
/// hand). Repeated calls are idempotent: unless the certificate is due at `now`, the applied
/// content is identical and the API server does not write.
///
/// # Errors
/// [`Error::Kube`] if reading or applying fails, or as [`cluster_secret`] and
/// [`Ca::issue_client`].
pub async fn publish(
    client: &Client,
    ca: &Ca,
    cluster: &Cluster,
    settings: &PublishSettings,
    now: SystemTime,
) -> Result<Published, Error> {
    let id = cluster_identity(cluster)?;
    let name = secret_name(&id.name);
    let secret = secret_ref(&id.namespace, &name);
    let api: Api<Secret> = Api::namespaced(client.clone(), &id.namespace);
    let existing = api.get_opt(&name).await.map_err(|source| Error::Kube {
        action: "read the cluster-autoscaler",
        secret: secret.clone(),
        source,
    })?;
    let reuse = match &existing {
        Some(s) => reusable_cert(s, ca, &id, &settings.policy, now),
        None => Err("the Secret does not exist"),
    };
    let (cert, reissued) = match reuse {
        Ok(cert) => (cert, false),
        Err(reason) => {
            let cert = ca.issue_client(&id, &settings.policy, now)?;
            tracing::info!(
                Cluster = %id,
                %secret,
                serial = cert.serial(),
                not_after = %rfc3339(cert.validity().not_after),
                reason,
                "Issued the cluster-autoscaler client certificate"
            );
            (cert, true)
        }
    };
    let desired = cluster_secret(cluster, ca, &cert, settings)?;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "apply the cluster-autoscaler",
        secret,
        source,
    })?;
    Ok(Published {
        secret_name: name,
        serial: cert.serial().to_owned(),
        validity: cert.validity(),
        reissued,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::capi::ClusterSpec;
    use crate::tls::server::testing::handshake;
    use crate::tls::{ServingCert, ServingNames};

    const ADDRESS: &str = "capow-autoscaler.capow-system.svc:8086";

    fn cluster(ns: &str, name: &str) -> Cluster {
        let mut c = Cluster::new(name, ClusterSpec::default());
        c.metadata.namespace = Some(ns.to_owned());
        c.metadata.uid = Some("0b9a4a1e-5a0c-4c39-9d55-0c1f3c1a2b3c".to_owned());
        c
    }

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn the_secret_is_named_owned_and_labelled_for_its_cluster() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let c = cluster("tenants", "prod");
        let id = cluster_identity(&c).unwrap();
        let cert = ca
            .issue_client(&id, &CertPolicy::client_default(), SystemTime::now())
            .unwrap();
        let s = cluster_secret(&c, &ca, &cert, &PublishSettings::new(ADDRESS)).unwrap();

        assert_eq!(s.metadata.name.as_deref(), Some("prod-capow-autoscaler"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("tenants"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[CLUSTER_NAME_LABEL],
            "prod"
        );
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str()
            ),
            ("cluster.x-k8s.io/v1beta2", "Cluster", "prod")
        );
        assert_eq!(Some(owner.uid.as_str()), c.metadata.uid.as_deref());
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<&str> = s
            .data
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["ca.crt", "cloud-config", "tls.crt", "tls.key"]);
        assert_eq!(text(&s, CA_CRT), ca.cert_pem());
        assert_eq!(text(&s, TLS_CRT), cert.cert_pem());

        let mut no_uid = c.clone();
        no_uid.metadata.uid = None;
        assert!(cluster_secret(&no_uid, &ca, &cert, &PublishSettings::new(ADDRESS)).is_err());
        let bad = PublishSettings::new("capow-autoscaler.capow-system.svc");
        assert!(matches!(
            cluster_secret(&c, &ca, &cert, &bad),
            Err(Error::InvalidAddress { .. })
        ));
    }

    #[test]
    fn the_cloud_config_is_what_the_cluster_autoscaler_reads() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let c = cluster("tenants", "prod");
        let cert = ca
            .issue_client(
                &cluster_identity(&c).unwrap(),
                &CertPolicy::client_default(),
                SystemTime::now(),
            )
            .unwrap();
        let s = cluster_secret(&c, &ca, &cert, &PublishSettings::new(ADDRESS)).unwrap();
        let yaml = text(&s, CLOUD_CONFIG_KEY);

        // Read it generically, as sigs.k8s.io/yaml does (YAML → JSON → struct by json tags).
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let map = doc.as_mapping().unwrap();
        let keys: Vec<&str> = map.keys().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["address", "cert", "key", "cacert", "grpc_timeout"]);
        // A duration string, never a number (a number makes CA exit; see the module docs).
        assert_eq!(doc["grpc_timeout"], serde_yaml::Value::String("5s".into()));
        assert_eq!(doc["address"].as_str(), Some(ADDRESS));
        for (field, key) in [("cert", TLS_CRT), ("key", TLS_KEY), ("cacert", CA_CRT)] {
            let path = doc[field].as_str().unwrap();
            assert_eq!(path, format!("/etc/capow-autoscaler/{key}"));
            assert!(s.data.as_ref().unwrap().contains_key(key), "{key}");
        }
        let parsed = CloudConfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed.host().unwrap(), "capow-autoscaler.capow-system.svc");
    }

    #[test]
    fn addresses_split_like_go() {
        let host = |a: &str| {
            let mut c = CloudConfig::for_mount(a, DEFAULT_MOUNT_DIR);
            c.address = a.to_owned();
            c.host().map(str::to_owned)
        };
        assert_eq!(host("svc.ns.svc:8086").unwrap(), "svc.ns.svc");
        assert_eq!(host("127.0.0.1:1").unwrap(), "127.0.0.1");
        assert_eq!(host("[::1]:8086").unwrap(), "::1");
        for bad in [
            "svc",
            "svc:",
            "svc:http",
            "svc:0",
            "svc:70000",
            "::1:8086",
            ":8086",
            "[::1]8086",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
    }

    /// The whole path: the Secret's keys written as files into a mount directory, a client built
    /// from nothing but the cloud-config in it, and a handshake with capow's server over
    /// loopback TCP. The server name comes from the cloud-config `address`.
    #[tokio::test]
    async fn a_mounted_secret_is_all_a_client_needs() {
        let ca = Arc::new(Ca::generate(SystemTime::now()).unwrap());
        let serving = ServingCert::new(
            Arc::clone(&ca),
            ServingNames::for_service("capow-autoscaler", "capow-system"),
            CertPolicy::serving_default(),
        )
        .unwrap();
        let c = cluster("tenants", "prod");
        let cert = ca
            .issue_client(
                &cluster_identity(&c).unwrap(),
                &CertPolicy::client_default(),
                SystemTime::now(),
            )
            .unwrap();
        let mount = std::env::temp_dir().join(format!(
            "capow-tls-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&mount).unwrap();
        let mut settings = PublishSettings::new(ADDRESS);
        settings.mount_dir = mount.to_str().unwrap().to_owned();
        let s = cluster_secret(&c, &ca, &cert, &settings).unwrap();
        for (key, value) in s.data.as_ref().unwrap() {
            std::fs::write(mount.join(key), &value.0).unwrap();
        }

        let cloud_config =
            CloudConfig::from_yaml(&std::fs::read_to_string(mount.join(CLOUD_CONFIG_KEY)).unwrap())
                .unwrap();
        let (client, server_name) = cloud_config.client_config().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, connected) = tokio::join!(
            listener.accept(),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        );
        let server_name = server_name.to_str().into_owned();
        let (server, client) = handshake(
            accepted.unwrap().0,
            connected.unwrap(),
            serving.server_config().unwrap(),
            client,
            &server_name,
        )
        .await;
        std::fs::remove_dir_all(&mount).unwrap();
        let server = server.unwrap();
        client.unwrap();
        assert_eq!(
            ClusterIdentity::from_peer_certificate(&server.peer_certs[0]).unwrap(),
            ClusterIdentity::new("tenants", "prod", "0b9a4a1e-5a0c-4c39-9d55-0c1f3c1a2b3c")
                .unwrap()
        );
        assert_eq!(server.alpn.as_deref(), Some(crate::tls::server::ALPN_H2));
    }

    #[test]
    fn a_published_certificate_stays_until_it_is_due_or_unusable() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let policy = CertPolicy::client_default();
        let now = SystemTime::now();
        let c = cluster("tenants", "prod");
        let id = cluster_identity(&c).unwrap();
        let cert = ca.issue_client(&id, &policy, now).unwrap();
        let secret = |cert: &IssuedCert| {
            cluster_secret(&c, &ca, cert, &PublishSettings::new(ADDRESS)).unwrap()
        };

        let kept = reusable_cert(&secret(&cert), &ca, &id, &policy, now).unwrap();
        assert_eq!(kept.serial(), cert.serial());

        let day = Duration::from_secs(86_400);
        assert!(reusable_cert(&secret(&cert), &ca, &id, &policy, now + 200 * day).is_ok());
        assert_eq!(
            reusable_cert(&secret(&cert), &ca, &id, &policy, now + 250 * day).unwrap_err(),
            "the certificate is due for renewal"
        );
        assert_eq!(
            reusable_cert(&secret(&cert), &ca, &id, &policy, now + 400 * day).unwrap_err(),
            "the certificate is not valid under the current CA"
        );

        let other_ca = Ca::generate(now).unwrap();
        let foreign = other_ca.issue_client(&id, &policy, now).unwrap();
        assert_eq!(
            reusable_cert(&secret(&foreign), &ca, &id, &policy, now).unwrap_err(),
            "the certificate is not valid under the current CA"
        );

        let other = ca
            .issue_client(
                &ClusterIdentity::new("tenants", "dev", "0b9e2f4a-1111-4222-8333-944444444444")
                    .unwrap(),
                &policy,
                now,
            )
            .unwrap();
        assert_eq!(
            reusable_cert(&secret(&other), &ca, &id, &policy, now).unwrap_err(),
            "the certificate names another cluster"
        );

        let mut broken = secret(&cert);
        broken.data.as_mut().unwrap().insert(
            TLS_KEY.to_owned(),
            ByteString(other.key_pem().as_bytes().to_vec()),
        );
        assert_eq!(
            reusable_cert(&broken, &ca, &id, &policy, now).unwrap_err(),
            "the key does not match the certificate"
        );
        broken.data.as_mut().unwrap().remove(TLS_KEY);
        assert_eq!(
            reusable_cert(&broken, &ca, &id, &policy, now).unwrap_err(),
            "tls.key is missing"
        );
    }
}
