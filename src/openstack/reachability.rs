//! Cloud-API reachability per identity: the gauge `capow_openstack_reachable{identity, cloud,
//! region, service}` is 1 when the last request of that identity to that service got an HTTP
//! answer below 500, and 0 when it got a 5xx or no answer (connection refused, DNS, TLS,
//! timeout, reset).
//!
//! A 4xx counts as reachable: the service answered (a 401 is a credentials problem, a 403/413 a
//! quota, a 404 a missing object; conditions and events report those). `service` is `identity`
//! (Keystone) or one of [`super::session::Service::name`]; the label set is
//! therefore bounded by the number of identities (`identityRef`s: a Secret, a cloud of its
//! `clouds.yaml` and a region) times five services.
//!
//! A [`Session`](super::Session) is shared by every identity whose Secret holds the same cloud
//! configuration (see [`super::Clouds`]), so a session records into the series of every
//! identity label it was handed out for; a label moves to the newest session when its Secret
//! changes, and the series of an idle session's labels are removed when the session is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Which identity a session was handed out for: an `identityRef` in words.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityLabel {
    /// `<namespace>/<secret name>` of the identity Secret.
    pub identity: String,
    /// The cloud of its `clouds.yaml` (`identityRef.cloudName`).
    pub cloud: String,
    /// `identityRef.region`, empty when unset.
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReachLabels {
    identity: String,
    cloud: String,
    region: String,
    service: &'static str,
}

/// The gauge family, shared by every session (part of [`super::Metrics`]).
pub(crate) type ReachFamily = Family<ReachLabels, Gauge>;

/// Whether an answer shows the service reachable: any HTTP status below 500.
pub fn reachable(status: Option<u16>) -> bool {
    status.is_some_and(|s| s < 500)
}

/// One session's view: the identity labels it serves and the last outcome per service.
#[derive(Debug, Default)]
pub(crate) struct Reachability {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    identities: BTreeSet<IdentityLabel>,
    last: BTreeMap<&'static str, bool>,
}

fn labels(id: &IdentityLabel, service: &'static str) -> ReachLabels {
    ReachLabels {
        identity: id.identity.clone(),
        cloud: id.cloud.clone(),
        region: id.region.clone(),
        service,
    }
}

impl Reachability {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records the outcome of a request to `service` for every identity of this session.
    pub(crate) fn record(&self, family: &ReachFamily, service: &'static str, ok: bool) {
        let mut state = self.lock();
        state.last.insert(service, ok);
        for id in &state.identities {
            family
                .get_or_create(&labels(id, service))
                .set(i64::from(ok));
        }
    }

    /// Adds `id` to this session's identities; returns true when it was new. Its series start
    /// with the outcomes this session already saw.
    pub(crate) fn add(&self, family: &ReachFamily, id: &IdentityLabel) -> bool {
        let mut state = self.lock();
        if !state.identities.insert(id.clone()) {
            return false;
        }
        for (service, ok) in &state.last {
            family
                .get_or_create(&labels(id, service))
                .set(i64::from(*ok));
        }
        true
    }

    /// Takes `id` away from this session (it moved to another one); its series stay.
    pub(crate) fn release(&self, id: &IdentityLabel) {
        self.lock().identities.remove(id);
    }

    /// Removes the series of every identity this session still has (the session is dropped).
    pub(crate) fn forget(&self, family: &ReachFamily) {
        let state = self.lock();
        for id in &state.identities {
            for service in state.last.keys() {
                family.remove(&labels(id, service));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> IdentityLabel {
        IdentityLabel {
            identity: format!("ns/{name}"),
            cloud: "openstack".into(),
            region: String::new(),
        }
    }

    fn value(family: &ReachFamily, id: &IdentityLabel, service: &'static str) -> Option<i64> {
        family.get(&labels(id, service)).map(|g| g.get())
    }

    #[test]
    fn statuses_below_500_are_reachable() {
        assert!(reachable(Some(200)));
        assert!(reachable(Some(401)));
        assert!(reachable(Some(403)));
        assert!(reachable(Some(429)));
        assert!(!reachable(Some(500)));
        assert!(!reachable(Some(503)));
        assert!(!reachable(None));
    }

    #[test]
    fn a_session_records_for_each_of_its_identities_and_forgets_them_when_dropped() {
        let family = ReachFamily::default();
        let r = Reachability::default();
        // Nothing is recorded before the session serves an identity.
        r.record(&family, "compute", true);
        let (a, b) = (id("a"), id("b"));
        assert!(r.add(&family, &a));
        assert!(!r.add(&family, &a));
        assert_eq!(
            value(&family, &a, "compute"),
            Some(1),
            "starts with the last outcome"
        );
        r.record(&family, "identity", false);
        assert!(r.add(&family, &b));
        assert_eq!(value(&family, &b, "identity"), Some(0));
        r.record(&family, "compute", false);
        assert_eq!(value(&family, &a, "compute"), Some(0));
        assert_eq!(value(&family, &b, "compute"), Some(0));
        // `b` moves to another session: this one no longer writes or removes its series.
        r.release(&b);
        r.record(&family, "compute", true);
        assert_eq!(value(&family, &a, "compute"), Some(1));
        assert_eq!(value(&family, &b, "compute"), Some(0));
        r.forget(&family);
        assert_eq!(value(&family, &a, "compute"), None);
        assert_eq!(value(&family, &a, "identity"), None);
        assert_eq!(value(&family, &b, "compute"), Some(0));
    }
}
