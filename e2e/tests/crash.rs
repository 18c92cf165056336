//! Crash points: the manager exits (code 75, like `kill -9`: nothing is flushed or cleaned up)
//! at one of the fault points of `capow::controllers::FaultPoint`, spread over machine and
//! cluster creation and deletion: before and after each OpenStack create, before and after each
//! status write, while a server create is in flight, during port, volume, trunk, network,
//! router and security-group handling. A new manager then takes over. Whatever the point, the
//! end state is the same: exactly one server, port, trunk and volume per machine and one
//! network, subnet, router and security group per cluster while they exist, nothing once they
//! are deleted. Counted with an admin REST client independent of capow's
//! ([`capow_e2e::cloud`]), by ownership tag and by name (so an untagged leftover counts too).
//! The points inside capow's port handling run with `--port-creation neutron` (by default Nova
//! makes a plain port with the server); the others with the default.
//!
//! `CAPOW_E2E_CRASH_POINTS` limits the points (a comma-separated list of point names, or a
//! number n for the first n in a rotation seeded by the date); unset runs every point.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use capow_e2e::cloud::AdminCloud;
use capow_e2e::{
    Env, Manager, Poll, TestNamespace, apply_cluster, apply_json, apply_secret,
    existing_network_spec, log_tail,
};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};

const IDENTITY: &str = "cloud-config";
/// Short enough for a test, long enough for Nova to finish a create whose sender died.
const SETTLE: &str = "5s";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    MachineCreate,
    MachineDelete,
    ClusterCreate,
    ClusterDelete,
}

/// What a point needs: the phase it fires in and the machine features that reach it.
#[derive(Clone, Copy, Debug)]
struct Point {
    name: &'static str,
    phase: Phase,
    trunk: bool,
    volume: bool,
}

const fn p(name: &'static str, phase: Phase, trunk: bool, volume: bool) -> Point {
    Point {
        name,
        phase,
        trunk,
        volume,
    }
}

const POINTS: &[Point] = &[
    p(
        "machine-after-resolved-write",
        Phase::MachineCreate,
        false,
        false,
    ),
    p(
        "machine-after-volume-create",
        Phase::MachineCreate,
        false,
        true,
    ),
    p(
        "machine-after-port-create",
        Phase::MachineCreate,
        false,
        false,
    ),
    p("machine-after-port-tag", Phase::MachineCreate, true, false),
    p(
        "machine-after-trunk-create",
        Phase::MachineCreate,
        true,
        false,
    ),
    p(
        "machine-after-create-intent-write",
        Phase::MachineCreate,
        false,
        false,
    ),
    p(
        "machine-during-server-create",
        Phase::MachineCreate,
        false,
        true,
    ),
    p(
        "machine-after-server-create",
        Phase::MachineCreate,
        true,
        false,
    ),
    p(
        "machine-after-instance-id-write",
        Phase::MachineCreate,
        false,
        false,
    ),
    p(
        "machine-after-provider-id-write",
        Phase::MachineCreate,
        false,
        false,
    ),
    p(
        "machine-after-server-delete",
        Phase::MachineDelete,
        true,
        true,
    ),
    p(
        "machine-after-trunk-delete",
        Phase::MachineDelete,
        true,
        false,
    ),
    p(
        "machine-after-port-delete",
        Phase::MachineDelete,
        false,
        false,
    ),
    p(
        "machine-after-volume-delete",
        Phase::MachineDelete,
        false,
        true,
    ),
    p(
        "cluster-after-network-create",
        Phase::ClusterCreate,
        false,
        false,
    ),
    p(
        "cluster-after-subnet-create",
        Phase::ClusterCreate,
        false,
        false,
    ),
    p(
        "cluster-after-router-create",
        Phase::ClusterCreate,
        false,
        false,
    ),
    p(
        "cluster-after-router-interface-add",
        Phase::ClusterCreate,
        false,
        false,
    ),
    p(
        "cluster-after-security-group-create",
        Phase::ClusterCreate,
        false,
        false,
    ),
    p(
        "cluster-after-security-group-rule-create",
        Phase::ClusterCreate,
        false,
        false,
    ),
    p(
        "cluster-after-security-group-delete",
        Phase::ClusterDelete,
        false,
        false,
    ),
    p(
        "cluster-after-router-interface-remove",
        Phase::ClusterDelete,
        false,
        false,
    ),
    p(
        "cluster-after-router-delete",
        Phase::ClusterDelete,
        false,
        false,
    ),
    p(
        "cluster-after-network-delete",
        Phase::ClusterDelete,
        false,
        false,
    ),
];

/// The points this run tries (see the module docs).
fn selected() -> Vec<Point> {
    match std::env::var("CAPOW_E2E_CRASH_POINTS") {
        Err(_) => POINTS.to_vec(),
        Ok(v) if v.trim().parse::<usize>().is_ok() => {
            let n: usize = v.trim().parse().unwrap();
            let day = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 86_400) as usize;
            (0..n.min(POINTS.len()))
                .map(|i| POINTS[(day * 7 + i) % POINTS.len()])
                .collect()
        }
        Ok(v) => v
            .split(',')
            .map(|name| {
                *POINTS
                    .iter()
                    .find(|p| p.name == name.trim())
                    .unwrap_or_else(|| panic!("unknown crash point {name}"))
            })
            .collect(),
    }
}

/// One namespace with an identity Secret and a Cluster; machines use the cloud's existing
/// network, cluster points a managed network, subnet, router and security group.
struct Case {
    client: Client,
    ns: TestNamespace,
    point: Point,
    managed: bool,
}

impl Case {
    async fn new(point: Point) -> Case {
        let client = Env::get().client().await;
        let short: String = point
            .name
            .split('-')
            .map(|w| w.chars().next().unwrap())
            .collect();
        let ns = TestNamespace::with_identity(&client, &format!("crash-{short}"), IDENTITY).await;
        let managed = matches!(point.phase, Phase::ClusterCreate | Phase::ClusterDelete);
        Case {
            client,
            ns,
            point,
            managed,
        }
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    /// Before the step that is to crash: when `arm`, stops `manager` and starts one with the
    /// fault point armed; else keeps `manager`.
    async fn arm(&self, arm: bool, manager: Manager) -> Manager {
        if arm {
            manager.stop().await;
            self.manager(true).await
        } else {
            manager
        }
    }

    /// After the step that was to crash (`armed`): waits for the crash and starts a manager
    /// without the fault; else keeps `manager`.
    async fn survive(&self, armed: bool, manager: Manager) -> Manager {
        if armed {
            expect_crash(manager, self.point).await;
            self.manager(false).await
        } else {
            manager
        }
    }

    async fn manager(&self, fault: bool) -> Manager {
        let mut args = vec!["--server-create-settle", SETTLE, "--orphan-sweep", "off"];
        if self.point.name.contains("-port-") {
            // The points inside capow's port handling: a plain port is Nova's by default.
            args.extend(["--port-creation", "neutron"]);
        }
        if fault {
            args.extend(["--fault-injection", self.point.name]);
        }
        Manager::start(self.ns(), &args).await
    }

    async fn api(&self, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
        capow_e2e::hcp::dynamic(&self.client, self.ns(), group, version, kind).await
    }

    async fn create_cluster(&self) {
        let infra_spec = if self.managed {
            // A CIDR per namespace keeps concurrent cases apart on the shared router pool.
            let n = u32::from_str_radix(&self.ns()[self.ns().len() - 4..], 16).unwrap_or(0);
            json!({"identityRef": {"name": IDENTITY, "cloudName": Env::get().cloud},
                   "managedSubnets": [{"cidr": format!("10.{}.{}.0/24", 150 + n % 50, n % 250)}],
                   "managedSecurityGroups": {"workerNodesSecurityGroupRules": [
                       {"name": "vxlan", "direction": "ingress", "protocol": "udp", "portRangeMin": 8472, "portRangeMax": 8472, "remoteManagedGroups": ["worker"]},
                       {"name": "bgp", "direction": "ingress", "protocol": "tcp", "portRangeMin": 179, "portRangeMax": 179, "remoteManagedGroups": ["worker"]}]}})
        } else {
            existing_network_spec(IDENTITY)
        };
        apply_cluster(&self.client, self.ns(), "c1", infra_spec)
            .await
            .unwrap();
    }

    async fn cluster_uid(&self) -> String {
        let clusters = self.api("cluster.x-k8s.io", "v1beta2", "Cluster").await;
        clusters.get("c1").await.unwrap().metadata.uid.unwrap()
    }

    async fn wait_cluster_provisioned(&self, manager: &Manager) {
        let clusters = self.api("cluster.x-k8s.io", "v1beta2", "Cluster").await;
        Poll::new(
            format!("{}: the Cluster provisioned", self.point.name),
            Duration::from_secs(120),
        )
        .every(Duration::from_millis(300))
        .log_tail(&manager.log, 40)
        .until(|| async {
            let c = serde_json::to_value(clusters.get("c1").await.unwrap()).unwrap();
            if c["status"]["initialization"]["infrastructureProvisioned"] == true {
                Ok(())
            } else {
                Err(format!("status {}", c["status"]))
            }
        })
        .await;
    }

    async fn create_machine(&self) -> String {
        apply_secret(
            &self.client,
            self.ns(),
            "bootstrap",
            &[("value", b"#cloud-config\n"), ("format", b"cloud-config")],
        )
        .await;
        let name = self.ns();
        let machine = apply_json(&self.client, &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": name, "namespace": self.ns(), "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
            "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "bootstrap"},
                     "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerMachine", "name": name}}}))
            .await
            .unwrap();
        let mut spec = json!({
            "flavor": {"filter": {"name": "m1.tiny"}},
            "image": {"filter": {"name": "osdev-tiny"}},
            "ports": [{"network": {"filter": {"name": "osdev-net"}}}],
            "identityRef": {"name": IDENTITY, "cloudName": Env::get().cloud},
        });
        if self.point.trunk {
            spec["trunk"] = json!(true);
        }
        if self.point.volume {
            spec["additionalBlockDevices"] =
                json!([{"name": "data", "sizeGiB": 1, "storage": {"type": "Volume"}}]);
        }
        let oswm = apply_json(&self.client, &json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachine",
            "metadata": {"name": name, "namespace": self.ns(), "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
                         "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "name": name, "uid": machine["metadata"]["uid"]}]},
            "spec": spec}))
            .await
            .unwrap();
        oswm["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    async fn machine(&self) -> Option<Value> {
        let api = self
            .api(
                "infrastructure.cluster.x-k8s.io",
                "v1alpha1",
                "OpenStackWorkerMachine",
            )
            .await;
        api.get_opt(self.ns())
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    async fn wait_machine_ready(&self, manager: &Manager) -> Value {
        Poll::new(
            format!("{}: the machine ready", self.point.name),
            Duration::from_secs(150),
        )
        .every(Duration::from_millis(300))
        .log_tail(&manager.log, 40)
        .until(|| async {
            match self.machine().await {
                Some(m)
                    if m["status"]["initialization"]["provisioned"] == true
                        && m["spec"]["providerID"].is_string() =>
                {
                    Ok(m)
                }
                m => Err(format!("status {:?}", m.map(|m| m["status"].clone()))),
            }
        })
        .await
    }

    async fn delete_machine(&self) {
        let api = self
            .api(
                "infrastructure.cluster.x-k8s.io",
                "v1alpha1",
                "OpenStackWorkerMachine",
            )
            .await;
        let _ = api.delete(self.ns(), &DeleteParams::default()).await;
    }

    async fn wait_machine_gone(&self, manager: &Manager) {
        Poll::new(
            format!("{}: the machine deleted", self.point.name),
            Duration::from_secs(150),
        )
        .every(Duration::from_millis(300))
        .log_tail(&manager.log, 40)
        .until(|| async { self.machine().await.is_none() })
        .await;
    }

    async fn delete_cluster(&self) {
        let clusters = self.api("cluster.x-k8s.io", "v1beta2", "Cluster").await;
        let _ = clusters.delete("c1", &DeleteParams::default()).await;
    }

    async fn wait_cluster_gone(&self, manager: &Manager) {
        let clusters = self.api("cluster.x-k8s.io", "v1beta2", "Cluster").await;
        let infra = self
            .api(
                "infrastructure.cluster.x-k8s.io",
                "v1alpha1",
                "OpenStackWorkerCluster",
            )
            .await;
        Poll::new(
            format!("{}: the cluster deleted", self.point.name),
            Duration::from_secs(150),
        )
        .every(Duration::from_millis(300))
        .log_tail(&manager.log, 40)
        .until(|| async {
            clusters.get_opt("c1").await.unwrap().is_none()
                && infra.get_opt("c1").await.unwrap().is_none()
        })
        .await;
    }

    /// OpenStack resources of the machine with `uid`: (servers, ports, trunks, volumes), by tag
    /// and (ports) by capow's port name, so an untagged port counts too, and by the server a
    /// port Nova made is bound to.
    async fn machine_counts(&self, cloud: &AdminCloud, uid: &str) -> [usize; 4] {
        let tag = format!("capow-machine-uid={uid}");
        let servers = cloud.servers_tagged(&tag).await.unwrap().len();
        // capow's ports by tag, Nova's by the server they are bound to.
        let mut ports: Vec<String> = cloud
            .machine_ports(&tag)
            .await
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        // The machine is named after the namespace, so its port name is unique in the cloud.
        for p in cloud
            .neutron_named("ports", &format!("{}-0", self.ns()))
            .await
            .unwrap()
        {
            let id = p["id"].as_str().unwrap().to_owned();
            if !ports.contains(&id) {
                ports.push(id);
            }
        }
        let trunks = cloud.neutron_tagged("trunks", &tag).await.unwrap().len();
        let volumes = cloud
            .volumes_with_metadata("capow-machine-uid", uid)
            .await
            .unwrap()
            .len();
        [servers, ports.len(), trunks, volumes]
    }

    /// Cluster resources: (networks, subnets, routers, security groups), by name.
    async fn cluster_counts(&self, cloud: &AdminCloud) -> [usize; 4] {
        let base = format!("capow-{}-c1", self.ns());
        [
            cloud.neutron_named("networks", &base).await.unwrap().len(),
            cloud
                .neutron_named("subnets", &format!("{base}-0"))
                .await
                .unwrap()
                .len(),
            cloud.neutron_named("routers", &base).await.unwrap().len(),
            cloud
                .neutron_named("security-groups", &format!("{base}-worker"))
                .await
                .unwrap()
                .len(),
        ]
    }

    /// Runs the case; returns a line for the measurements.
    async fn run(self) -> String {
        let cloud = AdminCloud::login().await.unwrap();
        let point = self.point;
        let started = Instant::now();
        let want_machine = [1, 1, usize::from(point.trunk), usize::from(point.volume)];
        let line = match point.phase {
            Phase::MachineCreate | Phase::MachineDelete => {
                let creating = point.phase == Phase::MachineCreate;
                let manager = self.manager(creating).await;
                self.create_cluster().await;
                self.wait_cluster_provisioned(&manager).await;
                let uid = self.create_machine().await;
                let manager = self.survive(creating, manager).await;
                self.wait_machine_ready(&manager).await;
                let up = self.machine_counts(&cloud, &uid).await;
                assert_eq!(
                    up,
                    want_machine,
                    "{}: servers, ports, trunks, volumes after convergence\n{}",
                    point.name,
                    log_tail(&manager.log, 40)
                );
                let manager = self.arm(!creating, manager).await;
                self.delete_machine().await;
                let manager = self.survive(!creating, manager).await;
                self.wait_machine_gone(&manager).await;
                let down = self.machine_counts(&cloud, &uid).await;
                assert_eq!(
                    down,
                    [0; 4],
                    "{}: servers, ports, trunks, volumes left after deletion\n{}",
                    point.name,
                    log_tail(&manager.log, 40)
                );
                self.delete_cluster().await;
                self.wait_cluster_gone(&manager).await;
                manager.stop().await;
                format!(
                    "crash point {}: converged to {up:?} (servers, ports, trunks, volumes), {down:?} after delete, {:.1} s",
                    point.name,
                    started.elapsed().as_secs_f64()
                )
            }
            Phase::ClusterCreate | Phase::ClusterDelete => {
                let creating = point.phase == Phase::ClusterCreate;
                let manager = self.manager(creating).await;
                self.create_cluster().await;
                let manager = self.survive(creating, manager).await;
                self.wait_cluster_provisioned(&manager).await;
                let uid = self.cluster_uid().await;
                let up = self.cluster_counts(&cloud).await;
                assert_eq!(
                    up,
                    [1; 4],
                    "{}: networks, subnets, routers, security groups\n{}",
                    point.name,
                    log_tail(&manager.log, 40)
                );
                for kind in ["networks", "subnets", "routers", "security-groups"] {
                    let tagged = cloud
                        .neutron_tagged(kind, &format!("capow-cluster-uid={uid}"))
                        .await
                        .unwrap();
                    assert_eq!(tagged.len(), 1, "{}: {kind} tagged: {tagged:?}", point.name);
                }
                let manager = self.arm(!creating, manager).await;
                self.delete_cluster().await;
                let manager = self.survive(!creating, manager).await;
                self.wait_cluster_gone(&manager).await;
                let down = self.cluster_counts(&cloud).await;
                assert_eq!(
                    down,
                    [0; 4],
                    "{}: cluster resources left after deletion\n{}",
                    point.name,
                    log_tail(&manager.log, 40)
                );
                manager.stop().await;
                format!(
                    "crash point {}: converged to {up:?} (networks, subnets, routers, security groups), {down:?} after delete, {:.1} s",
                    point.name,
                    started.elapsed().as_secs_f64()
                )
            }
        };
        self.ns.delete().await;
        line
    }
}

async fn expect_crash(mut manager: Manager, point: Point) {
    let exit = manager.wait_exit(Duration::from_secs(120)).await;
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(75),
        "{}: the manager did not exit at the fault point\n{}",
        point.name,
        log_tail(&manager.log, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn every_crash_point_converges_without_duplicates_or_orphans() {
    let env = Env::get();
    let points = selected();
    let started = Instant::now();
    let lines: Vec<String> = futures::stream::iter(points.iter().copied())
        .map(|point| async move { Case::new(point).await.run().await })
        .buffer_unordered(4)
        .collect()
        .await;
    for l in &lines {
        env.record(l);
    }
    env.record(&format!(
        "crash points: {} tried, 0 duplicates, 0 orphans, {:.0} s",
        lines.len(),
        started.elapsed().as_secs_f64()
    ));
}
