//! OpenStack client seam: Keystone v3 auth, the service catalog, and typed calls to Nova,
//! Neutron, Glance and Cinder. No Kubernetes types live here.
//!
//! - [`clouds`]: one named cloud of a `clouds.yaml` ([`CloudConfig`]);
//! - [`session`]: token issue and renewal, the catalog, and the request path every call takes
//!   (rate limit, in-flight bound, `Retry-After`, retries of idempotent requests, the lookup
//!   cache);
//! - [`compute`] (Nova: servers, flavors, server groups, availability zones, keypairs, the
//!   batched server cache), [`network`] (Neutron: networks, subnets, routers, security groups
//!   and their rules, ports, trunks, tags), [`image`] (Glance), [`volume`] (Cinder);
//! - [`error`]: the errors every call returns; [`metrics`]: request counts and durations.
//!
//! [`Clouds`] hands out one [`Session`] per identity (clouds.yaml cloud + CA bundle), so the
//! token, the rate limit, the lookup cache and the server listing cache are shared by every
//! object that uses the same credentials. Why this client is hand-written rather than
//! `openstack_sdk`: `docs/adr/0001-openstack-client.md`.

pub mod clouds;
pub mod compute;
pub mod error;
pub mod image;
pub mod metrics;
pub mod network;
pub mod reachability;
pub mod session;
pub mod volume;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use clouds::CloudConfig;
pub use error::{ApiError, Error, Result};
pub use metrics::Metrics;
pub use reachability::IdentityLabel;
pub use session::{ClientOptions, Session};

#[derive(Clone, PartialEq, Eq, Hash)]
struct IdentityKey {
    cloud: CloudConfig,
    cacert: Option<Vec<u8>>,
}

/// Sessions by identity. A session unused for `idle_ttl` is dropped on the next lookup (its
/// token is simply forgotten; Keystone tokens expire on their own).
pub struct Clouds {
    sessions: Mutex<HashMap<IdentityKey, (Session, Instant)>>,
    options: ClientOptions,
    metrics: Metrics,
    idle_ttl: Duration,
}

impl Clouds {
    /// A registry whose sessions use `options` and report to `metrics`.
    pub fn new(options: ClientOptions, metrics: Metrics) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            options,
            metrics,
            idle_ttl: Duration::from_secs(3600),
        }
    }

    /// The session for `cloud` and `cacert`, created on first use. Changing the identity
    /// Secret changes the key, so new credentials take effect at once. With `identity`, the
    /// session records its reachability under that label ([`reachability`]); the label leaves
    /// any other session that had it.
    ///
    /// # Errors
    /// As [`Session::new`].
    pub fn session(
        &self,
        cloud: CloudConfig,
        cacert: Option<&[u8]>,
        identity: Option<&IdentityLabel>,
    ) -> Result<Session> {
        let key = IdentityKey {
            cloud,
            cacert: cacert.map(<[u8]>::to_vec),
        };
        let mut sessions = match self.sessions.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        sessions.retain(|_, (session, used)| {
            let keep = now.duration_since(*used) < self.idle_ttl;
            if !keep {
                session.forget_identities();
            }
            keep
        });
        let session = match sessions.get_mut(&key) {
            Some((session, used)) => {
                *used = now;
                session.clone()
            }
            None => {
                let session = Session::new(
                    key.cloud.clone(),
                    cacert,
                    self.options.clone(),
                    self.metrics.clone(),
                )?;
                sessions.insert(key.clone(), (session.clone(), now));
                session
            }
        };
        if let Some(id) = identity
            && session.serve_identity(id)
        {
            for (k, (other, _)) in sessions.iter() {
                if *k != key {
                    other.release_identity(id);
                }
            }
        }
        Ok(session)
    }
}
