//! Kubernetes client settings every request and watch of capow shares, so that no call can
//! hang forever on a half-open connection (a connection the peer or a middlebox dropped without
//! telling): every read has a timeout, and watches end on the API server's side before that
//! timeout so that an idle but healthy watch is never mistaken for a dead one.
//!
//! The numbers: a request whose answer stalls fails after [`Timeouts::read`]; a watch asks the
//! API server to end it after 4/5 of that (`timeoutSeconds`, Kubernetes API concepts,
//! "Efficient detection of changes") and is restarted by kube-runtime's watcher from its last
//! resourceVersion; a reconcile as a whole is bounded separately by the controllers.

use std::time::Duration;

use kube::runtime::watcher;

/// Client timeouts.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Longest wait for bytes of an answer (and for a connection), in seconds.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            read: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// The server-side timeout of a watch (`timeoutSeconds`): 4/5 of the read timeout, at
    /// least 1 s.
    pub fn watch_seconds(&self) -> u32 {
        u32::try_from((self.read.as_secs() * 4 / 5).max(1)).unwrap_or(u32::MAX)
    }

    /// A watcher configuration that ends watches on the server's side in time (see the module
    /// docs), with kube-runtime's "any" list semantics (served from the API server's cache).
    pub fn watcher_config(&self) -> watcher::Config {
        watcher::Config::default()
            .any_semantic()
            .timeout(self.watch_seconds())
    }

    /// A client from the inferred configuration (in-cluster, or `KUBECONFIG`) with these
    /// timeouts.
    ///
    /// # Errors
    /// When no configuration can be inferred or the client cannot be built.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("failed to find a Kubernetes configuration: {e}"))?;
        config.read_timeout = Some(self.read);
        config.connect_timeout = Some(self.read.min(Duration::from_secs(30)));
        config.write_timeout = Some(self.read);
        kube::Client::try_from(config)
            .map_err(|e| anyhow::anyhow!("failed to build the Kubernetes client: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_end_before_reads_time_out() {
        let t = Timeouts::default();
        assert_eq!(t.watch_seconds(), 48);
        assert!(u64::from(t.watch_seconds()) < t.read.as_secs());
        let short = Timeouts {
            read: Duration::from_millis(500),
        };
        assert_eq!(short.watch_seconds(), 1);
    }
}

/// The annotation `kubectl apply` keeps a copy of the whole object in (Kubernetes
/// well-known labels, annotations and taints, v1.36).
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no part of capow reads from a watched object before it is cached or compared:
/// `metadata.managedFields` (server-side apply bookkeeping, one entry per field manager and
/// often larger than the object's spec) and the [`LAST_APPLIED_ANNOTATION`]. Applied to every
/// watch that feeds a reflector store, with kube-runtime's `WatchStreamExt::modify` (whose
/// documentation describes this use). Writes are unaffected: capow never sends a cached object
/// back whole (it patches), and an omitted `managedFields` leaves the server's unchanged
/// (Kubernetes "Server-Side Apply", v1.36, "Field management").
pub fn trim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED_ANNOTATION);
    }
}

#[cfg(test)]
mod trim_tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn trim_drops_managed_fields_and_the_last_applied_copy_only() {
        let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "c",
                "annotations": {LAST_APPLIED_ANNOTATION: "{}", "keep": "me"},
                "labels": {"a": "b"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]
            },
            "data": {"k": "v"}
        }))
        .unwrap();
        trim(&mut cm);
        assert!(cm.metadata.managed_fields.is_none());
        let annotations = cm.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations["keep"], "me");
        assert_eq!(cm.metadata.labels.unwrap()["a"], "b");
        assert_eq!(cm.data.unwrap()["k"], "v");
    }
}
