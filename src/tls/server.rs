//! The rustls side of the externalgrpc server: a `ServerConfig` that requires client
//! certificates signed by capow's CA and negotiates ALPN `h2`, and a serving certificate that
//! rotates in place.
//!
//! - **ALPN `h2`.** grpc-go refuses a TLS server that does not select `h2` since v1.67
//!   (grpc/grpc-go#7535); CA 1.34.1 is built with grpc-go 1.72.1 and CA 1.36.1 with 1.81.1
//!   (their `go.mod`).
//! - **Client certificates are required.** CA always presents one once `cert` is set in its
//!   cloud-config (cluster-autoscaler-1.36.1
//!   `cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`,
//!   `newExternalGrpcCloudProviderClient`), and the certificate is how the server knows which
//!   cluster is calling ([`super::ClusterIdentity`]). rustls' `WebPkiClientVerifier` checks the
//!   chain to capow's CA, the validity window, and the `clientAuth` EKU.
//! - **Rotation.** [`CertResolver`] keeps the current certificate in an `ArcSwap`. A handshake
//!   loads the current certificate without a lock, and a new one applies from the next
//!   handshake with the same `ServerConfig`. [`ServingCert::run`] checks the wall clock at a
//!   fixed interval. It never sleeps until a computed expiry time, because tokio's monotonic
//!   timers stop while a VM is suspended.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::ca::rfc3339;
use super::{Ca, CertPolicy, Error, IssuedCert, ServingNames, Validity};

/// The one ALPN protocol the server offers and the client configs ask for.
pub const ALPN_H2: &[u8] = b"h2";
/// Default interval of the serving certificate's wall-clock check (5 minutes). It must stay far
/// below the renewal window: 1/3 of 30 days is 10 days.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// The ring crypto provider every config of this module is built with (the binary's provider,
/// see `main.rs`), passed explicitly so tests need no process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

struct Current {
    key: Arc<CertifiedKey>,
    validity: Validity,
    serial: String,
}

/// Hands rustls the current serving certificate. [`CertResolver::replace`] swaps it for every
/// later handshake, without rebuilding the `ServerConfig`.
pub struct CertResolver {
    current: ArcSwap<Current>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("CertResolver")
            .field("serial", &current.serial)
            .field("validity", &current.validity)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// A resolver serving `cert`.
    ///
    /// # Errors
    /// As [`IssuedCert::certified_key`].
    pub fn new(cert: &IssuedCert) -> Result<CertResolver, Error> {
        Ok(CertResolver {
            current: ArcSwap::from_pointee(Self::current(cert)?),
        })
    }

    /// Serves `cert` from the next handshake on. Handshakes in flight keep the old one.
    ///
    /// # Errors
    /// As [`IssuedCert::certified_key`]; the old certificate stays in place.
    pub fn replace(&self, cert: &IssuedCert) -> Result<(), Error> {
        self.current.store(Arc::new(Self::current(cert)?));
        Ok(())
    }

    /// Validity of the certificate being served.
    pub fn validity(&self) -> Validity {
        self.current.load().validity
    }

    /// Serial number (hex) of the certificate being served.
    pub fn serial(&self) -> String {
        self.current.load().serial.clone()
    }

    fn current(cert: &IssuedCert) -> Result<Current, Error> {
        Ok(Current {
            key: cert.certified_key()?,
            validity: cert.validity(),
            serial: cert.serial().to_owned(),
        })
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().key))
    }
}

/// The server's TLS config: TLS 1.2 and 1.3, client certificates required and verified against
/// `ca`, ALPN `h2`, and the serving certificate from `resolver`. Use it with
/// `tokio_rustls::TlsAcceptor::from`.
///
/// # Errors
/// [`Error::Rustls`] or [`Error::Verifier`] if rustls refuses the CA.
pub fn server_config(ca: &Ca, resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rustls {
            what: "server config",
            source,
        })?
        .with_client_cert_verifier(client_verifier(ca)?)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A client TLS config as CA's grpc-go builds it from a cloud-config: trust the CAs in
/// `ca_pem`, present the certificate chain `cert_pem` with the key `key_pem`, and offer ALPN
/// `h2`. It is meant for tests and tools. The server name to check is the host part of the
/// `address` (see [`super::CloudConfig::client_config`]).
///
/// # Errors
/// [`Error::Pem`], [`Error::InvalidPrivateKey`] or [`Error::Rustls`].
pub fn client_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let ca = ca.map_err(|source| Error::Pem { what: "CA", source })?;
        roots.add(ca).map_err(|source| Error::Rustls {
            what: "client trust roots",
            source,
        })?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            what: "client",
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| Error::InvalidPrivateKey { what: "client" })?;
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
        })
        .map_err(|source| Error::Rustls {
            what: "client config",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn client_verifier(ca: &Ca) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .map_err(|source| Error::Rustls {
            what: "client trust roots",
            source,
        })?;
    // The builder requires a client certificate unless `allow_unauthenticated` is called.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|source| Error::Verifier { source })
}

/// Checks `cert` as the server would at wall-clock time `now`: it is signed by `ca`, valid at
/// `now`, and has the `clientAuth` EKU.
///
/// # Errors
/// [`Error::Rustls`] with the reason the server would refuse it.
pub fn verify_client_cert(
    ca: &Ca,
    cert: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<(), Error> {
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    client_verifier(ca)?
        .verify_client_cert(cert, &[], now)
        .map(|_| ())
        .map_err(|source| Error::Rustls {
            what: "client certificate verification",
            source,
        })
}

/// The server's serving certificate: issued by capow's CA for fixed names, served through a
/// [`CertResolver`], and re-issued when [`CertPolicy::needs_renewal`] says so. Each replica
/// issues its own serving certificate in memory. Clients trust the CA, not a particular
/// certificate.
#[derive(Debug)]
pub struct ServingCert {
    ca: Arc<Ca>,
    names: ServingNames,
    policy: CertPolicy,
    resolver: Arc<CertResolver>,
}

impl ServingCert {
    /// Issues the first serving certificate for `names` now.
    ///
    /// # Errors
    /// As [`Ca::issue_serving`] and [`CertResolver::new`].
    pub fn new(ca: Arc<Ca>, names: ServingNames, policy: CertPolicy) -> Result<ServingCert, Error> {
        let cert = ca.issue_serving(&names, &policy, SystemTime::now())?;
        tracing::info!(serial = cert.serial(), not_after = %rfc3339(cert.validity().not_after), "Issued the serving certificate");
        Ok(ServingCert {
            resolver: Arc::new(CertResolver::new(&cert)?),
            ca,
            names,
            policy,
        })
    }

    /// The resolver to build [`server_config`] with.
    pub fn resolver(&self) -> &Arc<CertResolver> {
        &self.resolver
    }

    /// [`server_config`] for this certificate and its CA.
    ///
    /// # Errors
    /// As [`server_config`].
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, Error> {
        server_config(&self.ca, Arc::clone(&self.resolver))
    }

    /// Re-issues the serving certificate if it is due at wall-clock time `now`. The new
    /// certificate is valid from `now`. Returns whether it rotated.
    ///
    /// # Errors
    /// As [`Ca::issue_serving`]; the current certificate stays in place.
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, Error> {
        let old = self.resolver.validity();
        if !self.policy.needs_renewal(old, now) {
            return Ok(false);
        }
        let cert = self.ca.issue_serving(&self.names, &self.policy, now)?;
        self.resolver.replace(&cert)?;
        tracing::info!(
            serial = cert.serial(),
            not_after = %rfc3339(cert.validity().not_after),
            old_not_after = %rfc3339(old.not_after),
            "Rotated the serving certificate"
        );
        Ok(true)
    }

    /// Checks every `check_interval` (see [`DEFAULT_CHECK_INTERVAL`]) whether the certificate
    /// is due, against the wall clock, until `shutdown` is cancelled. A failed rotation is
    /// logged and retried at the next check; the old certificate keeps serving meanwhile.
    /// Key generation (P-256) takes well under a millisecond, so it runs inline.
    pub async fn run(&self, check_interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(check_interval) => {}
            }
            if let Err(error) = self.rotate_if_due(SystemTime::now()) {
                tracing::warn!(%error, "Failed to rotate the serving certificate; retrying at the next check");
            }
        }
    }
}

/// Handshake helpers shared by the TLS tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::ClientConfig;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::server::ServerConfig;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// What the server saw of an accepted connection.
    #[derive(Debug)]
    pub(crate) struct Accepted {
        pub peer_certs: Vec<CertificateDer<'static>>,
        pub alpn: Option<Vec<u8>>,
    }

    /// What the client saw of a connection that carried data.
    #[derive(Debug)]
    pub(crate) struct Connected {
        pub server_cert: CertificateDer<'static>,
        pub alpn: Option<Vec<u8>>,
    }

    /// Runs a TLS handshake between `server_io` and `client_io` and exchanges one message each
    /// way, so a client certificate refused after the TLS 1.3 handshake also fails the client.
    /// Bounded by a 10 s timeout.
    pub(crate) async fn handshake<S>(
        server_io: S,
        client_io: S,
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> (Result<Accepted, String>, Result<Connected, String>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let server_side = async {
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            let accepted = Accepted {
                peer_certs: conn.peer_certificates().unwrap_or_default().to_vec(),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            };
            let mut ping = [0; 4];
            tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
            tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok(accepted)
        };
        let client_side = async {
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            let server_cert = conn.peer_certificates().unwrap_or_default()[0].clone();
            let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut pong = [0; 4];
            tls.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
            assert_eq!(&pong, b"pong");
            Ok(Connected { server_cert, alpn })
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(server_side, client_side)
        })
        .await
        .expect("the handshake finished within 10 s")
    }

    /// [`handshake`] over an in-memory pipe.
    pub(crate) async fn handshake_in_memory(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> (Result<Accepted, String>, Result<Connected, String>) {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        handshake(server_io, client_io, server, client, server_name).await
    }

    /// [`handshake`] over a real TCP connection on `127.0.0.1:0`.
    pub(crate) async fn handshake_tcp(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> (Result<Accepted, String>, Result<Connected, String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, connected) =
            tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
        let (server_io, _) = accepted.unwrap();
        handshake(server_io, connected.unwrap(), server, client, server_name).await
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::testing::{handshake_in_memory, handshake_tcp};
    use super::*;
    use crate::tls::ClusterIdentity;

    const HOST: &str = "capow-autoscaler.capow-system.svc";

    struct Fixture {
        ca: Arc<Ca>,
        serving: ServingCert,
        server: Arc<ServerConfig>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let ca = Arc::new(Ca::generate(SystemTime::now()).unwrap());
            let names = ServingNames::for_service("capow-autoscaler", "capow-system")
                .with_ips([IpAddr::V4(Ipv4Addr::LOCALHOST)]);
            let serving =
                ServingCert::new(Arc::clone(&ca), names, CertPolicy::serving_default()).unwrap();
            let server = serving.server_config().unwrap();
            Fixture {
                ca,
                serving,
                server,
            }
        }

        fn client_for(&self, ca: &Ca, id: &ClusterIdentity) -> Arc<ClientConfig> {
            let cert = ca
                .issue_client(id, &CertPolicy::client_default(), SystemTime::now())
                .unwrap();
            client_config_from_pem(cert.cert_pem(), cert.key_pem(), self.ca.cert_pem()).unwrap()
        }
    }

    fn serial_of(der: &[u8]) -> String {
        let (_, x509) = x509_parser::parse_x509_certificate(der).unwrap();
        x509.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[tokio::test]
    async fn each_cluster_is_known_by_its_certificate_and_h2_is_negotiated() {
        let f = Fixture::new();
        let a =
            ClusterIdentity::new("tenants", "a", "0b9e2f4a-1111-4222-8333-944444444444").unwrap();
        let b =
            ClusterIdentity::new("tenants", "b", "0b9e2f4a-1111-4222-8333-944444444444").unwrap();

        let (server, client) =
            handshake_in_memory(f.server.clone(), f.client_for(&f.ca, &a), HOST).await;
        let server = server.unwrap();
        let client = client.unwrap();
        assert_eq!(
            ClusterIdentity::from_peer_certificate(&server.peer_certs[0]).unwrap(),
            a
        );
        assert_eq!(server.alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(client.alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(
            serial_of(&client.server_cert),
            f.serving.resolver().serial()
        );

        // Cluster B over a real loopback socket, checking the IP SAN.
        let (server, client) =
            handshake_tcp(f.server.clone(), f.client_for(&f.ca, &b), "127.0.0.1").await;
        assert_eq!(
            ClusterIdentity::from_peer_certificate(&server.unwrap().peer_certs[0]).unwrap(),
            b
        );
        client.unwrap();
    }

    #[tokio::test]
    async fn a_client_certificate_of_another_ca_is_refused() {
        let f = Fixture::new();
        let other = Ca::generate(SystemTime::now()).unwrap();
        let a =
            ClusterIdentity::new("tenants", "a", "0b9e2f4a-1111-4222-8333-944444444444").unwrap();
        let (server, client) =
            handshake_in_memory(f.server.clone(), f.client_for(&other, &a), HOST).await;
        // Both CAs have the same subject, so webpki finds "the" issuer by name and then
        // rejects the signature.
        let err = server.unwrap_err();
        assert!(
            err.contains("invalid peer certificate: BadSignature"),
            "{err}"
        );
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let f = Fixture::new();
        let mut roots = RootCertStore::empty();
        roots.add(f.ca.cert_der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let (server, client) = handshake_in_memory(f.server.clone(), Arc::new(config), HOST).await;
        let err = server.unwrap_err();
        assert!(err.contains("peer sent no certificates"), "{err}");
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn a_client_expecting_another_host_refuses_the_server() {
        let f = Fixture::new();
        let a =
            ClusterIdentity::new("tenants", "a", "0b9e2f4a-1111-4222-8333-944444444444").unwrap();
        let (server, client) =
            handshake_in_memory(f.server.clone(), f.client_for(&f.ca, &a), "wrong.example").await;
        let err = client.unwrap_err();
        assert!(
            err.contains(r#"certificate not valid for name "wrong.example""#),
            "{err}"
        );
        assert!(server.is_err());
    }

    #[tokio::test]
    async fn a_swapped_certificate_serves_the_next_handshake_with_the_same_config() {
        let f = Fixture::new();
        let a =
            ClusterIdentity::new("tenants", "a", "0b9e2f4a-1111-4222-8333-944444444444").unwrap();
        let (_, before) =
            handshake_in_memory(f.server.clone(), f.client_for(&f.ca, &a), HOST).await;
        let before = serial_of(&before.unwrap().server_cert);

        let names = ServingNames::for_service("capow-autoscaler", "capow-system");
        let next =
            f.ca.issue_serving(&names, &CertPolicy::serving_default(), SystemTime::now())
                .unwrap();
        f.serving.resolver().replace(&next).unwrap();

        // A new client: one that kept its session would resume it and see no certificate.
        let (server, after) =
            handshake_in_memory(f.server.clone(), f.client_for(&f.ca, &a), HOST).await;
        server.unwrap();
        let after = serial_of(&after.unwrap().server_cert);
        assert_ne!(before, after);
        assert_eq!(after, next.serial());
    }

    #[test]
    fn rotation_happens_only_inside_the_renewal_window() {
        let f = Fixture::new();
        let first = f.serving.resolver().serial();
        let issued = f.serving.resolver().validity().not_before + crate::tls::issue::BACKDATE;
        assert!(!f.serving.rotate_if_due(SystemTime::now()).unwrap());
        assert!(
            !f.serving
                .rotate_if_due(issued + Duration::from_secs(20 * 86_400 - 3600))
                .unwrap()
        );
        assert_eq!(f.serving.resolver().serial(), first);

        let later = issued + Duration::from_secs(21 * 86_400);
        assert!(f.serving.rotate_if_due(later).unwrap());
        let second = f.serving.resolver().serial();
        assert_ne!(second, first);
        assert_eq!(
            f.serving.resolver().validity().not_after,
            later + CertPolicy::serving_default().lifetime()
        );
        // The new certificate is fresh at that time.
        assert!(!f.serving.rotate_if_due(later).unwrap());
        assert_eq!(f.serving.resolver().serial(), second);
    }

    #[tokio::test]
    async fn the_rotation_loop_replaces_a_due_certificate_and_stops_on_shutdown() {
        let f = Fixture::new();
        // Make the served certificate due: issued 25 of its 30 days ago.
        let old =
            f.ca.issue_serving(
                &ServingNames::for_service("capow-autoscaler", "capow-system"),
                &CertPolicy::serving_default(),
                SystemTime::now() - Duration::from_secs(25 * 86_400),
            )
            .unwrap();
        f.serving.resolver().replace(&old).unwrap();

        let serving = Arc::new(f.serving);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let serving = Arc::clone(&serving);
            let shutdown = shutdown.clone();
            async move { serving.run(Duration::from_millis(10), shutdown).await }
        });
        let mut rotated = false;
        for _ in 0..200 {
            if serving.resolver().serial() != old.serial() {
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rotated, "the loop did not rotate within 2 s");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the loop stopped on shutdown")
            .unwrap();
    }
}
