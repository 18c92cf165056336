//! One full cluster-autoscaler loop against capow's externalgrpc server over real mTLS on
//! loopback: Refresh, NodeGroups, NodeGroupNodes for every group and NodeGroupTemplateNodeInfo
//! for every group (CA asks for templates only where it needs them; every group is the upper
//! bound), at 1,000, 10,000 and 50,000 machines in 200 node groups, next to the floor on the same
//! channel: one empty RPC (GPULabel, which checks the caller's certificate like every RPC), and a
//! loop of as many empty RPCs as the real loop makes (401). Each loop and each RPC is timed on
//! its own; the program prints p50 and p99 (and JSON lines, `ca_loop: {...}`). Results:
//! docs/benchmarks.md.
//!
//! Run: `cargo bench --bench ca_loop [-- 1000,10000,50000]` (2-core machine: about 3 minutes).
//! Bounded: a fixed number of loops per size (30, 30, 10) and of empty RPCs (2,000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capow::autoscaler::index::Snapshot;
use capow::autoscaler::node::TemplateOptions;
use capow::autoscaler::proto::externalgrpc as pb;
use capow::autoscaler::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use capow::autoscaler::server;
use capow::autoscaler::service::{CloudProviderService, RpcMetrics, ServiceOptions, Snapshots};
use capow::tls::{Ca, CertPolicy, ClusterIdentity, ServingCert, ServingNames};
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

/// The floor of a loop: as many empty RPCs as [`ca_loop`] makes.
async fn empty_loop(client: &mut CloudProviderClient<Channel>) {
    for _ in 0..(2 + 2 * GROUPS) {
        client.gpu_label(pb::GpuLabelRequest {}).await.unwrap();
    }
}

fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 50_000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| machines | loop p50 | loop p99 | Refresh p50 | empty RPC p50 | empty RPC p99 | 401 empty RPCs p50 | loop / empty loop |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for machines in sizes {
        let (mut client, shutdown) = rt.block_on(start(machines));
        let loops = if machines > 20_000 { 10 } else { 30 };
        let (loop_ms, refresh_ms, empty_ms, empty_loop_ms) = rt.block_on(async {
            for _ in 0..3 {
                assert_eq!(ca_loop(&mut client).await, machines);
            }
            let mut loop_ms = Vec::with_capacity(loops);
            let mut refresh_ms = Vec::with_capacity(loops);
            for _ in 0..loops {
                let t = Instant::now();
                ca_loop(&mut client).await;
                loop_ms.push(ms(t.elapsed()));
                let t = Instant::now();
                client.refresh(pb::RefreshRequest {}).await.unwrap();
                refresh_ms.push(ms(t.elapsed()));
            }
            let mut empty_ms = Vec::with_capacity(2000);
            for _ in 0..2000 {
                let t = Instant::now();
                client.gpu_label(pb::GpuLabelRequest {}).await.unwrap();
                empty_ms.push(ms(t.elapsed()));
            }
            let mut empty_loop_ms = Vec::with_capacity(loops);
            for _ in 0..loops {
                let t = Instant::now();
                empty_loop(&mut client).await;
                empty_loop_ms.push(ms(t.elapsed()));
            }
            (loop_ms, refresh_ms, empty_ms, empty_loop_ms)
        });
        shutdown.cancel();
        let p = |v: &[f64], q| quantile(v, q);
        println!(
            "| {machines} | {:.1} ms | {:.1} ms | {:.2} ms | {:.0} µs | {:.0} µs | {:.1} ms | {:.2}× |",
            p(&loop_ms, 0.5),
            p(&loop_ms, 0.99),
            p(&refresh_ms, 0.5),
            p(&empty_ms, 0.5) * 1000.0,
            p(&empty_ms, 0.99) * 1000.0,
            p(&empty_loop_ms, 0.5),
            p(&loop_ms, 0.5) / p(&empty_loop_ms, 0.5)
        );
        println!(
            "ca_loop: {}",
            json!({"machines": machines, "groups": GROUPS, "loops": loops,
                   "loop_p50_ms": p(&loop_ms, 0.5), "loop_p99_ms": p(&loop_ms, 0.99),
                   "refresh_p50_ms": p(&refresh_ms, 0.5), "refresh_p99_ms": p(&refresh_ms, 0.99),
                   "empty_rpc_p50_ms": p(&empty_ms, 0.5), "empty_rpc_p99_ms": p(&empty_ms, 0.99),
                   "empty_loop_p50_ms": p(&empty_loop_ms, 0.5), "empty_loop_p99_ms": p(&empty_loop_ms, 0.99)})
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM")) {
        println!(
            "peak RSS of the benchmark process (server, client, snapshots): {}",
            hwm.trim_start_matches("VmHWM:").trim()
        );
    }
}
