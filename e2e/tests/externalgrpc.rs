//! Conformance of capow's externalgrpc server: every RPC over real mTLS with a tonic client
//! generated from the same proto (both CA wire generations), scale writes against the real
//! kube-apiserver's `scale` subresources, TLS refusals, and interop with grpc-go and
//! Kubernetes' own protobuf decoder through `grpcprobe` (e2e/components/grpcprobe).
//!
//! The index reads real reflector stores of objects created in a test namespace; the
//! OpenStackWorkerMachines' statuses are written by the test (no controller runs here), so
//! every instance state can be set up exactly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use capow::autoscaler::node::TemplateOptions;
use capow::autoscaler::proto::externalgrpc as pb;
use capow::autoscaler::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use capow::autoscaler::proto::{core_v1, meta_v1};
use capow::autoscaler::service::{CloudProviderService, RpcMetrics, ServiceOptions};
use capow::autoscaler::{server, sources};
use capow::tls::{Ca, CertPolicy, ClusterIdentity, PublishSettings, ServingCert, ServingNames};
use capow_e2e::{Env, Poll, TestNamespace, apply_json};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use prost::Message;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

mod support;

const SERVICE: &str = "capow-autoscaler";

async fn patch_status(
    client: &kube::Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    name: &str,
    status: Value,
) {
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap();
}

fn md(ns: &str, name: &str, cluster: &str, replicas: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "clusterName": cluster, "replicas": replicas,
            "selector": {"matchLabels": {"e2e/md": name}},
            "template": {
                "metadata": {"labels": {"e2e/md": name, "node-role.kubernetes.io/worker": ""}},
                "spec": {"clusterName": cluster, "bootstrap": {"dataSecretName": "none"}, "failureDomain": "nova",
                         "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachineTemplate", "name": format!("{name}-t")}}
            }
        }
    })
}

fn machine(ns: &str, name: &str, cluster: &str, md: &str, provider_id: Option<&str>) -> Value {
    let mut m = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": name, "namespace": ns, "labels": {"cluster.x-k8s.io/deployment-name": md, "cluster.x-k8s.io/cluster-name": cluster}},
        "spec": {"clusterName": cluster, "bootstrap": {"dataSecretName": "none"},
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachine", "name": name}}
    });
    if let Some(p) = provider_id {
        m["spec"]["providerID"] = json!(p);
    }
    m
}

fn oswm(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachine",
           "metadata": {"name": name, "namespace": ns}, "spec": {"flavor": {"id": "3"}, "image": {"id": "i"}}})
}

fn template(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"template": {"spec": {"flavor": {"filter": {"name": "m1.medium"}}, "image": {"id": "i"}}}}})
}

async fn replicas(client: &kube::Client, ns: &str, md: &str) -> i32 {
    let api: Api<capow::capi::MachineDeployment> = Api::namespaced(client.clone(), ns);
    api.get_scale(md)
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap()
}

async fn channel(
    port: u16,
    ns: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(format!("{SERVICE}.{ns}.svc"));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn node(provider_id: &str) -> Option<pb::ExternalGrpcNode> {
    Some(pb::ExternalGrpcNode {
        provider_id: provider_id.into(),
        name: provider_id.into(),
        ..Default::default()
    })
}

fn probe(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let bin = std::env::var("CAPOW_GRPCPROBE").expect("CAPOW_GRPCPROBE (set by e2e/test.sh)");
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "grpcprobe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A CloudProvider client over one mTLS channel.
type Cp = CloudProviderClient<Channel>;

/// The node-group id capow gives MachineDeployment `name` of namespace `ns`.
fn gid(ns: &str, name: &str) -> String {
    format!("MachineDeployment/{ns}/{name}")
}

/// capow's externalgrpc server over real stores of namespace `ns`, with capow's CA in a Secret
/// of that namespace and mTLS on a loopback port; it requires a client identity.
struct Server {
    ca: Arc<Ca>,
    port: u16,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(client: &kube::Client, ns: &str) -> Server {
        let shutdown = CancellationToken::new();
        let stores = sources::Stores::start(client, Some(ns), &shutdown);
        stores.ready().await.unwrap();
        let (ca, _) = Ca::load_or_create(client, ns, "capow-ca").await.unwrap();
        let ca = Arc::new(ca);
        let names = ServingNames::for_service(SERVICE, ns).with_ips(["127.0.0.1".parse().unwrap()]);
        let serving = ServingCert::new(ca.clone(), names, CertPolicy::serving_default()).unwrap();
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = CloudProviderService::new(
            Arc::new(stores),
            client.clone(),
            ServiceOptions {
                require_identity: true,
                template: TemplateOptions {
                    gpu_label: "cluster-api/accelerator".into(),
                },
            },
            RpcMetrics::default(),
        );
        let task = tokio::spawn(server::serve(
            listener,
            service,
            Some(serving.server_config().unwrap()),
            shutdown.clone(),
        ));
        Server {
            ca,
            port,
            shutdown,
            task,
        }
    }

    /// A client with a certificate of this server's CA for Cluster `cluster` (UID `uid`).
    async fn client(&self, ns: &str, cluster: &str, uid: &str) -> Cp {
        let cert = self
            .ca
            .issue_client(
                &ClusterIdentity::new(ns, cluster, uid).unwrap(),
                &CertPolicy::client_default(),
                SystemTime::now(),
            )
            .unwrap();
        CloudProviderClient::new(
            channel(
                self.port,
                ns,
                self.ca.cert_pem(),
                Some((cert.cert_pem(), cert.key_pem())),
            )
            .await
            .unwrap(),
        )
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Writes the objects the RPCs read into `ns`: paused Clusters c1 and c2 (scoping is by
/// cluster, not namespace), c1's autoscaled groups md-0 (1..4, 3 replicas, option overrides)
/// and md-zero (0..2, capacity annotations), c2's group other, a group without bounds, and
/// md-0's Machines m-a (ACTIVE, with a Node), m-b (BUILD) and m-q (refused for quota), plus
/// c2's m-o. Returns the Clusters' UIDs by name.
async fn seed(client: &kube::Client, ns: &str) -> std::collections::HashMap<&'static str, String> {
    let mut cluster_uids = std::collections::HashMap::new();
    for c in ["c1", "c2"] {
        let applied = apply_json(client, &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"name": c, "namespace": ns},
            // Paused: the real CAPI controllers leave these objects alone, so the test sets every
            // Machine and status itself.
            "spec": {"paused": true, "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerCluster", "name": c}}})).await.unwrap();
        cluster_uids.insert(c, applied["metadata"]["uid"].as_str().unwrap().to_owned());
    }
    let scaling = |min: i32, max: i32| {
        json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": min.to_string(),
               "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": max.to_string()})
    };
    let mut md0 = scaling(1, 4);
    md0["cluster.x-k8s.io/autoscaling-options-scaledownutilizationthreshold"] = json!("0.3");
    md0["cluster.x-k8s.io/autoscaling-options-maxnodeprovisiontime"] = json!("5m");
    let mut zero = scaling(0, 2);
    zero["capacity.cluster-autoscaler.kubernetes.io/cpu"] = json!("8");
    zero["capacity.cluster-autoscaler.kubernetes.io/memory"] = json!("32Gi");
    for obj in [
        template(ns, "md-0-t"),
        template(ns, "md-zero-t"),
        template(ns, "other-t"),
        md(ns, "md-0", "c1", 3, md0),
        md(ns, "md-zero", "c1", 0, zero),
        md(ns, "other", "c2", 1, scaling(0, 2)),
        md(ns, "not-autoscaled", "c1", 1, json!({})),
        machine(ns, "m-a", "c1", "md-0", Some("openstack:///aaa")),
        machine(ns, "m-b", "c1", "md-0", None),
        machine(ns, "m-q", "c1", "md-0", None),
        machine(ns, "m-o", "c2", "other", Some("openstack:///ooo")),
        oswm(ns, "m-a"),
        oswm(ns, "m-b"),
        oswm(ns, "m-q"),
    ] {
        apply_json(client, &obj).await.unwrap();
    }
    let infra = ("infrastructure.cluster.x-k8s.io", "v1alpha1");
    let statuses = [
        (
            infra,
            "OpenStackWorkerMachineTemplate",
            "md-0-t",
            json!({
                "capacity": {"cpu": "2", "memory": "4096Mi", "ephemeral-storage": "40Gi"},
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
                "resolved": {"flavorName": "m1.medium", "pricePerHour": "0.1"}
            }),
        ),
        (
            infra,
            "OpenStackWorkerMachine",
            "m-a",
            json!({"instanceID": "aaa", "instanceState": "ACTIVE"}),
        ),
        (
            infra,
            "OpenStackWorkerMachine",
            "m-b",
            json!({"instanceID": "bbb", "instanceState": "BUILD"}),
        ),
        (
            infra,
            "OpenStackWorkerMachine",
            "m-q",
            json!({"conditions": [{
            "type": "Ready", "status": "False", "reason": "InstanceCreateFailed", "lastTransitionTime": "2026-11-25T00:00:00Z",
            "message": "failed to create the server: compute server_create failed with HTTP 403 Forbidden: Quota exceeded for cores: Requested 2, but already used 400 of 400 cores"}]}),
        ),
        (
            ("cluster.x-k8s.io", "v1beta2"),
            "Machine",
            "m-a",
            json!({"nodeRef": {"name": "m-a"}}),
        ),
    ];
    for ((group, version), kind, name, status) in statuses {
        patch_status(client, ns, group, version, kind, name, status).await;
    }
    cluster_uids
}

// Multi-threaded: the grpcprobe child process is awaited synchronously while this process
// serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn every_rpc_over_mtls_in_both_wire_shapes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::get();
    let client = env.client().await;
    let ns_guard = TestNamespace::create(&client, "xgrpc").await;
    let ns = ns_guard.name.clone();
    let cluster_uids = seed(&client, &ns).await;
    let server = Server::start(&client, &ns).await;
    // Let the stores see the statuses just written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut api = server.client(&ns, "c1", &cluster_uids["c1"]).await;
    let mut api2 = server.client(&ns, "c2", &cluster_uids["c2"]).await;

    node_groups_are_scoped_by_cluster(&mut api, &mut api2, &ns).await;
    node_group_nodes(&mut api, &ns).await;
    let template = template_node_info(&mut api, &ns).await;
    get_options(&mut api, &ns).await;
    pricing_and_gpus(&mut api, &ns, &template).await;
    scale_writes(&mut api, &mut api2, &client, &ns).await;
    api.cleanup(pb::CleanupRequest {}).await.unwrap();
    grpc_go_over_the_published_cloud_config(env, &client, &server, &ns).await;
    refusals(&server, &ns, &cluster_uids["c1"]).await;
    health(&server, &ns, &cluster_uids["c1"]).await;

    server.stop().await;
    support::delete_namespace(&client, ns_guard).await;
}

/// Refresh, NodeGroups: c1 sees its two autoscaled groups, c2 only its own; NodeGroupForNode
/// and NodeGroupTargetSize see only the caller's cluster.
async fn node_groups_are_scoped_by_cluster(api: &mut Cp, api2: &mut Cp, ns: &str) {
    let id = |name: &str| gid(ns, name);
    api.refresh(pb::RefreshRequest {}).await.unwrap();
    let groups = api
        .node_groups(pb::NodeGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .node_groups;
    let ids: Vec<_> = groups.iter().map(|g| g.id.clone()).collect();
    assert_eq!(ids, [id("md-0"), id("md-zero")]);
    assert_eq!((groups[0].min_size, groups[0].max_size), (1, 4));
    let other = api2
        .node_groups(pb::NodeGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .node_groups;
    assert_eq!(
        other.iter().map(|g| g.id.clone()).collect::<Vec<_>>(),
        [id("other")]
    );

    // NodeGroupForNode: own node, another cluster's node, a node without providerID.
    for (provider_id, want) in [
        ("openstack:///aaa", id("md-0")),
        ("openstack:///ooo", String::new()),
        ("", String::new()),
    ] {
        let group = api
            .node_group_for_node(pb::NodeGroupForNodeRequest {
                node: node(provider_id),
            })
            .await
            .unwrap()
            .into_inner()
            .node_group
            .unwrap();
        assert_eq!(group.id, want);
    }

    // Target size; another cluster's group is invisible.
    assert_eq!(
        api.node_group_target_size(pb::NodeGroupTargetSizeRequest { id: id("md-0") })
            .await
            .unwrap()
            .into_inner()
            .target_size,
        3
    );
    let err = api2
        .node_group_target_size(pb::NodeGroupTargetSizeRequest { id: id("md-0") })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
}

/// NodeGroupNodes: providerIDs, states, and the quota failure as OutOfResources.
async fn node_group_nodes(api: &mut Cp, ns: &str) {
    let instances = api
        .node_group_nodes(pb::NodeGroupNodesRequest {
            id: gid(ns, "md-0"),
        })
        .await
        .unwrap()
        .into_inner()
        .instances;
    let by_id = |i: &str| {
        instances
            .iter()
            .find(|x| x.id == i)
            .unwrap_or_else(|| panic!("{i} missing from {instances:?}"))
            .status
            .clone()
            .unwrap()
    };
    assert_eq!(
        by_id("openstack:///aaa").instance_state,
        pb::instance_status::InstanceState::InstanceRunning as i32
    );
    assert_eq!(
        by_id("openstack:///bbb").instance_state,
        pb::instance_status::InstanceState::InstanceCreating as i32
    );
    let quota = by_id(&format!("capow://pending/{ns}/m-q"));
    assert_eq!(
        quota.instance_state,
        pb::instance_status::InstanceState::InstanceCreating as i32
    );
    let info = quota.error_info.unwrap();
    assert_eq!(
        (info.error_code.as_str(), info.instance_error_class),
        ("QuotaExceeded", 1)
    );
    assert!(info.error_message.contains("Quota exceeded for cores"));
}

/// TemplateNodeInfo: field 2 (CA ≥ 1.34.2) and field 1 (CA ≤ 1.34.1) carry the same Node, which
/// Kubernetes' own decoder reads; md-zero scales from zero on capacity annotations alone.
/// Returns md-0's template Node.
async fn template_node_info(api: &mut Cp, ns: &str) -> core_v1::Node {
    let t = api
        .node_group_template_node_info(pb::NodeGroupTemplateNodeInfoRequest {
            id: gid(ns, "md-0"),
        })
        .await
        .unwrap()
        .into_inner();
    let from_bytes = core_v1::Node::decode(t.node_bytes.as_slice()).unwrap();
    assert_eq!(
        Some(&from_bytes),
        t.node_info.as_ref(),
        "both fields carry the same node"
    );
    let status = from_bytes.status.clone().unwrap();
    assert_eq!(status.capacity["cpu"].string, "2");
    assert_eq!(status.capacity["pods"].string, "110");
    assert_eq!(status.allocatable["memory"].string, "3996Mi");
    // Kubernetes' own decoder (k8s.io/api, as CA uses it) reads the same bytes.
    let json: Value = serde_json::from_str(&probe(
        &["decode-node"],
        Some(&base64::engine::general_purpose::STANDARD.encode(&t.node_bytes)),
    ))
    .unwrap();
    assert_eq!(json["status"]["capacity"]["cpu"], "2", "{json}");
    assert_eq!(json["status"]["allocatable"]["ephemeral-storage"], "36Gi");
    assert_eq!(
        json["metadata"]["labels"]["node.kubernetes.io/instance-type"],
        "m1.medium"
    );
    assert_eq!(
        json["metadata"]["labels"]["topology.kubernetes.io/zone"],
        "nova"
    );
    assert_eq!(
        json["metadata"]["labels"]["node-role.kubernetes.io/worker"],
        ""
    );
    assert_eq!(json["status"]["conditions"][0]["type"], "Ready");
    // Scale from zero on capacity annotations alone.
    let z = api
        .node_group_template_node_info(pb::NodeGroupTemplateNodeInfoRequest {
            id: gid(ns, "md-zero"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        core_v1::Node::decode(z.node_bytes.as_slice())
            .unwrap()
            .status
            .unwrap()
            .capacity["memory"]
            .string,
        "32Gi"
    );
    from_bytes
}

/// GetOptions: overrides + echoed defaults, in the new and the old wire shape; a group without
/// option annotations answers Unimplemented (CA keeps its defaults).
async fn get_options(api: &mut Cp, ns: &str) {
    let seconds = |seconds: i64| Some(prost_types::Duration { seconds, nanos: 0 });
    let new_defaults = pb::NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: 0.5,
        scale_down_gpu_utilization_threshold: 0.6,
        ignore_daemon_sets_utilization: true,
        scale_down_unneeded_duration: seconds(600),
        scale_down_unready_duration: seconds(1200),
        max_node_provision_duration: seconds(900),
        ..Default::default()
    };
    let o = options(api, ns, "md-0", Some(new_defaults)).await.unwrap();
    assert_eq!(o.scale_down_utilization_threshold, 0.3);
    assert_eq!(o.scale_down_gpu_utilization_threshold, 0.6);
    assert!(o.ignore_daemon_sets_utilization);
    assert_eq!(o.max_node_provision_duration.unwrap().seconds, 300);
    assert_eq!(o.max_node_provision_time.unwrap().duration, 300_000_000_000);
    assert_eq!(o.scale_down_unneeded_duration.unwrap().seconds, 600);
    assert_eq!(
        o.scale_down_unready_time.unwrap().duration,
        1_200_000_000_000
    );
    let old_defaults = pb::NodeGroupAutoscalingOptions {
        scale_down_unneeded_time: Some(meta_v1::Duration {
            duration: 420_000_000_000,
        }),
        ..Default::default()
    };
    let o = options(api, ns, "md-0", Some(old_defaults)).await.unwrap();
    assert_eq!(
        o.scale_down_unneeded_time.unwrap().duration,
        420_000_000_000
    );
    assert_eq!(o.scale_down_unneeded_duration.unwrap().seconds, 420);
    let err = options(api, ns, "md-zero", None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

/// NodeGroupGetOptions of group `md` with `defaults`.
async fn options(
    api: &mut Cp,
    ns: &str,
    md: &str,
    defaults: Option<pb::NodeGroupAutoscalingOptions>,
) -> Result<pb::NodeGroupAutoscalingOptions, tonic::Status> {
    Ok(api
        .node_group_get_options(pb::NodeGroupAutoscalingOptionsRequest {
            id: gid(ns, md),
            defaults,
        })
        .await?
        .into_inner()
        .node_group_autoscaling_options
        .unwrap())
}

/// Pricing: 2 h of a 0.1/h flavor, in the new and the old time fields; the template node as CA
/// prices it; a pod from md-0's rates. GPU label and types.
async fn pricing_and_gpus(api: &mut Cp, ns: &str, template: &core_v1::Node) {
    let ts = |s: i64| {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    let mt = |s: i64| {
        Some(meta_v1::Time {
            seconds: s,
            nanos: 0,
        })
    };
    // The template node as CA 1.36.1 prices it: renamed, no providerID, capow's annotation kept.
    let template_node = pb::ExternalGrpcNode {
        name: format!("template-node-for-{}-5577006791947779410", gid(ns, "md-0")),
        annotations: template.metadata.clone().unwrap().annotations,
        ..Default::default()
    };
    for (request, want) in [
        (
            pb::PricingNodePriceRequest {
                node: node("openstack:///aaa"),
                start_timestamp: ts(0),
                end_timestamp: ts(7200),
                ..Default::default()
            },
            0.2,
        ),
        (
            pb::PricingNodePriceRequest {
                node: node("openstack:///aaa"),
                start_time: mt(0),
                end_time: mt(3600),
                ..Default::default()
            },
            0.1,
        ),
        (
            pb::PricingNodePriceRequest {
                node: Some(template_node),
                start_timestamp: ts(0),
                end_timestamp: ts(3600),
                ..Default::default()
            },
            0.1,
        ),
    ] {
        let price = api
            .pricing_node_price(request)
            .await
            .unwrap()
            .into_inner()
            .price;
        assert!((price - want).abs() < 1e-9, "{price}");
    }
    // Pods: requests × per-vCPU and per-GiB rates derived from md-0's price (the only one).
    let pod = core_v1::Pod {
        metadata: None,
        spec: Some(core_v1::PodSpec {
            containers: vec![core_v1::Container {
                name: "c".into(),
                resources: Some(core_v1::ResourceRequirements {
                    requests: [(
                        "cpu".to_owned(),
                        capow::autoscaler::proto::resource::Quantity { string: "2".into() },
                    )]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    let pod_price = api
        .pricing_pod_price(pb::PricingPodPriceRequest {
            pod_bytes: pod.encode_to_vec(),
            start_timestamp: ts(0),
            end_timestamp: ts(3600),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .price;
    assert!(
        pod_price > 0.0 && pod_price < 0.1,
        "all the vCPUs, none of the memory: {pod_price}"
    );
    assert_eq!(
        api.gpu_label(pb::GpuLabelRequest {})
            .await
            .unwrap()
            .into_inner()
            .label,
        "cluster-api/accelerator"
    );
    assert!(
        api.get_available_gpu_types(pb::GetAvailableGpuTypesRequest {})
            .await
            .unwrap()
            .into_inner()
            .gpu_types
            .is_empty()
    );
}

/// The writes, against the real `scale` subresource: IncreaseSize, DecreaseTargetSize and
/// DeleteNodes, with their refusals; another cluster cannot write to c1's group.
async fn scale_writes(api: &mut Cp, api2: &mut Cp, client: &kube::Client, ns: &str) {
    let id = || gid(ns, "md-0");
    let increase = |delta: i32| pb::NodeGroupIncreaseSizeRequest { id: id(), delta };
    let decrease = |delta: i32| pb::NodeGroupDecreaseTargetSizeRequest { id: id(), delta };

    // IncreaseSize: within max, then beyond max, then a bad delta.
    api.node_group_increase_size(increase(1)).await.unwrap();
    assert_eq!(replicas(client, ns, "md-0").await, 4);
    let err = api.node_group_increase_size(increase(1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("max size 4"), "{}", err.message());
    let err = api.node_group_increase_size(increase(0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        replicas(client, ns, "md-0").await,
        4,
        "refusals change nothing"
    );
    // Another cluster cannot write to c1's group.
    let err = api2
        .node_group_increase_size(increase(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // DecreaseTargetSize: only unfulfilled requests (4 target, 2 instances with a server).
    api.node_group_decrease_target_size(decrease(-1))
        .await
        .unwrap();
    assert_eq!(replicas(client, ns, "md-0").await, 3);
    api.node_group_decrease_target_size(decrease(-1))
        .await
        .unwrap();
    let err = api
        .node_group_decrease_target_size(decrease(-1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(replicas(client, ns, "md-0").await, 2);

    // DeleteNodes: a node of another group is refused; below min is refused; CA's fake node
    // for the quota-failed machine is accepted: the Machine is marked and replicas drop.
    let delete = |nodes: Vec<Option<pb::ExternalGrpcNode>>| pb::NodeGroupDeleteNodesRequest {
        id: id(),
        nodes: nodes.into_iter().flatten().collect(),
    };
    let err = api
        .node_group_delete_nodes(delete(vec![node("openstack:///ooo")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = api
        .node_group_delete_nodes(delete(vec![
            node("openstack:///aaa"),
            node("openstack:///bbb"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "2 - 2 < min 1: {err}"
    );
    let mut fake = node(&format!("capow://pending/{ns}/m-q")).unwrap();
    fake.annotations.insert(
        "k8s.io/cluster-autoscaler/fake-node-reason".into(),
        "create-error".into(),
    );
    api.node_group_delete_nodes(delete(vec![Some(fake)]))
        .await
        .unwrap();
    assert_eq!(replicas(client, ns, "md-0").await, 1);
    let machines: Api<capow::capi::Machine> = Api::namespaced(client.clone(), ns);
    let marked = |m: capow::capi::Machine| {
        m.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("cluster.x-k8s.io/delete-machine")
    };
    assert!(marked(machines.get("m-q").await.unwrap()));
    assert!(!marked(machines.get("m-a").await.unwrap()));
}

/// grpc-go (as in CA 1.36) over the published cloud-config: ALPN h2, IP SAN, client cert.
async fn grpc_go_over_the_published_cloud_config(
    env: &Env,
    client: &kube::Client,
    server: &Server,
    ns: &str,
) {
    let cluster: capow::capi::Cluster =
        Api::namespaced(client.clone(), ns).get("c1").await.unwrap();
    let mount = env.state.join(format!("xgrpc-{ns}"));
    std::fs::create_dir_all(&mount).unwrap();
    let mut settings = PublishSettings::new(format!("127.0.0.1:{}", server.port));
    settings.mount_dir = mount.display().to_string();
    let published = capow::tls::publish(client, &server.ca, &cluster, &settings, SystemTime::now())
        .await
        .unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(client.clone(), ns)
        .get(&published.secret_name)
        .await
        .unwrap();
    for (k, v) in secret.data.unwrap() {
        std::fs::write(mount.join(&k), &v.0).unwrap();
    }
    let reply = probe(
        &[
            "call",
            "--cloud-config",
            &mount.join("cloud-config").display().to_string(),
            "--method",
            "NodeGroups",
        ],
        None,
    );
    let reply = pb::NodeGroupsResponse::decode(
        base64::engine::general_purpose::STANDARD
            .decode(reply)
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(
        reply
            .node_groups
            .iter()
            .map(|g| g.id.clone())
            .collect::<Vec<_>>(),
        [gid(ns, "md-0"), gid(ns, "md-zero")]
    );
}

/// Refusals: a certificate from another CA, and no certificate at all.
async fn refusals(server: &Server, ns: &str, c1_uid: &str) {
    let stranger = Ca::generate(SystemTime::now()).unwrap();
    let s = stranger
        .issue_client(
            &ClusterIdentity::new(ns, "c1", c1_uid).unwrap(),
            &CertPolicy::client_default(),
            SystemTime::now(),
        )
        .unwrap();
    async fn denied(server: &Server, ns: &str, identity: Option<(&str, &str)>) -> bool {
        match channel(server.port, ns, server.ca.cert_pem(), identity).await {
            Err(_) => true,
            Ok(ch) => CloudProviderClient::new(ch)
                .node_groups(pb::NodeGroupsRequest {})
                .await
                .is_err(),
        }
    }
    assert!(
        denied(server, ns, Some((s.cert_pem(), s.key_pem()))).await,
        "a client certificate from another CA must be refused"
    );
    assert!(
        denied(server, ns, None).await,
        "a client without a certificate must be refused"
    );
}

/// The gRPC health service reports the CloudProvider service serving.
async fn health(server: &Server, ns: &str, c1_uid: &str) {
    let cert = server
        .ca
        .issue_client(
            &ClusterIdentity::new(ns, "c1", c1_uid).unwrap(),
            &CertPolicy::client_default(),
            SystemTime::now(),
        )
        .unwrap();
    let health_channel = channel(
        server.port,
        ns,
        server.ca.cert_pem(),
        Some((cert.cert_pem(), cert.key_pem())),
    )
    .await
    .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(health_channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "clusterautoscaler.cloudprovider.v1.externalgrpc.CloudProvider".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// The client certificate of a Cluster's published credentials, as `(cert, key)` PEM.
async fn published_identity(client: &kube::Client, ns: &str, cluster: &str) -> (String, String) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get(&capow::tls::cloud_config::secret_name(cluster))
        .await
        .unwrap();
    let data = secret.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    (text("tls.crt"), text("tls.key"))
}

/// Credentials are bound to one incarnation of a Cluster: a deleted Cluster's certificate stops
/// working at once, its Secret goes with it, and a Cluster re-created under the same name gets
/// a new identity that the old certificate does not have.
#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn credentials_are_bound_to_the_cluster_uid() {
    let env = Env::get();
    let client = env.client().await;
    let ns_guard = TestNamespace::create(&client, "creds").await;
    let ns = ns_guard.name.clone();
    let cluster_json = json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "cb", "namespace": ns},
        "spec": {"paused": true, "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerCluster", "name": "cb"}}});
    apply_json(&client, &cluster_json).await.unwrap();
    let clusters: Api<capow::capi::Cluster> = Api::namespaced(client.clone(), &ns);

    let server = Server::start(&client, &ns).await;
    let (ca, port) = (server.ca.clone(), server.port);
    let settings = PublishSettings::new(format!("127.0.0.1:{port}"));
    let node_groups = |cert: (String, String)| {
        let ns = ns.clone();
        let ca_pem = ca.cert_pem().to_owned();
        async move {
            let channel = channel(port, &ns, &ca_pem, Some((&cert.0, &cert.1)))
                .await
                .unwrap();
            CloudProviderClient::new(channel)
                .node_groups(pb::NodeGroupsRequest {})
                .await
        }
    };

    // The published certificate works while its Cluster exists.
    let first = clusters.get("cb").await.unwrap();
    capow::tls::publish(&client, &ca, &first, &settings, SystemTime::now())
        .await
        .unwrap();
    let old = published_identity(&client, &ns, "cb").await;
    node_groups(old.clone())
        .await
        .expect("the Cluster's own certificate is accepted");

    // Deleted: refused as soon as the watch sees the deletion, and the Secret goes with the
    // Cluster. (The Cluster is paused, so the CAPI core never removes its finalizer: the test
    // does, once the deletion has started, as CAPI would after cleaning up.)
    clusters.delete("cb", &Default::default()).await.unwrap();
    let refused = Poll::new(
        "the deleted Cluster's certificate refused",
        Duration::from_secs(10),
    )
    .every(Duration::from_millis(100))
    .until(|| async { node_groups(old.clone()).await.err() })
    .await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("no longer exists"),
        "{}",
        refused.message()
    );
    clusters
        .patch(
            "cb",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    Poll::new(
        "the credentials Secret to go with its Cluster",
        Duration::from_secs(60),
    )
    .until(|| async {
        secrets
            .get_opt(&capow::tls::cloud_config::secret_name("cb"))
            .await
            .unwrap()
            .is_none()
    })
    .await;

    // Re-created under the same name: a new identity; the old certificate stays refused.
    Poll::new("Cluster cb gone", Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until(|| async { clusters.get_opt("cb").await.unwrap().is_none() })
        .await;
    apply_json(&client, &cluster_json).await.unwrap();
    let second = clusters.get("cb").await.unwrap();
    assert_ne!(second.metadata.uid, first.metadata.uid);
    let refused = Poll::new(
        "the old certificate told apart from the new Cluster",
        Duration::from_secs(10),
    )
    .every(Duration::from_millis(100))
    .until(|| async {
        let status = node_groups(old.clone()).await.unwrap_err();
        if status.message().contains("earlier Cluster") {
            Ok(status)
        } else {
            Err(status.message().to_owned())
        }
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    capow::tls::publish(&client, &ca, &second, &settings, SystemTime::now())
        .await
        .unwrap();
    let new = published_identity(&client, &ns, "cb").await;
    assert_ne!(new.0, old.0, "a new certificate for the new Cluster");
    node_groups(new)
        .await
        .expect("the new Cluster's certificate works");

    server.stop().await;
    clusters.delete("cb", &Default::default()).await.unwrap();
    let _ = clusters
        .patch(
            "cb",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    ns_guard.delete().await;
}
