//! clouds.yaml parsing: turns one named cloud of a standard OpenStack `clouds.yaml` into a
//! [`CloudConfig`] (Keystone v3 URL, credentials, scope, region, interface).
//!
//! The format is openstacksdk's (`docs/source/user/config/configuration.rst`); capow reads
//! it from the `clouds.yaml` key of an identityRef Secret, exactly as CAPO does. Supported
//! `auth_type`s: `password`/`v3password` (the default) and
//! `v3applicationcredential`/`application_credential`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::error::{Error, Result};

/// A secret string (password, application credential secret, token). Its `Debug` output is
/// redacted so it can never reach a log line.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user, project or domain named by ID or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NameOrId {
    /// By ID.
    Id(String),
    /// By name (within a domain, for users and projects).
    Name(String),
}

/// How to authenticate with Keystone v3.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// `password` method: a user by ID, or by name within a domain.
    Password {
        /// The user.
        user: NameOrId,
        /// Domain of a user named by name.
        user_domain: Option<NameOrId>,
        /// The password.
        password: SecretString,
    },
    /// `application_credential` method: by ID, or by name plus its user.
    ApplicationCredential {
        /// The application credential.
        credential: NameOrId,
        /// Owner of a credential named by name.
        user: Option<NameOrId>,
        /// Domain of a user named by name.
        user_domain: Option<NameOrId>,
        /// The secret.
        secret: SecretString,
    },
}

/// Project the token is scoped to (password auth; application credentials carry their own).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProjectScope {
    /// The project.
    pub project: NameOrId,
    /// Domain of a project named by name.
    pub domain: Option<NameOrId>,
}

/// Everything needed to talk to one cloud as one identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloudConfig {
    /// Keystone v3 URL, e.g. `https://keystone.example.com:5000/v3` (a trailing `/v3` is added
    /// when missing).
    pub auth_url: String,
    /// Credentials.
    pub auth: AuthMethod,
    /// Project scope, if any.
    pub scope: Option<ProjectScope>,
    /// Region whose endpoints to use; `None` accepts any region (single-region clouds).
    pub region: Option<String>,
    /// Endpoint interface: `public` (default), `internal` or `admin`.
    pub interface: String,
    /// Whether to verify TLS certificates (clouds.yaml `verify`, default true).
    pub verify_tls: bool,
}

#[derive(Deserialize)]
struct CloudsFile {
    #[serde(default)]
    clouds: BTreeMap<String, CloudEntry>,
}

#[derive(Deserialize)]
struct CloudEntry {
    #[serde(default)]
    auth: AuthEntry,
    #[serde(default)]
    auth_type: Option<String>,
    #[serde(default)]
    region_name: Option<String>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    endpoint_type: Option<String>,
    #[serde(default)]
    verify: Option<bool>,
    #[serde(default)]
    identity_api_version: Option<serde_yaml::Value>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    auth_url: Option<String>,
    username: Option<String>,
    user_id: Option<String>,
    password: Option<SecretString>,
    project_name: Option<String>,
    project_id: Option<String>,
    // openstacksdk also accepts the older tenant_* names.
    tenant_name: Option<String>,
    tenant_id: Option<String>,
    user_domain_name: Option<String>,
    user_domain_id: Option<String>,
    project_domain_name: Option<String>,
    project_domain_id: Option<String>,
    domain_name: Option<String>,
    domain_id: Option<String>,
    application_credential_id: Option<String>,
    application_credential_name: Option<String>,
    application_credential_secret: Option<SecretString>,
}

fn name_or_id(id: Option<String>, name: Option<String>) -> Option<NameOrId> {
    id.filter(|s| !s.is_empty())
        .map(NameOrId::Id)
        .or_else(|| name.filter(|s| !s.is_empty()).map(NameOrId::Name))
}

impl CloudConfig {
    /// Parses `clouds.yaml` and returns the cloud named `cloud_name`. `region` (from the
    /// identityRef) overrides the cloud's `region_name`.
    ///
    /// # Errors
    /// [`Error::InvalidCloudConfig`] when the YAML does not parse, the cloud is missing, the
    /// `auth_type` is unsupported, or required auth fields are missing. The message names the
    /// missing field but never contains secret values.
    pub fn from_clouds_yaml(yaml: &str, cloud_name: &str, region: Option<&str>) -> Result<Self> {
        let file: CloudsFile = serde_yaml::from_str(yaml)
            .map_err(|e| Error::InvalidCloudConfig(format!("clouds.yaml does not parse: {e}")))?;
        let names: Vec<&str> = file.clouds.keys().map(String::as_str).collect();
        let listed = names.join(", ");
        let mut clouds = file.clouds;
        let entry = clouds.remove(cloud_name).ok_or_else(|| {
            Error::InvalidCloudConfig(format!(
                "cloud \"{cloud_name}\" is not in clouds.yaml (clouds: {listed})"
            ))
        })?;
        let missing = |field: &str| {
            Error::InvalidCloudConfig(format!("clouds.{cloud_name}.{field} is required"))
        };

        if let Some(v) = &entry.identity_api_version {
            let v = match v {
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::String(s) => s.clone(),
                _ => String::new(),
            };
            if !v.starts_with('3') {
                return Err(Error::InvalidCloudConfig(format!(
                    "clouds.{cloud_name}.identity_api_version \"{v}\" is not supported; only Keystone v3 is"
                )));
            }
        }

        let a = entry.auth;
        let auth_url = a
            .auth_url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| missing("auth.auth_url"))?;
        let auth_url = normalise_auth_url(&auth_url);

        // A domain given once applies to both user and project (openstacksdk's `domain_*`).
        let default_domain = name_or_id(a.domain_id.clone(), a.domain_name.clone());
        let user_domain =
            name_or_id(a.user_domain_id, a.user_domain_name).or(default_domain.clone());
        let project_domain =
            name_or_id(a.project_domain_id, a.project_domain_name).or(default_domain);

        let auth_type = entry.auth_type.as_deref().unwrap_or("password");
        let auth = match auth_type {
            "password" | "v3password" => {
                let user = name_or_id(a.user_id, a.username)
                    .ok_or_else(|| missing("auth.username (or auth.user_id)"))?;
                let password = a.password.ok_or_else(|| missing("auth.password"))?;
                let user_domain = match (&user, user_domain) {
                    (NameOrId::Name(_), None) => Some(NameOrId::Id("default".into())),
                    (_, d) => d,
                };
                AuthMethod::Password {
                    user,
                    user_domain,
                    password,
                }
            }
            "v3applicationcredential" | "application_credential" => {
                let credential =
                    name_or_id(a.application_credential_id, a.application_credential_name)
                        .ok_or_else(|| missing("auth.application_credential_id"))?;
                let secret = a
                    .application_credential_secret
                    .ok_or_else(|| missing("auth.application_credential_secret"))?;
                let user = name_or_id(a.user_id, a.username);
                if matches!(credential, NameOrId::Name(_)) && user.is_none() {
                    return Err(missing(
                        "auth.username (an application credential given by name needs its user)",
                    ));
                }
                let user_domain = match (&user, user_domain) {
                    (Some(NameOrId::Name(_)), None) => Some(NameOrId::Id("default".into())),
                    (_, d) => d,
                };
                AuthMethod::ApplicationCredential {
                    credential,
                    user,
                    user_domain,
                    secret,
                }
            }
            other => {
                return Err(Error::InvalidCloudConfig(format!(
                    "clouds.{cloud_name}.auth_type \"{other}\" is not supported (use password or v3applicationcredential)"
                )));
            }
        };

        let scope = match &auth {
            AuthMethod::ApplicationCredential { .. } => None,
            AuthMethod::Password { .. } => name_or_id(
                a.project_id.or(a.tenant_id),
                a.project_name.or(a.tenant_name),
            )
            .map(|project| {
                let domain = match (&project, project_domain) {
                    (NameOrId::Name(_), None) => Some(NameOrId::Id("default".into())),
                    (_, d) => d,
                };
                ProjectScope { project, domain }
            }),
        };
        if scope.is_none() && matches!(auth, AuthMethod::Password { .. }) {
            return Err(missing("auth.project_name (or auth.project_id)"));
        }

        let interface = entry
            .interface
            .or(entry.endpoint_type)
            .unwrap_or_else(|| "public".into())
            .trim_end_matches("URL")
            .to_lowercase();
        if !matches!(interface.as_str(), "public" | "internal" | "admin") {
            return Err(Error::InvalidCloudConfig(format!(
                "clouds.{cloud_name}.interface \"{interface}\" must be public, internal or admin"
            )));
        }

        Ok(CloudConfig {
            auth_url,
            auth,
            scope,
            region: region
                .map(str::to_owned)
                .or(entry.region_name)
                .filter(|r| !r.is_empty()),
            interface,
            verify_tls: entry.verify.unwrap_or(true),
        })
    }
}

fn normalise_auth_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/v3") {
        url.to_owned()
    } else {
        format!("{url}/v3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = r#"
clouds:
  prod:
    auth:
      auth_url: https://keystone.example.com:5000
      username: demo
      password: s3cret
      project_name: demo
      user_domain_name: Users
    region_name: RegionOne
    interface: internal
  other:
    auth: {auth_url: http://x/v3, user_id: u1, password: p, project_id: p1}
"#;

    #[test]
    fn password_cloud_with_defaults_and_region_override() {
        let c = CloudConfig::from_clouds_yaml(PASSWORD, "prod", Some("RegionTwo")).unwrap();
        assert_eq!(c.auth_url, "https://keystone.example.com:5000/v3");
        assert_eq!(c.region.as_deref(), Some("RegionTwo"));
        assert_eq!(c.interface, "internal");
        assert!(c.verify_tls);
        match &c.auth {
            AuthMethod::Password {
                user,
                user_domain,
                password,
            } => {
                assert_eq!(user, &NameOrId::Name("demo".into()));
                assert_eq!(user_domain, &Some(NameOrId::Name("Users".into())));
                assert_eq!(password.expose(), "s3cret");
            }
            other => panic!("unexpected auth {other:?}"),
        }
        // The project domain was not given: Keystone's default domain applies.
        let scope = c.scope.unwrap();
        assert_eq!(scope.project, NameOrId::Name("demo".into()));
        assert_eq!(scope.domain, Some(NameOrId::Id("default".into())));
    }

    #[test]
    fn ids_need_no_domains() {
        let c = CloudConfig::from_clouds_yaml(PASSWORD, "other", None).unwrap();
        assert_eq!(c.region, None);
        assert_eq!(
            c.scope.unwrap(),
            ProjectScope {
                project: NameOrId::Id("p1".into()),
                domain: None
            }
        );
    }

    #[test]
    fn application_credential_cloud_is_unscoped() {
        let yaml = r#"
clouds:
  ac:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://127.0.0.1:5000/v3/
      application_credential_id: abc
      application_credential_secret: shh
"#;
        let c = CloudConfig::from_clouds_yaml(yaml, "ac", None).unwrap();
        assert_eq!(c.auth_url, "http://127.0.0.1:5000/v3");
        assert!(c.scope.is_none());
        assert!(
            matches!(c.auth, AuthMethod::ApplicationCredential { credential: NameOrId::Id(ref id), .. } if id == "abc")
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_secret() {
        let err = CloudConfig::from_clouds_yaml(PASSWORD, "missing", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"missing\" is not in clouds.yaml (clouds: other, prod)"),
            "{err}"
        );

        let yaml = "clouds: {c: {auth: {auth_url: http://x, username: u, project_name: p}}}";
        let err = CloudConfig::from_clouds_yaml(yaml, "c", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("clouds.c.auth.password is required"), "{err}");

        let yaml = "clouds: {c: {auth_type: token, auth: {auth_url: http://x}}}";
        let err = CloudConfig::from_clouds_yaml(yaml, "c", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth_type \"token\" is not supported"),
            "{err}"
        );

        let err = CloudConfig::from_clouds_yaml("clouds: [", "c", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse"), "{err}");

        let c = CloudConfig::from_clouds_yaml(PASSWORD, "prod", None).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn keystone_v2_is_refused() {
        let yaml = "clouds: {c: {identity_api_version: 2, auth: {auth_url: http://x, user_id: u, password: p, project_id: p}}}";
        let err = CloudConfig::from_clouds_yaml(yaml, "c", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only Keystone v3"), "{err}");
    }
}
