//! Controllers of the capow kinds. Each reconciles in the steps observe (I/O) → plan (pure)
//! → execute (I/O) → status in its own folder and imports no other controller. What they
//! share lives here: the [`Context`], the reconcile [`Error`] (`error.rs`), the reconcile,
//! error policy and run-loop tails (`run.rs`), the status writer ([`status`]), the identity
//! and OpenStack session ([`identity`]) and the resolvers of CAPO's `*Param` references
//! ([`resolve`]).

pub mod cluster;
mod error;
pub mod identity;
pub mod lifecycle;
pub mod machine;
pub mod machine_template;
pub mod orphans;
pub mod resolve;
mod run;
pub mod status;

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

pub(crate) use error::invalid;
pub use error::{Error, Reason};

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
    /// How long a server create whose answer capow never saw (a crash, a timeout, a 5xx) may
    /// still be in flight in Nova, in seconds. Nova has no idempotency key, so after such an
    /// attempt capow creates again only once a lookup by the machine's UID tag made this long
    /// after the attempt still finds nothing; deletion waits as long before it declares that
    /// no server exists.
    pub server_create_settle: Duration,
    /// Upper bound of one reconcile, in seconds: a reconcile still running then is dropped
    /// (each step is safe to interrupt, as after a crash) and retried.
    pub reconcile_timeout: Duration,
    /// Who creates a new machine's Neutron port (see [`PortCreation`]).
    pub port_creation: PortCreation,
    /// Kubernetes client timeouts (read timeout, watch length).
    pub kube: crate::kubeapi::Timeouts,
    /// The cluster-autoscalers capow runs for clusters with `spec.autoscaler`.
    pub managed_autoscaler: ManagedAutoscalerConfig,
    /// Test-only crash point (see [`FaultInjection`]); `None` in production.
    pub fault: Option<FaultInjection>,
}

/// Who creates the Neutron port of a new machine (`--port-creation`; ADR 0008,
/// `docs/adr/0008-nova-creates-plain-ports.md`). The choice is made once per machine, when its
/// references are first resolved, and recorded in `status.resolved.portsCreatedByNova`; a
/// machine keeps it for its whole life, whatever the flag says later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PortCreation {
    /// Nova creates the port when the machine has exactly one port that asks for nothing but a
    /// network and security groups (`networks: [{"uuid": ...}]` and `security_groups` of
    /// `POST /servers`, Compute API v2.1); capow creates every other port. Nova deletes the
    /// ports it created with the server, so such a machine costs no port lookup, create, tag
    /// or delete call.
    #[default]
    Auto,
    /// capow creates, tags and deletes every port itself, named as CAPO names them
    /// (`<machine>-<index>`).
    Neutron,
}

/// Settings of the cluster-autoscalers capow runs (`OpenStackWorkerCluster.spec.autoscaler`,
/// [`cluster::autoscaler`]).
#[derive(Clone, Debug)]
pub struct ManagedAutoscalerConfig {
    /// Repository of the default cluster-autoscaler image, without tag or digest (the manager's
    /// `--autoscaler-image-repository`); capow adds the tag of the Cluster's Kubernetes minor.
    /// `None`: every `spec.autoscaler` must name its `image`.
    pub image_repository: Option<String>,
    /// Where a cluster-autoscaler pod mounts the credentials Secret: the directory the published
    /// cloud-config's file paths point into (the manager's `--autoscaler-mount-dir`).
    pub credentials_mount_dir: String,
    /// Whether this manager publishes the per-cluster credentials Secrets (it runs the
    /// externalgrpc server, `--autoscaler-address`). Without them no cluster-autoscaler can
    /// reach capow, and capow runs none.
    pub credentials_published: bool,
}

impl Default for ManagedAutoscalerConfig {
    fn default() -> Self {
        Self {
            image_repository: None,
            credentials_mount_dir: crate::tls::cloud_config::DEFAULT_MOUNT_DIR.to_owned(),
            credentials_published: false,
        }
    }
}

/// Points where the manager can be made to exit on purpose (exit code 75, like a `kill -9`:
/// no cleanup runs), so the e2e suite can prove that a crash at any step of creating or
/// deleting machines and clusters converges without duplicates or orphans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum FaultPoint {
    /// Machine: after `status.resolved` was written, before any port or volume exists.
    MachineAfterResolvedWrite,
    /// Machine: after Cinder accepted a volume create, before it is recorded in status.
    MachineAfterVolumeCreate,
    /// Machine: after Neutron created a port, before it is tagged.
    MachineAfterPortCreate,
    /// Machine: after a port was tagged, before the server is created.
    MachineAfterPortTag,
    /// Machine: after Neutron created a trunk, before it is tagged.
    MachineAfterTrunkCreate,
    /// Machine: after the intent to create the server was written, before `POST /servers`.
    MachineAfterCreateIntentWrite,
    /// Machine: while `POST /servers` is in flight (sent, answer not awaited).
    MachineDuringServerCreate,
    /// Machine: after Nova accepted the server create, before `status.instanceID` is written.
    MachineAfterServerCreate,
    /// Machine: after `status.instanceID` was written.
    MachineAfterInstanceIdWrite,
    /// Machine: after `spec.providerID` was written, before the status says provisioned.
    MachineAfterProviderIdWrite,
    /// Machine deletion: after Nova accepted the server delete.
    MachineAfterServerDelete,
    /// Machine deletion: after a trunk was deleted.
    MachineAfterTrunkDelete,
    /// Machine deletion: after a port was deleted.
    MachineAfterPortDelete,
    /// Machine deletion: after a volume was deleted.
    MachineAfterVolumeDelete,
    /// Cluster: after Neutron created the network, before it is tagged.
    ClusterAfterNetworkCreate,
    /// Cluster: after Neutron created a subnet, before it is tagged.
    ClusterAfterSubnetCreate,
    /// Cluster: after Neutron created the router, before it is tagged.
    ClusterAfterRouterCreate,
    /// Cluster: after a subnet was attached to the router.
    ClusterAfterRouterInterfaceAdd,
    /// Cluster: after Neutron created the worker security group, before it is tagged.
    ClusterAfterSecurityGroupCreate,
    /// Cluster: after a security group rule was created.
    ClusterAfterSecurityGroupRuleCreate,
    /// Cluster deletion: after the worker security group was deleted.
    ClusterAfterSecurityGroupDelete,
    /// Cluster deletion: after a subnet was detached from the router.
    ClusterAfterRouterInterfaceRemove,
    /// Cluster deletion: after the router was deleted.
    ClusterAfterRouterDelete,
    /// Cluster deletion: after the network was deleted.
    ClusterAfterNetworkDelete,
}

/// A [`FaultPoint`] and the hit at which the process exits there.
#[derive(Clone, Debug)]
pub struct FaultInjection {
    /// Where to exit.
    pub point: FaultPoint,
    /// Exit at the `hit`-th time the point is reached (1 = the first time).
    pub hit: u32,
    /// Times the point was reached so far (shared by clones).
    pub hits: Arc<std::sync::atomic::AtomicU32>,
}

impl ControllerConfig {
    /// Exits the process (code 75) when `point` is the configured fault point and this is the
    /// configured hit.
    pub fn maybe_crash(&self, point: FaultPoint) {
        if let Some(f) = &self.fault
            && f.point == point
        {
            let n = f.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n >= f.hit {
                tracing::warn!(?point, hit = n, "Fault injection: exiting");
                std::process::exit(75);
            }
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
            server_create_settle: Duration::from_secs(60),
            reconcile_timeout: Duration::from_secs(300),
            port_creation: PortCreation::default(),
            kube: crate::kubeapi::Timeouts::default(),
            managed_autoscaler: ManagedAutoscalerConfig::default(),
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
    /// Machines whose last server create Nova refused, held for their error interval.
    pub refused_creates: machine::refusals::RefusedCreates,
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
            refused_creates: machine::refusals::RefusedCreates::default(),
        }
    }

    /// Publishes an event; failures are logged, never fatal (events are best effort). The
    /// recorder folds events with the same object, type, reason and action into one series
    /// (keeping the first note); use [`Context::event_about`] when each event names a different
    /// thing.
    pub async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        self.publish(reference, None, type_, reason, action, note.into())
            .await;
    }

    /// Like [`Context::event`], with `related` as the event's `related` object: an OpenStack
    /// resource (`kind` e.g. `Server`, `name` its UUID), so events about different resources
    /// stay separate events instead of one series.
    pub async fn event_about(
        &self,
        reference: &ObjectReference,
        related: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        self.publish(reference, Some(related), type_, reason, action, note.into())
            .await;
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        secondary: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1024)),
            action: action.to_owned(),
            secondary,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "Failed to publish event");
        }
    }
}

/// A Kubernetes client error as a sentence for conditions and events: the API server's own
/// message with its HTTP code and reason for refusals (e.g. `the API server refused the request
/// (422 Invalid): spec.providerID: Invalid value ...`), the innermost cause when the API server
/// could not be reached, never the error's Debug form.
pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let message = if status.message.is_empty() {
                "no message".to_owned()
            } else {
                status.message.clone()
            };
            match (status.code, status.reason.as_str()) {
                (0, "") => format!("the API server refused the request: {message}"),
                (code, "") => {
                    format!("the API server refused the request (HTTP {code}): {message}")
                }
                (0, reason) => format!("the API server refused the request ({reason}): {message}"),
                (code, reason) => {
                    format!("the API server refused the request ({code} {reason}): {message}")
                }
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("cannot reach the API server: {cause}")
        }
        other => other.to_string(),
    }
}

/// The trigger predicate of capow's own kinds (for `predicate_filter`): a hash of what a
/// reconcile acts on — generation (spec), labels, annotations (pause, autoscaling), finalizers,
/// owner references (CAPI adopts the object after creating it) and the deletion timestamp —
/// and never of `status`, which only capow writes. Without it every status write of a
/// reconcile triggers the next reconcile at once; retries come from requeues instead.
pub fn own_changes<K: kube::Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.finalizers.hash(&mut h);
    for o in meta.owner_references.iter().flatten() {
        (&o.kind, &o.name, &o.uid).hash(&mut h);
    }
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut h);
    Some(h.finish())
}

/// A reference to an OpenStack resource for [`Context::event_about`]: `kind` as the
/// OpenStack API names it (`Server`, `Port`, `Trunk`, `Volume`), `name` its UUID.
pub fn openstack_ref(kind: &str, id: &str) -> ObjectReference {
    ObjectReference {
        kind: Some(kind.to_owned()),
        name: Some(id.to_owned()),
        ..ObjectReference::default()
    }
}

/// True when the API server refused a write because the object changed since it was read
/// (409 Conflict on a resourceVersion precondition).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
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
    duplicates: Family<ControllerLabels, Counter>,
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
            duplicates: Family::default(),
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
            "duplicates_deleted",
            "OpenStack resources deleted because a second one carried the same owner's UID (a create repeated after its answer was lost)",
            self.duplicates.clone(),
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

    /// Counts a duplicate OpenStack resource deleted by `controller`.
    pub fn duplicate_deleted(&self, controller: &'static str) {
        self.duplicates
            .get_or_create(&ControllerLabels { controller })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_errors_read_as_sentences() {
        let refused = kube::Error::Api(Box::new(kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "OpenStackWorkerMachine.infrastructure.cluster.x-k8s.io \"m1\" is invalid: spec.providerID: Invalid value: \"string\": providerID is immutable once set".into(),
            ..kube::core::Status::default()
        }));
        let text = describe_kube_error(&refused);
        assert_eq!(
            text,
            "the API server refused the request (422 Invalid): OpenStackWorkerMachine.infrastructure.cluster.x-k8s.io \"m1\" is invalid: spec.providerID: Invalid value: \"string\": providerID is immutable once set"
        );
        assert!(
            !text.contains("Status {") && !text.contains("Some("),
            "{text}"
        );
        let conflict = kube::Error::Api(Box::new(kube::core::Status {
            code: 409,
            ..kube::core::Status::default()
        }));
        assert!(is_conflict(&conflict));
        assert!(!is_conflict(&refused));
    }
}
