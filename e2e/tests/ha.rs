//! High availability: two manager replicas with leader election against the e2e API server.
//! Both become ready (caches synced, externalgrpc serving) while only one holds the Lease; both
//! answer the same node groups; when the leader is killed with SIGKILL in the middle of a
//! MachineDeployment scale-up, the other takes over within the Lease duration and the scale-up
//! ends with exactly the servers asked for. A Lease namespace that does not exist gives a clear
//! error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use capow::autoscaler::proto::externalgrpc as pb;
use capow_e2e::cloud::AdminCloud;
use capow_e2e::hcp::{HcpCluster, HcpOptions, probe};
use capow_e2e::{Env, Poll};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use prost::Message;

const LEASE_SECONDS: u64 = 6;

/// The Lease lives in capow's own namespace, where its leader-election Role is bound.
const LEASE_NAMESPACE: &str = "capow-system";
const LEASE: &str = "capow-e2e-ha";

async fn holder(c: &HcpCluster) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), LEASE_NAMESPACE);
    leases
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

fn groups(cloud_config: &str) -> Vec<String> {
    let reply = probe(cloud_config, "NodeGroups", &pb::NodeGroupsRequest {});
    let mut ids: Vec<String> = pb::NodeGroupsResponse::decode(reply.as_slice())
        .unwrap()
        .node_groups
        .into_iter()
        .map(|g| g.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn two_replicas_are_ready_answer_alike_and_fail_over_without_duplicates() {
    let env = Env::get();
    let mut c = HcpCluster::start_with(
        "ha",
        HcpOptions {
            clouds_yaml: None,
            manager_args: vec![
                "--leader-elect".into(),
                "--leader-election-namespace".into(),
                LEASE_NAMESPACE.into(),
                "--leader-election-id".into(),
                LEASE.into(),
                "--leader-lease-seconds".into(),
                LEASE_SECONDS.to_string(),
                "--server-create-settle".into(),
                "8s".into(),
            ],
            ..HcpOptions::default()
        },
    )
    .await;
    c.add_machine_deployment("workers", "m1.tiny", 8).await;
    let first_config = c.cloud_config().await;
    let (second, second_config) = c.start_replica().await;
    // Both ready (Manager::start waited for /ready), one leader.
    let leader = holder(&c).await.expect("a leader holds the Lease");
    let first_pid = c.manager.pid();
    assert!(
        leader == format!("capow-{first_pid}") || leader == format!("capow-{}", second.pid()),
        "{leader}"
    );
    let want = vec![format!("MachineDeployment/{}/workers", c.ns)];
    assert_eq!(groups(&first_config), want);
    assert_eq!(
        groups(&second_config),
        want,
        "the follower answers from its own caches"
    );

    // Kill the leader while a scale-up is under way.
    c.set_replicas("workers", 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    let survivor_config = if leader == format!("capow-{first_pid}") {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &first_pid.to_string()])
            .status();
        // The follower is the cluster's manager from now on.
        drop(std::mem::replace(&mut c.manager, second));
        second_config
    } else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &second.pid().to_string()])
            .status();
        drop(second);
        first_config.clone()
    };
    let survivor = &c.manager;
    let new_leader = format!("capow-{}", survivor.pid());
    Poll::new(
        "the survivor to take the Lease",
        Duration::from_secs(4 * LEASE_SECONDS),
    )
    .every(Duration::from_millis(200))
    .log_tail(&survivor.log, 30)
    .until(|| async { holder(&c).await.as_deref() == Some(new_leader.as_str()) })
    .await;
    let failover = killed_at.elapsed();
    assert_eq!(groups(&survivor_config), want);
    c.wait_running("workers", 4, Duration::from_secs(240)).await;
    let cloud = AdminCloud::login().await.unwrap();
    let tag = format!("capow-cluster-uid={}", c.cluster_uid);
    Poll::new(
        "4 servers and 4 ports after the failover",
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(500))
    .until(|| async {
        let servers = cloud.servers_tagged(&tag).await.unwrap().len();
        let ports = cloud.machine_ports(&tag).await.unwrap().len();
        if (servers, ports) == (4, 4) {
            Ok(())
        } else {
            Err(format!("have {servers} and {ports}"))
        }
    })
    .await;
    env.record(&format!(
        "HA: leader killed 1.5 s into a 0 -> 4 scale-up; the follower took the Lease after {:.1} s (Lease {LEASE_SECONDS} s); 4 servers, 4 ports, no duplicate",
        failover.as_secs_f64()
    ));
    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(180)).await;
    c.finish().await;
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_missing_lease_namespace_is_a_clear_error() {
    let env = Env::get();
    let kubeconfig = capow_e2e::manager_kubeconfig().await;
    let out = tokio::process::Command::new(&env.capow_bin)
        .args([
            "manager",
            "--admin-address",
            "127.0.0.1:0",
            "--leader-elect",
            "--leader-election-namespace",
            "no-such-namespace-for-capow",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the manager exits")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-namespace-for-capow")
            && stderr.contains("--leader-election-namespace")
            && !stderr.contains("Status {"),
        "{stderr}"
    );
}
