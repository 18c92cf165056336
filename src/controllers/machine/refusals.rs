//! Machines whose last server create Nova refused, and when a create may be tried again.
//!
//! The error policy requeues a machine after its error interval
//! (`controllers::Error::retry_after`), but a watch event reconciles it at once: CAPI writing
//! its ownerReference, labels or status on the Machine right after capow began on the Machine's
//! claim (`observe::owners`). Without this gate each such event would send Nova the refused
//! request again (3 refused creates in 4 s were seen in `e2e/tests/cluster_autoscaler.rs`),
//! which spends the cloud's API rate on a quota error and reports the same refusal over and
//! over. Kept in memory: after a restart the first reconcile may try once at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refused creates by `OpenStackWorkerMachine` UID, with the instant a new create may be sent.
#[derive(Debug, Default)]
pub struct RefusedCreates(Mutex<HashMap<String, Instant>>);

impl RefusedCreates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Nova refused the create of machine `uid`: no new create for `interval` (the error
    /// interval the error policy requeues after). Entries that ran out are dropped here, so
    /// the map holds at most the machines refused within the last interval.
    pub fn hold(&self, uid: &str, interval: Duration) {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, until| *until > now);
        map.insert(uid.to_owned(), now + interval);
    }

    /// How long machine `uid` must still wait before its next create; `None` when it may
    /// create now.
    pub fn remaining(&self, uid: &str) -> Option<Duration> {
        self.lock()
            .get(uid)
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Machine `uid` has a server (or is gone): forget its refusal.
    pub fn clear(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_holds_its_machine_for_the_interval_only() {
        let r = RefusedCreates::default();
        assert_eq!(r.remaining("a"), None);
        r.hold("a", Duration::from_secs(10));
        let left = r.remaining("a").expect("held");
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
        assert_eq!(r.remaining("b"), None, "other machines are free");
        r.hold("b", Duration::ZERO);
        assert_eq!(r.remaining("b"), None, "a zero interval holds nothing");
        r.clear("a");
        assert_eq!(r.remaining("a"), None);
        r.hold("c", Duration::from_secs(10));
        assert_eq!(
            r.lock().len(),
            1,
            "ran-out entries are dropped: {:?}",
            r.lock()
        );
    }
}
