//! One full cluster-autoscaler loop against capow's externalgrpc server over real mTLS on
//! loopback: Refresh, NodeGroups, NodeGroupNodes for every group and NodeGroupTemplateNodeInfo
//! for every group (CA asks for templates only where it needs them; every group is the upper
//! bound), at 1,000 and 10,000 machines in 200 node groups, next to a single trivial RPC
//! (GPULabel) over the same channel as the floor. Results: docs/benchmarks.md.
//!
//! Run: `cargo bench --bench ca_loop` (2-core machine: about 2 minutes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use capow::autoscaler::index::Snapshot;
use capow::autoscaler::node::TemplateOptions;
use capow::autoscaler::proto::externalgrpc as pb;
use capow::autoscaler::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use capow::autoscaler::server;
use capow::autoscaler::service::{CloudProviderService, RpcMetrics, ServiceOptions, Snapshots};
use capow::tls::{Ca, CertPolicy, ClusterIdentity, ServingCert, ServingNames};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const GROUPS: usize = 200;

struct Fixed(Snapshot);

/// UID of the benchmark's one Cluster, named by its client certificate.
const CLUSTER_UID: &str = "0b9e2f4a-1111-4222-8333-944444444444";

impl Snapshots for Fixed {
    fn snapshot(&self) -> Snapshot {
        self.0.clone()
    }
    fn cluster_uid(&self, namespace: &str, name: &str) -> Option<String> {
        (namespace == "bench" && name == "c1").then(|| CLUSTER_UID.to_owned())
    }
}

fn snapshot(machines: usize) -> Snapshot {
    let mut s = Snapshot::default();
    for g in 0..GROUPS {
        let name = format!("md-{g}");
        s.machine_deployments.push(Arc::new(serde_json::from_value(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
            "metadata": {"name": name, "namespace": "bench", "annotations": {
                "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
                "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "1000"}},
            "spec": {"clusterName": "c1", "replicas": machines / GROUPS, "template": {
                "metadata": {"labels": {"node-role.kubernetes.io/worker": ""}},
                "spec": {"clusterName": "c1", "bootstrap": {}, "failureDomain": "az1",
                         "infrastructureRef": {"kind": "OpenStackWorkerMachineTemplate", "name": format!("{name}-t")}}}}
        })).unwrap()));
        s.templates.push(Arc::new(serde_json::from_value(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
            "metadata": {"name": format!("{name}-t"), "namespace": "bench"},
            "spec": {"template": {"spec": {"flavor": {"id": "3"}, "image": {"id": "i"}}}},
            "status": {"capacity": {"cpu": "4", "memory": "8192Mi", "ephemeral-storage": "40Gi"},
                       "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
                       "resolved": {"flavorName": "m1.large"}}
        })).unwrap()));
    }
    for i in 0..machines {
        let md = format!("md-{}", i % GROUPS);
        let name = format!("m-{i}");
        let uuid = format!("00000000-0000-0000-0000-{i:012}");
        s.machines.push(Arc::new(serde_json::from_value(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": name, "namespace": "bench", "labels": {"cluster.x-k8s.io/deployment-name": md}},
            "spec": {"clusterName": "c1", "bootstrap": {}, "providerID": format!("openstack:///{uuid}"),
                     "infrastructureRef": {"kind": "OpenStackWorkerMachine", "name": name}},
            "status": {"nodeRef": {"name": name}}
        })).unwrap()));
        s.infra_machines.push(Arc::new(serde_json::from_value(json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachine",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"flavor": {"id": "3"}, "image": {"id": "i"}, "providerID": format!("openstack:///{uuid}")},
            "status": {"instanceID": uuid, "instanceState": "ACTIVE"}
        })).unwrap()));
    }
    s
}

async fn start(machines: usize) -> (CloudProviderClient<Channel>, CancellationToken) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = SystemTime::now();
    let ca = Arc::new(Ca::generate(now).unwrap());
    let names = ServingNames::for_service("capow-autoscaler", "capow-system")
        .with_ips(["127.0.0.1".parse().unwrap()]);
    let serving = ServingCert::new(ca.clone(), names, CertPolicy::serving_default()).unwrap();
    // Reads never touch the API server; the client points nowhere.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let service = CloudProviderService::new(
        Arc::new(Fixed(snapshot(machines))),
        client,
        ServiceOptions {
            require_identity: true,
            template: TemplateOptions {
                gpu_label: "cluster-api/accelerator".into(),
            },
        },
        RpcMetrics::default(),
    );
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        service,
        Some(serving.server_config().unwrap()),
        shutdown.clone(),
    ));
    let cert = ca
        .issue_client(
            &ClusterIdentity::new("bench", "c1", CLUSTER_UID).unwrap(),
            &CertPolicy::client_default(),
            now,
        )
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(cert.cert_pem(), cert.key_pem()))
        .domain_name("capow-autoscaler.capow-system.svc");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    (CloudProviderClient::new(channel), shutdown)
}

async fn ca_loop(client: &mut CloudProviderClient<Channel>) -> usize {
    client.refresh(pb::RefreshRequest {}).await.unwrap();
    let groups = client
        .node_groups(pb::NodeGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .node_groups;
    let mut instances = 0;
    for g in &groups {
        instances += client
            .node_group_nodes(pb::NodeGroupNodesRequest { id: g.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .instances
            .len();
        let t = client
            .node_group_template_node_info(pb::NodeGroupTemplateNodeInfoRequest {
                id: g.id.clone(),
            })
            .await
            .unwrap();
        assert!(!t.get_ref().node_bytes.is_empty());
    }
    assert_eq!(groups.len(), GROUPS);
    instances
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("externalgrpc");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(15))
        .warm_up_time(Duration::from_secs(2));
    for machines in [1_000usize, 10_000] {
        let (mut client, shutdown) = rt.block_on(start(machines));
        assert_eq!(rt.block_on(ca_loop(&mut client)), machines);
        group.bench_function(
            format!("ca_loop_{machines}_machines_{GROUPS}_groups"),
            |b| {
                b.to_async(&rt).iter(|| {
                    let mut c = client.clone();
                    async move { ca_loop(&mut c).await }
                })
            },
        );
        if machines == 1_000 {
            group.bench_function("empty_rpc_gpulabel", |b| {
                b.to_async(&rt).iter(|| {
                    let mut c = client.clone();
                    async move { c.gpu_label(pb::GpuLabelRequest {}).await.unwrap() }
                })
            });
        }
        shutdown.cancel();
    }
    group.finish();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM")) {
        println!(
            "peak RSS of the benchmark process (server and client): {}",
            hwm.trim_start_matches("VmHWM:").trim()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
