//! capow with the real Cluster API: a hosted-control-plane-style Cluster whose infrastructure
//! is an `OpenStackWorkerCluster` (managed network, router, worker security group) and whose
//! workers come from a MachineDeployment of `OpenStackWorkerMachineTemplate`s. Scaling the
//! MachineDeployment through its `scale` subresource (0 → 3 → 1 → 0, and 0 → 10 → 0) creates and
//! deletes exactly those Nova servers; Machines reach `Running` with a `nodeRef`; scaling
//! through capow's externalgrpc API (grpc-go, as cluster-autoscaler dials it) works the same;
//! deleting the Cluster leaves nothing tagged with it in OpenStack. At 3 replicas the manager's
//! `/metrics` shows the group's node-group gauges (min, max, target, current, instances by state,
//! last error class) and the cluster's identity reaching Keystone and Nova.
//!
//! Stand-ins (`capow_e2e::hcp`; why: README.md, "Honest limits of the demo and the tests"): a
//! `HostedControlPlane` CRD without its controller, whose status and endpoint the test writes;
//! and a node registrar that registers a Node with the server's providerID in the workload
//! cluster once Nova reports the server ACTIVE, as a joining kubelet would. kwok keeps those
//! Nodes Ready.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::Duration;

use capow::autoscaler::proto::externalgrpc as pb;
use capow_e2e::hcp::{CLUSTER, HcpCluster, IDENTITY, dynamic, probe, servers_of, template_node};
use capow_e2e::{Env, Poll, metric_value, openstack};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_machine_deployment_scales_through_capi_and_through_the_externalgrpc_api() {
    let env = Env::get();
    let c = HcpCluster::start("capi").await;
    let (client, ns, manager, cluster_uid) = (&c.client, &c.ns, &c.manager, &c.cluster_uid);
    c.add_machine_deployment("workers", "m1.tiny", 10).await;
    let infra = &c.infra;
    assert_eq!(infra["status"]["network"]["managed"], true);
    assert_eq!(infra["status"]["failureDomains"][0]["name"], "nova");
    let requests_before = manager.openstack_requests().await;

    // 0 -> 3 -> 1 -> 0 through the scale subresource.
    c.set_replicas("workers", 3).await;
    let t3 = c.wait_running("workers", 3, Duration::from_secs(180)).await;
    c.wait_servers(3, Duration::from_secs(10)).await;
    let requests_3 = manager.openstack_requests().await - requests_before;
    // /metrics shows the group as the cluster-autoscaler sees it, and the cluster's identity
    // reaching Keystone and Nova.
    let group = format!(r#"node_group="MachineDeployment/{ns}/workers",cluster="{ns}/{CLUSTER}""#);
    let expected = [
        ("capow_node_group_min_size", group.clone(), 0.0),
        ("capow_node_group_max_size", group.clone(), 10.0),
        ("capow_node_group_target_size", group.clone(), 3.0),
        ("capow_node_group_current_size", group.clone(), 3.0),
        ("capow_node_group_last_error_class", group.clone(), 0.0),
        (
            "capow_node_group_instances",
            format!(r#"{group},state="running""#),
            3.0,
        ),
        (
            "capow_node_group_instances",
            format!(r#"{group},state="creating""#),
            0.0,
        ),
        (
            "capow_node_group_instances",
            format!(r#"{group},state="failed""#),
            0.0,
        ),
        (
            "capow_node_group_instances",
            format!(r#"{group},state="deleting""#),
            0.0,
        ),
        (
            "capow_openstack_reachable",
            format!(
                r#"identity="{ns}/{IDENTITY}",cloud="{}",region="",service="identity""#,
                env.cloud
            ),
            1.0,
        ),
        (
            "capow_openstack_reachable",
            format!(
                r#"identity="{ns}/{IDENTITY}",cloud="{}",region="",service="compute""#,
                env.cloud
            ),
            1.0,
        ),
    ];
    // The gauges are read from the manager's watch caches, which may trail the API server.
    Poll::new(
        "the node-group and reachability gauges in /metrics",
        Duration::from_secs(30),
    )
    .until(|| async {
        let last = manager.metrics().await;
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(name, labels, v)| metric_value(&last, name, labels) != Some(*v))
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "/metrics does not show {wrong:?}:\n{}",
            last.lines()
                .filter(|l| l.contains("node_group") || l.contains("reachable"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })
    .await;
    // Every server sits on the cluster's managed network with the worker security group.
    let net = infra["status"]["network"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for s in servers_of(cluster_uid) {
        assert!(
            s["Networks"]
                .as_object()
                .is_some_and(|n| n.contains_key(&net)),
            "{s}"
        );
    }
    c.set_replicas("workers", 1).await;
    c.wait_running("workers", 1, Duration::from_secs(180)).await;
    c.wait_servers(1, Duration::from_secs(60)).await;
    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(180)).await;
    c.wait_servers(0, Duration::from_secs(60)).await;
    let requests_cycle = manager.openstack_requests().await - requests_before;

    // The same group through capow's externalgrpc API over the published cloud-config, with
    // grpc-go dialling as cluster-autoscaler does (the cluster-autoscaler module itself is not
    // served by the Go module proxy here).
    let cc = c.cloud_config().await;
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
    let tnode = template_node(&cc, &group_id);
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
    c.wait_running("workers", 2, Duration::from_secs(180)).await;
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
    let nodes: Api<Node> = Api::all(c.workload.clone());
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
    c.wait_running("workers", 1, Duration::from_secs(180)).await;
    let left: Vec<String> = servers_of(cluster_uid)
        .iter()
        .map(|s| format!("openstack:///{}", s["ID"].as_str().unwrap()))
        .collect();
    assert!(
        !left.contains(&victim),
        "the node CA chose is the one deleted: {victim} in {left:?}"
    );
    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(180)).await;
    c.wait_servers(0, Duration::from_secs(60)).await;

    // 0 -> 10 -> 0.
    let before_10 = manager.openstack_requests().await;
    c.set_replicas("workers", 10).await;
    let t10 = c
        .wait_running("workers", 10, Duration::from_secs(300))
        .await;
    let requests_10 = manager.openstack_requests().await - before_10;
    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(300)).await;
    c.wait_servers(0, Duration::from_secs(120)).await;

    // Deleting the Cluster leaves nothing tagged with it.
    let clusters = dynamic(client, ns, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    let oswc = dynamic(
        client,
        ns,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .unwrap();
    Poll::new("the Cluster deleted", Duration::from_secs(180))
        .every(Duration::from_millis(500))
        .log_tail(&manager.log, 30)
        .until(|| async {
            clusters.get_opt(CLUSTER).await.unwrap().is_none()
                && oswc.get_opt(CLUSTER).await.unwrap().is_none()
        })
        .await;
    let tag = format!("capow-cluster-uid={cluster_uid}");
    let admin = &env.admin_cloud;
    assert!(servers_of(cluster_uid).is_empty(), "servers left");
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
        !volumes.to_string().contains(cluster_uid.as_str()),
        "volumes of the cluster left: {volumes}"
    );

    env.record(&format!(
        "capi: MachineDeployment 0->3 all Running with nodeRef in {:.1}s, 0->10 in {:.1}s; OpenStack API calls: {requests_3} for 3 machines to Running ({:.1}/machine), {requests_cycle} for the 0->3->1->0 cycle, {requests_10} for 10 machines to Running ({:.1}/machine); manager peak RSS {} KiB",
        t3.as_secs_f64(), t10.as_secs_f64(), requests_3 as f64 / 3.0, requests_10 as f64 / 10.0, manager.peak_rss_kib()
    ));
    c.finish().await;
}
