//! capow's own PKI for the externalgrpc server (no cert-manager).
//!
//! What this module owns:
//! - [`ca`]: capow's CA (ECDSA P-256, [`ca::CA_LIFETIME_DAYS`] days), kept in a Secret in capow's
//!   namespace. It is created once, with `create` only, and every replica uses the same one.
//! - [`issue`]: certificates signed by that CA. There are serving certificates (SANs for the
//!   Service's DNS names and IP addresses) and one client certificate per workload cluster. A
//!   client certificate's URI SAN names its cluster ([`ClusterIdentity`]).
//! - [`server`]: the rustls `ServerConfig` of the gRPC server. It requires client certificates
//!   and verifies them against the CA. It advertises ALPN `h2`. Its serving certificate is
//!   re-issued in place ([`ServingCert`]), so rotation needs no restart.
//! - [`cloud_config`]: the per-cluster Secret that a cluster-autoscaler mounts. It holds a
//!   client certificate, the CA, and a ready `--cloud-config` file.
//!
//! How the server uses it:
//! 1. At startup, call [`Ca::load_or_create`] (share the CA as `Arc<Ca>`), then
//!    [`ServingCert::new`] with [`ServingNames::for_service`], then
//!    [`ServingCert::server_config`].
//! 2. Accept TCP connections and wrap them with `tokio_rustls::TlsAcceptor::from(config)`. Hand
//!    the TLS streams to tonic's `serve_with_incoming`.
//! 3. In an RPC handler, `request.peer_certs()` returns the client's chain (leaf first).
//!    [`ClusterIdentity::from_peer_certificate`] turns the leaf into the cluster the caller
//!    may see.
//! 4. Spawn [`ServingCert::run`] so the serving certificate rotates.
//! 5. The Cluster watcher calls [`cloud_config::publish`] for each cluster whose
//!    cluster-autoscaler talks to capow, on every reconcile (it is idempotent). When
//!    [`Published::reissued`] is set, it restarts that cluster-autoscaler, because CA reads
//!    its certificate files only at start.
//!
//! Every rustls config here is built with the ring provider passed in explicitly, so nothing
//! depends on the process-wide default provider. Private keys never appear in logs, in error
//! messages or in `Debug` output.

pub mod ca;
pub mod cloud_config;
pub mod issue;
pub mod server;

use std::path::PathBuf;

pub use ca::{Ca, CaOrigin};
pub use cloud_config::{CloudConfig, PublishSettings, Published, publish};
pub use issue::{CertPolicy, ClusterIdentity, IssuedCert, ServingNames, Validity};
pub use server::{
    CertResolver, ServingCert, client_config_from_pem, server_config, verify_client_cert,
};

/// Secret key of a PEM certificate, as in Secrets of type `kubernetes.io/tls`.
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of a PEM private key (PKCS#8), as in Secrets of type `kubernetes.io/tls`.
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the PEM CA certificate that clients use to verify capow's server.
pub const CA_CRT: &str = "ca.crt";
/// Field manager of everything this module writes with server-side apply
/// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/#field-management>).
pub const FIELD_MANAGER: &str = "capow";

/// An error of capow's TLS module.
///
/// No variant carries private key material. Where a parser could quote its input, its
/// error is dropped on purpose ([`Error::InvalidPrivateKey`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kubernetes API call on a Secret failed.
    #[error("failed to {action} Secret {secret}")]
    Kube {
        /// What was attempted, e.g. `read the CA`.
        action: &'static str,
        /// `namespace/name` of the Secret.
        secret: String,
        /// The client error (API status or transport).
        #[source]
        source: kube::Error,
    },

    /// A Secret lacks a key, or the value is not UTF-8.
    #[error("Secret {secret} has no usable key {key}")]
    MissingSecretKey {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The missing key, e.g. `tls.key`.
        key: &'static str,
    },

    /// rcgen failed to make a key pair or to sign a certificate.
    #[error("failed to generate the {what}")]
    Generate {
        /// What was being made, e.g. `serving certificate`.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },

    /// A PEM private key could not be parsed. The parser's error is dropped because it could
    /// quote the input.
    #[error("the {what} private key is not a valid PEM PKCS#8 key")]
    InvalidPrivateKey {
        /// Whose key, e.g. `CA`.
        what: &'static str,
    },

    /// A PEM certificate could not be decoded.
    #[error("failed to decode the {what} PEM certificate")]
    Pem {
        /// Which certificate, e.g. `CA`.
        what: &'static str,
        /// The PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    /// A DER certificate could not be parsed.
    #[error("failed to parse the {what} certificate")]
    Parse {
        /// Which certificate, e.g. `peer`.
        what: &'static str,
        /// The X.509 parser error.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },

    /// The CA certificate and key in the CA Secret do not form a usable CA.
    #[error("the CA in Secret {secret} is unusable: {reason}")]
    InvalidCa {
        /// `namespace/name` of the Secret.
        secret: String,
        /// Why, e.g. `the key does not match the certificate`.
        reason: &'static str,
    },

    /// rustls refused a certificate, a key or a configuration.
    #[error("failed to build the {what}")]
    Rustls {
        /// What was being built, e.g. `server certified key`.
        what: &'static str,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },

    /// The client certificate verifier could not be built from the CA.
    #[error("failed to build the client certificate verifier")]
    Verifier {
        /// The builder error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// The peer certificate has no `capow://cluster/<namespace>/<name>` URI SAN.
    #[error(
        "the client certificate does not name a cluster (no {} URI SAN)",
        issue::URI_PREFIX
    )]
    MissingClusterIdentity,

    /// A cluster identity (from a peer certificate or a Cluster object) is malformed.
    #[error("invalid cluster identity {value:?}: {reason}")]
    InvalidClusterIdentity {
        /// The offending value (a URI or `namespace/name`; never secret).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A serving certificate was requested without any DNS name or IP address.
    #[error("a serving certificate needs at least one DNS name or IP address SAN")]
    NoServingNames,

    /// A certificate policy is out of range.
    #[error("invalid certificate policy: {reason}")]
    InvalidPolicy {
        /// Why it was refused.
        reason: &'static str,
    },

    /// The cloud-config YAML could not be written or read.
    #[error("failed to {action} the cloud-config YAML")]
    CloudConfigYaml {
        /// `encode` or `decode`.
        action: &'static str,
        /// The YAML error.
        #[source]
        source: serde_yaml::Error,
    },

    /// The cloud-config `address` is not `host:port` (as Go's `net.SplitHostPort` reads it).
    #[error("invalid cloud-config address {address:?}: {reason}")]
    InvalidAddress {
        /// The address.
        address: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A file named in a cloud-config could not be read.
    #[error("failed to read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
