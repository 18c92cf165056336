//! The externalgrpc server's writes and reports against the real kube-apiserver, where their
//! correctness depends on it: a `NodeGroupDeleteNodes` cancelled by CA's deadline between
//! marking and scaling, a user's scale between capow's read and write (409 Conflict), a user's
//! scale the watch delivers right after capow's own write (read-your-writes), the sweeper of
//! stray `delete-machine` marks, and Warning events for invalid autoscaling annotations.
//!
//! Requests of capow's client to the `scale` subresource pass a [`Gate`] (a tower layer in
//! the kube client), which holds one request at a chosen point until the test releases it, so
//! each interleaving is set up exactly instead of raced. The Cluster is paused, so the real
//! CAPI controllers leave every object to the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use capow::autoscaler::node::TemplateOptions;
use capow::autoscaler::proto::externalgrpc as pb;
use capow::autoscaler::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use capow::autoscaler::report::{AnnotationReporter, InvalidAnnotationMetrics};
use capow::autoscaler::service::{CloudProviderService, RpcMetrics, ServiceOptions, Snapshots};
use capow::autoscaler::{marks, server, sources};
use capow::capi::{DELETE_MACHINE_ANNOTATION, Machine, MachineDeployment};
use capow_e2e::{Env, Poll, TestNamespace, apply_json};
use futures::future::BoxFuture;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

mod support;

/// Where a [`Gate`] holds the next `scale` PATCH.
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// Before it is sent.
    Before,
    /// After the API server answered, before capow sees the answer.
    After,
}

struct Plan {
    hold: Hold,
    /// Send it to a `scale` subresource that does not exist (the API server answers 404).
    break_it: bool,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// A tower layer for capow's kube client that holds the next PATCH of a `scale` subresource
/// once armed.
#[derive(Clone, Default)]
struct Gate {
    plan: Arc<Mutex<Option<Plan>>>,
}

/// The test's end of an armed gate.
struct Armed {
    reached: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl Gate {
    fn arm(&self, hold: Hold, break_it: bool) -> Armed {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.plan.lock().unwrap() = Some(Plan {
            hold,
            break_it,
            reached: reached_tx,
            release: release_rx,
        });
        Armed { reached, release }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> GateService<S> {
        GateService {
            inner,
            gate: self.clone(),
        }
    }
}

struct GateService<S> {
    inner: S,
    gate: Gate,
}

impl<S> tower::Service<http::Request<kube::client::Body>> for GateService<S>
where
    S: tower::Service<http::Request<kube::client::Body>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<kube::client::Body>) -> Self::Future {
        let scale_patch =
            req.method() == http::Method::PATCH && req.uri().path().ends_with("/scale");
        let plan = if scale_patch {
            self.gate.plan.lock().unwrap().take()
        } else {
            None
        };
        if plan.as_ref().is_some_and(|p| p.break_it) {
            let path = req.uri().path().to_owned();
            let (dir, _) = path.trim_end_matches("/scale").rsplit_once('/').unwrap();
            let broken = format!("{dir}/no-such-object-e2e/scale");
            let uri = match req.uri().query() {
                Some(q) => format!("{broken}?{q}"),
                None => broken,
            };
            *req.uri_mut() = uri.parse().unwrap();
        }
        // The HTTP request is sent when the inner future is first polled.
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(p) = plan else {
                return fut.await;
            };
            match p.hold {
                Hold::Before => {
                    let _ = p.reached.send(());
                    let _ = p.release.await;
                    fut.await
                }
                Hold::After => {
                    let answer = fut.await;
                    let _ = p.reached.send(());
                    let _ = p.release.await;
                    answer
                }
            }
        })
    }
}

struct Fixture {
    ns: TestNamespace,
    client: kube::Client,
    stores: sources::Stores,
    gate: Gate,
    api: CloudProviderClient<Channel>,
    metrics: InvalidAnnotationMetrics,
    shutdown: CancellationToken,
}

fn md(ns: &str, name: &str, replicas: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "clusterName": "c1", "replicas": replicas,
            "selector": {"matchLabels": {"e2e/md": name}},
            "template": {
                "metadata": {"labels": {"e2e/md": name}},
                "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "none"},
                         "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachineTemplate", "name": "t"}}
            }
        }
    })
}

fn machine(ns: &str, name: &str, md: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                     "labels": {"cluster.x-k8s.io/deployment-name": md, "cluster.x-k8s.io/cluster-name": "c1"}},
        "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "none"},
                 "providerID": format!("openstack:///{name}"),
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachine", "name": name}}
    })
}

fn limits(min: &str, max: &str) -> Value {
    json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": min,
           "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": max})
}

/// A namespace with a paused Cluster `c1`, template `t`, `objects`, and capow's externalgrpc
/// service (plaintext, loopback) whose kube client passes a [`Gate`].
async fn fixture(prefix: &str, objects: Vec<Value>) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::get();
    let client = env.client().await;
    let ns = TestNamespace::create(&client, prefix).await;
    let name = ns.name.clone();
    let mut all = vec![
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
               "metadata": {"name": "c1", "namespace": name},
               "spec": {"paused": true, "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerCluster", "name": "c1"}}}),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
               "metadata": {"name": "t", "namespace": name},
               "spec": {"template": {"spec": {"flavor": {"id": "1"}, "image": {"id": "i"}}}}}),
    ];
    all.extend(objects);
    for obj in all {
        let mut obj = obj;
        obj["metadata"]["namespace"] = json!(name);
        apply_json(&client, &obj).await.unwrap();
    }
    // The real CAPI controllers touch each object once even under a paused Cluster (a
    // finalizer and a Paused condition); let them finish, so that no write of theirs lands
    // between capow's read and write in the interleavings below.
    for (kind, finalizer) in [
        ("MachineDeployment", "cluster.x-k8s.io/machinedeployment"),
        ("Machine", "machine.cluster.x-k8s.io"),
    ] {
        let gvk = kube::api::GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", kind);
        let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &name, &ar);
        Poll::new(
            format!("CAPI to settle the {kind}s"),
            Duration::from_secs(30),
        )
        .until(|| {
            let api = api.clone();
            async move {
                let items = api.list(&ListParams::default()).await?.items;
                anyhow::Ok(items.iter().all(|o| {
                    let paused = o.data["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Paused" && c["status"] == "True")
                    });
                    o.finalizers().iter().any(|f| f == finalizer) && paused
                }))
            }
        })
        .await;
    }
    let shutdown = CancellationToken::new();
    let stores = sources::Stores::start(&client, Some(&name), &shutdown);
    stores.ready().await.unwrap();

    let gate = Gate::default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let gated = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&gate)
        .build();
    let metrics = InvalidAnnotationMetrics::default();
    let reporter = AnnotationReporter::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "capow".into(),
            instance: Some("e2e".into()),
        },
        metrics.clone(),
    );
    let service = CloudProviderService::new(
        Arc::new(stores.clone()),
        gated,
        ServiceOptions {
            require_identity: false,
            template: TemplateOptions::default(),
        },
        RpcMetrics::default(),
    )
    .with_reporter(Arc::new(reporter));
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve(listener, service, None, shutdown.clone()));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Fixture {
        ns,
        client,
        stores,
        gate,
        api: CloudProviderClient::new(channel),
        metrics,
        shutdown,
    }
}

impl Fixture {
    fn id(&self, md: &str) -> String {
        format!("MachineDeployment/{}/{md}", self.ns.name)
    }

    async fn replicas(&self, md: &str) -> i32 {
        Api::<MachineDeployment>::namespaced(self.client.clone(), &self.ns.name)
            .get_scale(md)
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas
            .unwrap()
    }

    /// Scales `md` to `replicas` as a user would (no precondition).
    async fn user_scales(&self, md: &str, replicas: i32) {
        Api::<MachineDeployment>::namespaced(self.client.clone(), &self.ns.name)
            .patch_scale(
                md,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
    }

    async fn annotations(&self, machine: &str) -> std::collections::BTreeMap<String, String> {
        Api::<Machine>::namespaced(self.client.clone(), &self.ns.name)
            .get(machine)
            .await
            .unwrap()
            .annotations()
            .clone()
    }

    /// Waits until the stores show `md` at `replicas`.
    async fn stores_show(&self, md: &str, replicas: i32) {
        let stores = self.stores.clone();
        Poll::new("the watch to deliver the scale", Duration::from_secs(30))
            .until(|| {
                let stores = stores.clone();
                async move {
                    anyhow::Ok(
                        stores
                            .snapshot()
                            .machine_deployments
                            .iter()
                            .any(|d| d.name_any() == md && d.spec.replicas == Some(replicas)),
                    )
                }
            })
            .await;
    }

    fn delete_request(&self, md: &str, machine: &str) -> pb::NodeGroupDeleteNodesRequest {
        pb::NodeGroupDeleteNodesRequest {
            id: self.id(md),
            nodes: vec![pb::ExternalGrpcNode {
                provider_id: format!("openstack:///{machine}"),
                name: machine.into(),
                ..Default::default()
            }],
        }
    }

    async fn refresh(&mut self) {
        self.api.refresh(pb::RefreshRequest {}).await.unwrap();
    }

    async fn done(self) {
        self.shutdown.cancel();
        support::delete_namespace(&self.client, self.ns).await;
    }
}

fn three_machines() -> Vec<Value> {
    vec![
        md("", "md-0", 3, limits("1", "5")),
        machine("", "m-a", "md-0", json!({})),
        machine("", "m-b", "md-0", json!({})),
        machine("", "m-c", "md-0", json!({})),
    ]
}

/// CA's 5 s deadline (`grpc_timeout`) strikes after capow marked the Machine and before its
/// replicas write: the write still happens, so the mark is never left without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn delete_nodes_cancelled_by_the_deadline_still_finishes() {
    let mut f = fixture("xgrpc-cancel", three_machines()).await;
    f.refresh().await;
    let armed = f.gate.arm(Hold::Before, false);
    let mut request = tonic::Request::new(f.delete_request("md-0", "m-a"));
    // What CA's client does: a per-call deadline (shortened; 5 s by default).
    request.set_timeout(Duration::from_secs(2));
    let mut api = f.api.clone();
    let call = tokio::spawn(async move { api.node_group_delete_nodes(request).await });
    armed.reached.await.unwrap();
    // The mark is on; the replicas write waits at the gate until the call is gone.
    assert!(
        f.annotations("m-a")
            .await
            .contains_key(DELETE_MACHINE_ANNOTATION)
    );
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err}"
    );
    // (Before the fix the gate's holder is gone with the dropped handler.)
    let _ = armed.release.send(());
    // Before the fix the handler was dropped with its pending write: replicas stayed 3 and
    // m-a kept a mark for a later scale-down to act on.
    Poll::new(
        "the replicas write after the cancelled call",
        Duration::from_secs(30),
    )
    .until(|| async {
        let replicas = f.replicas("md-0").await;
        if replicas == 2 {
            Ok(())
        } else {
            Err(format!(
                "replicas {replicas}, m-a annotations {:?}",
                f.annotations("m-a").await
            ))
        }
    })
    .await;
    let a = f.annotations("m-a").await;
    assert_eq!(
        a.get(DELETE_MACHINE_ANNOTATION),
        a.get(marks::MARK_ANNOTATION),
        "capow's mark, recorded as capow's: {a:?}"
    );
    assert!(
        !f.annotations("m-b")
            .await
            .contains_key(DELETE_MACHINE_ANNOTATION)
    );
    f.done().await;
}

/// A failed replicas write takes the mark back (and only capow's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn delete_nodes_undoes_its_marks_when_the_replicas_write_fails() {
    let mut objects = three_machines();
    // m-c carries a user's mark: DeleteNodes of it must leave that mark alone.
    objects[3] = machine(
        "",
        "m-c",
        "md-0",
        json!({DELETE_MACHINE_ANNOTATION: "user"}),
    );
    let mut f = fixture("xgrpc-undo", objects).await;
    f.refresh().await;
    let armed = f.gate.arm(Hold::Before, true);
    let mut api = f.api.clone();
    let mut request = f.delete_request("md-0", "m-a");
    request.nodes.extend(f.delete_request("md-0", "m-c").nodes);
    let call = tokio::spawn(async move { api.node_group_delete_nodes(request).await });
    armed.reached.await.unwrap();
    armed.release.send(()).unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert_eq!(f.replicas("md-0").await, 3);
    let a = f.annotations("m-a").await;
    assert!(!a.contains_key(DELETE_MACHINE_ANNOTATION), "{a:?}");
    assert!(!a.contains_key(marks::MARK_ANNOTATION), "{a:?}");
    assert_eq!(
        f.annotations("m-c")
            .await
            .get(DELETE_MACHINE_ANNOTATION)
            .map(String::as_str),
        Some("user")
    );
    f.done().await;
}

/// A user scales the group between capow's read and its write: capow's write conflicts, it
/// reads again and applies its change on top of the user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_concurrent_scale_is_not_lost() {
    let mut f = fixture("xgrpc-conflict", three_machines()).await;
    f.refresh().await;
    let armed = f.gate.arm(Hold::Before, false);
    let mut api = f.api.clone();
    let request = f.delete_request("md-0", "m-a");
    let call = tokio::spawn(async move { api.node_group_delete_nodes(request).await });
    armed.reached.await.unwrap();
    // capow read 3 and will write 2; meanwhile a user scales to 4.
    f.user_scales("md-0", 4).await;
    armed.release.send(()).unwrap();
    call.await.unwrap().unwrap();
    // Before the fix capow wrote 2 over the user's 4.
    assert_eq!(f.replicas("md-0").await, 3, "the user's +1 and capow's -1");
    assert!(
        f.annotations("m-a")
            .await
            .contains_key(DELETE_MACHINE_ANNOTATION)
    );
    f.done().await;
}

/// The watch delivers capow's scale-up and a user's later scale before capow's write returns:
/// the user's size is served, not capow's older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_later_scale_the_watch_shows_first_is_served() {
    let mut f = fixture("xgrpc-ryw", three_machines()).await;
    f.refresh().await;
    let armed = f.gate.arm(Hold::After, false);
    let mut api = f.api.clone();
    let id = f.id("md-0");
    let call = tokio::spawn(async move {
        api.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest { id, delta: 1 })
            .await
    });
    armed.reached.await.unwrap();
    // capow's write (4) is applied; before capow sees the answer, a user scales to 5 and the
    // watch delivers both.
    f.user_scales("md-0", 5).await;
    f.stores_show("md-0", 5).await;
    armed.release.send(()).unwrap();
    call.await.unwrap().unwrap();
    let target = f
        .api
        .node_group_target_size(pb::NodeGroupTargetSizeRequest { id: f.id("md-0") })
        .await
        .unwrap()
        .into_inner()
        .target_size;
    // Before the fix the store's version was taken after the write (the user's), and capow's 4
    // stood in for it until the next change or 30 s.
    assert_eq!(target, 5);
    f.done().await;
}

/// The sweeper removes capow's marks no scale-down followed, and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn stray_marks_are_swept() {
    let old = "2026-01-01T00:00:00Z";
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let f = fixture(
        "xgrpc-sweep",
        vec![
            md("", "md-0", 3, limits("0", "5")),
            // Left by a lost write long ago.
            machine(
                "",
                "m-a",
                "md-0",
                json!({DELETE_MACHINE_ANNOTATION: old, marks::MARK_ANNOTATION: old}),
            ),
            // A user's.
            machine("", "m-b", "md-0", json!({DELETE_MACHINE_ANNOTATION: old})),
            // capow's, just set: a write may still be running.
            machine(
                "",
                "m-c",
                "md-0",
                json!({DELETE_MACHINE_ANNOTATION: now, marks::MARK_ANNOTATION: now}),
            ),
        ],
    )
    .await;
    tokio::spawn(marks::run_sweeper(
        f.client.clone(),
        Arc::new(f.stores.clone()),
        Duration::from_millis(500),
        f.shutdown.clone(),
    ));
    let client = f.client.clone();
    let ns = f.ns.name.clone();
    Poll::new("the stray mark to be swept", Duration::from_secs(30))
        .until(|| {
            let api = Api::<Machine>::namespaced(client.clone(), &ns);
            async move {
                let m = api.get("m-a").await?;
                anyhow::Ok(!m.annotations().contains_key(DELETE_MACHINE_ANNOTATION))
            }
        })
        .await;
    assert!(
        !f.annotations("m-a")
            .await
            .contains_key(marks::MARK_ANNOTATION)
    );
    assert_eq!(
        f.annotations("m-b")
            .await
            .get(DELETE_MACHINE_ANNOTATION)
            .map(String::as_str),
        Some(old),
        "a user's mark stays"
    );
    assert!(
        f.annotations("m-c")
            .await
            .contains_key(DELETE_MACHINE_ANNOTATION),
        "a fresh mark stays"
    );
    f.done().await;
}

async fn invalid_annotation_events(client: &kube::Client, ns: &str, md: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("InvalidAutoscalingAnnotation")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(md)
        })
        .collect()
}

/// An invalid min size freezes the group and is reported once per value as a Warning event on
/// the MachineDeployment, and in the metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn invalid_annotations_are_reported_once_per_value() {
    const MIN: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size";
    let mut f = fixture(
        "xgrpc-events",
        vec![
            md("", "md-0", 2, limits("1.0", "5")),
            machine("", "m-a", "md-0", json!({})),
            machine("", "m-b", "md-0", json!({})),
        ],
    )
    .await;
    for _ in 0..5 {
        f.refresh().await;
    }
    let groups = f
        .api
        .node_groups(pb::NodeGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .node_groups;
    assert_eq!((groups[0].min_size, groups[0].max_size), (2, 2), "frozen");
    // Before the fix min "1.0" was served as 0 and CA could delete both nodes.
    let err = f
        .api
        .node_group_delete_nodes(f.delete_request("md-0", "m-a"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(f.replicas("md-0").await, 2);
    assert_eq!(f.metrics.get(MIN), 1);

    let (client, ns) = (f.client.clone(), f.ns.name.clone());
    Poll::new("the Warning event", Duration::from_secs(30))
        .until(|| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                anyhow::Ok(
                    !invalid_annotation_events(&client, &ns, "md-0")
                        .await
                        .is_empty(),
                )
            }
        })
        .await;
    let events = invalid_annotation_events(&client, &ns, "md-0").await;
    assert_eq!(events.len(), 1, "one event for five refreshes: {events:?}");
    let e = &events[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    let note = e.note.clone().unwrap_or_default();
    assert!(
        note.contains(MIN) && note.contains("\"1.0\"") && note.contains("whole number"),
        "{note}"
    );
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("MachineDeployment")
    );

    // Another bad value: a second event, with its own message.
    Api::<MachineDeployment>::namespaced(client.clone(), &ns)
        .patch(
            "md-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {MIN: "-1"}}})),
        )
        .await
        .unwrap();
    let stores = f.stores.clone();
    Poll::new("the new value in the stores", Duration::from_secs(30))
        .until(|| {
            let stores = stores.clone();
            async move {
                anyhow::Ok(
                    stores
                        .snapshot()
                        .machine_deployments
                        .iter()
                        .any(|d| d.annotations().get(MIN).map(String::as_str) == Some("-1")),
                )
            }
        })
        .await;
    f.refresh().await;
    Poll::new("the second event", Duration::from_secs(30))
.until(|| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { anyhow::Ok(invalid_annotation_events(&client, &ns, "md-0").await.len() == 2) }
    })
    .await;
    let notes: Vec<String> = invalid_annotation_events(&client, &ns, "md-0")
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert!(notes.iter().any(|n| n.contains("\"-1\"")), "{notes:?}");
    assert_eq!(f.metrics.get(MIN), 1, "still one object with a bad min");
    f.done().await;
}
