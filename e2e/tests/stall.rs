//! Bounded time: a manager whose every connection to the API server stalls (a half-open
//! connection: open, silent) recovers by itself. Its requests and watches time out
//! (`--kube-api-timeout`), it connects again, and the machine created while it was stalled is
//! provisioned.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use capow_e2e::stall::StallRelay;
use capow_e2e::{
    Env, Manager, Poll, TestNamespace, apply_cluster, apply_json, apply_secret,
    existing_network_spec, manager_kubeconfig,
};
use serde_json::json;

const IDENTITY: &str = "cloud-config";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_stalled_api_connection_does_not_stall_the_manager() {
    let env = Env::get();
    let client = env.client().await;
    let ns = TestNamespace::with_identity(&client, "stall", IDENTITY).await;
    // The manager reaches the API server only through the relay.
    let kubeconfig = manager_kubeconfig().await;
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .unwrap()
        .to_owned();
    let relay = StallRelay::start(&server).await;
    let relayed = env.state.join(format!("{}-relayed.kubeconfig", ns.name));
    std::fs::write(
        &relayed,
        text.replace(
            &format!("server: https://{server}"),
            &format!("server: https://127.0.0.1:{}", relay.port),
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "manager",
        "--namespace",
        &ns.name,
        "--build-poll-interval",
        "1s",
        "--kube-api-timeout",
        "6s",
        "--orphan-sweep",
        "off",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let manager = Manager::start_with(&relayed, &ns.name, args, &[]).await;

    apply_cluster(&client, &ns.name, "c1", existing_network_spec(IDENTITY))
        .await
        .unwrap();
    let clusters =
        capow_e2e::hcp::dynamic(&client, &ns.name, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    Poll::new("the Cluster provisioned", Duration::from_secs(90))
        .until(|| async {
            let c = serde_json::to_value(clusters.get("c1").await.unwrap()).unwrap();
            c["status"]["initialization"]["infrastructureProvisioned"] == true
        })
        .await;

    // Every connection the manager holds goes silent; then a machine is created.
    relay.stall_existing();
    let stalled = Instant::now();
    apply_secret(
        &client,
        &ns.name,
        "m1-bootstrap",
        &[("value", b"#cloud-config\n"), ("format", b"cloud-config")],
    )
    .await;
    let machine = apply_json(&client, &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": "m1", "namespace": ns.name, "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
        "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "m1-bootstrap"},
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachine", "name": "m1"}}}))
        .await
        .unwrap();
    apply_json(&client, &json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachine",
        "metadata": {"name": "m1", "namespace": ns.name, "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
                     "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": "m1", "uid": machine["metadata"]["uid"]}]},
        "spec": {"flavor": {"filter": {"name": "m1.tiny"}}, "image": {"filter": {"name": "osdev-tiny"}},
                 "identityRef": {"name": IDENTITY, "cloudName": env.cloud}}}))
        .await
        .unwrap();
    let machines = capow_e2e::hcp::dynamic(
        &client,
        &ns.name,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerMachine",
    )
    .await;
    Poll::new(
        "the manager to recover from the stalled connections (m1 provisioned)",
        Duration::from_secs(90),
    )
    .log_tail(&manager.log, 30)
    .until(|| async {
        let m = serde_json::to_value(machines.get("m1").await.unwrap()).unwrap();
        if m["status"]["initialization"]["provisioned"] == true {
            Ok(())
        } else {
            Err(format!("status {}", m["status"]))
        }
    })
    .await;
    env.record(&format!(
        "stalled API connections (read timeout 6 s): the machine created meanwhile was provisioned {:.1} s after the stall",
        stalled.elapsed().as_secs_f64()
    ));

    let _ = machines.delete("m1", &Default::default()).await;
    Poll::new("the machine deleted", Duration::from_secs(90))
        .until(|| async { machines.get_opt("m1").await.unwrap().is_none() })
        .await;
    let _ = clusters.delete("c1", &Default::default()).await;
    Poll::new("the Cluster deleted", Duration::from_secs(90))
        .until(|| async { clusters.get_opt("c1").await.unwrap().is_none() })
        .await;
    manager.stop().await;
    ns.delete().await;
}
