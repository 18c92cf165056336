//! Prometheus metrics of the OpenStack client: every request counted and timed by service,
//! operation and HTTP status (`error` when no answer arrived), and whether each identity
//! reaches each service ([`super::reachability`]).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    operation: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    service: &'static str,
    operation: &'static str,
}

/// Request metrics, shared by every session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    lookup_cache_hits: Family<OperationLabels, Counter>,
    pub(crate) reachable: super::reachability::ReachFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            // 5 ms .. ~20 s
            Histogram::new(exponential_buckets(0.005, 2.0, 13))
        }
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            lookup_cache_hits: Family::default(),
            reachable: Default::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics as `<prefix>_requests_total`,
    /// `<prefix>_request_duration_seconds`, `<prefix>_lookup_cache_hits_total` and
    /// `<prefix>_reachable` (see [`super::reachability`]) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "OpenStack API requests by service, operation and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Duration of OpenStack API requests in seconds",
            self.duration.clone(),
        );
        registry.register(
            "lookup_cache_hits",
            "OpenStack lookups answered from the per-identity lookup cache (no request sent)",
            self.lookup_cache_hits.clone(),
        );
        registry.register(
            "reachable",
            "1 when the last request of an identity to an OpenStack service got an HTTP answer below 500, 0 after a 5xx or no answer",
            self.reachable.clone(),
        );
    }

    pub(crate) fn lookup_cache_hit(&self, service: &'static str, operation: &'static str) {
        self.lookup_cache_hits
            .get_or_create(&OperationLabels { service, operation })
            .inc();
    }

    pub(crate) fn observe(
        &self,
        service: &'static str,
        operation: &'static str,
        code: &str,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                service,
                operation,
                code: code.to_owned(),
            })
            .inc();
        self.duration
            .get_or_create(&OperationLabels { service, operation })
            .observe(elapsed.as_secs_f64());
    }
}
