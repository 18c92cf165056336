//! capow's CA: an rcgen ECDSA P-256 self-signed CA, kept in a Secret (`tls.crt`, `tls.key`,
//! PEM) in capow's namespace, so every replica and every restart signs with the same CA.
//!
//! Creation is race-free without a lease. [`Ca::load_or_create`] creates the Secret only with
//! `create`, never with update or apply. If two managers start at once, the API server accepts
//! exactly one `create`. The other gets 409 AlreadyExists, re-reads the Secret and uses the
//! winner's CA. A reloaded CA signs through rcgen's [`Issuer::from_ca_cert_der`], which reads
//! the issuer name and key identifier from the persisted certificate.
//!
//! The CA itself is not rotated: it lives [`CA_LIFETIME_DAYS`] days, and no leaf outlives it
//! (see [`Ca::issue_serving`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::issue::{BACKDATE, Validity};
use super::{Error, FIELD_MANAGER, TLS_CRT, TLS_KEY};

/// Default name of the CA Secret in capow's namespace.
pub const DEFAULT_SECRET_NAME: &str = "capow-ca";
/// Lifetime of a new CA, in days (10 years).
pub const CA_LIFETIME_DAYS: u64 = 3650;
/// Lifetime of a new CA ([`CA_LIFETIME_DAYS`] as a duration).
pub const CA_LIFETIME: Duration = Duration::from_secs(CA_LIFETIME_DAYS * 86_400);
/// Subject common name of capow's CA.
pub const CA_COMMON_NAME: &str = "capow externalgrpc CA";
/// Subject organization of capow's CA and of the certificates it issues.
pub const ORGANIZATION: &str = "capow";
/// Secret type of the CA Secret and of the per-cluster Secrets (`tls.crt` and `tls.key` are
/// required by the API server for this type; extra keys such as `ca.crt` are allowed).
pub const SECRET_TYPE: &str = "kubernetes.io/tls";

/// How [`Ca::load_or_create`] obtained the CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaOrigin {
    /// The Secret existed and was read.
    Loaded,
    /// This call created the Secret.
    Created,
    /// Another replica created the Secret between our read and our create (409). Its CA is used.
    LostRace,
}

/// capow's CA: the signing key and the self-signed certificate.
///
/// `Debug` shows the subject and the validity only; the key never leaves this type except
/// through [`Ca::to_secret`].
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    validity: Validity,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &CA_COMMON_NAME)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA valid from `now` minus [`BACKDATE`] (clock skew) for [`CA_LIFETIME`]. It has
    /// path length 0 (it signs leaves only) and key usages `keyCertSign`, `cRLSign` and
    /// `digitalSignature`.
    ///
    /// # Errors
    /// [`Error::Generate`] if rcgen fails.
    pub fn generate(now: SystemTime) -> Result<Ca, Error> {
        let what = "CA";
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| Error::Generate { what, source })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        dn.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
        params.not_after = (now + CA_LIFETIME).into();
        let cert = params
            .self_signed(&key)
            .map_err(|source| Error::Generate { what, source })?;
        let cert_der = cert.der().clone();
        Ok(Ca {
            validity: Validity::of_der(&cert_der, "CA")?,
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            cert_der,
        })
    }

    /// Reloads a CA from its PEM certificate and PEM PKCS#8 key (the CA Secret's `tls.crt` and
    /// `tls.key`). The certificate must be a CA and `key_pem` must be its key. `secret` names
    /// the source in errors.
    ///
    /// # Errors
    /// [`Error::Pem`] or [`Error::Parse`] for a bad certificate,
    /// [`Error::InvalidPrivateKey`] for a bad key, and [`Error::InvalidCa`] when the
    /// certificate is not a CA or the key does not match it.
    pub fn from_pem(cert_pem: &str, key_pem: &str, secret: &str) -> Result<Ca, Error> {
        let what = "CA";
        let key = KeyPair::from_pem(key_pem).map_err(|_| Error::InvalidPrivateKey { what })?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|source| Error::Pem { what, source })?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|source| Error::Parse { what, source })?;
        let invalid = |reason| Error::InvalidCa {
            secret: secret.to_owned(),
            reason,
        };
        if !x509.is_ca() {
            return Err(invalid("the certificate is not a CA"));
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid("the key does not match the certificate"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|_| invalid("rcgen cannot sign with this certificate"))?;
        Ok(Ca {
            validity: Validity::of_der(&cert_der, what)?,
            cert_pem: cert_pem.to_owned(),
            issuer,
            cert_der,
        })
    }

    /// Reads the CA from a Secret with `tls.crt` and `tls.key`.
    ///
    /// # Errors
    /// [`Error::MissingSecretKey`], or as [`Ca::from_pem`].
    pub fn from_secret(secret: &Secret) -> Result<Ca, Error> {
        let secret_ref = secret_ref(
            secret.metadata.namespace.as_deref().unwrap_or_default(),
            secret.metadata.name.as_deref().unwrap_or_default(),
        );
        let cert = secret_str(secret, TLS_CRT, &secret_ref)?;
        let key = secret_str(secret, TLS_KEY, &secret_ref)?;
        Ca::from_pem(cert, key, &secret_ref)
    }

    /// The Secret holding this CA: `namespace/name`, type [`SECRET_TYPE`], keys `tls.crt` and
    /// `tls.key` (PEM), labelled `app.kubernetes.io/managed-by: capow`.
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let data = BTreeMap::from([
            (
                TLS_CRT.to_owned(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                TLS_KEY.to_owned(),
                ByteString(self.issuer.key().serialize_pem().into_bytes()),
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Loads the CA from Secret `namespace/name`, or creates the Secret with a new CA if it does
    /// not exist. When two callers race, both end with the CA of the one whose `create` won.
    /// An existing Secret is never modified, so a broken CA Secret stops the manager with an
    /// error. It is not replaced, because replacing it would break every issued certificate.
    ///
    /// # Errors
    /// [`Error::Kube`] if reading or creating fails, or as [`Ca::from_secret`] for a broken
    /// Secret.
    pub async fn load_or_create(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<(Ca, CaOrigin), Error> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = secret_ref(namespace, name);
        let kube_err = |action| {
            let secret = secret.clone();
            move |source| Error::Kube {
                action,
                secret,
                source,
            }
        };
        if let Some(existing) = api.get_opt(name).await.map_err(kube_err("read the CA"))? {
            let ca = Ca::from_secret(&existing)?;
            tracing::info!(%secret, not_after = %rfc3339(ca.validity.not_after), "Loaded the CA");
            return Ok((ca, CaOrigin::Loaded));
        }
        let ca = Ca::generate(SystemTime::now())?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match api.create(&params, &ca.to_secret(namespace, name)).await {
            Ok(_) => {
                tracing::info!(%secret, not_after = %rfc3339(ca.validity.not_after), "Created the CA");
                Ok((ca, CaOrigin::Created))
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
                let winner = api
                    .get(name)
                    .await
                    .map_err(kube_err("read the CA after losing the create race for"))?;
                let ca = Ca::from_secret(&winner)?;
                tracing::info!(%secret, not_after = %rfc3339(ca.validity.not_after), "Another replica created the CA first; using it");
                Ok((ca, CaOrigin::LostRace))
            }
            Err(source) => Err(kube_err("create the CA")(source)),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// When the CA certificate is valid.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// `namespace/name`, the form Secrets are named in logs and errors.
pub(super) fn secret_ref(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A Secret value as UTF-8 text.
pub(super) fn secret_str<'a>(
    secret: &'a Secret,
    key: &'static str,
    secret_ref: &str,
) -> Result<&'a str, Error> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .ok_or_else(|| Error::MissingSecretKey {
            secret: secret_ref.to_owned(),
            key,
        })
}

/// RFC 3339 (seconds) for log fields.
pub(super) fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertPolicy, ClusterIdentity};

    #[test]
    fn generated_ca_is_a_p256_ca_valid_for_ten_years() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert!(x509.is_ca());
        assert_eq!(
            x509.subject().to_string(),
            format!("CN={CA_COMMON_NAME}, O={ORGANIZATION}")
        );
        let bc = x509.basic_constraints().unwrap().unwrap().value;
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let lifetime = ca
            .validity()
            .not_after
            .duration_since(ca.validity().not_before)
            .unwrap();
        assert_eq!(
            lifetime.as_secs(),
            CA_LIFETIME.as_secs() + BACKDATE.as_secs()
        );
        assert!(ca.validity().not_before < now && now < ca.validity().not_after);
    }

    #[test]
    fn ca_survives_a_round_trip_through_its_secret() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let secret = ca.to_secret("capow-system", DEFAULT_SECRET_NAME);
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        let data = secret.data.as_ref().unwrap();
        assert!(data[TLS_CRT].0.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert!(data[TLS_KEY].0.starts_with(b"-----BEGIN PRIVATE KEY-----"));

        let reloaded = Ca::from_secret(&secret).unwrap();
        assert_eq!(reloaded.cert_der(), ca.cert_der());
        // A leaf issued by the reloaded CA chains to the original CA certificate: same subject,
        // same key identifier, same key.
        let leaf = reloaded
            .issue_client(
                &ClusterIdentity::new("ns", "a", "0b9e2f4a-1111-4222-8333-944444444444").unwrap(),
                &CertPolicy::client_default(),
                SystemTime::now(),
            )
            .unwrap();
        crate::tls::server::verify_client_cert(&ca, leaf.cert_der(), SystemTime::now()).unwrap();
    }

    #[test]
    fn from_pem_refuses_a_key_of_another_ca() {
        let a = Ca::generate(SystemTime::now()).unwrap();
        let b = Ca::generate(SystemTime::now()).unwrap();
        let err = Ca::from_pem(a.cert_pem(), &b.issuer.key().serialize_pem(), "ns/x").unwrap_err();
        assert!(
            matches!(err, Error::InvalidCa { reason, .. } if reason.contains("does not match")),
            "{err:?}"
        );
    }

    #[test]
    fn from_pem_refuses_a_leaf_certificate() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let leaf = ca
            .issue_serving(
                &crate::tls::ServingNames::for_service("capow-autoscaler", "capow-system"),
                &CertPolicy::serving_default(),
                SystemTime::now(),
            )
            .unwrap();
        let err = Ca::from_pem(leaf.cert_pem(), leaf.key_pem(), "ns/x").unwrap_err();
        assert!(
            matches!(err, Error::InvalidCa { reason, .. } if reason.contains("not a CA")),
            "{err:?}"
        );
    }

    #[test]
    fn secret_contents_stay_out_of_debug_and_errors() {
        let ca = Ca::generate(SystemTime::now()).unwrap();
        let key_pem = ca.issuer.key().serialize_pem();
        let key_body = key_pem.lines().nth(1).unwrap();
        assert!(!format!("{ca:?}").contains(key_body));

        // A corrupted key: the error names the key, never quotes it.
        let broken = key_pem.replace(&key_body[..8], "!!!!!!!!");
        let err = Ca::from_pem(ca.cert_pem(), &broken, "ns/x").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&key_body[8..24]), "{text}");

        let mut secret = ca.to_secret("ns", "x");
        secret.data.as_mut().unwrap().remove(TLS_KEY);
        let err = Ca::from_secret(&secret).unwrap_err();
        assert_eq!(err.to_string(), "Secret ns/x has no usable key tls.key");
    }
}
