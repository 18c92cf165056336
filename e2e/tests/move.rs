//! `clusterctl move` and restores (issue 10 item 4) against the real CAPI core, the real
//! `clusterctl` and the real OpenStack:
//!
//! - a hosted-control-plane cluster with two running workers moves from the e2e environment's
//!   management API server to a second one (`e2e/mgmt2/up.sh`: its own etcd, kube-apiserver,
//!   kube-controller-manager and CAPI core, with capow's manager against each); afterwards the
//!   target reconciles the same servers, ports, network, subnet, router and security group,
//!   nothing is created, deleted or orphaned (both managers run the orphan sweep every second
//!   with no grace period), and the cluster is scaled and deleted from the target cleanly;
//! - a machine whose status was wiped while the manager was stopped keeps its server (found by
//!   `spec.providerID`), and its deletion still removes the server and its port;
//! - a `spec.providerID` capow did not make (a user's server, a server that does not exist) gets
//!   `Ready=False` with reason `ProviderIDNotOwned`; nothing is created, adopted or deleted.
//!
//! Servers and ports are counted with the admin REST client of [`capow_e2e::cloud`], which is
//! independent of capow.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capow_e2e::cloud::AdminCloud;
use capow_e2e::hcp::{self, CLUSTER, HcpCluster, HcpOptions, dynamic};
use capow_e2e::{
    Env, Manager, Poll, STANDIN_GROUP, TestNamespace, apply_cluster, apply_json, apply_secret,
    client_for, ensure_control_plane_standin, existing_network_spec, log_tail,
    manager_kubeconfig_on, openstack, openstack_run, reqwest_get,
};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const INFRA: &str = "infrastructure.cluster.x-k8s.io";
const IDENTITY: &str = "cloud-config";
/// Both managers sweep for orphans every second and call anything without its machine an
/// orphan at once: a moved resource taken for an orphan on either side is deleted at once.
/// The managers of this file make their ports in Neutron (`--port-creation neutron`): the
/// tests show that capow's own ports change owner too (a plain port Nova made needs nothing:
/// it goes with its server).
const SWEEP: [&str; 8] = [
    "--orphan-sweep",
    "delete",
    "--orphan-sweep-interval",
    "1s",
    "--orphan-grace-period",
    "0s",
    "--port-creation",
    "neutron",
];

fn e2e_dir() -> PathBuf {
    PathBuf::from(std::env::var("CAPOW_E2E_DIR").expect("CAPOW_E2E_DIR (set by e2e/dev-env.sh)"))
}

/// Runs an e2e script; returns its stdout. Panics with its stderr when it fails.
fn script(path: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(e2e_dir().join(path))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The second management plane of `e2e/mgmt2/up.sh`; stopped and purged when dropped, so a
/// failing test leaves no process behind.
struct TargetPlane {
    kubeconfig: PathBuf,
}

impl TargetPlane {
    fn up() -> TargetPlane {
        let out = script("mgmt2/up.sh", &[]);
        TargetPlane {
            kubeconfig: PathBuf::from(out.trim().lines().last().unwrap_or_default()),
        }
    }
}

impl Drop for TargetPlane {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(e2e_dir().join("mgmt2/down.sh"))
            .arg("--purge")
            .output();
    }
}

/// `clusterctl move --kubeconfig <from> --to-kubeconfig <to> --namespace <ns>`, the real
/// clusterctl; returns how long it took.
fn clusterctl_move(from: &Path, to: &Path, ns: &str) -> Duration {
    let env = Env::get();
    let bin = std::env::var("CAPOW_E2E_CLUSTERCTL").expect("CAPOW_E2E_CLUSTERCTL");
    let home = env.state.join("clusterctl-home");
    std::fs::create_dir_all(&home).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(bin)
        .args(["move", "--namespace", ns, "-v", "1"])
        .arg("--kubeconfig")
        .arg(from)
        .arg("--to-kubeconfig")
        .arg(to)
        .env("HOME", &home)
        .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "clusterctl move: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

fn ids(list: &[Value]) -> BTreeSet<String> {
    list.iter()
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect()
}

/// What the cloud holds of cluster `ns/c1`: servers and ports by each Cluster UID tag, every
/// capow server whose `capow-cluster` metadata names the cluster (whatever its UID tags say),
/// and the network, subnet, router and security group by capow's names.
#[derive(Debug, PartialEq, Eq)]
struct Inventory {
    servers_old: BTreeSet<String>,
    servers_new: BTreeSet<String>,
    servers_named: BTreeSet<String>,
    ports_old: BTreeSet<String>,
    ports_new: BTreeSet<String>,
    cluster_resources: Vec<BTreeSet<String>>,
}

async fn inventory(cloud: &AdminCloud, ns: &str, old_uid: &str, new_uid: &str) -> Inventory {
    let tag = |uid: &str| format!("capow-cluster-uid={uid}");
    let capow_servers = cloud.servers_tagged("capow").await.unwrap();
    let base = format!("capow-{ns}-{CLUSTER}");
    let mut cluster_resources = Vec::new();
    for (kind, name) in [
        ("networks", base.clone()),
        ("subnets", format!("{base}-0")),
        ("routers", base.clone()),
        ("security-groups", format!("{base}-worker")),
    ] {
        cluster_resources.push(ids(&cloud.neutron_named(kind, &name).await.unwrap()));
    }
    Inventory {
        servers_old: ids(&cloud.servers_tagged(&tag(old_uid)).await.unwrap()),
        servers_new: ids(&cloud.servers_tagged(&tag(new_uid)).await.unwrap()),
        servers_named: ids(&capow_servers
            .into_iter()
            .filter(|s| s["metadata"]["capow-cluster"] == format!("{ns}/{CLUSTER}"))
            .collect::<Vec<_>>()),
        ports_old: ids(&cloud.neutron_tagged("ports", &tag(old_uid)).await.unwrap()),
        ports_new: ids(&cloud.neutron_tagged("ports", &tag(new_uid)).await.unwrap()),
        cluster_resources,
    }
}

/// Waits up to 240 s until MachineDeployment `md` in `client`'s `ns` has exactly `n` Machines,
/// all Running with a nodeRef.
async fn wait_running(client: &Client, ns: &str, md: &str, n: usize, manager: &Manager) {
    hcp::wait_running(client, ns, md, n, Duration::from_secs(240), &manager.log).await;
}

async fn orphans_total(manager: &Manager) -> f64 {
    let (_, body) = reqwest_get(&format!("http://{}/metrics", manager.admin))
        .await
        .unwrap();
    body.lines()
        .filter(|l| l.starts_with("capow_orphans_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn event_notes(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_moved_cluster_keeps_its_servers_and_is_scaled_and_deleted_on_the_target() {
    let env = Env::get();
    let cloud = AdminCloud::login().await.unwrap();
    let started = Instant::now();
    let hcp = HcpCluster::start_with(
        "move",
        HcpOptions {
            manager_args: SWEEP.iter().map(|s| (*s).to_owned()).collect(),
            ..HcpOptions::default()
        },
    )
    .await;
    let ns = hcp.ns.clone();
    let old_uid = hcp.cluster_uid.clone();
    hcp.add_machine_deployment("md", "m1.tiny", 5).await;
    hcp.set_replicas("md", 2).await;
    hcp.wait_running("md", 2, Duration::from_secs(240)).await;
    let up = started.elapsed();
    let before = inventory(&cloud, &ns, &old_uid, "none").await;
    assert_eq!(before.servers_old.len(), 2, "{before:?}");
    assert_eq!(before.servers_named, before.servers_old, "{before:?}");
    assert_eq!(before.ports_old.len(), 2, "{before:?}");
    assert!(
        before.cluster_resources.iter().all(|r| r.len() == 1),
        "network, subnet, router, security group: {before:?}"
    );

    // The second management plane, with capow's manager and a node registrar against it.
    let t0 = Instant::now();
    let target = TargetPlane::up();
    let target_up = t0.elapsed();
    let to = client_for(&target.kubeconfig).await;
    ensure_control_plane_standin(&to).await;
    script(
        "mgmt2/inventory.sh",
        &[&env.kubeconfig.display().to_string()],
    );
    script(
        "mgmt2/inventory.sh",
        &[&target.kubeconfig.display().to_string()],
    );
    let target_kubeconfig = manager_kubeconfig_on(&target.kubeconfig).await;
    let target_manager = Manager::start_on(&target_kubeconfig, &ns, &SWEEP).await;
    let stop = CancellationToken::new();
    let registrar = hcp::node_registrar(
        to.clone(),
        hcp.workload.clone(),
        ns.clone(),
        stop.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    // The user's part of a move (CAPO documents the same for its identity Secret): Secrets no
    // object owns move only with the clusterctl move label.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(hcp.client.clone(), &ns);
    for name in [IDENTITY, "workers-bootstrap"] {
        secrets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"clusterctl.cluster.x-k8s.io/move": "true"}}}),
                ),
            )
            .await
            .unwrap();
    }

    let took_move = clusterctl_move(&env.kubeconfig, &target.kubeconfig, &ns);
    let t1 = Instant::now();
    // The control-plane stand-in's status does not move (no status does); its controller
    // would write it again on the target, as on the source.
    let cp = dynamic(&to, &ns, STANDIN_GROUP, "v1alpha1", "HostedControlPlane").await;
    cp.patch_status(
        CLUSTER,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
        "initialization": {"controlPlaneInitialized": true}, "initialized": true, "ready": true,
        "version": "v1.36.3", "externalManagedControlPlane": true}})),
    )
    .await
    .unwrap();
    let clusters = dynamic(&to, &ns, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    let new_uid = clusters.get(CLUSTER).await.unwrap().metadata.uid.unwrap();
    assert_ne!(new_uid, old_uid, "clusterctl move re-creates the Cluster");
    let source_machines = dynamic(
        &hcp.client,
        &ns,
        INFRA,
        "v1alpha1",
        "OpenStackWorkerMachine",
    )
    .await;
    assert!(
        source_machines
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "clusterctl move deleted the source's machines"
    );

    // The target adopts: the same servers, by their providerIDs, now tagged with its UIDs.
    let machines = dynamic(&to, &ns, INFRA, "v1alpha1", "OpenStackWorkerMachine").await;
    let poll = Poll::new(
        format!("the target to adopt {:?}", before.servers_old),
        Duration::from_secs(180),
    )
    .every(Duration::from_millis(500))
    .log_tail(&target_manager.log, 40);
    loop {
        let list = machines.list(&ListParams::default()).await.unwrap().items;
        let adopted: BTreeSet<String> = list
            .iter()
            .map(|m| serde_json::to_value(m).unwrap())
            .filter(|m| m["status"]["initialization"]["provisioned"] == true)
            .filter_map(|m| m["status"]["instanceID"].as_str().map(str::to_owned))
            .collect();
        if list.len() == 2 && adopted == before.servers_old {
            break;
        }
        poll.tick(format_args!("adopted {adopted:?}")).await;
    }
    wait_running(&to, &ns, "md", 2, &target_manager).await;
    let adopt_took = t1.elapsed();
    // Both managers sweep every second; give them a few rounds before counting again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = inventory(&cloud, &ns, &old_uid, &new_uid).await;
    assert_eq!(
        after.servers_new, before.servers_old,
        "same servers: {after:?}"
    );
    assert!(after.servers_old.is_empty(), "all retagged: {after:?}");
    assert_eq!(
        after.servers_named, before.servers_old,
        "none created or deleted: {after:?}"
    );
    assert_eq!(after.ports_new, before.ports_old, "same ports: {after:?}");
    assert!(after.ports_old.is_empty(), "all retagged: {after:?}");
    assert_eq!(
        after.cluster_resources, before.cluster_resources,
        "the same network, subnet, router and security group"
    );
    for kind in ["networks", "subnets", "routers", "security-groups"] {
        let tagged = cloud
            .neutron_tagged(kind, &format!("capow-cluster-uid={new_uid}"))
            .await
            .unwrap();
        assert_eq!(tagged.len(), 1, "{kind} adopted: {tagged:?}");
    }
    assert_eq!(orphans_total(&hcp.manager).await, 0.0, "source sweep");
    assert_eq!(orphans_total(&target_manager).await, 0.0, "target sweep");
    let adopted_events = event_notes(&to, &ns, "Adopted").await;
    assert!(
        adopted_events.len() >= 3,
        "an Adopted event per machine and one for the cluster: {adopted_events:?}"
    );
    assert!(
        event_notes(&to, &ns, "ServerCreated").await.is_empty(),
        "the target created no server"
    );

    // Scaled on the target: one more server, the two moved ones kept.
    let t2 = Instant::now();
    let mds: Api<capow::capi::MachineDeployment> = Api::namespaced(to.clone(), &ns);
    mds.patch_scale(
        "md",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    wait_running(&to, &ns, "md", 3, &target_manager).await;
    let scale_took = t2.elapsed();
    let scaled = inventory(&cloud, &ns, &old_uid, &new_uid).await;
    assert_eq!(scaled.servers_new.len(), 3, "{scaled:?}");
    assert!(
        scaled.servers_new.is_superset(&before.servers_old),
        "{scaled:?}"
    );
    assert_eq!(scaled.servers_named, scaled.servers_new, "{scaled:?}");

    // Deleted on the target: every server, port and network resource goes.
    let t3 = Instant::now();
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .unwrap();
    let infra = dynamic(&to, &ns, INFRA, "v1alpha1", "OpenStackWorkerCluster").await;
    Poll::new(
        format!("Cluster {ns}/{CLUSTER} deleted on the target"),
        Duration::from_secs(240),
    )
    .every(Duration::from_millis(500))
    .log_tail(&target_manager.log, 40)
    .until(|| async {
        clusters.get_opt(CLUSTER).await.unwrap().is_none()
            && infra.get_opt(CLUSTER).await.unwrap().is_none()
    })
    .await;
    let delete_took = t3.elapsed();
    let gone = inventory(&cloud, &ns, &old_uid, &new_uid).await;
    assert!(
        gone.servers_old.is_empty()
            && gone.servers_new.is_empty()
            && gone.servers_named.is_empty()
            && gone.ports_old.is_empty()
            && gone.ports_new.is_empty()
            && gone.cluster_resources.iter().all(BTreeSet::is_empty),
        "left after deleting on the target: {gone:?}"
    );

    stop.cancel();
    let _ = registrar.await;
    target_manager.stop().await;
    hcp.release().await;
    drop(target);
    env.record(&format!(
        "clusterctl move: 2 workers up in {:.0} s; second management plane up in {:.0} s; \
         clusterctl move {:.1} s; target adopted 2 servers, 2 ports and the network in {:.1} s \
         (servers before {} / after {}, ports {} / {}, created 0, deleted 0, orphaned 0); \
         scaled to 3 in {:.1} s; deleted from the target in {:.1} s",
        up.as_secs_f64(),
        target_up.as_secs_f64(),
        took_move.as_secs_f64(),
        adopt_took.as_secs_f64(),
        before.servers_old.len(),
        after.servers_new.len(),
        before.ports_old.len(),
        after.ports_new.len(),
        scale_took.as_secs_f64(),
        delete_took.as_secs_f64()
    ));
}

/// A namespace with an identity Secret, a Cluster on the cloud's existing network and a
/// manager; machines are added one by one (the pattern of `tests/crash.rs`).
struct Fixture {
    client: Client,
    ns: TestNamespace,
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        let env = Env::get();
        let client = env.client().await;
        let ns = TestNamespace::with_identity(&client, prefix, IDENTITY).await;
        apply_secret(
            &client,
            &ns.name,
            "bootstrap",
            &[("value", b"#cloud-config\n"), ("format", b"cloud-config")],
        )
        .await;
        apply_cluster(&client, &ns.name, "c1", existing_network_spec(IDENTITY))
            .await
            .unwrap();
        Fixture { client, ns }
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    async fn manager(&self) -> Manager {
        Manager::start(
            self.ns(),
            &["--orphan-sweep", "off", "--port-creation", "neutron"],
        )
        .await
    }

    async fn machines(&self) -> Api<DynamicObject> {
        dynamic(
            &self.client,
            self.ns(),
            INFRA,
            "v1alpha1",
            "OpenStackWorkerMachine",
        )
        .await
    }

    /// A CAPI Machine and its OpenStackWorkerMachine `name` (with `provider_id` set from the
    /// start when given); returns the OpenStackWorkerMachine's UID.
    async fn add_machine(&self, name: &str, provider_id: Option<&str>) -> String {
        let machine = apply_json(&self.client, &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": name, "namespace": self.ns(), "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
            "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "bootstrap"},
                     "infrastructureRef": {"apiGroup": INFRA, "kind": "OpenStackWorkerMachine", "name": name}}}))
            .await
            .unwrap();
        let mut spec = json!({
            "flavor": {"filter": {"name": "m1.tiny"}},
            "image": {"filter": {"name": "osdev-tiny"}},
            "identityRef": {"name": IDENTITY, "cloudName": Env::get().cloud},
        });
        if let Some(pid) = provider_id {
            spec["providerID"] = json!(pid);
        }
        let oswm = apply_json(&self.client, &json!({"apiVersion": format!("{INFRA}/v1alpha1"), "kind": "OpenStackWorkerMachine",
            "metadata": {"name": name, "namespace": self.ns(), "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
                         "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": name, "uid": machine["metadata"]["uid"]}]},
            "spec": spec}))
            .await
            .unwrap();
        oswm["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    async fn machine(&self, name: &str) -> Option<Value> {
        self.machines()
            .await
            .get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// Waits until `name`'s `Ready` condition has `reason`; returns the object.
    async fn wait_reason(&self, name: &str, reason: &str, manager: &Manager) -> Value {
        Poll::new(
            format!("{name}: Ready with reason {reason}"),
            Duration::from_secs(150),
        )
        .every(Duration::from_millis(300))
        .log_tail(&manager.log, 40)
        .until(|| async {
            let m = self.machine(name).await;
            let ready = m.as_ref().and_then(|m| {
                m["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .cloned()
            });
            match (m, ready) {
                (Some(m), Some(r)) if r["reason"] == reason => Ok(m),
                (_, ready) => Err(format!("last {ready:?}")),
            }
        })
        .await
    }

    /// Empties the status of `name` (as a restore without status, or a lost status, leaves it).
    async fn wipe_status(&self, name: &str) {
        let m = self.machine(name).await.unwrap();
        let nulls: serde_json::Map<String, Value> = m["status"]
            .as_object()
            .map(|o| o.keys().map(|k| (k.clone(), Value::Null)).collect())
            .unwrap_or_default();
        self.machines()
            .await
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": nulls })),
            )
            .await
            .unwrap();
        let wiped = self.machine(name).await.unwrap();
        assert!(
            wiped["status"]
                .as_object()
                .is_none_or(serde_json::Map::is_empty),
            "status not wiped: {}",
            wiped["status"]
        );
    }

    async fn delete_machine_and_wait(&self, name: &str, manager: &Manager) {
        let _ = self
            .machines()
            .await
            .delete(name, &DeleteParams::default())
            .await;
        Poll::new(format!("{name} deleted"), Duration::from_secs(150))
            .every(Duration::from_millis(300))
            .log_tail(&manager.log, 40)
            .until(|| async { self.machine(name).await.is_none() })
            .await;
    }

    async fn finish(self, manager: Manager) {
        let clusters = dynamic(
            &self.client,
            self.ns(),
            "cluster.x-k8s.io",
            "v1beta2",
            "Cluster",
        )
        .await;
        let infra = dynamic(
            &self.client,
            self.ns(),
            INFRA,
            "v1alpha1",
            "OpenStackWorkerCluster",
        )
        .await;
        let _ = clusters.delete("c1", &DeleteParams::default()).await;
        Poll::new("cluster c1 deleted", Duration::from_secs(150))
            .every(Duration::from_millis(300))
            .log_tail(&manager.log, 40)
            .until(|| async {
                clusters.get_opt("c1").await.unwrap().is_none()
                    && infra.get_opt("c1").await.unwrap().is_none()
            })
            .await;
        manager.stop().await;
        self.ns.delete().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_machine_whose_status_was_wiped_keeps_its_server_and_still_deletes_it() {
    let cloud = AdminCloud::login().await.unwrap();
    let f = Fixture::new("wiped").await;
    let manager = f.manager().await;
    let uid = f.add_machine("w1", None).await;
    let ready = f.wait_reason("w1", "InstanceReady", &manager).await;
    let server = ready["status"]["instanceID"].as_str().unwrap().to_owned();
    let tag = format!("capow-machine-uid={uid}");
    let ports = ids(&cloud.neutron_tagged("ports", &tag).await.unwrap());
    assert_eq!(ports.len(), 1);

    // Status wiped while no manager runs; the next one finds the server by spec.providerID.
    manager.stop().await;
    f.wipe_status("w1").await;
    let manager = f.manager().await;
    let again = f.wait_reason("w1", "InstanceReady", &manager).await;
    assert_eq!(
        again["status"]["instanceID"],
        server.as_str(),
        "the same server"
    );
    assert_eq!(
        ids(&cloud.servers_tagged(&tag).await.unwrap()),
        BTreeSet::from([server.clone()]),
        "no second server"
    );
    assert_eq!(
        ids(&cloud.neutron_tagged("ports", &tag).await.unwrap()),
        ports
    );
    assert_eq!(
        event_notes(&f.client, f.ns(), "ServerCreated").await.len(),
        1,
        "one server was ever created"
    );

    // Wiped again, then deleted before any manager saw it: the deletion still finds the
    // server through spec.providerID and removes it with its port.
    manager.stop().await;
    f.wipe_status("w1").await;
    let _ = f
        .machines()
        .await
        .delete("w1", &DeleteParams::default())
        .await;
    let manager = f.manager().await;
    f.delete_machine_and_wait("w1", &manager).await;
    assert!(
        cloud.servers_tagged(&tag).await.unwrap().is_empty(),
        "server {server} left behind\n{}",
        log_tail(&manager.log, 40)
    );
    assert!(
        cloud
            .neutron_tagged("ports", &tag)
            .await
            .unwrap()
            .is_empty()
    );
    f.finish(manager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_provider_id_capow_did_not_make_is_reported_and_never_adopted_or_deleted() {
    let env = Env::get();
    let cloud = AdminCloud::login().await.unwrap();
    let f = Fixture::new("userpid").await;
    let manager = f.manager().await;
    // A server the user made (no capow tags), named like the machine that will claim it.
    let user = openstack(
        &env.cloud,
        &[
            "server",
            "create",
            "--flavor",
            "m1.tiny",
            "--image",
            "osdev-tiny",
            "--network",
            "osdev-net",
            "--tag",
            "team-a",
            "user1",
        ],
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let missing = "00000000-0000-4000-8000-000000000001";
    let cases = [("user1", user.clone()), ("missing1", missing.to_owned())];
    let mut uids = Vec::new();
    for (name, server) in &cases {
        uids.push(
            f.add_machine(name, Some(&format!("openstack:///{server}")))
                .await,
        );
    }
    for (name, server) in &cases {
        let m = f.wait_reason(name, "ProviderIDNotOwned", &manager).await;
        let ready = m["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        let message = ready["message"].as_str().unwrap();
        assert_eq!(ready["status"], "False");
        assert!(
            message.starts_with(&format!("spec.providerID is openstack:///{server}, but "))
                && message.contains("creates no other server"),
            "{name}: {message}"
        );
        assert!(m["status"]["instanceID"].is_null(), "{name}: not adopted");
    }
    let user_before = cloud
        .get("compute", &format!("/servers/{user}"))
        .await
        .unwrap();
    for uid in &uids {
        assert!(
            cloud
                .servers_tagged(&format!("capow-machine-uid={uid}"))
                .await
                .unwrap()
                .is_empty(),
            "capow created a server for a machine whose providerID names another"
        );
    }
    // Deleting the machines deletes nothing of the user's.
    for (name, _) in &cases {
        f.delete_machine_and_wait(name, &manager).await;
    }
    let user_after = cloud
        .get("compute", &format!("/servers/{user}"))
        .await
        .unwrap();
    assert_eq!(
        user_after["server"]["tags"], user_before["server"]["tags"],
        "the user's server keeps its tags"
    );
    assert!(
        !matches!(
            user_after["server"]["status"].as_str(),
            Some("DELETED" | "SOFT_DELETED")
        ),
        "the user's server was not deleted: {}",
        user_after["server"]["status"]
    );
    assert!(
        user_after["server"]["metadata"]
            .get("capow-machine-uid")
            .is_none()
    );
    openstack_run(&env.cloud, &["server", "delete", &user]).unwrap();
    f.finish(manager).await;
}
