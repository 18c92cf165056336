//! capow with the real Cluster API: a hosted-control-plane-style Cluster whose infrastructure
//! is an `OpenStackWorkerCluster` (managed network, router, worker security group) and whose
//! workers come from a MachineDeployment of `OpenStackWorkerMachineTemplate`s. Scaling the
//! MachineDeployment through its `scale` subresource (0 → 3 → 1 → 0, and 0 → 10 → 0) creates and
//! deletes exactly those Nova servers; Machines reach `Running` with a `nodeRef`; scaling
//! through capow's externalgrpc API (grpc-go, as cluster-autoscaler dials it) works the same;
//! deleting the Cluster leaves nothing tagged with it in OpenStack.
//!
//! Stand-ins (design §7): a `HostedControlPlane` CRD without its controller, whose status and
//! endpoint the test writes; and a node registrar task that registers a Node with the server's
//! providerID in the workload cluster once Nova reports the server ACTIVE, as a joining kubelet
//! would. kwok keeps those Nodes Ready.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use base64::Engine;
use capow::autoscaler::proto::externalgrpc as pb;
use capow_e2e::{
    Env, Manager, STANDIN_GROUP, TestNamespace, apply_json, apply_secret, client_for,
    clouds_yaml_text, ensure_control_plane_standin, log_tail, openstack, workload_down,
    workload_up,
};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use prost::Message;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const IDENTITY: &str = "cloud-config";

async fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Registers a Node for every ACTIVE server of the namespace's machines, as a kubelet would.
fn node_registrar(
    mgmt: Client,
    workload: Client,
    ns: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let machines = dynamic(
            &mgmt,
            &ns,
            "infrastructure.cluster.x-k8s.io",
            "v1alpha1",
            "OpenStackWorkerMachine",
        )
        .await;
        let nodes: Api<Node> = Api::all(workload);
        while !stop.is_cancelled() {
            if let Ok(list) = machines.list(&ListParams::default()).await {
                for m in list.items {
                    let v = serde_json::to_value(&m).unwrap();
                    let (Some(pid), Some("ACTIVE")) = (
                        v["spec"]["providerID"].as_str(),
                        v["status"]["instanceState"].as_str(),
                    ) else {
                        continue;
                    };
                    if v["metadata"]["deletionTimestamp"].is_string() {
                        continue;
                    }
                    let name = m.metadata.name.clone().unwrap();
                    if nodes.get_opt(&name).await.ok().flatten().is_some() {
                        continue;
                    }
                    let node: Node = serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "type": "kwok"},
                                     "annotations": {"kwok.x-k8s.io/node": "fake"}},
                        "spec": {"providerID": pid}
                    }))
                    .unwrap();
                    let _ = nodes.create(&PostParams::default(), &node).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

async fn set_replicas(client: &Client, ns: &str, md: &str, replicas: i32) {
    let api: Api<capow::capi::MachineDeployment> = Api::namespaced(client.clone(), ns);
    api.patch_scale(
        md,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

/// Waits until the MachineDeployment's Machines are exactly `n`, all `Running` with a nodeRef.
async fn wait_running(
    client: &Client,
    ns: &str,
    n: usize,
    timeout: Duration,
    manager: &Manager,
) -> Duration {
    let machines: Api<capow::capi::Machine> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let list = machines
            .list(&ListParams::default().labels("cluster.x-k8s.io/deployment-name=workers"))
            .await
            .unwrap()
            .items;
        let running = list
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.node_ref.is_some())
            })
            .count();
        if running == n && list.len() == n {
            return started.elapsed();
        }
        let phases: Vec<_> = list
            .iter()
            .map(|m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert!(
            started.elapsed() < timeout,
            "want {n} Running machines, have {phases:?}\n{}",
            log_tail(&manager.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Nova servers (all projects) tagged with the cluster's UID.
fn servers_of(cluster_uid: &str) -> Vec<Value> {
    capow_e2e::servers_tagged(&format!("capow-cluster-uid={cluster_uid}"))
}

async fn wait_servers(cluster_uid: &str, n: usize, timeout: Duration) {
    let started = Instant::now();
    loop {
        let s = servers_of(cluster_uid);
        if s.len() == n {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "want {n} servers of the cluster, Nova has {}",
            s.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn probe(cloud_config: &str, method: &str, request: &impl Message) -> Vec<u8> {
    let bin = std::env::var("CAPOW_GRPCPROBE").expect("CAPOW_GRPCPROBE");
    let b64 = base64::engine::general_purpose::STANDARD.encode(request.encode_to_vec());
    let out = std::process::Command::new(bin)
        .args([
            "call",
            "--cloud-config",
            cloud_config,
            "--method",
            method,
            "--request-b64",
            &b64,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpcprobe {method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_machine_deployment_scales_through_capi_and_through_the_externalgrpc_api() {
    let env = Env::get();
    let client = env.client().await;
    ensure_control_plane_standin(&client).await;
    let guard = TestNamespace::create(&client, "capi").await;
    let ns = guard.name.clone();
    let workload_name = ns.replace("capi-", "w");
    let workload_kubeconfig = workload_up(&workload_name);
    let workload = client_for(&workload_kubeconfig).await;
    let workload_server = {
        let text = std::fs::read_to_string(&workload_kubeconfig).unwrap();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
            .unwrap()
    };
    let workload_port: i64 = workload_server.rsplit(':').next().unwrap().parse().unwrap();

    // The management side of a hosted-control-plane cluster.
    apply_secret(
        &client,
        &ns,
        IDENTITY,
        &[("clouds.yaml", clouds_yaml_text().as_bytes())],
    )
    .await;
    apply_secret(
        &client,
        &ns,
        "c1-kubeconfig",
        &[(
            "value",
            std::fs::read(&workload_kubeconfig).unwrap().as_slice(),
        )],
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "c1-kubeconfig",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"cluster.x-k8s.io/cluster-name": "c1"}}})),
        )
        .await
        .unwrap();
    apply_secret(
        &client,
        &ns,
        "workers-bootstrap",
        &[("value", b"#cloud-config\n"), ("format", b"cloud-config")],
    )
    .await;
    let subnet = format!(
        "10.{}.{}.0/24",
        100 + (workload_port % 100),
        workload_port % 250
    );
    let objects = [
        json!({"apiVersion": format!("{STANDIN_GROUP}/v1alpha1"), "kind": "HostedControlPlane", "metadata": {"name": "c1", "namespace": ns}, "spec": {"version": "v1.36.3", "gateway": {"name": "none", "namespace": "none"}}}),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerCluster",
               "metadata": {"name": "c1", "namespace": ns},
               "spec": {"identityRef": {"name": IDENTITY, "cloudName": env.cloud},
                        "managedSubnets": [{"cidr": subnet}],
                        "managedSecurityGroups": {"workerNodesSecurityGroupRules": [
                            {"name": "cilium-vxlan", "direction": "ingress", "protocol": "udp", "portRangeMin": 8472, "portRangeMax": 8472, "remoteManagedGroups": ["worker"]}]}}}),
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": "c1", "namespace": ns},
               "spec": {"controlPlaneRef": {"apiGroup": STANDIN_GROUP, "kind": "HostedControlPlane", "name": "c1"},
                        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerCluster", "name": "c1"}}}),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
               "metadata": {"name": "workers", "namespace": ns, "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
               "spec": {"template": {"spec": {"flavor": {"filter": {"name": "m1.tiny"}}, "image": {"filter": {"name": "osdev-tiny"}}}}}}),
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
               "metadata": {"name": "workers", "namespace": ns, "annotations": {
                   "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
                   "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "10"}},
               "spec": {"clusterName": "c1", "replicas": 0,
                        "selector": {"matchLabels": {"pool": "workers"}},
                        "template": {"metadata": {"labels": {"pool": "workers"}},
                                     "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "workers-bootstrap"},
                                              "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachineTemplate", "name": "workers"}}}}}),
    ];
    for o in &objects {
        apply_json(&client, o)
            .await
            .unwrap_or_else(|e| panic!("apply {}: {e}", o["kind"]));
    }
    // The control-plane stand-in: initialized, endpoint written onto the infrastructure cluster
    // (teutonet's HostedControlPlane does exactly this).
    let cp = dynamic(
        &client,
        &ns,
        STANDIN_GROUP,
        "v1alpha1",
        "HostedControlPlane",
    )
    .await;
    cp.patch_status("c1", &PatchParams::default(), &Patch::Merge(json!({"status": {
        "initialization": {"controlPlaneInitialized": true}, "initialized": true, "ready": true, "version": "v1.36.3"}})))
        .await
        .unwrap();
    let oswc = dynamic(
        &client,
        &ns,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    oswc.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": workload_port}}}),
        ),
    )
    .await
    .unwrap();

    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mount = env.state.join(format!("{ns}-ca"));
    std::fs::create_dir_all(&mount).unwrap();
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let mount_s = mount.display().to_string();
    let manager = Manager::start(
        &ns,
        &[
            "--autoscaler-address",
            &grpc_addr,
            "--autoscaler-ip-san",
            "127.0.0.1",
            "--system-namespace",
            &ns,
            "--autoscaler-published-address",
            &grpc_addr,
            "--autoscaler-mount-dir",
            &mount_s,
        ],
    )
    .await;
    let stop = CancellationToken::new();
    let registrar = node_registrar(client.clone(), workload.clone(), ns.clone(), stop.clone());

    // The cluster's infrastructure comes up and CAPI sees it.
    let clusters = dynamic(&client, &ns, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    let started = Instant::now();
    loop {
        let c = serde_json::to_value(clusters.get("c1").await.unwrap()).unwrap();
        if c["status"]["initialization"]["infrastructureProvisioned"] == true
            && c["spec"]["controlPlaneEndpoint"]["host"] == "127.0.0.1"
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "Cluster not provisioned: {}\n{}",
            c["status"],
            log_tail(&manager.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cluster_uid = clusters.get("c1").await.unwrap().metadata.uid.unwrap();
    let infra = serde_json::to_value(oswc.get("c1").await.unwrap()).unwrap();
    assert_eq!(infra["status"]["network"]["managed"], true);
    assert_eq!(infra["status"]["failureDomains"][0]["name"], "nova");
    let requests_before = manager.openstack_requests().await;

    // 0 -> 3 -> 1 -> 0 through the scale subresource.
    set_replicas(&client, &ns, "workers", 3).await;
    let t3 = wait_running(&client, &ns, 3, Duration::from_secs(180), &manager).await;
    wait_servers(&cluster_uid, 3, Duration::from_secs(10)).await;
    let requests_3 = manager.openstack_requests().await - requests_before;
    // Every server sits on the cluster's managed network with the worker security group.
    let net = infra["status"]["network"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for s in servers_of(&cluster_uid) {
        assert!(
            s["Networks"]
                .as_object()
                .is_some_and(|n| n.contains_key(&net)),
            "{s}"
        );
    }
    set_replicas(&client, &ns, "workers", 1).await;
    wait_running(&client, &ns, 1, Duration::from_secs(180), &manager).await;
    wait_servers(&cluster_uid, 1, Duration::from_secs(60)).await;
    set_replicas(&client, &ns, "workers", 0).await;
    wait_running(&client, &ns, 0, Duration::from_secs(180), &manager).await;
    wait_servers(&cluster_uid, 0, Duration::from_secs(60)).await;
    let requests_cycle = manager.openstack_requests().await - requests_before;

    // The same group through capow's externalgrpc API over the published cloud-config, with
    // grpc-go dialling as cluster-autoscaler does (the cluster-autoscaler module itself is not
    // served by the Go module proxy here).
    let secret_name = capow::tls::cloud_config::secret_name("c1");
    let started = Instant::now();
    let secret = loop {
        if let Some(s) = secrets.get_opt(&secret_name).await.unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "credentials Secret not published"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (k, v) in secret.data.unwrap() {
        std::fs::write(mount.join(&k), &v.0).unwrap();
    }
    let cc = mount.join("cloud-config").display().to_string();
    let group_id = format!("MachineDeployment/{ns}/workers");
    probe(&cc, "Refresh", &pb::RefreshRequest {});
    let groups = pb::NodeGroupsResponse::decode(
        probe(&cc, "NodeGroups", &pb::NodeGroupsRequest {}).as_slice(),
    )
    .unwrap();
    assert_eq!(
        groups
            .node_groups
            .iter()
            .map(|g| g.id.clone())
            .collect::<Vec<_>>(),
        std::slice::from_ref(&group_id)
    );
    let template = pb::NodeGroupTemplateNodeInfoResponse::decode(
        probe(
            &cc,
            "NodeGroupTemplateNodeInfo",
            &pb::NodeGroupTemplateNodeInfoRequest {
                id: group_id.clone(),
            },
        )
        .as_slice(),
    )
    .unwrap();
    let tnode =
        capow::autoscaler::proto::core_v1::Node::decode(template.node_bytes.as_slice()).unwrap();
    assert_eq!(
        tnode.status.as_ref().unwrap().capacity["memory"].string,
        "512Mi",
        "m1.tiny, from the template's status"
    );
    probe(
        &cc,
        "NodeGroupIncreaseSize",
        &pb::NodeGroupIncreaseSizeRequest {
            id: group_id.clone(),
            delta: 2,
        },
    );
    wait_running(&client, &ns, 2, Duration::from_secs(180), &manager).await;
    probe(&cc, "Refresh", &pb::RefreshRequest {});
    let nodes_resp = pb::NodeGroupNodesResponse::decode(
        probe(
            &cc,
            "NodeGroupNodes",
            &pb::NodeGroupNodesRequest {
                id: group_id.clone(),
            },
        )
        .as_slice(),
    )
    .unwrap();
    let nodes: Api<Node> = Api::all(workload.clone());
    let workload_ids: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.spec?.provider_id)
        .collect();
    assert_eq!(nodes_resp.instances.len(), 2);
    for i in &nodes_resp.instances {
        assert!(
            workload_ids.contains(&i.id),
            "instance id {} must be a Node's providerID ({workload_ids:?})",
            i.id
        );
        assert_eq!(
            i.status.as_ref().unwrap().instance_state,
            pb::instance_status::InstanceState::InstanceRunning as i32
        );
    }
    let victim = nodes_resp.instances[0].id.clone();
    probe(
        &cc,
        "NodeGroupDeleteNodes",
        &pb::NodeGroupDeleteNodesRequest {
            id: group_id.clone(),
            nodes: vec![pb::ExternalGrpcNode {
                provider_id: victim.clone(),
                name: "n".into(),
                ..Default::default()
            }],
        },
    );
    wait_running(&client, &ns, 1, Duration::from_secs(180), &manager).await;
    let left: Vec<String> = servers_of(&cluster_uid)
        .iter()
        .map(|s| format!("openstack:///{}", s["ID"].as_str().unwrap()))
        .collect();
    assert!(
        !left.contains(&victim),
        "the node CA chose is the one deleted: {victim} in {left:?}"
    );
    set_replicas(&client, &ns, "workers", 0).await;
    wait_running(&client, &ns, 0, Duration::from_secs(180), &manager).await;
    wait_servers(&cluster_uid, 0, Duration::from_secs(60)).await;

    // 0 -> 10 -> 0.
    let before_10 = manager.openstack_requests().await;
    set_replicas(&client, &ns, "workers", 10).await;
    let t10 = wait_running(&client, &ns, 10, Duration::from_secs(300), &manager).await;
    let requests_10 = manager.openstack_requests().await - before_10;
    set_replicas(&client, &ns, "workers", 0).await;
    wait_running(&client, &ns, 0, Duration::from_secs(300), &manager).await;
    wait_servers(&cluster_uid, 0, Duration::from_secs(120)).await;

    // Deleting the Cluster leaves nothing tagged with it.
    clusters
        .delete("c1", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    while clusters.get_opt("c1").await.unwrap().is_some()
        || oswc.get_opt("c1").await.unwrap().is_some()
    {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "Cluster not deleted\n{}",
            log_tail(&manager.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tag = format!("capow-cluster-uid={cluster_uid}");
    let admin = &env.admin_cloud;
    assert!(servers_of(&cluster_uid).is_empty(), "servers left");
    for kind in ["port", "network", "router", "security group"] {
        let mut args: Vec<&str> = kind.split(' ').collect();
        args.extend(["list", "--tags", &tag]);
        let found = openstack(admin, &args).unwrap();
        assert_eq!(
            found.as_array().map(Vec::len),
            Some(0),
            "{kind}s tagged with the cluster left: {found}"
        );
    }
    let volumes = openstack(admin, &["volume", "list", "--all-projects", "--long"]).unwrap();
    assert!(
        !volumes.to_string().contains(&cluster_uid),
        "volumes of the cluster left: {volumes}"
    );

    env.record(&format!(
        "capi: MachineDeployment 0->3 all Running with nodeRef in {:.1}s, 0->10 in {:.1}s; OpenStack API calls: {requests_3} for 3 machines to Running ({:.1}/machine), {requests_cycle} for the 0->3->1->0 cycle, {requests_10} for 10 machines to Running ({:.1}/machine); manager peak RSS {} KiB",
        t3.as_secs_f64(), t10.as_secs_f64(), requests_3 as f64 / 3.0, requests_10 as f64 / 10.0, manager.peak_rss_kib()
    ));
    stop.cancel();
    let _ = registrar.await;
    manager.stop().await;
    guard.delete().await;
    workload_down(&workload_name);
}
