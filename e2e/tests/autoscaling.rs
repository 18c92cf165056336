//! The cluster-autoscaler's loop against capow, with real Nova quota, real Cluster API and the
//! workload cluster's real kube-scheduler.
//!
//! The cluster-autoscaler binary cannot be built here (its Go module is refused by the Go
//! module proxy), so the test plays its part, step by step, over the same externalgrpc API and
//! the same cloud-config, with grpc-go dialling as CA's externalgrpc client does
//! (`grpcprobe`). What each step stands for in CA (cluster-autoscaler 1.3x `core/`):
//! - scale-up: pods the scheduler marked `Unschedulable` → `Refresh`, `NodeGroups`,
//!   `NodeGroupTemplateNodeInfo` per group → the binpacking estimator sizes the group from the
//!   template's allocatable → the `priority` expander picks a group → `NodeGroupIncreaseSize`;
//! - a failed scale-up: `NodeGroupNodes` shows the instance `instanceCreating` with errorInfo
//!   class OutOfResources → clusterstate backs the group off and
//!   `deleteCreatedNodesWithErrors` calls `NodeGroupDeleteNodes` with fake nodes named by the
//!   instance ids → the next loop scales the next group;
//! - scale-down of empty nodes: `NodeGroupForNode` per Node → `NodeGroupDeleteNodes`.
//!
//! What is real: Nova refusing the `big` group's server with its own quota message (a flavor
//! above the project's RAM quota), capow's classification of it, CAPI deleting exactly the
//! Machines capow marked, kube-scheduler placing the pods on the new Nodes (kwok runs them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capow::autoscaler::proto::{core_v1, externalgrpc as pb};
use capow::autoscaler::quantity;
use capow_e2e::hcp::{HcpCluster, dynamic, probe, servers_of, try_probe};
use capow_e2e::{Env, log_tail, openstack, openstack_run, ports_tagged};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use prost::Message;
use serde_json::json;

/// A flavor with more RAM (1100000 MiB) than the demo project's RAM quota (1024000 MiB,
/// e2e/openstack): Nova's API refuses every server of it with 403 "Quota exceeded for ram".
const OVERQUOTA_FLAVOR: &str = "capow-e2e-overquota";
/// CPU each test pod requests, in millicores: one pod per m1.tiny (1 vCPU), three per
/// 2-vCPU node.
const POD_CPU_MILLI: i128 = 600;
const PODS: usize = 2;
const OUT_OF_RESOURCES: i32 = 1;

fn ensure_overquota_flavor(admin: &str) {
    let ram = openstack(admin, &["flavor", "show", OVERQUOTA_FLAVOR])
        .ok()
        .and_then(|f| f["ram"].as_u64());
    if ram != Some(1_100_000) {
        let _ = openstack_run(admin, &["flavor", "delete", OVERQUOTA_FLAVOR]);
        openstack(
            admin,
            &[
                "flavor",
                "create",
                "--ram",
                "1100000",
                "--vcpus",
                "2",
                "--disk",
                "1",
                OVERQUOTA_FLAVOR,
            ],
        )
        .expect("create the over-quota flavor");
    }
}

/// The template node of a group once capow has its capacity (the template controller derives
/// it from the flavor shortly after the template is created).
async fn template_node(cc: &str, id: &str) -> core_v1::Node {
    let started = Instant::now();
    loop {
        probe(cc, "Refresh", &pb::RefreshRequest {});
        match try_probe(
            cc,
            "NodeGroupTemplateNodeInfo",
            &pb::NodeGroupTemplateNodeInfoRequest { id: id.to_owned() },
        ) {
            Ok(b) => {
                let r = pb::NodeGroupTemplateNodeInfoResponse::decode(b.as_slice()).unwrap();
                return core_v1::Node::decode(r.node_bytes.as_slice()).unwrap();
            }
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(60),
                "no template node for {id}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many nodes of this template the pending pods need (CA's binpacking estimator, CPU being
/// the binding resource here): `ceil(pods / floor(allocatable cpu / pod cpu))`.
fn nodes_needed(template: &core_v1::Node, pods: usize) -> i32 {
    let alloc = &template.status.as_ref().unwrap().allocatable;
    let cpu = quantity::parse(&alloc["cpu"].string).unwrap().0;
    let per_node = usize::try_from(cpu / POD_CPU_MILLI).unwrap();
    assert!(per_node > 0, "a pod does not fit the template: {alloc:?}");
    i32::try_from(pods.div_ceil(per_node)).unwrap()
}

fn instances(cc: &str, id: &str) -> Vec<pb::Instance> {
    probe(cc, "Refresh", &pb::RefreshRequest {});
    pb::NodeGroupNodesResponse::decode(
        probe(
            cc,
            "NodeGroupNodes",
            &pb::NodeGroupNodesRequest { id: id.to_owned() },
        )
        .as_slice(),
    )
    .unwrap()
    .instances
}

fn target_size(cc: &str, id: &str) -> i32 {
    pb::NodeGroupTargetSizeResponse::decode(
        probe(
            cc,
            "NodeGroupTargetSize",
            &pb::NodeGroupTargetSizeRequest { id: id.to_owned() },
        )
        .as_slice(),
    )
    .unwrap()
    .target_size
}

fn increase(cc: &str, id: &str, delta: i32) {
    probe(
        cc,
        "NodeGroupIncreaseSize",
        &pb::NodeGroupIncreaseSizeRequest {
            id: id.to_owned(),
            delta,
        },
    );
}

/// Pods in `default`, by name: (PodScheduled reason or "", nodeName, phase).
async fn pod_states(pods: &Api<Pod>) -> BTreeMap<String, (String, String, String)> {
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap();
            let spec = p.spec.unwrap_or_default();
            let status = p.status.unwrap_or_default();
            let reason = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")
                .and_then(|c| c.reason)
                .unwrap_or_default();
            (
                name,
                (
                    reason,
                    spec.node_name.unwrap_or_default(),
                    status.phase.unwrap_or_default(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn pending_pods_scale_up_through_capow_and_a_quota_failure_moves_on_to_the_next_group() {
    let env = Env::get();
    ensure_overquota_flavor(&env.admin_cloud);
    let c = HcpCluster::start("autoscale").await;
    // The priority expander's order (CA `--expander=priority`): the big flavor first.
    c.add_machine_deployment("big", OVERQUOTA_FLAVOR, 3).await;
    c.add_machine_deployment("small", "m1.tiny", 3).await;
    let cc = c.cloud_config().await;
    let big = format!("MachineDeployment/{}/big", c.ns);
    let small = format!("MachineDeployment/{}/small", c.ns);

    // Workload pods that no node can take yet.
    let pods: Api<Pod> = Api::namespaced(c.workload.clone(), "default");
    for i in 0..PODS {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("load-{i}")},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1",
                     "resources": {"requests": {"cpu": format!("{POD_CPU_MILLI}m"), "memory": "64Mi"}}}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let started = Instant::now();
    while pod_states(&pods)
        .await
        .values()
        .filter(|(reason, ..)| reason == "Unschedulable")
        .count()
        < PODS
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "kube-scheduler never marked the pods Unschedulable: {:?}",
            pod_states(&pods).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Loop 1: both groups are candidates; the estimator sizes the preferred one from its
    // template (2 vCPUs: all pods on one node).
    probe(&cc, "Refresh", &pb::RefreshRequest {});
    let groups = pb::NodeGroupsResponse::decode(
        probe(&cc, "NodeGroups", &pb::NodeGroupsRequest {}).as_slice(),
    )
    .unwrap();
    let mut ids: Vec<_> = groups.node_groups.iter().map(|g| g.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec![big.clone(), small.clone()]);
    let big_template = template_node(&cc, &big).await;
    let small_template = template_node(&cc, &small).await;
    assert_eq!(nodes_needed(&big_template, PODS), 1);
    assert_eq!(nodes_needed(&small_template, PODS), 2);
    let scale_up_started = Instant::now();
    increase(&cc, &big, nodes_needed(&big_template, PODS));
    assert_eq!(target_size(&cc, &big), 1);

    // Next loops: Nova refuses the server over quota; capow reports the instance as
    // instanceCreating with OutOfResources and Nova's own message.
    let started = Instant::now();
    let failed = loop {
        let list = instances(&cc, &big);
        if let Some(i) = list.iter().find(|i| {
            i.status
                .as_ref()
                .and_then(|s| s.error_info.as_ref())
                .is_some()
        }) {
            break i.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no creation error reported for {big}: {list:?}\n{}",
            log_tail(&c.manager.log, 30)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let time_to_error = scale_up_started.elapsed();
    let status = failed.status.clone().unwrap();
    assert_eq!(
        status.instance_state,
        pb::instance_status::InstanceState::InstanceCreating as i32
    );
    let info = status.error_info.unwrap();
    assert_eq!(
        (info.error_code.as_str(), info.instance_error_class),
        ("QuotaExceeded", OUT_OF_RESOURCES),
        "{info:?}"
    );
    assert!(
        info.error_message.contains("Quota exceeded for ram"),
        "Nova's message reaches CA: {}",
        info.error_message
    );
    assert!(
        failed.id.starts_with("capow://pending/"),
        "no server, so no providerID: {}",
        failed.id
    );
    assert!(servers_of(&c.cluster_uid).is_empty(), "Nova made no server");
    // A refused create is retried at the controller's error interval (10 s), not in a loop
    // driven by its own status writes: over 6 s at most one more create reaches Nova.
    let refused = r#"operation="server_create",code="403""#;
    let before = c.manager.openstack_requests_matching(refused).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let retries = c.manager.openstack_requests_matching(refused).await - before;
    assert!(
        retries <= 1,
        "{retries} refused server creates in 6 s: the retry loops on its own status writes"
    );
    let machine_name = failed.id.rsplit('/').next().unwrap().to_owned();
    let oswms = dynamic(
        &c.client,
        &c.ns,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerMachine",
    )
    .await;
    let machines: Api<capow::capi::Machine> = Api::namespaced(c.client.clone(), &c.ns);
    let infra_name = machines
        .get(&machine_name)
        .await
        .unwrap()
        .spec
        .infrastructure_ref
        .name
        .clone();
    let failed_uid = oswms.get(&infra_name).await.unwrap().metadata.uid.unwrap();

    // CA backs `big` off and deletes the failed instance through a fake node.
    probe(
        &cc,
        "NodeGroupDeleteNodes",
        &pb::NodeGroupDeleteNodesRequest {
            id: big.clone(),
            nodes: vec![pb::ExternalGrpcNode {
                provider_id: failed.id.clone(),
                name: failed.id.clone(),
                ..Default::default()
            }],
        },
    );
    assert_eq!(c.replicas("big").await, 0);
    let started = Instant::now();
    while machines.get_opt(&machine_name).await.unwrap().is_some()
        || oswms.get_opt(&infra_name).await.unwrap().is_some()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "CAPI did not delete the failed Machine {machine_name}\n{}",
            log_tail(&c.manager.log, 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        ports_tagged(&format!("capow-machine-uid={failed_uid}")).is_empty(),
        "the failed machine's ports are cleaned up"
    );
    assert_eq!(target_size(&cc, &big), 0);

    // The next loop, `big` backed off: the expander takes `small`, sized from its template.
    let small_started = Instant::now();
    increase(&cc, &small, nodes_needed(&small_template, PODS));
    assert_eq!(
        target_size(&cc, &small),
        2,
        "read-your-writes right after the scale"
    );
    c.wait_running("small", PODS, Duration::from_secs(180))
        .await;
    let time_small_machines = small_started.elapsed();
    let started = Instant::now();
    let placed = loop {
        let states = pod_states(&pods).await;
        if states
            .values()
            .all(|(_, node, phase)| !node.is_empty() && phase == "Running")
        {
            break states;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "pods not Running on the new nodes: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let time_to_pods = scale_up_started.elapsed();
    let time_small = small_started.elapsed();
    let small_nodes: Vec<String> = instances(&cc, &small).into_iter().map(|i| i.id).collect();
    let nodes: Api<Node> = Api::all(c.workload.clone());
    let node_list = nodes.list(&ListParams::default()).await.unwrap().items;
    let by_name: BTreeMap<String, Node> = node_list
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap(), n))
        .collect();
    let used: std::collections::BTreeSet<&String> = placed.values().map(|(_, n, _)| n).collect();
    assert_eq!(used.len(), PODS, "one pod per m1.tiny node: {placed:?}");
    for node in &used {
        let pid = by_name[*node]
            .spec
            .as_ref()
            .unwrap()
            .provider_id
            .clone()
            .unwrap();
        assert!(
            small_nodes.contains(&pid),
            "{node} ({pid}) is not in {small}: {small_nodes:?}"
        );
    }

    // Scale-down: the pods go, the nodes are empty, CA asks which group each Node is in and
    // deletes them there.
    for i in 0..PODS {
        pods.delete(
            &format!("load-{i}"),
            &DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    while !pod_states(&pods).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "pods not gone");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut empty = Vec::new();
    for (name, node) in &by_name {
        let request = pb::NodeGroupForNodeRequest {
            node: Some(pb::ExternalGrpcNode {
                provider_id: node.spec.as_ref().unwrap().provider_id.clone().unwrap(),
                name: name.clone(),
                labels: node
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                annotations: node
                    .metadata
                    .annotations
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            }),
        };
        let group = pb::NodeGroupForNodeResponse::decode(
            probe(&cc, "NodeGroupForNode", &request).as_slice(),
        )
        .unwrap()
        .node_group
        .unwrap();
        assert_eq!(group.id, small, "{name}");
        empty.push(request.node.unwrap());
    }
    assert_eq!(empty.len(), PODS);
    let scale_down_started = Instant::now();
    probe(
        &cc,
        "NodeGroupDeleteNodes",
        &pb::NodeGroupDeleteNodesRequest {
            id: small.clone(),
            nodes: empty,
        },
    );
    c.wait_running("small", 0, Duration::from_secs(180)).await;
    c.wait_servers(0, Duration::from_secs(60)).await;
    let started = Instant::now();
    while !nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "CAPI did not remove the Nodes of the deleted Machines"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let time_to_gone = scale_down_started.elapsed();
    assert_eq!(target_size(&cc, &small), 0);

    env.record(&format!(
        "autoscaling: IncreaseSize -> quota error reported (OutOfResources) in {:.1}s; -> {PODS} pending pods Running on the next group's new nodes in {:.1}s (IncreaseSize of that group -> Machines Running with nodeRef {:.1}s, -> pods Running {:.1}s); DeleteNodes of the empty nodes -> servers and Nodes gone in {:.1}s; manager peak RSS {} KiB",
        time_to_error.as_secs_f64(),
        time_to_pods.as_secs_f64(),
        time_small_machines.as_secs_f64(),
        time_small.as_secs_f64(),
        time_to_gone.as_secs_f64(),
        c.manager.peak_rss_kib()
    ));
    c.finish().await;
}
