//! Certificates issued by capow's CA: serving certificates for the externalgrpc Service, and one
//! client certificate per workload cluster whose URI SAN names the cluster.
//!
//! Rules and where they come from:
//! - A serving certificate names its hosts in SANs; the CN is informational only. CA's grpc-go
//!   client verifies the host part of its `address` (`ServerName` in
//!   `newExternalGrpcCloudProviderClient`, cluster-autoscaler-1.36.1
//!   `cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`), and Go's `crypto/x509` has
//!   refused a CN-only certificate for a host name since Go 1.15
//!   (<https://go.dev/doc/go1.15#commonname>).
//! - A client certificate carries CN `cluster:<namespace>/<name>` for people reading it, and
//!   the URI SAN `capow://cluster/<namespace>/<name>`. The server trusts only the URI SAN
//!   ([`ClusterIdentity::from_peer_certificate`]), because a SAN is a structured field while
//!   a CN is free text. It is the identity that limits a cluster-autoscaler to its own
//!   cluster's node groups ([`crate::autoscaler::service`]).
//! - Every leaf gets a fresh P-256 key. rcgen derives the serial number from that key (SHA-256),
//!   so serial numbers are unique. `notBefore` is backdated by [`BACKDATE`] for clock skew, and
//!   `notAfter` never passes the CA's.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;

use super::ca::ORGANIZATION;
use super::{Ca, Error};

/// Default lifetime of a serving certificate, in days.
pub const DEFAULT_SERVING_LIFETIME_DAYS: u64 = 30;
/// Default lifetime of a per-cluster client certificate, in days. It is long on purpose: the
/// cluster-autoscaler reads its certificate files once, at start
/// (`externalgrpc_cloud_provider.go` `newExternalGrpcCloudProviderClient`). A re-issued client
/// certificate therefore takes effect only when the cluster-autoscaler pod restarts.
pub const DEFAULT_CLIENT_LIFETIME_DAYS: u64 = 365;
/// Default fraction of a certificate's lifetime that remains when it is renewed (1/3). For a
/// 30-day serving certificate that is 10 days before expiry. For a 365-day client certificate
/// it is about 4 months before expiry.
pub const DEFAULT_RENEW_FRACTION: f64 = 1.0 / 3.0;
/// How far `notBefore` is set before the issuing time, to tolerate clock skew (1 hour).
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Prefix of the URI SAN naming a cluster: `capow://cluster/<namespace>/<name>`.
pub const URI_PREFIX: &str = "capow://cluster/";
/// Prefix of the subject CN of a client certificate: `cluster:<namespace>/<name>`.
pub const CN_PREFIX: &str = "cluster:";

const DAY: u64 = 86_400;

/// The validity window of a certificate (`notBefore`..`notAfter`, whole seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: SystemTime,
    /// `notAfter`.
    pub not_after: SystemTime,
}

impl Validity {
    /// Reads the validity of a DER certificate. `what` names the certificate in errors.
    ///
    /// # Errors
    /// [`Error::Parse`] if `der` is not an X.509 certificate.
    pub fn of_der(der: &[u8], what: &'static str) -> Result<Validity, Error> {
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|source| Error::Parse { what, source })?;
        let v = x509.validity();
        Ok(Validity {
            not_before: from_unix(v.not_before.timestamp()),
            not_after: from_unix(v.not_after.timestamp()),
        })
    }
}

fn from_unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

/// How long certificates live and when they are renewed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CertPolicy {
    lifetime: Duration,
    renew_fraction: f64,
}

impl CertPolicy {
    /// Certificates live `lifetime` and are renewed once less than `renew_fraction` of their
    /// own validity window remains.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] unless `0 < lifetime <= CA lifetime` and
    /// `0 < renew_fraction < 1`.
    pub fn new(lifetime: Duration, renew_fraction: f64) -> Result<CertPolicy, Error> {
        if lifetime.is_zero() || lifetime > super::ca::CA_LIFETIME {
            return Err(Error::InvalidPolicy {
                reason: "the lifetime must be positive and at most the CA's (3650 days)",
            });
        }
        if !(renew_fraction > 0.0 && renew_fraction < 1.0) {
            return Err(Error::InvalidPolicy {
                reason: "the renewal fraction must be between 0 and 1 (exclusive)",
            });
        }
        Ok(CertPolicy {
            lifetime,
            renew_fraction,
        })
    }

    /// Serving certificates: [`DEFAULT_SERVING_LIFETIME_DAYS`] days, renewed at
    /// [`DEFAULT_RENEW_FRACTION`].
    pub const fn serving_default() -> CertPolicy {
        CertPolicy {
            lifetime: Duration::from_secs(DEFAULT_SERVING_LIFETIME_DAYS * DAY),
            renew_fraction: DEFAULT_RENEW_FRACTION,
        }
    }

    /// Client certificates: [`DEFAULT_CLIENT_LIFETIME_DAYS`] days, renewed at
    /// [`DEFAULT_RENEW_FRACTION`].
    pub const fn client_default() -> CertPolicy {
        CertPolicy {
            lifetime: Duration::from_secs(DEFAULT_CLIENT_LIFETIME_DAYS * DAY),
            renew_fraction: DEFAULT_RENEW_FRACTION,
        }
    }

    /// Lifetime of new certificates.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Fraction of the validity window left when a certificate is renewed.
    pub fn renew_fraction(&self) -> f64 {
        self.renew_fraction
    }

    /// The wall-clock time from which a certificate with `validity` is due for renewal.
    pub fn renew_at(&self, validity: Validity) -> SystemTime {
        let window = validity
            .not_after
            .duration_since(validity.not_before)
            .unwrap_or_default();
        validity.not_after - window.mul_f64(self.renew_fraction)
    }

    /// True when a certificate with `validity` must be replaced at wall-clock time `now`:
    /// less than the renewal fraction remains, or `now` is before `notBefore` (the clock
    /// moved back past it).
    pub fn needs_renewal(&self, validity: Validity, now: SystemTime) -> bool {
        now >= self.renew_at(validity) || now < validity.not_before
    }
}

/// The names a serving certificate is valid for (its SANs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServingNames {
    /// DNS name SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<IpAddr>,
}

impl ServingNames {
    /// The DNS names of Service `service` in `namespace`: `<svc>`, `<svc>.<ns>`,
    /// `<svc>.<ns>.svc` and `<svc>.<ns>.svc.cluster.local`. A cloud-config `address` may use
    /// any of them as its host.
    pub fn for_service(service: &str, namespace: &str) -> ServingNames {
        ServingNames {
            dns_names: vec![
                service.to_owned(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ],
            ip_addresses: Vec::new(),
        }
    }

    /// Adds IP address SANs (e.g. `127.0.0.1` for tests and port-forwards).
    #[must_use]
    pub fn with_ips(mut self, ips: impl IntoIterator<Item = IpAddr>) -> ServingNames {
        self.ip_addresses.extend(ips);
        self
    }

    fn sans(&self) -> Result<Vec<SanType>, Error> {
        let mut sans = Vec::with_capacity(self.dns_names.len() + self.ip_addresses.len());
        for name in &self.dns_names {
            let ia5 = name.as_str().try_into().map_err(|source| Error::Generate {
                what: "serving certificate DNS name",
                source,
            })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(self.ip_addresses.iter().copied().map(SanType::IpAddress));
        Ok(sans)
    }
}

/// The workload cluster a client certificate belongs to: the CAPI Cluster `namespace/name`
/// and its `metadata.uid`. The UID binds the certificate to one incarnation of the Cluster:
/// the externalgrpc server accepts it only while a Cluster with that name *and* UID exists, so
/// a deleted Cluster's certificate stops working at once and a Cluster re-created with the
/// same name gets a new identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterIdentity {
    /// Namespace of the CAPI Cluster (a DNS-1123 label).
    pub namespace: String,
    /// Name of the CAPI Cluster (a DNS-1123 subdomain).
    pub name: String,
    /// `metadata.uid` of the CAPI Cluster (a UUID as the API server assigns it).
    pub uid: String,
}

impl fmt::Display for ClusterIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ClusterIdentity {
    /// The identity of Cluster `namespace/name` with UID `uid`. Both names are validated as
    /// Kubernetes names and the UID as lower-case hex digits and dashes (at most 64), which also
    /// keeps the URI SAN unambiguous: none of the three can contain `/`.
    ///
    /// # Errors
    /// [`Error::InvalidClusterIdentity`] for a name Kubernetes would not accept or a malformed
    /// UID.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Result<ClusterIdentity, Error> {
        let id = ClusterIdentity {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        };
        let invalid = |reason| Error::InvalidClusterIdentity {
            value: id.to_string(),
            reason,
        };
        if !is_dns1123_label(&id.namespace) {
            return Err(invalid("the namespace is not a DNS-1123 label"));
        }
        if !is_dns1123_subdomain(&id.name) {
            return Err(invalid("the name is not a DNS-1123 subdomain"));
        }
        if id.uid.is_empty()
            || id.uid.len() > 64
            || !id
                .uid
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
        {
            return Err(invalid(
                "the UID is not a Kubernetes UID (lower-case hex digits and dashes)",
            ));
        }
        Ok(id)
    }

    /// The URI SAN: `capow://cluster/<namespace>/<name>/<uid>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}/{}", self.namespace, self.name, self.uid)
    }

    /// The subject CN: `cluster:<namespace>/<name>`.
    pub fn common_name(&self) -> String {
        format!("{CN_PREFIX}{}/{}", self.namespace, self.name)
    }

    /// Parses `capow://cluster/<namespace>/<name>/<uid>`.
    ///
    /// # Errors
    /// [`Error::InvalidClusterIdentity`] for any other shape; a URI without the UID (a
    /// certificate issued before credentials were bound to the Cluster's UID) says so.
    pub fn from_uri(uri: &str) -> Result<ClusterIdentity, Error> {
        let invalid = |reason| Error::InvalidClusterIdentity {
            value: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| invalid("not a capow://cluster/ URI"))?;
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(namespace), Some(name), Some(uid), None) => {
                ClusterIdentity::new(namespace, name, uid)
            }
            (Some(_), Some(_), None, None) => Err(invalid(
                "the certificate names no Cluster UID: it predates cluster-bound credentials; \
                 capow has reissued the credentials Secret, restart the cluster-autoscaler to load it",
            )),
            _ => Err(invalid("expected capow://cluster/<namespace>/<name>/<uid>")),
        }
    }

    /// The cluster named by a peer's (leaf) certificate, from its one `capow://cluster/` URI
    /// SAN. With tonic, the leaf is `request.peer_certs()?[0]`. Call this only for
    /// certificates that the server's verifier accepted: it checks the name, not the
    /// signature.
    ///
    /// # Errors
    /// [`Error::Parse`] for a malformed certificate, [`Error::MissingClusterIdentity`] without
    /// such a SAN, and [`Error::InvalidClusterIdentity`] for a malformed one or for several.
    pub fn from_peer_certificate(der: &[u8]) -> Result<ClusterIdentity, Error> {
        let what = "peer";
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|source| Error::Parse { what, source })?;
        let san = x509.subject_alternative_name().map_err(|e| Error::Parse {
            what,
            source: x509_parser::nom::Err::Error(e),
        })?;
        let mut uris = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
                _ => None,
            });
        let uri = uris.next().ok_or(Error::MissingClusterIdentity)?;
        if let Some(other) = uris.next() {
            return Err(Error::InvalidClusterIdentity {
                value: format!("{uri}, {other}"),
                reason: "the certificate names more than one cluster",
            });
        }
        ClusterIdentity::from_uri(uri)
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A certificate with its private key.
///
/// `Debug` shows the serial number and validity, never the key.
pub struct IssuedCert {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_der: PrivateKeyDer<'static>,
    key_pem: String,
    validity: Validity,
    serial: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Reads a certificate and its key from PEM (e.g. a Secret's `tls.crt` and `tls.key`).
    /// `what` names them in errors.
    ///
    /// # Errors
    /// [`Error::Pem`] or [`Error::Parse`] for the certificate, [`Error::InvalidPrivateKey`]
    /// for the key.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        what: &'static str,
    ) -> Result<IssuedCert, Error> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|source| Error::Pem { what, source })?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| Error::InvalidPrivateKey { what })?;
        IssuedCert::new(
            cert_der,
            cert_pem.to_owned(),
            key_der,
            key_pem.to_owned(),
            what,
        )
    }

    fn new(
        cert_der: CertificateDer<'static>,
        cert_pem: String,
        key_der: PrivateKeyDer<'static>,
        key_pem: String,
        what: &'static str,
    ) -> Result<IssuedCert, Error> {
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|source| Error::Parse { what, source })?;
        let serial = x509
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let validity = Validity::of_der(&cert_der, what)?;
        Ok(IssuedCert {
            cert_der,
            cert_pem,
            key_der,
            key_pem,
            validity,
            serial,
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM PKCS#8. Secret material: write it only into a Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the certificate is valid.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// The serial number, lower-case hex without separators (safe to log).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The certificate and key as a rustls `CertifiedKey` (leaf only: clients hold the CA).
    ///
    /// # Errors
    /// [`Error::Rustls`] if the key is unsupported or does not match the certificate.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, Error> {
        rustls::sign::CertifiedKey::from_der(
            vec![self.cert_der.clone()],
            self.key_der.clone_key(),
            &super::server::crypto_provider(),
        )
        .map(Arc::new)
        .map_err(|source| Error::Rustls {
            what: "certified key",
            source,
        })
    }
}

impl Ca {
    /// Issues a serving certificate for `names` (DNS and IP SANs, EKU `serverAuth`), valid from
    /// `now` minus [`BACKDATE`] for `policy.lifetime()`, but never past the CA's `notAfter`.
    ///
    /// # Errors
    /// [`Error::NoServingNames`] for an empty `names`, or [`Error::Generate`].
    pub fn issue_serving(
        &self,
        names: &ServingNames,
        policy: &CertPolicy,
        now: SystemTime,
    ) -> Result<IssuedCert, Error> {
        if names.dns_names.is_empty() && names.ip_addresses.is_empty() {
            return Err(Error::NoServingNames);
        }
        let mut params = self.leaf_params(policy, now);
        let cn = names
            .dns_names
            .first()
            .cloned()
            .or_else(|| names.ip_addresses.first().map(ToString::to_string))
            .unwrap_or_default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = names.sans()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "serving certificate")
    }

    /// Issues the client certificate of `cluster`: CN `cluster:<ns>/<name>`, URI SAN
    /// `capow://cluster/<ns>/<name>`, EKU `clientAuth`, with the same validity rule as
    /// [`Ca::issue_serving`].
    ///
    /// # Errors
    /// [`Error::Generate`].
    pub fn issue_client(
        &self,
        cluster: &ClusterIdentity,
        policy: &CertPolicy,
        now: SystemTime,
    ) -> Result<IssuedCert, Error> {
        let what = "client certificate";
        let mut params = self.leaf_params(policy, now);
        params
            .distinguished_name
            .push(DnType::CommonName, cluster.common_name());
        let uri = cluster
            .uri()
            .try_into()
            .map_err(|source| Error::Generate { what, source })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, what)
    }

    fn leaf_params(&self, policy: &CertPolicy, now: SystemTime) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
        params.not_after = (now + policy.lifetime)
            .min(self.validity().not_after)
            .into();
        params
    }

    fn sign(&self, params: CertificateParams, what: &'static str) -> Result<IssuedCert, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| Error::Generate { what, source })?;
        let cert = params
            .signed_by(&key, self.issuer())
            .map_err(|source| Error::Generate { what, source })?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        IssuedCert::new(
            cert.der().clone(),
            cert.pem(),
            key_der,
            key.serialize_pem(),
            what,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use x509_parser::prelude::X509Certificate;

    use super::*;

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    fn names() -> ServingNames {
        ServingNames::for_service("capow-autoscaler", "capow-system")
            .with_ips([IpAddr::V4(Ipv4Addr::LOCALHOST)])
    }

    #[test]
    fn serving_certificate_names_its_hosts_in_sans_and_is_for_servers_only() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let now = SystemTime::now();
        let cert = ca
            .issue_serving(&names(), &CertPolicy::serving_default(), now)
            .unwrap();
        let x509 = parse(cert.cert_der());
        let sans: Vec<String> = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            sans,
            [
                "DNSName(capow-autoscaler)",
                "DNSName(capow-autoscaler.capow-system)",
                "DNSName(capow-autoscaler.capow-system.svc)",
                "DNSName(capow-autoscaler.capow-system.svc.cluster.local)",
                "IPAddress(7f:00:00:01)", // 127.0.0.1, as x509-parser prints it
            ]
        );
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!x509.is_ca());
        assert_eq!(x509.issuer(), parse(ca.cert_der()).subject());

        let lifetime = cert
            .validity()
            .not_after
            .duration_since(cert.validity().not_before)
            .unwrap();
        assert_eq!(
            lifetime.as_secs(),
            DEFAULT_SERVING_LIFETIME_DAYS * DAY + BACKDATE.as_secs()
        );
        assert!(cert.validity().not_before < now);
    }

    #[test]
    fn serving_certificate_without_names_is_refused() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let err = ca
            .issue_serving(
                &ServingNames::default(),
                &CertPolicy::serving_default(),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::NoServingNames));
    }

    #[test]
    fn client_certificate_names_its_cluster_and_round_trips() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let a = ClusterIdentity::new(
            "tenant-1",
            "prod.eu",
            "0b9e2f4a-1111-4222-8333-944444444444",
        )
        .unwrap();
        let cert = ca
            .issue_client(&a, &CertPolicy::client_default(), SystemTime::now())
            .unwrap();
        let x509 = parse(cert.cert_der());
        assert_eq!(
            x509.subject().to_string(),
            "O=capow, CN=cluster:tenant-1/prod.eu"
        );
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            ClusterIdentity::from_peer_certificate(cert.cert_der()).unwrap(),
            a
        );
        assert_eq!(
            a.uri(),
            "capow://cluster/tenant-1/prod.eu/0b9e2f4a-1111-4222-8333-944444444444"
        );
    }

    #[test]
    fn a_certificate_without_the_uri_san_names_no_cluster() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let serving = ca
            .issue_serving(&names(), &CertPolicy::serving_default(), SystemTime::now())
            .unwrap();
        assert!(matches!(
            ClusterIdentity::from_peer_certificate(serving.cert_der()),
            Err(Error::MissingClusterIdentity)
        ));
        assert!(matches!(
            ClusterIdentity::from_peer_certificate(b"not a certificate"),
            Err(Error::Parse { .. })
        ));
    }

    #[test]
    fn cluster_identities_must_be_kubernetes_names() {
        for (ns, name) in [
            ("", "a"),
            ("ns", ""),
            ("Ns", "a"),
            ("ns", "a/b"),
            ("n/s", "a"),
            ("-ns", "a"),
            ("ns", "a..b"),
            (&"n".repeat(64) as &str, "a"),
        ] {
            assert!(
                ClusterIdentity::new(ns, name, "0b9e2f4a").is_err(),
                "{ns:?}/{name:?}"
            );
        }
        for uid in ["", "UPPER", "0b9e/2f4a", &"a".repeat(65) as &str] {
            assert!(ClusterIdentity::new("ns", "a", uid).is_err(), "{uid:?}");
        }
        for uri in [
            "capow://cluster/ns",
            "capow://cluster/ns/a/b/c",
            "spiffe://cluster/ns/a/0b9e",
            "capow://cluster//a/0b9e",
        ] {
            assert!(ClusterIdentity::from_uri(uri).is_err(), "{uri}");
        }
        // A certificate from before cluster-bound credentials says what to do.
        let legacy = ClusterIdentity::from_uri("capow://cluster/ns/a")
            .unwrap_err()
            .to_string();
        assert!(legacy.contains("no Cluster UID"), "{legacy}");
        assert_eq!(
            ClusterIdentity::from_uri(
                "capow://cluster/ns/a.b-1/0b9e2f4a-1111-4222-8333-944444444444"
            )
            .unwrap(),
            ClusterIdentity::new("ns", "a.b-1", "0b9e2f4a-1111-4222-8333-944444444444").unwrap()
        );
    }

    #[test]
    fn renewal_starts_when_a_third_of_the_window_remains() {
        let policy = CertPolicy::new(Duration::from_secs(30 * DAY), 1.0 / 3.0).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let v = Validity {
            not_before: t0,
            not_after: t0 + Duration::from_secs(30 * DAY),
        };
        assert_eq!(policy.renew_at(v), t0 + Duration::from_secs(20 * DAY));
        assert!(!policy.needs_renewal(v, t0));
        assert!(!policy.needs_renewal(v, t0 + Duration::from_secs(20 * DAY - 1)));
        assert!(policy.needs_renewal(v, t0 + Duration::from_secs(20 * DAY)));
        assert!(policy.needs_renewal(v, t0 + Duration::from_secs(31 * DAY)));
        // The clock went back past notBefore: the certificate is unusable now.
        assert!(policy.needs_renewal(v, t0 - Duration::from_secs(1)));
    }

    #[test]
    fn policies_out_of_range_are_refused() {
        let d = Duration::from_secs(DAY);
        for f in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(CertPolicy::new(d, f).is_err(), "{f}");
        }
        assert!(CertPolicy::new(Duration::ZERO, 0.5).is_err());
        assert!(CertPolicy::new(Duration::from_secs(3651 * DAY), 0.5).is_err());
    }

    #[test]
    fn no_leaf_outlives_the_ca() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let late = ca.validity().not_after - Duration::from_secs(DAY);
        let cert = ca
            .issue_serving(&names(), &CertPolicy::serving_default(), late)
            .unwrap();
        assert_eq!(cert.validity().not_after, ca.validity().not_after);
    }

    #[test]
    fn issued_certificates_are_distinct_and_keep_keys_out_of_debug() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let policy = CertPolicy::serving_default();
        let one = ca
            .issue_serving(&names(), &policy, SystemTime::now())
            .unwrap();
        let two = ca
            .issue_serving(&names(), &policy, SystemTime::now())
            .unwrap();
        assert_ne!(one.serial(), two.serial());
        assert_ne!(one.key_pem(), two.key_pem());
        let body = one.key_pem().lines().nth(1).unwrap();
        assert!(!format!("{one:?}").contains(body));
        assert!(format!("{one:?}").contains(one.serial()));

        let again = IssuedCert::from_pem(one.cert_pem(), one.key_pem(), "test").unwrap();
        assert_eq!(again.serial(), one.serial());
        assert_eq!(again.validity(), one.validity());
        again.certified_key().unwrap();
        // A key that does not belong to the certificate is caught by rustls.
        let mixed = IssuedCert::from_pem(one.cert_pem(), two.key_pem(), "test").unwrap();
        assert!(matches!(mixed.certified_key(), Err(Error::Rustls { .. })));
    }
}
