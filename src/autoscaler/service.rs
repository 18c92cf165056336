//! The tonic adapter: the 15 `CloudProvider` RPCs over the [`Index`], scoped to the caller's
//! cluster (from its client certificate), and the three writes (IncreaseSize, DeleteNodes,
//! DecreaseTargetSize) done on the MachineDeployment/MachineSet `scale` subresource and the
//! Machines' `cluster.x-k8s.io/delete-machine` annotation, as the in-tree clusterapi provider
//! does (cluster-autoscaler-1.36.1 `cloudprovider/clusterapi/clusterapi_nodegroup.go`:
//! `IncreaseSize`, `DeleteNodes`, `DecreaseTargetSize`). Reads never call the API server or
//! OpenStack. Writes run as their own tasks with preconditions ([`super::scale`]), so a
//! cancelled call neither stops halfway nor overwrites a concurrent change.
//!
//! Status codes (CA's client passes them on as errors, except `Unimplemented` on the optional
//! RPCs, which it treats as "not provided"): `NotFound` for unknown groups, `InvalidArgument`
//! for bad requests (non-positive delta, a node of another group), `FailedPrecondition` when a
//! size limit would be crossed or the group is frozen by invalid size annotations,
//! `Unauthenticated` without a client certificate, `Unavailable` when the API server fails or
//! (`Refresh`) when the watches have been failing for longer than [`MAX_WATCH_STALENESS`],
//! `Aborted` when the group kept changing under a write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::{Request, Response, Status};

use super::index::{ClusterKey, Index, InstanceState, NodeGroup, Snapshot};
use super::node::{TemplateOptions, template_node};
use super::options;
use super::pricing;
use super::proto::externalgrpc as pb;
use super::proto::externalgrpc::cloud_provider_server::CloudProvider;
use super::report::AnnotationReporter;
use super::scale::{Writer, detached};
use super::written::WrittenSizes;
use crate::tls::ClusterIdentity;

/// How long the watches may fail before `Refresh` answers `Unavailable` rather than let CA act
/// on sizes that stopped following the API server (60 s: six of CA's default 10 s scan
/// intervals; failures shorter than that are ridden out with the stores as they are).
pub const MAX_WATCH_STALENESS: Duration = Duration::from_secs(60);

/// Where the index's inputs come from (reflector stores in the manager, fixed lists in tests).
pub trait Snapshots: Send + Sync + 'static {
    /// The current objects.
    fn snapshot(&self) -> Snapshot;

    /// How long the objects have not followed the API server (the longest failure streak of
    /// the watches behind them); `None` when they follow it.
    fn stale_for(&self) -> Option<Duration> {
        None
    }

    /// The `metadata.uid` of the CAPI Cluster `namespace/name`, `None` when no such Cluster
    /// exists. A client certificate is accepted only while its Cluster exists with the UID it
    /// names.
    fn cluster_uid(&self, namespace: &str, name: &str) -> Option<String>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    grpc_method: &'static str,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_method: &'static str,
}

/// Per-RPC metrics (`grpc_server_handled_total`, `grpc_server_handling_seconds`).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    handled: Family<RpcLabels, Counter>,
    seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            // 50 µs .. ~1.6 s; CA's deadline is 5 s.
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        }
        Self {
            handled: Family::default(),
            seconds: Family::new_with_constructor(histogram as fn() -> Histogram),
        }
    }
}

impl RpcMetrics {
    /// Registers `handled` and `handling_seconds` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "handled",
            "RPCs completed, by method and gRPC status code",
            self.handled.clone(),
        );
        registry.register(
            "handling_seconds",
            "RPC handling time in seconds",
            self.seconds.clone(),
        );
    }

    fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let code = match code {
            tonic::Code::Ok => "OK",
            tonic::Code::NotFound => "NotFound",
            tonic::Code::InvalidArgument => "InvalidArgument",
            tonic::Code::FailedPrecondition => "FailedPrecondition",
            tonic::Code::Unimplemented => "Unimplemented",
            tonic::Code::Unauthenticated => "Unauthenticated",
            tonic::Code::PermissionDenied => "PermissionDenied",
            tonic::Code::Unavailable => "Unavailable",
            tonic::Code::Aborted => "Aborted",
            _ => "Other",
        };
        self.handled
            .get_or_create(&RpcLabels {
                grpc_method: method,
                grpc_code: code,
            })
            .inc();
        self.seconds
            .get_or_create(&MethodLabels {
                grpc_method: method,
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Settings of the service.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// When true, callers must present a client certificate naming a cluster and see only its
    /// node groups. False only behind the explicit plaintext flag (then all clusters).
    pub require_identity: bool,
    /// Template node options (GPU label).
    pub template: TemplateOptions,
}

/// One scope's index, what it was built from, and the template answers made from it.
struct Built {
    /// The objects the index was built from, kept to tell whether a `Refresh` finds the
    /// stores unchanged ([`Snapshot::same_objects`]).
    snapshot: Snapshot,
    /// Whether sizes capow wrote ([`WrittenSizes`]) were laid over the stores' sizes.
    with_written: bool,
    index: Index,
    /// `NodeGroupTemplateNodeInfo` answers by node group id, made on first request.
    templates: std::sync::Mutex<HashMap<String, pb::NodeGroupTemplateNodeInfoResponse>>,
}

/// The externalgrpc `CloudProvider` service.
pub struct CloudProviderService {
    sources: Arc<dyn Snapshots>,
    options: ServiceOptions,
    metrics: RpcMetrics,
    cache: std::sync::Mutex<HashMap<Option<ClusterKey>, Arc<Built>>>,
    written: Arc<WrittenSizes>,
    writer: Writer,
    reporter: Arc<AnnotationReporter>,
}

impl CloudProviderService {
    /// A service reading from `sources` and writing with `client`.
    pub fn new(
        sources: Arc<dyn Snapshots>,
        client: kube::Client,
        options: ServiceOptions,
        metrics: RpcMetrics,
    ) -> Self {
        let written = Arc::new(WrittenSizes::default());
        Self {
            writer: Writer::new(client, sources.clone(), written.clone()),
            sources,
            options,
            metrics,
            cache: std::sync::Mutex::new(HashMap::new()),
            written,
            reporter: Arc::new(AnnotationReporter::log_only(Default::default())),
        }
    }

    /// Reports unusable autoscaling annotations through `reporter` (events and metrics)
    /// instead of only logging them.
    #[must_use]
    pub fn with_reporter(mut self, reporter: Arc<AnnotationReporter>) -> Self {
        self.reporter = reporter;
        self
    }

    /// The cluster the caller may see: from its client certificate, or every cluster when the
    /// server runs without TLS.
    #[allow(clippy::result_large_err)]
    fn scope<T>(&self, request: &Request<T>) -> Result<Option<ClusterKey>, Status> {
        if !self.options.require_identity {
            return Ok(None);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate issued by capow is required")
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("a client certificate issued by capow is required")
        })?;
        let id = ClusterIdentity::from_peer_certificate(leaf.as_ref()).map_err(|e| {
            Status::permission_denied(format!("the client certificate names no cluster: {e}"))
        })?;
        match self.sources.cluster_uid(&id.namespace, &id.name) {
            Some(uid) if uid == id.uid => {}
            Some(_) => {
                return Err(Status::permission_denied(format!(
                    "the client certificate was issued for an earlier Cluster {}/{} (UID {}), \
                     which was deleted and created again; use the credentials Secret capow \
                     published for the current Cluster and restart the cluster-autoscaler",
                    id.namespace, id.name, id.uid
                )));
            }
            None => {
                return Err(Status::permission_denied(format!(
                    "the client certificate was issued for Cluster {}/{}, which no longer exists",
                    id.namespace, id.name
                )));
            }
        }
        Ok(Some(ClusterKey {
            namespace: id.namespace,
            name: id.name,
        }))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Option<ClusterKey>, Arc<Built>>> {
        lock(&self.cache)
    }

    /// Rebuilds the scope's index from the current objects (after writes, and on `Refresh`
    /// when they changed).
    fn rebuild(&self, scope: &Option<ClusterKey>) -> Arc<Built> {
        self.build_from(scope, self.sources.snapshot())
    }

    fn build_from(&self, scope: &Option<ClusterKey>, snapshot: Snapshot) -> Arc<Built> {
        let mut index = Index::build(&snapshot, scope.as_ref());
        self.reporter.observe(scope.as_ref(), index.problems());
        let with_written = !self.written.is_empty();
        self.written.apply(&snapshot, &mut index);
        let built = Arc::new(Built {
            snapshot,
            with_written,
            index,
            templates: std::sync::Mutex::default(),
        });
        self.lock_cache().insert(scope.clone(), built.clone());
        built
    }

    /// `Refresh`: the scope's index as the stores are now. The last one is kept when the
    /// stores hold the very same objects and no written size is laid over either (CA calls
    /// `Refresh` every loop, 10 s by default, while most loops change nothing).
    fn refresh_index(&self, scope: &Option<ClusterKey>) -> Arc<Built> {
        let snapshot = self.sources.snapshot();
        if self.written.is_empty()
            && let Some(built) = self.lock_cache().get(scope)
            && !built.with_written
            && built.snapshot.same_objects(&snapshot)
        {
            return built.clone();
        }
        self.build_from(scope, snapshot)
    }

    /// The scope's index as of the last Refresh (built now if there was none).
    fn index(&self, scope: &Option<ClusterKey>) -> Arc<Built> {
        if let Some(i) = self.lock_cache().get(scope) {
            return i.clone();
        }
        self.rebuild(scope)
    }

    #[allow(clippy::result_large_err)]
    fn group<'a>(index: &'a Index, id: &str) -> Result<&'a NodeGroup, Status> {
        index.group(id).ok_or_else(|| {
            Status::not_found(format!(
                "node group {id:?} does not exist or is not autoscaled"
            ))
        })
    }

    /// Refuses writes to a frozen group ([`NodeGroup::frozen`]).
    #[allow(clippy::result_large_err)]
    fn writable(g: &NodeGroup) -> Result<(), Status> {
        match &g.frozen {
            Some(why) => Err(Status::failed_precondition(format!(
                "node group {} is frozen at its current size ({why}): fix its autoscaling annotations",
                g.id
            ))),
            None => Ok(()),
        }
    }

    /// Measures `method` ([`Self::measure`]) around `f`, called with the caller's scope
    /// ([`Self::scope`]): the preamble of every RPC.
    async fn with_scope<R: Sync, T>(
        &self,
        method: &'static str,
        request: &Request<R>,
        f: impl AsyncFnOnce(&Option<ClusterKey>) -> Result<T, Status>,
    ) -> RpcResult<T> {
        self.measure(method, async {
            let scope = self.scope(request)?;
            f(&scope).await
        })
        .await
    }

    /// [`Self::with_scope`] for the RPCs that read the index: `f` gets the scope's index too.
    async fn with_index<R: Sync, T>(
        &self,
        method: &'static str,
        request: &Request<R>,
        f: impl AsyncFnOnce(&Option<ClusterKey>, &Index) -> Result<T, Status>,
    ) -> RpcResult<T> {
        self.with_scope(method, request, async |scope| {
            f(scope, &self.index(scope).index).await
        })
        .await
    }

    /// [`Self::with_scope`] for the RPCs about one node group: the request's own check
    /// ([`GroupRequest::check`], before the index is read), then `f` with the group the request
    /// names (`NotFound` when the scope's index has none).
    async fn with_group<R: GroupRequest, T>(
        &self,
        method: &'static str,
        request: &Request<R>,
        f: impl AsyncFnOnce(&Option<ClusterKey>, &NodeGroup) -> Result<T, Status>,
    ) -> RpcResult<T> {
        self.with_scope(method, request, async |scope| {
            let r = request.get_ref();
            r.check()?;
            let built = self.index(scope);
            f(scope, Self::group(&built.index, r.id())?).await
        })
        .await
    }

    async fn measure<T>(
        &self,
        method: &'static str,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = f.await;
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics.observe(method, code, started.elapsed());
        if let Err(s) = &result
            && !matches!(s.code(), tonic::Code::Unimplemented | tonic::Code::NotFound)
        {
            tracing::info!(method, code = ?s.code(), message = s.message(), "RPC refused");
        }
        result.map(Response::new)
    }
}

/// Locks `m`, also when a panic poisoned it (the maps hold caches, never half-written state).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn to_pb_group(g: &NodeGroup) -> pb::NodeGroup {
    pb::NodeGroup {
        id: g.id.clone(),
        min_size: g.min_size,
        max_size: g.max_size,
        debug: g.debug(),
    }
}

fn to_pb_instance(i: &super::index::Instance) -> pb::Instance {
    use pb::instance_status::InstanceState as S;
    let state = match i.state {
        InstanceState::Running => S::InstanceRunning,
        InstanceState::Creating => S::InstanceCreating,
        InstanceState::Deleting => S::InstanceDeleting,
    };
    pb::Instance {
        id: i.id.clone(),
        status: Some(pb::InstanceStatus {
            instance_state: state as i32,
            error_info: i.error.as_ref().map(|e| pb::InstanceErrorInfo {
                error_code: e.code.clone(),
                error_message: e.message.clone(),
                instance_error_class: e.class,
            }),
        }),
    }
}

/// A request naming one node group by `id`, for [`CloudProviderService::with_group`].
trait GroupRequest: Sync {
    /// The node group id the request names.
    fn id(&self) -> &str;

    /// Refuses a malformed request (`InvalidArgument`) before any group is looked up.
    #[allow(clippy::result_large_err)]
    fn check(&self) -> Result<(), Status> {
        Ok(())
    }
}

macro_rules! group_request {
    ($($t:ty),*) => {$(
        impl GroupRequest for $t {
            fn id(&self) -> &str {
                &self.id
            }
        }
    )*};
}

group_request!(
    pb::NodeGroupTargetSizeRequest,
    pb::NodeGroupDeleteNodesRequest,
    pb::NodeGroupNodesRequest,
    pb::NodeGroupTemplateNodeInfoRequest,
    pb::NodeGroupAutoscalingOptionsRequest
);

impl GroupRequest for pb::NodeGroupIncreaseSizeRequest {
    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Result<(), Status> {
        if self.delta <= 0 {
            return Err(Status::invalid_argument(format!(
                "delta must be positive, got {}",
                self.delta
            )));
        }
        Ok(())
    }
}

impl GroupRequest for pb::NodeGroupDecreaseTargetSizeRequest {
    fn id(&self) -> &str {
        &self.id
    }

    fn check(&self) -> Result<(), Status> {
        if self.delta >= 0 {
            return Err(Status::invalid_argument(format!(
                "delta must be negative, got {}",
                self.delta
            )));
        }
        Ok(())
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl CloudProvider for CloudProviderService {
    async fn node_groups(
        &self,
        request: Request<pb::NodeGroupsRequest>,
    ) -> RpcResult<pb::NodeGroupsResponse> {
        self.with_index("NodeGroups", &request, async |_, index| {
            Ok(pb::NodeGroupsResponse {
                node_groups: index.groups().map(to_pb_group).collect(),
            })
        })
        .await
    }

    async fn node_group_for_node(
        &self,
        request: Request<pb::NodeGroupForNodeRequest>,
    ) -> RpcResult<pb::NodeGroupForNodeResponse> {
        self.with_index("NodeGroupForNode", &request, async |_, index| {
            let provider_id = request
                .get_ref()
                .node
                .as_ref()
                .map(|n| n.provider_id.as_str())
                .unwrap_or("");
            // An empty id tells CA the node is not managed here; empty providerIDs (nodes the
            // cloud controller manager has not initialised) included: CA asks about every node,
            // also those whose providerID is still empty, and hands an error on to its caller
            // instead of skipping the node (cluster-autoscaler-1.36.1
            // `cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`, `NodeGroupForNode`).
            let group = index
                .group_of_instance(provider_id)
                .map(to_pb_group)
                .unwrap_or_default();
            Ok(pb::NodeGroupForNodeResponse {
                node_group: Some(group),
            })
        })
        .await
    }

    async fn pricing_node_price(
        &self,
        request: Request<pb::PricingNodePriceRequest>,
    ) -> RpcResult<pb::PricingNodePriceResponse> {
        self.with_index("PricingNodePrice", &request, async |_, index| {
            let r = request.get_ref();
            let node = r.node.clone().unwrap_or_default();
            // Real nodes by providerID; CA's template nodes (no providerID) by capow's
            // annotation or their name (pricing module docs).
            let group = pricing::group_of_node(index, &node).ok_or_else(|| {
                Status::not_found(format!(
                    "node {:?} (providerID {:?}) is not in a node group",
                    node.name, node.provider_id
                ))
            })?;
            let price = pricing::price_per_hour(group).ok_or_else(|| {
                Status::unimplemented(format!(
                    "no price for node group {}: set the flavor's capow:price-per-hour extra spec",
                    group.id
                ))
            })?;
            let h = pricing::hours(
                r.start_timestamp.as_ref(),
                r.end_timestamp.as_ref(),
                r.start_time.as_ref(),
                r.end_time.as_ref(),
            );
            Ok(pb::PricingNodePriceResponse { price: price * h })
        })
        .await
    }

    async fn pricing_pod_price(
        &self,
        request: Request<pb::PricingPodPriceRequest>,
    ) -> RpcResult<pb::PricingPodPriceResponse> {
        self.with_index("PricingPodPrice", &request, async |_, index| {
            let r = request.get_ref();
            // CA ≥ 1.34.2 sends the v1.Pod protobuf in pod_bytes, older ones in field 1.
            let pod = if r.pod_bytes.is_empty() {
                r.pod.clone().unwrap_or_default()
            } else {
                super::proto::core_v1::Pod::decode(r.pod_bytes.as_slice()).map_err(|e| {
                    Status::invalid_argument(format!("pod_bytes is not a v1.Pod: {e}"))
                })?
            };
            let rates = pricing::index_rates(index).ok_or_else(|| {
                Status::unimplemented(
                    "no node group has a price: set the flavors' capow:price-per-hour extra spec",
                )
            })?;
            let h = pricing::hours(
                r.start_timestamp.as_ref(),
                r.end_timestamp.as_ref(),
                r.start_time.as_ref(),
                r.end_time.as_ref(),
            );
            Ok(pb::PricingPodPriceResponse {
                price: pricing::pod_price(&pod, rates, h),
            })
        })
        .await
    }

    async fn gpu_label(
        &self,
        request: Request<pb::GpuLabelRequest>,
    ) -> RpcResult<pb::GpuLabelResponse> {
        self.with_scope("GPULabel", &request, async |_| {
            Ok(pb::GpuLabelResponse {
                label: self.options.template.gpu_label.clone(),
            })
        })
        .await
    }

    async fn get_available_gpu_types(
        &self,
        request: Request<pb::GetAvailableGpuTypesRequest>,
    ) -> RpcResult<pb::GetAvailableGpuTypesResponse> {
        self.with_index("GetAvailableGPUTypes", &request, async |_, index| {
            let gpu_types = index
                .groups()
                .filter_map(|g| {
                    g.template
                        .as_ref()?
                        .status
                        .as_ref()?
                        .resolved
                        .as_ref()?
                        .gpu_type
                        .clone()
                })
                .map(|t| (t, prost_types::Any::default()))
                .collect();
            Ok(pb::GetAvailableGpuTypesResponse { gpu_types })
        })
        .await
    }

    async fn cleanup(
        &self,
        request: Request<pb::CleanupRequest>,
    ) -> RpcResult<pb::CleanupResponse> {
        self.with_scope("Cleanup", &request, async |scope| {
            self.lock_cache().remove(scope);
            Ok(pb::CleanupResponse {})
        })
        .await
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> RpcResult<pb::RefreshResponse> {
        self.with_scope("Refresh", &request, async |scope| {
            if let Some(stale) = self
                .sources
                .stale_for()
                .filter(|d| *d > MAX_WATCH_STALENESS)
            {
                // CA aborts this loop on a Refresh error rather than scale on old sizes.
                return Err(Status::unavailable(format!(
                    "capow's watches of the API server have failed for {} s (limit {} s): node group sizes may be stale",
                    stale.as_secs(),
                    MAX_WATCH_STALENESS.as_secs()
                )));
            }
            self.refresh_index(scope);
            Ok(pb::RefreshResponse {})
        })
        .await
    }

    async fn node_group_target_size(
        &self,
        request: Request<pb::NodeGroupTargetSizeRequest>,
    ) -> RpcResult<pb::NodeGroupTargetSizeResponse> {
        self.with_group("NodeGroupTargetSize", &request, async |_, g| {
            Ok(pb::NodeGroupTargetSizeResponse {
                target_size: g.target_size,
            })
        })
        .await
    }

    async fn node_group_increase_size(
        &self,
        request: Request<pb::NodeGroupIncreaseSizeRequest>,
    ) -> RpcResult<pb::NodeGroupIncreaseSizeResponse> {
        self.with_group("NodeGroupIncreaseSize", &request, async |scope, g| {
            let r = request.get_ref();
            let g = g.clone();
            Self::writable(&g)?;
            let (writer, delta) = (self.writer.clone(), r.delta);
            let (from, to) = detached(async move {
                writer
                    .resize(&g, |current| {
                        let desired = current.saturating_add(delta);
                        if desired > g.max_size {
                            Err(Status::failed_precondition(format!(
                                "size increase too large: {} has {current} replicas, +{delta} would exceed its max size {}",
                                g.id, g.max_size
                            )))
                        } else {
                            Ok(desired)
                        }
                    })
                    .await
            })
            .await?;
            tracing::info!(group = %r.id, from, to, "Scaled up");
            self.rebuild(scope);
            Ok(pb::NodeGroupIncreaseSizeResponse {})
        })
        .await
    }

    async fn node_group_delete_nodes(
        &self,
        request: Request<pb::NodeGroupDeleteNodesRequest>,
    ) -> RpcResult<pb::NodeGroupDeleteNodesResponse> {
        self.with_group("NodeGroupDeleteNodes", &request, async |scope, g| {
            let r = request.get_ref();
            // Membership first: every node must be an instance of this group. CA's fake nodes
            // (unregistered or create-error instances) carry the instance id as providerID.
            let mut machines = Vec::with_capacity(r.nodes.len());
            for node in &r.nodes {
                let id = if node.provider_id.is_empty() {
                    node.name.as_str()
                } else {
                    node.provider_id.as_str()
                };
                let uuid = id.rsplit('/').next().unwrap_or(id);
                let instance = g
                    .instances
                    .iter()
                    .find(|i| {
                        i.id == id
                            || (id.starts_with("openstack://")
                                && i.id.rsplit('/').next() == Some(uuid))
                    })
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "node {:?} ({id}) does not belong to node group {}",
                            node.name, g.id
                        ))
                    })?;
                if instance.state != InstanceState::Deleting
                    && !machines.contains(&instance.machine)
                {
                    machines.push(instance.machine.clone());
                }
            }
            if machines.is_empty() {
                return Ok(pb::NodeGroupDeleteNodesResponse {});
            }
            Self::writable(g)?;
            // Marks and replicas in a task of their own: a deadline or a disconnect that drops
            // this handler must not leave marks without the replicas write (scale module).
            let (writer, group) = (self.writer.clone(), g.clone());
            let task_machines = machines.clone();
            let (from, to) =
                detached(async move { writer.delete_nodes(&group, &task_machines).await }).await?;
            tracing::info!(group = %r.id, machines = ?machines, from, to, "Deleted nodes");
            self.rebuild(scope);
            Ok(pb::NodeGroupDeleteNodesResponse {})
        })
        .await
    }

    async fn node_group_decrease_target_size(
        &self,
        request: Request<pb::NodeGroupDecreaseTargetSizeRequest>,
    ) -> RpcResult<pb::NodeGroupDecreaseTargetSizeResponse> {
        self.with_group("NodeGroupDecreaseTargetSize", &request, async |scope, g| {
            let r = request.get_ref();
            Self::writable(g)?;
            // Only requests not fulfilled yet may be cancelled: never below the instances that
            // already have a server (the in-tree provider's rule, cluster-autoscaler-1.36.1
            // `cloudprovider/clusterapi/clusterapi_nodegroup.go`, `DecreaseTargetSize`).
            let real = g.instances.iter().filter(|i| i.has_server && i.state != InstanceState::Deleting).count();
            let real = i32::try_from(real).unwrap_or(i32::MAX);
            let (writer, group, delta) = (self.writer.clone(), g.clone(), r.delta);
            detached(async move {
                writer
                    .resize(&group, |current| {
                        let desired = current.saturating_add(delta);
                        if desired < real {
                            Err(Status::failed_precondition(format!(
                                "attempt to delete existing nodes: {} has {real} instance(s) with a server, target {current}{delta:+} = {desired}",
                                group.id
                            )))
                        } else {
                            Ok(desired)
                        }
                    })
                    .await
            })
            .await?;
            self.rebuild(scope);
            Ok(pb::NodeGroupDecreaseTargetSizeResponse {})
        })
        .await
    }

    async fn node_group_nodes(
        &self,
        request: Request<pb::NodeGroupNodesRequest>,
    ) -> RpcResult<pb::NodeGroupNodesResponse> {
        self.with_group("NodeGroupNodes", &request, async |_, g| {
            Ok(pb::NodeGroupNodesResponse {
                instances: g.instances.iter().map(to_pb_instance).collect(),
            })
        })
        .await
    }

    async fn node_group_template_node_info(
        &self,
        request: Request<pb::NodeGroupTemplateNodeInfoRequest>,
    ) -> RpcResult<pb::NodeGroupTemplateNodeInfoResponse> {
        self.with_scope("NodeGroupTemplateNodeInfo", &request, async |scope| {
            let r = request.get_ref();
            r.check()?;
            let built = self.index(scope);
            let g = Self::group(&built.index, r.id())?;
            if let Some(answer) = lock(&built.templates).get(&g.id) {
                return Ok(answer.clone());
            }
            let node = template_node(g, &self.options.template)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            // Both generations of the field (`proto/externalgrpc.proto`): CA ≤ 1.34.1 reads
            // field 1, ≥ 1.35 field 2.
            let bytes = node.encode_to_vec();
            let answer = pb::NodeGroupTemplateNodeInfoResponse {
                node_info: Some(node),
                node_bytes: bytes,
            };
            lock(&built.templates).insert(g.id.clone(), answer.clone());
            Ok(answer)
        })
        .await
    }

    async fn node_group_get_options(
        &self,
        request: Request<pb::NodeGroupAutoscalingOptionsRequest>,
    ) -> RpcResult<pb::NodeGroupAutoscalingOptionsResponse> {
        self.with_group("NodeGroupGetOptions", &request, async |_, g| {
            let r = request.get_ref();
            let defaults = r.defaults.unwrap_or_default();
            // Bad values fall back to CA's default field by field; the index reported them.
            match options::options(&g.annotations, &defaults).0 {
                Some(o) => Ok(pb::NodeGroupAutoscalingOptionsResponse {
                    node_group_autoscaling_options: Some(o),
                }),
                None => Err(Status::unimplemented(format!(
                    "node group {} sets no usable autoscaling options",
                    g.id
                ))),
            }
        })
        .await
    }
}

/// Keeps a boxed future type name short in signatures elsewhere.
pub type Shutdown = BoxFuture<'static, ()>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::index::tests::md;
    use crate::autoscaler::proto::core_v1;
    use serde_json::json;

    /// Fixed objects, and a staleness the test sets.
    struct Fixed(
        std::sync::Mutex<Snapshot>,
        std::sync::Mutex<Option<Duration>>,
    );

    impl Snapshots for Fixed {
        fn snapshot(&self) -> Snapshot {
            self.0.lock().unwrap().clone()
        }
        fn stale_for(&self) -> Option<Duration> {
            *self.1.lock().unwrap()
        }
        fn cluster_uid(&self, _namespace: &str, _name: &str) -> Option<String> {
            None
        }
    }

    fn template(
        name: &str,
        price: &str,
    ) -> Arc<crate::api::machine_template::OpenStackWorkerMachineTemplate> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"template": {"spec": {"flavor": {"id": "1"}, "image": {"id": "i"}}}},
                "status": {"capacity": {"cpu": "2", "memory": "4Gi"}, "resolved": {"flavorName": "f", "pricePerHour": price}}
            }))
            .unwrap(),
        )
    }

    fn service() -> (CloudProviderService, Arc<Fixed>) {
        let s = Snapshot {
            machine_deployments: vec![
                md(
                    "ns",
                    "md-0",
                    2,
                    json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "5",
                           "cluster.x-k8s.io/autoscaling-options-scaledownutilizationthreshold": "0.3",
                           "cluster.x-k8s.io/autoscaling-options-maxnodeprovisiontime": "a while"}),
                ),
                md(
                    "ns",
                    "frozen",
                    3,
                    json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "1.0",
                           "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "5"}),
                ),
            ],
            templates: vec![template("md-0-t", "0.2"), template("frozen-t", "0.4")],
            ..Snapshot::default()
        };
        let fixed = Arc::new(Fixed(std::sync::Mutex::new(s), std::sync::Mutex::new(None)));
        // No write reaches an API server in these tests; the client points nowhere.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let svc = CloudProviderService::new(
            fixed.clone(),
            client,
            ServiceOptions {
                require_identity: false,
                template: TemplateOptions::default(),
            },
            RpcMetrics::default(),
        );
        (svc, fixed)
    }

    #[tokio::test]
    async fn refresh_refuses_stale_watches() {
        let (svc, fixed) = service();
        svc.refresh(Request::new(pb::RefreshRequest {}))
            .await
            .unwrap();
        *fixed.1.lock().unwrap() = Some(Duration::from_secs(20));
        svc.refresh(Request::new(pb::RefreshRequest {}))
            .await
            .expect("a short failure is ridden out");
        *fixed.1.lock().unwrap() = Some(MAX_WATCH_STALENESS + Duration::from_secs(1));
        let err = svc
            .refresh(Request::new(pb::RefreshRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(err.message().contains("stale"), "{}", err.message());
        *fixed.1.lock().unwrap() = None;
        svc.refresh(Request::new(pb::RefreshRequest {}))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn refresh_keeps_the_index_only_while_the_stores_hold_the_same_objects() {
        let (svc, fixed) = service();
        let size = async |svc: &CloudProviderService| {
            svc.node_group_target_size(Request::new(pb::NodeGroupTargetSizeRequest {
                id: "MachineDeployment/ns/md-0".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .target_size
        };
        let template = async |svc: &CloudProviderService| {
            svc.node_group_template_node_info(Request::new(pb::NodeGroupTemplateNodeInfoRequest {
                id: "MachineDeployment/ns/md-0".into(),
            }))
            .await
            .unwrap()
            .into_inner()
        };
        svc.refresh(Request::new(pb::RefreshRequest {}))
            .await
            .unwrap();
        let first = svc.index(&None);
        let first_template = template(&svc).await;
        svc.refresh(Request::new(pb::RefreshRequest {}))
            .await
            .unwrap();
        assert!(
            Arc::ptr_eq(&first, &svc.index(&None)),
            "unchanged stores: the same index"
        );
        assert_eq!(template(&svc).await, first_template);
        assert_eq!(size(&svc).await, 2);

        // A watch event replaces the object (a new Arc, as a reflector store does).
        let mut changed = (*fixed.0.lock().unwrap().machine_deployments[0]).clone();
        changed.spec.replicas = Some(4);
        changed.metadata.annotations.get_or_insert_default().insert(
            "capacity.cluster-autoscaler.kubernetes.io/labels".into(),
            "zone=b".into(),
        );
        fixed.0.lock().unwrap().machine_deployments[0] = Arc::new(changed);
        assert_eq!(size(&svc).await, 2, "between Refreshes CA sees one state");
        svc.refresh(Request::new(pb::RefreshRequest {}))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &svc.index(&None)), "rebuilt");
        assert_eq!(size(&svc).await, 4);
        let labels = template(&svc)
            .await
            .node_info
            .unwrap()
            .metadata
            .unwrap()
            .labels;
        assert_eq!(
            labels.get("zone").map(String::as_str),
            Some("b"),
            "the template follows the change: {labels:?}"
        );
    }

    #[tokio::test]
    async fn a_frozen_group_is_served_at_its_size_and_refuses_writes() {
        let (svc, _) = service();
        let groups = svc
            .node_groups(Request::new(pb::NodeGroupsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .node_groups;
        let frozen = groups
            .iter()
            .find(|g| g.id == "MachineDeployment/ns/frozen")
            .unwrap();
        assert_eq!((frozen.min_size, frozen.max_size), (3, 3));
        let id = || "MachineDeployment/ns/frozen".to_owned();
        let err = svc
            .node_group_decrease_target_size(Request::new(pb::NodeGroupDecreaseTargetSizeRequest {
                id: id(),
                delta: -1,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(
            err.message().contains("node-group-min-size"),
            "{}",
            err.message()
        );
        let err = svc
            .node_group_increase_size(Request::new(pb::NodeGroupIncreaseSizeRequest {
                id: id(),
                delta: 1,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    }

    #[tokio::test]
    async fn get_options_keeps_valid_overrides_next_to_a_bad_one() {
        let (svc, _) = service();
        let defaults = pb::NodeGroupAutoscalingOptions {
            scale_down_utilization_threshold: 0.5,
            max_node_provision_duration: Some(prost_types::Duration {
                seconds: 900,
                nanos: 0,
            }),
            ..Default::default()
        };
        let o = svc
            .node_group_get_options(Request::new(pb::NodeGroupAutoscalingOptionsRequest {
                id: "MachineDeployment/ns/md-0".into(),
                defaults: Some(defaults),
            }))
            .await
            .expect("not FailedPrecondition for the whole group")
            .into_inner()
            .node_group_autoscaling_options
            .unwrap();
        assert_eq!(o.scale_down_utilization_threshold, 0.3);
        assert_eq!(
            o.max_node_provision_duration.unwrap().seconds,
            900,
            "CA's default"
        );
    }

    #[tokio::test]
    async fn prices_for_template_nodes_and_pods() {
        let (svc, _) = service();
        let ts = |s: i64| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        // CA 1.36.1's renamed template node: no providerID.
        let node = pb::ExternalGrpcNode {
            name: "template-node-for-MachineDeployment/ns/md-0-5577006791947779410".into(),
            ..Default::default()
        };
        let price = svc
            .pricing_node_price(Request::new(pb::PricingNodePriceRequest {
                node: Some(node),
                start_timestamp: ts(0),
                end_timestamp: ts(3600),
                ..Default::default()
            }))
            .await
            .expect("template nodes are priced")
            .into_inner()
            .price;
        assert!((price - 0.2).abs() < 1e-12, "{price}");
        // CA's stabilisation pod (500m, 500Mi) for an hour at the cheaper group's rates.
        let pod = core_v1::Pod {
            metadata: None,
            spec: Some(core_v1::PodSpec {
                containers: vec![core_v1::Container {
                    name: "stabilize".into(),
                    resources: Some(core_v1::ResourceRequirements {
                        requests: [
                            (
                                "cpu".into(),
                                crate::autoscaler::proto::resource::Quantity {
                                    string: "500m".into(),
                                },
                            ),
                            (
                                "memory".into(),
                                crate::autoscaler::proto::resource::Quantity {
                                    string: "500Mi".into(),
                                },
                            ),
                        ]
                        .into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let price = svc
            .pricing_pod_price(Request::new(pb::PricingPodPriceRequest {
                pod_bytes: pod.encode_to_vec(),
                start_timestamp: ts(0),
                end_timestamp: ts(3600),
                ..Default::default()
            }))
            .await
            .expect("PodPrice is implemented")
            .into_inner()
            .price;
        let index = svc.index(&None);
        let rates = pricing::index_rates(&index.index).unwrap();
        assert_eq!(
            rates.group, "MachineDeployment/ns/md-0",
            "0.2/h beats 0.4/h for the same flavor"
        );
        let want = 0.5 * rates.per_vcpu_hour + 500.0 / 1024.0 * rates.per_gib_hour;
        assert!((price - want).abs() < 1e-12, "{price} != {want}");
        assert!(price > 0.0);
    }
}
