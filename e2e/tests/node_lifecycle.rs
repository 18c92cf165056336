//! Node lifecycle (`capow::controllers::lifecycle`, ADR 0007) with the real Cluster API and a
//! real workload cluster (kube-apiserver, kube-scheduler, kube-controller-manager, kwok).
//!
//! Startup taint: Nodes register with the taint (the node registrar stands in for kubelet
//! `--register-with-taints`) and NotReady (kwok leaves Nodes labelled
//! `e2e.capow.dev/kwok=disabled` alone); capow keeps the taint while the Node is NotReady and
//! removes it through the `<cluster>-kubeconfig` Secret once the test writes the Node's Ready
//! status as its kubelet would; a pod without a toleration is then scheduled onto it; the
//! template node capow serves to the autoscaler declares the taint.
//!
//! Maximum node age: both Machines of a group are over age; capow marks one at a time for
//! deletion through CAPI, only while the MachineDeployment is fully available, and the
//! MachineSet creates each successor.
//!
//! Delays are recorded (`measure:` lines, `docs/benchmarks.md`), never asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use capow::api::lifecycle::DEFAULT_STARTUP_TAINT_KEY;
use capow::autoscaler::proto::externalgrpc as pb;
use capow_e2e::hcp::{
    CLUSTER, HcpCluster, HcpOptions, Registration, dynamic, probe, template_node,
};
use capow_e2e::{Env, Poll, workload};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";

fn has_taint(n: &Node, key: &str) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key))
}

fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The `status.nodeLifecycle` condition `type_` of the cluster's OpenStackWorkerCluster.
async fn lifecycle_condition(c: &HcpCluster, type_: &str) -> Value {
    let oswc = dynamic(
        &c.client,
        &c.ns,
        INFRA_GROUP,
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    let v = serde_json::to_value(oswc.get(CLUSTER).await.unwrap()).unwrap();
    v["status"]["nodeLifecycle"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// Adds `spec.nodeLifecycle` (and `status.nodeLifecycle`) of this build's
/// OpenStackWorkerCluster CRD to the environment's CRD when it lacks them: a JSON patch that
/// adds only those properties, so fields other branches' tests put there stay.
async fn ensure_node_lifecycle_schema(c: &HcpCluster) {
    ensure_schema(&c.client).await.unwrap();
}

/// Keeps [`ensure_node_lifecycle_schema`] true while the test runs: tests of other checkouts
/// sharing the environment apply their own version of the CRD (a whole schema, which drops
/// this one's field until it is added again). Checks every 500 ms until aborted.
fn keep_node_lifecycle_schema(c: &HcpCluster) -> tokio::task::JoinHandle<()> {
    let client = c.client.clone();
    tokio::spawn(async move {
        loop {
            let _ = ensure_schema(&client).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

async fn ensure_schema(client: &kube::Client) -> Result<(), kube::Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "openstackworkerclusters.infrastructure.cluster.x-k8s.io";
    let live = serde_json::to_value(crds.get(name).await?).unwrap();
    let ours = capow::api::crds()
        .into_iter()
        .find(|x| x.metadata.name.as_deref() == Some(name))
        .unwrap();
    let ours = serde_json::to_value(ours).unwrap();
    let root = "/spec/versions/0/schema/openAPIV3Schema";
    let mut ops = Vec::new();
    for part in ["spec", "status"] {
        let path = format!("{root}/properties/{part}/properties/nodeLifecycle");
        if live.pointer(&path).is_none() {
            ops.push(json!({"op": "add", "path": path, "value": ours.pointer(&path).unwrap()}));
        }
    }
    if !ops.is_empty() {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        crds.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await?;
    }
    Ok(())
}

async fn set_node_lifecycle(c: &HcpCluster, spec: Value) {
    ensure_node_lifecycle_schema(c).await;
    let oswc = dynamic(
        &c.client,
        &c.ns,
        INFRA_GROUP,
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    let got = oswc
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeLifecycle": spec}})),
        )
        .await
        .unwrap();
    assert!(
        serde_json::to_value(got).unwrap()["spec"]["nodeLifecycle"].is_object(),
        "the API server pruned spec.nodeLifecycle: the environment's OpenStackWorkerCluster CRD \
         is older than config/crd/bases (apply it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn the_startup_taint_stays_until_the_node_is_ready_and_goes_after() {
    let env = Env::get();
    let c = HcpCluster::start_with(
        "lc-taint",
        HcpOptions {
            registration: Registration {
                taints: vec![json!({"key": DEFAULT_STARTUP_TAINT_KEY, "effect": "NoSchedule"})],
                not_ready: true,
            },
            ..HcpOptions::default()
        },
    )
    .await;
    // A failed step still deletes the cluster from the shared environment.
    let keeper = keep_node_lifecycle_schema(&c);
    let outcome = AssertUnwindSafe(startup_taint(&c, env))
        .catch_unwind()
        .await;
    keeper.abort();
    c.finish().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn startup_taint(c: &HcpCluster, env: &Env) {
    set_node_lifecycle(c, json!({"startupTaint": {}})).await;
    c.add_machine_deployment("workers", "m1.tiny", 3).await;

    // The template node the autoscaler simulates with declares the taint (CA drops keys under
    // startup-taint.cluster-autoscaler.kubernetes.io/ from its copy).
    let cc = c.cloud_config().await;
    let group_id = format!("MachineDeployment/{}/workers", c.ns);
    // Polled: while another checkout's test has the shared CRD without this field, the API
    // server serves the object without it until the keeper adds the field back.
    let poll = Poll::new(
        "the startup taint on the template node",
        Duration::from_secs(60),
    )
    .every(Duration::from_secs(1));
    loop {
        probe(&cc, "Refresh", &pb::RefreshRequest {});
        let tnode = template_node(&cc, &group_id);
        let keys: Vec<String> = tnode
            .spec
            .as_ref()
            .map(|s| s.taints.iter().map(|t| t.key.clone()).collect())
            .unwrap_or_default();
        if keys.iter().any(|k| k == DEFAULT_STARTUP_TAINT_KEY) {
            break;
        }
        poll.tick(format_args!("template node taints {keys:?}"))
            .await;
    }

    let n = 2;
    c.set_replicas("workers", n).await;
    c.wait_running("workers", n as usize, Duration::from_secs(240))
        .await;
    let nodes: Api<Node> = Api::all(c.workload.clone());
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|x| x.metadata.name)
        .collect();
    assert_eq!(names.len(), n as usize, "{names:?}");

    // NotReady: capow reports it keeps the taint, and the taint is still there.
    Poll::new(
        "the StartupTaint condition to hold the NotReady Nodes",
        Duration::from_secs(60),
    )
    .log_tail(&c.manager.log, 30)
    .until(|| async {
        let cond = lifecycle_condition(c, "StartupTaint").await;
        let msg = cond["message"].as_str().unwrap_or_default();
        if names
            .iter()
            .all(|name| msg.contains(&format!("{name} (not Ready)")))
        {
            Ok(())
        } else {
            Err(format!("condition {cond}"))
        }
    })
    .await;
    for name in &names {
        let node = nodes.get(name).await.unwrap();
        assert!(!is_ready(&node), "{name} is Ready before kwok manages it");
        assert!(
            has_taint(&node, DEFAULT_STARTUP_TAINT_KEY),
            "{name} lost its startup taint while NotReady"
        );
    }

    // One Node after the other becomes Ready (kwok takes it over); capow removes its taint.
    for name in &names {
        // The kubelet's first status: Ready (kwok leaves these Nodes alone, so the test writes
        // it as the kubelet would).
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now, "lastTransitionTime": now}]}})),
            )
            .await
            .unwrap();
        let released = Instant::now();
        let mut ready_at: Option<Instant> = None;
        let poll = Poll::new(
            format!("the startup taint removed from {name}"),
            Duration::from_secs(60),
        )
        .every(Duration::from_millis(100))
        .log_tail(&c.manager.log, 30);
        loop {
            let node = nodes.get(name).await.unwrap();
            if ready_at.is_none() && is_ready(&node) {
                ready_at = Some(Instant::now());
            }
            if !has_taint(&node, DEFAULT_STARTUP_TAINT_KEY) {
                // The taint only goes from a Ready Node.
                assert!(is_ready(&node), "{name} lost its taint while NotReady");
                let now = Instant::now();
                let from_ready = now.duration_since(ready_at.unwrap_or(now));
                env.record(&format!(
                    "startup taint: Node {name} untainted {:.2} s after it was seen Ready ({:.2} s after its Ready status was written)",
                    from_ready.as_secs_f64(),
                    released.elapsed().as_secs_f64()
                ));
                break;
            }
            poll.tick(format_args!("ready: {}", is_ready(&node))).await;
        }
    }

    // An event per removal, on the OpenStackWorkerCluster.
    let events: Api<Event> = Api::namespaced(c.client.clone(), &c.ns);
    Poll::new(
        format!("StartupTaintRemoved events for {names:?}"),
        Duration::from_secs(30),
    )
    .until(|| async {
        let about: BTreeSet<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("StartupTaintRemoved"))
            .filter_map(|e| e.related.and_then(|r| r.name))
            .collect();
        if names.iter().all(|n| about.contains(n)) {
            Ok(())
        } else {
            Err(format!("events for {about:?}"))
        }
    })
    .await;

    // A pod without a toleration lands on the now untainted Nodes.
    workload::wait_default_service_account(&c.workload, "default").await;
    workload::create_deployment(&c.workload, "default", "app", 1, "10m", "16Mi").await;
    workload::wait_pods(
        &c.workload,
        "default",
        "app",
        1,
        "scheduled onto a worker",
        Duration::from_secs(60),
        |p| names.contains(&p.node),
    )
    .await;

    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(180)).await;
}
/// Live (not deleting) Machines of MachineDeployment `md`: `(name, Running with a nodeRef)`.
async fn machines_of(c: &HcpCluster, md: &str) -> (Vec<(String, bool)>, Vec<String>) {
    let api: Api<capow::capi::Machine> = Api::namespaced(c.client.clone(), &c.ns);
    let list = api
        .list(&ListParams::default().labels(&format!("cluster.x-k8s.io/deployment-name={md}")))
        .await
        .unwrap()
        .items;
    let mut live = Vec::new();
    let mut deleting = Vec::new();
    for m in list {
        let name = m.metadata.name.clone().unwrap_or_default();
        if m.metadata.deletion_timestamp.is_some() {
            deleting.push(name);
            continue;
        }
        let running = m
            .status
            .as_ref()
            .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.node_ref.is_some());
        live.push((name, running));
    }
    (live, deleting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn over_age_machines_are_replaced_one_at_a_time_while_the_group_stays_available() {
    let env = Env::get();
    let c = HcpCluster::start_with(
        "lc-age",
        HcpOptions {
            // The annotation's floor is 1h in production; the test replaces after a minute.
            manager_args: vec!["--max-node-age-floor=30s".into()],
            ..HcpOptions::default()
        },
    )
    .await;
    let keeper = keep_node_lifecycle_schema(&c);
    let outcome = AssertUnwindSafe(max_age(&c, env)).catch_unwind().await;
    keeper.abort();
    c.finish().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn max_age(c: &HcpCluster, env: &Env) {
    ensure_node_lifecycle_schema(c).await;
    let md = "workers";
    c.add_machine_deployment(md, "m1.tiny", 3).await;
    let n = 2;
    c.set_replicas(md, n).await;
    c.wait_running(md, n as usize, Duration::from_secs(240))
        .await;
    let (first, _) = machines_of(c, md).await;
    let originals: BTreeSet<String> = first.into_iter().map(|(name, _)| name).collect();

    // Both Machines are over 60s once the annotation is read.
    let mds: Api<capow::capi::MachineDeployment> = Api::namespaced(c.client.clone(), &c.ns);
    mds.patch(
        md,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            capow::api::lifecycle::settings::MAX_NODE_AGE_ANNOTATION: "60s"}}})),
    )
    .await
    .unwrap();

    // Until both originals are gone: never more than one Machine deleting at a time, never
    // fewer than n - 1 Running ones; each successor is timed from its predecessor's deletion.
    let poll = Poll::new(
        "the over-age Machines to be replaced one at a time",
        Duration::from_secs(420),
    )
    .log_tail(&c.manager.log, 30);
    let mut deleting_since: Option<(String, Instant)> = None;
    let mut replaced: Vec<(String, f64)> = Vec::new();
    loop {
        let (live, deleting) = machines_of(c, md).await;
        assert!(
            deleting.len() <= 1,
            "more than one Machine deleting at once: {deleting:?}"
        );
        let running = live.iter().filter(|(_, r)| *r).count();
        assert!(
            running + 1 >= n as usize,
            "only {running} Machines Running: {live:?}, deleting {deleting:?}"
        );
        if let Some(d) = deleting.first()
            && deleting_since.as_ref().is_none_or(|(x, _)| x != d)
            && originals.contains(d)
        {
            deleting_since = Some((d.clone(), Instant::now()));
        }
        if let Some((old, since)) = &deleting_since
            && !deleting.contains(old)
            && running == n as usize
            && live.len() == n as usize
        {
            replaced.push((old.clone(), since.elapsed().as_secs_f64()));
            deleting_since = None;
        }
        let left: Vec<&String> = live
            .iter()
            .map(|(name, _)| name)
            .filter(|name| originals.contains(*name))
            .collect();
        if left.is_empty() && deleting_since.is_none() && running == n as usize {
            break;
        }
        let d = mds.get(md).await.unwrap();
        poll.tick(format!(
            "originals {originals:?} not replaced: live {live:?}, deleting {deleting:?}; \
             MaxNodeAge condition: {}; MachineDeployment status: {}",
            lifecycle_condition(c, "MaxNodeAge").await,
            serde_json::to_string(&d.status).unwrap()
        ))
        .await;
    }
    // The condition reports the feature while it is on (it goes with the annotation).
    let cond = lifecycle_condition(c, "MaxNodeAge").await;
    assert!(cond.is_object(), "no MaxNodeAge condition");
    // Stop replacing before scaling down.
    mds.patch(
        md,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            capow::api::lifecycle::settings::MAX_NODE_AGE_ANNOTATION: "off"}}})),
    )
    .await
    .unwrap();
    for (old, secs) in &replaced {
        env.record(&format!(
            "max node age: Machine {old} replaced in {secs:.1} s (deletion seen to successor Running with a Node)"
        ));
    }

    // An event per replacement, on the MachineDeployment.
    let events: Api<Event> = Api::namespaced(c.client.clone(), &c.ns);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("MachineReplacedForAge"))
        .filter_map(|e| e.note)
        .collect();
    for old in &originals {
        assert!(
            notes.iter().any(|x| x.contains(old.as_str())),
            "no MachineReplacedForAge event for {old}: {notes:?}"
        );
    }

    c.set_replicas(md, 0).await;
    c.wait_running(md, 0, Duration::from_secs(180)).await;
}
