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
//! Image warm-up: Nodes register Ready (kwok) with the startup taint and a test taint the
//! warm-up DaemonSet does not tolerate; capow keeps the startup taint while no warm-up pod can
//! run, and removes it once the test lifts the test taint and kwok has the warm-up pod Ready; a
//! Node that never gets one loses its taint after `imageWarmup.timeout`.
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
/// A taint the test registers Nodes with and the image warm-up DaemonSet does not tolerate: it
/// keeps the warm-up pod off a Ready Node until the test removes it.
const HOLD_TAINT: &str = "e2e.capow.dev/hold-warmup";

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

/// Names of the workload cluster's Nodes.
async fn node_names(c: &HcpCluster) -> BTreeSet<String> {
    Api::<Node>::all(c.workload.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect()
}

/// The cluster's OpenStackWorkerClusters, as dynamic objects.
async fn oswc_api(c: &HcpCluster) -> Api<kube::api::DynamicObject> {
    dynamic(
        &c.client,
        &c.ns,
        INFRA_GROUP,
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await
}

/// The `status.nodeLifecycle` condition `type_` of the cluster's OpenStackWorkerCluster.
/// Waits (60 s at most) until the `StartupTaint` condition's message holds `note(name)` for
/// every Node of `names`; `what` names the wait in its failure.
async fn wait_taint_condition_names<'a>(
    c: &HcpCluster,
    what: &str,
    names: impl IntoIterator<Item = &'a String> + Clone,
    note: impl Fn(&str) -> String,
) {
    Poll::new(what, Duration::from_secs(60))
        .log_tail(&c.manager.log, 30)
        .until(|| async {
            let cond = lifecycle_condition(c, "StartupTaint").await;
            let msg = cond["message"].as_str().unwrap_or_default();
            if names
                .clone()
                .into_iter()
                .all(|name| msg.contains(&note(name)))
            {
                Ok(())
            } else {
                Err(format!("condition {cond}"))
            }
        })
        .await;
}

async fn lifecycle_condition(c: &HcpCluster, type_: &str) -> Value {
    let oswc = oswc_api(c).await;
    let v = serde_json::to_value(oswc.get(CLUSTER).await.unwrap()).unwrap();
    v["status"]["nodeLifecycle"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// Adds `spec.nodeLifecycle` (and `status.nodeLifecycle`) of this build's
/// OpenStackWorkerCluster CRD to the environment's CRD when it lacks them or lacks one of their
/// properties (an older build's CRD): a JSON patch that sets only those two, so fields other
/// branches' tests put elsewhere stay.
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
        let keys = |v: &Value| -> BTreeSet<String> {
            v.pointer(&format!("{path}/properties"))
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        if live.pointer(&path).is_none() || !keys(&ours).is_subset(&keys(&live)) {
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
    let oswc = oswc_api(c).await;
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
    let names = node_names(c).await;
    assert_eq!(names.len(), n as usize, "{names:?}");

    // NotReady: capow reports it keeps the taint, and the taint is still there.
    wait_taint_condition_names(
        c,
        "the StartupTaint condition to hold the NotReady Nodes",
        &names,
        |name| format!("{name} (not Ready)"),
    )
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

/// The headroom placeholders (`spec.nodeLifecycle.headroom`) of the cluster, from the workload
/// cluster: `(name, node, phase)` of each live pod.
async fn placeholders(c: &HcpCluster) -> Vec<(String, String, String)> {
    use capow::controllers::lifecycle::plan::{HEADROOM_NAME, HEADROOM_NAMESPACE};
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(c.workload.clone(), HEADROOM_NAMESPACE);
    let mut out: Vec<(String, String, String)> = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={HEADROOM_NAME}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
                p.status.and_then(|s| s.phase).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Headroom with the real cluster-autoscaler 1.36.1: capow runs a placeholder pod in the
/// workload cluster; the autoscaler adds a node for it; a real pod that needs that node
/// preempts the placeholder at once (no new node for the real pod), and the autoscaler adds a
/// node for the placeholder again. Bad input is refused or reported, and deletes nothing;
/// removing the field removes the placeholders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn placeholders_keep_headroom_make_the_autoscaler_add_a_node_and_yield_to_real_pods() {
    let env = Env::get();
    let Some(bin) = capow_e2e::autoscaler::binary(capow_e2e::autoscaler::Wire::New, "headroom")
    else {
        return;
    };
    capow_e2e::ensure_crds(&Env::get().client().await).await;
    let c = HcpCluster::start("lc-headroom").await;
    let keeper = keep_node_lifecycle_schema(&c);
    let outcome = AssertUnwindSafe(headroom(&c, env, &bin))
        .catch_unwind()
        .await;
    keeper.abort();
    c.finish().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn headroom(c: &HcpCluster, env: &Env, bin: &std::path::Path) {
    use capow::controllers::lifecycle::plan::HEADROOM_NAMESPACE;
    use capow_e2e::autoscaler::{CaOptions, ClusterAutoscaler};
    // m1.tiny: 1 vCPU. One placeholder of 600m fills a node as far as a 600m pod is concerned.
    c.add_machine_deployment("workers", "m1.tiny", 3).await;
    let oswc = oswc_api(c).await;

    // Bad input: the API server refuses a non-positive quantity.
    let refused = oswc
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"nodeLifecycle": {"headroom": {"cpu": "-1", "memory": "64Mi"}}}}),
            ),
        )
        .await
        .expect_err("a negative cpu is refused");
    assert!(
        refused.to_string().contains("cpu must be a quantity"),
        "{refused}"
    );
    // More than the group can hold at its max (3 nodes of 1 vCPU): reported, nothing applied.
    set_node_lifecycle(
        c,
        json!({"headroom": {"cpu": "8", "memory": "64Mi", "replicas": 4}}),
    )
    .await;
    Poll::new(
        "the Headroom condition to report the misfit",
        Duration::from_secs(60),
    )
    .log_tail(&c.manager.log, 30)
    .until(|| async {
        let cond = lifecycle_condition(c, "Headroom").await;
        let msg = cond["message"].as_str().unwrap_or_default().to_owned();
        if cond["reason"] == "HeadroomDoesNotFit" && msg.contains("spec.nodeLifecycle.headroom") {
            Ok(())
        } else {
            Err(format!("condition {cond}"))
        }
    })
    .await;
    assert!(
        placeholders(c).await.is_empty(),
        "nothing applied for a misfit"
    );

    // The real thing: one placeholder of 600m CPU, the autoscaler running.
    let cloud_config = c.cloud_config().await;
    workload::wait_default_service_account(&c.workload, "default").await;
    let ca = ClusterAutoscaler::start(
        bin,
        &c.workload_kubeconfig,
        &cloud_config,
        &CaOptions::default(),
        &format!("{}-headroom", c.ns),
    )
    .await;
    let started = Instant::now();
    set_node_lifecycle(
        c,
        json!({"headroom": {"cpu": "600m", "memory": "64Mi", "replicas": 1}}),
    )
    .await;
    let first = Poll::new(
        "the placeholder Running on a node the autoscaler added",
        Duration::from_secs(240),
    )
    .log_tail(&ca.log, 30)
    .until(|| async {
        match placeholders(c).await.as_slice() {
            [(_, node, phase)] if phase == "Running" && !node.is_empty() => Ok(node.clone()),
            other => Err(format!("placeholders {other:?}")),
        }
    })
    .await;
    let headroom_node_after = started.elapsed();
    let cond = lifecycle_condition(c, "Headroom").await;
    assert_eq!(cond["reason"], "HeadroomKept", "{cond}");
    assert!(
        !ca.lines("Scale-up: setting group").is_empty(),
        "the autoscaler scaled up for the placeholder"
    );

    // A real pod that needs the node: it preempts the placeholder and runs there.
    let preempt_started = Instant::now();
    workload::create_deployment(&c.workload, "default", "real", 1, "600m", "64Mi").await;
    let placed = workload::wait_pods(
        &c.workload,
        "default",
        "real",
        1,
        "Running",
        Duration::from_secs(120),
        |p| p.phase == "Running",
    )
    .await;
    let preempted_after = preempt_started.elapsed();
    assert_eq!(
        placed[0].node, first,
        "the real pod took the placeholder's node"
    );
    // The placeholder, pending again, makes the autoscaler add a second node.
    let second = Poll::new(
        "the placeholder Running again on a second node",
        Duration::from_secs(240),
    )
    .log_tail(&ca.log, 30)
    .until(|| async {
        match placeholders(c).await.as_slice() {
            [(_, node, phase)] if phase == "Running" && !node.is_empty() && *node != first => {
                Ok(node.clone())
            }
            other => Err(format!("placeholders {other:?}")),
        }
    })
    .await;
    let replaced_after = preempt_started.elapsed();
    let names = node_names(c).await;
    assert_eq!(
        names,
        BTreeSet::from([first.clone(), second.clone()]),
        "two nodes: the real pod's and the placeholder's"
    );

    // Removing the field removes the placeholders (the namespace goes).
    set_node_lifecycle(c, json!({"headroom": null})).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.workload.clone());
    Poll::new("the headroom namespace gone", Duration::from_secs(120))
        .log_tail(&c.manager.log, 30)
        .until(|| async {
            match namespaces.get_opt(HEADROOM_NAMESPACE).await {
                Ok(None) => Ok(()),
                Ok(Some(ns)) => Err(format!("phase {:?}", ns.status.and_then(|s| s.phase))),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    let version = ca.version().unwrap_or_else(|| "unknown".into());
    ca.stop().await;
    env.record(&format!(
        "headroom (cluster-autoscaler {}): placeholder Running on an added node {:.1} s after spec.nodeLifecycle.headroom was set; a real 600m pod Running on that node {:.1} s after it was created (placeholder preempted); placeholder Running on a second node {:.1} s after that",
        version,
        headroom_node_after.as_secs_f64(),
        preempted_after.as_secs_f64(),
        replaced_after.as_secs_f64(),
    ));
}

/// The image warm-up pods (`spec.nodeLifecycle.imageWarmup`) of the workload cluster:
/// `(node, Ready)` of each live pod.
async fn warmup_pods(c: &HcpCluster) -> Vec<(String, bool)> {
    use capow::controllers::lifecycle::plan::{WARMUP_NAME, WARMUP_NAMESPACE};
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(c.workload.clone(), WARMUP_NAMESPACE);
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/name={WARMUP_NAME}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.spec.and_then(|s| s.node_name).unwrap_or_default(), ready)
        })
        .collect()
}

/// Removes taint `key` from Node `name` (optimistic concurrency on the Node's
/// `resourceVersion`, retried on conflict).
async fn remove_node_taint(c: &HcpCluster, name: &str, key: &str) {
    let nodes: Api<Node> = Api::all(c.workload.clone());
    for _ in 0..20 {
        let node = nodes.get(name).await.unwrap();
        let taints: Vec<_> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != key)
            .collect();
        let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
                           "spec": {"taints": taints}});
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("remove taint {key} from {name}: {e}"),
        }
    }
    panic!("taint {key} of {name}: conflicts on every try");
}

/// Image warm-up with the workload cluster's kube-scheduler, DaemonSet controller and kwok
/// (which runs the warm-up pods and turns them Ready): an invalid image reference is refused by
/// the API server; a Ready Node keeps its startup taint while its warm-up pod cannot run (a
/// test taint keeps it off) and loses it once that pod is Ready; a Node whose warm-up never
/// finishes loses it after `imageWarmup.timeout` with an `ImageWarmupTimedOut` event; removing
/// the field deletes the DaemonSet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn the_startup_taint_waits_for_the_image_warmup_of_its_node() {
    let env = Env::get();
    let c = HcpCluster::start_with(
        "lc-warmup",
        HcpOptions {
            registration: Registration {
                taints: vec![
                    json!({"key": DEFAULT_STARTUP_TAINT_KEY, "effect": "NoSchedule"}),
                    json!({"key": HOLD_TAINT, "effect": "NoSchedule"}),
                ],
                not_ready: false,
            },
            ..HcpOptions::default()
        },
    )
    .await;
    let keeper = keep_node_lifecycle_schema(&c);
    let outcome = AssertUnwindSafe(image_warmup(&c, env)).catch_unwind().await;
    keeper.abort();
    c.finish().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn image_warmup(c: &HcpCluster, env: &Env) {
    use capow::controllers::lifecycle::plan::{WARMUP_NAME, WARMUP_NAMESPACE};
    ensure_node_lifecycle_schema(c).await;
    let oswc = oswc_api(c).await;

    // Bad input: the API server refuses an image reference that is not one (upper case).
    let refused = oswc
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeLifecycle": {"imageWarmup": {
                "images": ["pause:3.10", "Busybox:latest"]}}}})),
        )
        .await
        .expect_err("an upper-case image reference is refused");
    let text = refused.to_string();
    assert!(
        text.contains("spec.nodeLifecycle.imageWarmup.images[1]")
            && text.contains("Busybox:latest"),
        "the rejection names the field and the value: {text}"
    );

    // A generous timeout while the first Node shows the wait; lowered for the second one.
    set_node_lifecycle(
        c,
        json!({"startupTaint": {}, "imageWarmup": {
            "images": ["pause:3.10", "busybox:1.36", "mirror.example/big/model:1"],
            "ignore": ["mirror.example/big/*"],
            "timeout": "10m"}}),
    )
    .await;
    c.add_machine_deployment("workers", "m1.tiny", 3).await;
    let n = 2;
    c.set_replicas("workers", n).await;
    c.wait_running("workers", n as usize, Duration::from_secs(240))
        .await;
    let names: Vec<String> = node_names(c).await.into_iter().collect();
    assert_eq!(names.len(), n as usize, "{names:?}");
    let (first, second) = (&names[0], &names[1]);
    let nodes: Api<Node> = Api::all(c.workload.clone());

    // Ready, but no warm-up pod can run yet: capow keeps the startup taint and says why.
    wait_taint_condition_names(
        c,
        "the StartupTaint condition to hold the Ready Nodes for their warm-up",
        &names,
        |name| format!("{name} (image warm-up: no warm-up pod"),
    )
    .await;
    for name in &names {
        let node = nodes.get(name).await.unwrap();
        assert!(is_ready(&node), "{name} is Ready (kwok)");
        assert!(
            has_taint(&node, DEFAULT_STARTUP_TAINT_KEY),
            "{name} lost its startup taint before its warm-up"
        );
    }
    let cond = lifecycle_condition(c, "ImageWarmup").await;
    let msg = cond["message"].as_str().unwrap_or_default();
    assert!(
        cond["reason"] == "WarmingUp"
            && msg.contains("pre-pulls 2 image(s) (pause:3.10, busybox:1.36)")
            && msg.contains(
                "ignored by spec.nodeLifecycle.imageWarmup.ignore: mirror.example/big/model:1"
            ),
        "{cond}"
    );

    // The first Node admits its warm-up pod; once kwok has it Ready, the taint goes.
    let released = Instant::now();
    remove_node_taint(c, first, HOLD_TAINT).await;
    let mut pod_ready_at: Option<Instant> = None;
    let poll = Poll::new(
        format!("the startup taint removed from {first} after its warm-up"),
        Duration::from_secs(90),
    )
    .every(Duration::from_millis(100))
    .log_tail(&c.manager.log, 30);
    loop {
        let pods = warmup_pods(c).await;
        let ready = pods.iter().any(|(node, ready)| node == first && *ready);
        if ready && pod_ready_at.is_none() {
            pod_ready_at = Some(Instant::now());
        }
        let node = nodes.get(first).await.unwrap();
        if !has_taint(&node, DEFAULT_STARTUP_TAINT_KEY) {
            assert!(
                ready || pod_ready_at.is_some(),
                "{first} lost its taint before its warm-up pod was Ready: {pods:?}"
            );
            let now = Instant::now();
            let from_ready = now.duration_since(pod_ready_at.unwrap_or(now));
            env.record(&format!(
                "image warm-up: Node {first} untainted {:.2} s after its warm-up pod was seen Ready ({:.2} s after the pod could be scheduled)",
                from_ready.as_secs_f64(),
                released.elapsed().as_secs_f64()
            ));
            break;
        }
        poll.tick(format_args!("warm-up pods {pods:?}")).await;
    }
    assert!(
        has_taint(&nodes.get(second).await.unwrap(), DEFAULT_STARTUP_TAINT_KEY),
        "{second}, without a warm-up pod, keeps its taint"
    );

    // The second Node never gets its warm-up pod: with the timeout lowered to 30s, capow
    // removes its taint 30 s after the Node turned Ready, and says so.
    let ready_since = nodes
        .get(second)
        .await
        .unwrap()
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time)
        .map(|t| t.0)
        .expect("the Ready condition's lastTransitionTime");
    let lowered = Instant::now();
    set_node_lifecycle(c, json!({"imageWarmup": {"timeout": "30s"}})).await;
    Poll::new(
        format!("the startup taint removed from {second} after the warm-up timeout"),
        Duration::from_secs(90),
    )
    .every(Duration::from_millis(200))
    .log_tail(&c.manager.log, 30)
    .until(|| async {
        let node = nodes.get(second).await.unwrap();
        if has_taint(&node, DEFAULT_STARTUP_TAINT_KEY) {
            Err("tainted".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    let since_ready = k8s_openapi::jiff::Timestamp::now().duration_since(ready_since);
    env.record(&format!(
        "image warm-up: Node {second} (no warm-up pod) untainted {:.2} s after it turned Ready (imageWarmup.timeout 30s, lowered from 10m {:.2} s before)",
        since_ready.as_secs_f64(),
        lowered.elapsed().as_secs_f64()
    ));
    let events: Api<Event> = Api::namespaced(c.client.clone(), &c.ns);
    Poll::new(
        "the ImageWarmupTimedOut and StartupTaintRemoved events",
        Duration::from_secs(30),
    )
    .until(|| async {
        let list = events.list(&ListParams::default()).await.unwrap().items;
        let about = |reason: &str| -> Vec<(String, String)> {
            list.iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .map(|e| {
                    (
                        e.related
                            .as_ref()
                            .and_then(|r| r.name.clone())
                            .unwrap_or_default(),
                        e.note.clone().unwrap_or_default(),
                    )
                })
                .collect()
        };
        let timed_out = about("ImageWarmupTimedOut");
        let removed = about("StartupTaintRemoved");
        let ok = timed_out
            .iter()
            .any(|(n, note)| n == second && note.contains("no warm-up pod"))
            && removed
                .iter()
                .any(|(n, note)| n == first && note.contains("its image warm-up finished"));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "ImageWarmupTimedOut {timed_out:?}; StartupTaintRemoved {removed:?}"
            ))
        }
    })
    .await;

    // Removing the field deletes the DaemonSet (and its namespace).
    set_node_lifecycle(c, json!({"imageWarmup": null})).await;
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(c.workload.clone(), WARMUP_NAMESPACE);
    Poll::new("the warm-up DaemonSet gone", Duration::from_secs(60))
        .log_tail(&c.manager.log, 30)
        .until(|| async {
            match daemonsets.get_opt(WARMUP_NAME).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still there".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;

    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(180)).await;
}
