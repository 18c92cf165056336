//! Controllers of the capow kinds. Each reconciles in the steps observe (I/O) → plan (pure)
//! → execute (I/O) → status, and shares the [`Context`] defined here.

pub mod cluster;
pub mod machine;
pub mod machine_template;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::openstack::Clouds;

/// Field manager of every server-side apply capow makes.
pub const FIELD_MANAGER: &str = "capow";

/// Timings of the controllers.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Poll interval while a server is building or being deleted. Server state comes from one
    /// list call per cloud per interval, shared by all machines.
    pub build_poll: Duration,
    /// Resync interval of ready machines (detects servers deleted or failed out of band).
    pub resync: Duration,
    /// Retry interval after an error that needs a change to the input (bad spec, missing
    /// Secret) to go away.
    pub input_retry: Duration,
    /// Reconciles run at once per controller.
    pub concurrency: u16,
    /// Test-only crash point (see [`FaultPoint`]); `None` in production.
    pub fault: Option<FaultPoint>,
}

/// Points where the manager can be made to exit on purpose, so the e2e suite can prove that a
/// crash between an OpenStack create and the status write never leads to a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultPoint {
    /// Exit right after Nova accepted the server create, before `status.instanceID` is written.
    ExitAfterServerCreate,
    /// Exit right after Neutron created a port, before it is tagged.
    ExitAfterPortCreate,
}

impl ControllerConfig {
    /// Exits the process (code 75) when `point` is the configured fault point.
    pub fn maybe_crash(&self, point: FaultPoint) {
        if self.fault == Some(point) {
            tracing::warn!(?point, "Fault injection: exiting");
            std::process::exit(75);
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            build_poll: Duration::from_secs(2),
            resync: Duration::from_secs(300),
            input_retry: Duration::from_secs(60),
            concurrency: 16,
            fault: None,
        }
    }
}

/// What every reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// OpenStack sessions by identity.
    pub clouds: Arc<Clouds>,
    /// Event recorder (deduplicates repeated events into series).
    pub recorder: Recorder,
    /// Reconcile metrics.
    pub metrics: ReconcileMetrics,
    /// Timings.
    pub config: ControllerConfig,
}

impl Context {
    /// A context reporting events as `capow`, instance `instance` (the pod name).
    pub fn new(
        client: kube::Client,
        clouds: Arc<Clouds>,
        metrics: ReconcileMetrics,
        config: ControllerConfig,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "capow".into(),
                instance,
            },
        );
        Self {
            client,
            clouds,
            recorder,
            metrics,
            config,
        }
    }

    /// Publishes an event; failures are logged, never fatal (events are best effort).
    pub async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note.into(), 1024)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "Failed to publish event");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: &'static str,
    error: &'static str,
}

/// Reconcile counters and durations by controller (`capow_reconcile_*`).
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    runs: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        }
        Self {
            runs: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
        }
    }
}

impl ReconcileMetrics {
    /// Registers `runs`, `failures` and `duration_seconds` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("runs", "Reconciles by controller", self.runs.clone());
        registry.register(
            "failures",
            "Failed reconciles by controller and error category",
            self.failures.clone(),
        );
        registry.register(
            "duration_seconds",
            "Reconcile duration in seconds",
            self.duration.clone(),
        );
    }

    /// Starts timing one reconcile; the duration is recorded when the guard drops.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer {
        self.runs
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self.clone(),
            controller,
            started: Instant::now(),
        }
    }

    /// Counts a failed reconcile under its error category.
    pub fn failure(&self, controller: &'static str, error: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { controller, error })
            .inc();
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer {
    metrics: ReconcileMetrics,
    controller: &'static str,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}
