//! A hosted-control-plane cluster on the e2e environment, with the real Cluster API: the
//! management side (a `Cluster` whose control plane is the `HostedControlPlane` stand-in and
//! whose infrastructure is an `OpenStackWorkerCluster` with a managed network, router and
//! worker security group), a workload cluster of its own (kube-apiserver, kube-scheduler,
//! kube-controller-manager, kwok; published as the `<cluster>-kubeconfig` Secret, as a hosted
//! control plane does), a capow manager with its externalgrpc server on loopback, and a node
//! registrar standing in for the kubelets (why these two stand-ins: README.md, "Honest limits of
//! the demo and the tests").
//!
//! Used by `tests/capi.rs` (scaling through CAPI), `tests/cluster_autoscaler.rs` (the real
//! cluster-autoscaler, see [`crate::autoscaler`]), `tests/faults.rs` and `tests/ha.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use prost::Message;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    Env, Manager, Poll, STANDIN_GROUP, TestNamespace, apply_json, apply_secret, client_for,
    clouds_yaml_text, ensure_control_plane_standin, workload_down, workload_up,
};

/// Name of the identity Secret (clouds.yaml) in the cluster's namespace.
pub const IDENTITY: &str = "cloud-config";
/// Name of the Cluster (and of its infrastructure and control-plane objects).
pub const CLUSTER: &str = "c1";
const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// The Kubernetes version of the fixture: the hosted control plane stand-in's, the
/// MachineDeployments' `spec.template.spec.version` and the kubelet version the node registrar
/// reports. CAPI v1.14 counts a Machine up to date only when its Node's
/// `status.nodeInfo.kubeletVersion` equals the Machine's `spec.version`
/// (`setUpToDateCondition` in `core/reconcilers/machine/machine_controller_status.go` of
/// cluster-api v1.14.2), and
/// capow's maximum node age waits while Machines are not up to date.
pub const KUBERNETES_VERSION: &str = "v1.36.3";

/// An `Api<DynamicObject>` for a namespaced kind, discovered on the API server.
pub async fn dynamic(
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

/// Nova servers (all projects) tagged with the cluster's UID.
pub fn servers_of(cluster_uid: &str) -> Vec<Value> {
    crate::servers_tagged(&format!("capow-cluster-uid={cluster_uid}"))
}

/// Calls one externalgrpc RPC with grpc-go (`grpcprobe`, dialling as cluster-autoscaler's
/// externalgrpc client does) over the cloud-config file at `cloud_config`; returns the encoded
/// response. Panics when the RPC fails.
pub fn probe(cloud_config: &str, method: &str, request: &impl Message) -> Vec<u8> {
    let out = probe_output(cloud_config, method, request);
    assert!(
        out.status.success(),
        "grpcprobe {method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap()
}

/// The template Node of node group `group_id` (NodeGroupTemplateNodeInfo through [`probe`],
/// decoded from `nodeBytes`).
pub fn template_node(
    cloud_config: &str,
    group_id: &str,
) -> capow::autoscaler::proto::core_v1::Node {
    use capow::autoscaler::proto::externalgrpc as pb;
    let template = pb::NodeGroupTemplateNodeInfoResponse::decode(
        probe(
            cloud_config,
            "NodeGroupTemplateNodeInfo",
            &pb::NodeGroupTemplateNodeInfoRequest {
                id: group_id.to_owned(),
            },
        )
        .as_slice(),
    )
    .unwrap();
    capow::autoscaler::proto::core_v1::Node::decode(template.node_bytes.as_slice()).unwrap()
}

/// Like [`probe`], but returns grpcprobe's stderr (the gRPC status) when the RPC fails.
pub fn try_probe(
    cloud_config: &str,
    method: &str,
    request: &impl Message,
) -> Result<Vec<u8>, String> {
    let out = probe_output(cloud_config, method, request);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap())
}

fn probe_output(cloud_config: &str, method: &str, request: &impl Message) -> std::process::Output {
    let bin = std::env::var("CAPOW_GRPCPROBE").expect("CAPOW_GRPCPROBE");
    let b64 = base64::engine::general_purpose::STANDARD.encode(request.encode_to_vec());
    std::process::Command::new(bin)
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
        .unwrap()
}

/// What a test may change about an [`HcpCluster`].
#[derive(Clone, Debug, Default)]
pub struct HcpOptions {
    /// clouds.yaml of the identity Secret; default: the environment's (`clouds_yaml_text`).
    /// A test routes capow through `osproxy` with the proxy's version of it.
    pub clouds_yaml: Option<String>,
    /// Extra `capow manager` flags.
    pub manager_args: Vec<String>,
    /// How the node registrar registers Nodes (taints, kwok readiness).
    pub registration: Registration,
}

/// How [`node_registrar_with`] registers Nodes, as a kubelet's flags would.
#[derive(Clone, Debug, Default)]
pub struct Registration {
    /// Taints every Node registers with (`v1.Taint` objects), as kubelet
    /// `--register-with-taints` or kubeadm `nodeRegistration.taints` would put them.
    pub taints: Vec<Value>,
    /// Registers every Node labelled [`KWOK_DISABLED_LABEL`]: kwok leaves its status alone, so
    /// it stays NotReady until a test removes the label (`e2e/workload/up.sh`).
    pub not_ready: bool,
}

/// `status.nodeInfo` of a registered Node: kubelet and kube-proxy at [`KUBERNETES_VERSION`]
/// (kwok keeps a kubelet version a Node registered with), the rest as a Linux amd64 host.
fn node_info() -> serde_json::Value {
    json!({"kubeletVersion": KUBERNETES_VERSION, "kubeProxyVersion": "", "architecture": "amd64",
           "operatingSystem": "linux", "osImage": "kwok", "kernelVersion": "", "machineID": "",
           "systemUUID": "", "bootID": "", "containerRuntimeVersion": ""})
}

/// The label kwok's `--disregard-status-with-label-selector` of the workload clusters matches
/// (`e2e/workload/up.sh`): a Node carrying it stays NotReady.
pub const KWOK_DISABLED_LABEL: (&str, &str) = ("e2e.capow.dev/kwok", "disabled");

/// A running hosted-control-plane cluster; see the module docs. Tear down with
/// [`HcpCluster::finish`].
pub struct HcpCluster {
    /// Admin client of the management cluster.
    pub client: Client,
    /// Admin client of the workload cluster.
    pub workload: Client,
    /// The cluster's namespace in the management cluster.
    pub ns: String,
    /// The Cluster's UID (capow tags every OpenStack resource of the cluster with it).
    pub cluster_uid: String,
    /// The capow manager under test.
    pub manager: Manager,
    /// The OpenStackWorkerCluster as first provisioned.
    pub infra: Value,
    /// Admin kubeconfig of the workload cluster (what a cluster-autoscaler of this cluster
    /// uses; the same file is in the `<cluster>-kubeconfig` Secret).
    pub workload_kubeconfig: PathBuf,
    guard: TestNamespace,
    workload_name: String,
    mount: PathBuf,
    manager_args: Vec<String>,
    stop: CancellationToken,
    registrar: tokio::task::JoinHandle<()>,
    registrar_paused: Arc<AtomicBool>,
}

impl HcpCluster {
    /// Creates the namespace `<prefix>-<random>`, the workload cluster, the Cluster with its
    /// stand-in control plane and OpenStackWorkerCluster, starts capow (externalgrpc on a free
    /// loopback port) and the node registrar, and waits until CAPI reports the infrastructure
    /// provisioned and the control-plane endpoint copied.
    pub async fn start(prefix: &str) -> HcpCluster {
        HcpCluster::start_with(prefix, HcpOptions::default()).await
    }

    /// [`HcpCluster::start`] with `options`.
    pub async fn start_with(prefix: &str, options: HcpOptions) -> HcpCluster {
        let env = Env::get();
        let client = env.client().await;
        ensure_control_plane_standin(&client).await;
        let guard = TestNamespace::create(&client, prefix).await;
        let ns = guard.name.clone();
        let workload_name = ns.replace(&format!("{prefix}-"), "w");
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
        let clouds_yaml = options.clouds_yaml.clone().unwrap_or_else(clouds_yaml_text);
        apply_secret(
            &client,
            &ns,
            IDENTITY,
            &[("clouds.yaml", clouds_yaml.as_bytes())],
        )
        .await;
        apply_secret(
            &client,
            &ns,
            &format!("{CLUSTER}-kubeconfig"),
            &[(
                "value",
                std::fs::read(&workload_kubeconfig).unwrap().as_slice(),
            )],
        )
        .await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .patch(
                &format!("{CLUSTER}-kubeconfig"),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}}}),
                ),
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
            json!({"apiVersion": format!("{STANDIN_GROUP}/v1alpha1"), "kind": "HostedControlPlane", "metadata": {"name": CLUSTER, "namespace": ns}, "spec": {"version": KUBERNETES_VERSION, "gateway": {"name": "none", "namespace": "none"}}}),
            json!({"apiVersion": format!("{INFRA_GROUP}/v1alpha1"), "kind": "OpenStackWorkerCluster",
                   "metadata": {"name": CLUSTER, "namespace": ns},
                   "spec": {"identityRef": {"name": IDENTITY, "cloudName": env.cloud},
                            "managedSubnets": [{"cidr": subnet}],
                            "managedSecurityGroups": {"workerNodesSecurityGroupRules": [
                                {"name": "cilium-vxlan", "direction": "ingress", "protocol": "udp", "portRangeMin": 8472, "portRangeMax": 8472, "remoteManagedGroups": ["worker"]}]}}}),
            json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": CLUSTER, "namespace": ns},
                   "spec": {"controlPlaneRef": {"apiGroup": STANDIN_GROUP, "kind": "HostedControlPlane", "name": CLUSTER},
                            "infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": "OpenStackWorkerCluster", "name": CLUSTER}}}),
        ];
        for o in &objects {
            apply_json(&client, o)
                .await
                .unwrap_or_else(|e| panic!("apply {}: {e}", o["kind"]));
        }
        // The control-plane stand-in: initialized, endpoint written onto the infrastructure
        // cluster (teutonet's HostedControlPlane does exactly this).
        let cp = dynamic(
            &client,
            &ns,
            STANDIN_GROUP,
            "v1alpha1",
            "HostedControlPlane",
        )
        .await;
        cp.patch_status(CLUSTER, &PatchParams::default(), &Patch::Merge(json!({"status": {
            "initialization": {"controlPlaneInitialized": true}, "initialized": true, "ready": true, "version": KUBERNETES_VERSION,
            // A hosted control plane has no Machines; without this CAPI never deletes worker Nodes
            // ("no control plane members"). teutonet's HostedControlPlane sets it too.
            "externalManagedControlPlane": true}})))
            .await
            .unwrap();
        let oswc = dynamic(
            &client,
            &ns,
            INFRA_GROUP,
            "v1alpha1",
            "OpenStackWorkerCluster",
        )
        .await;
        oswc.patch(
            CLUSTER,
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
        let mut manager_args: Vec<String> = [
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
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        manager_args.extend(options.manager_args.iter().cloned());
        let manager = Manager::start(
            &ns,
            &manager_args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        let stop = CancellationToken::new();
        let registrar_paused = Arc::new(AtomicBool::new(false));
        let registrar = node_registrar_with(
            client.clone(),
            workload.clone(),
            ns.clone(),
            stop.clone(),
            registrar_paused.clone(),
            options.registration.clone(),
        );

        // The cluster's infrastructure comes up and CAPI sees it.
        let clusters = dynamic(&client, &ns, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
        Poll::new("the Cluster provisioned", Duration::from_secs(90))
            .log_tail(&manager.log, 30)
            .until(|| async {
                let c = serde_json::to_value(clusters.get(CLUSTER).await.unwrap()).unwrap();
                if c["status"]["initialization"]["infrastructureProvisioned"] == true
                    && c["spec"]["controlPlaneEndpoint"]["host"] == "127.0.0.1"
                {
                    Ok(())
                } else {
                    Err(format!("status {}", c["status"]))
                }
            })
            .await;
        let cluster_uid = clusters.get(CLUSTER).await.unwrap().metadata.uid.unwrap();
        let infra = serde_json::to_value(oswc.get(CLUSTER).await.unwrap()).unwrap();
        HcpCluster {
            client,
            workload,
            ns,
            cluster_uid,
            manager,
            infra,
            workload_kubeconfig,
            guard,
            workload_name,
            mount,
            manager_args,
            stop,
            registrar,
            registrar_paused,
        }
    }

    /// Stops registering Nodes for new ACTIVE servers (kubelets that have not joined yet), until
    /// [`HcpCluster::resume_node_registrar`]. Nodes already registered stay.
    pub fn pause_node_registrar(&self) {
        self.registrar_paused.store(true, Ordering::SeqCst);
    }

    /// Registers Nodes again (see [`HcpCluster::pause_node_registrar`]).
    pub fn resume_node_registrar(&self) {
        self.registrar_paused.store(false, Ordering::SeqCst);
    }

    /// Creates an OpenStackWorkerMachineTemplate `<name>` with the given flavor (by name) and a
    /// MachineDeployment `<name>` of it at 0 replicas, annotated as an autoscaled node group
    /// with min 0 and max `max`; returns once the template's `status.capacity` is set.
    pub async fn add_machine_deployment(&self, name: &str, flavor: &str, max: u32) {
        let ns = &self.ns;
        let objects = [
            json!({"apiVersion": format!("{INFRA_GROUP}/v1alpha1"), "kind": "OpenStackWorkerMachineTemplate",
                   "metadata": {"name": name, "namespace": ns, "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
                   "spec": {"template": {"spec": {"flavor": {"filter": {"name": flavor}}, "image": {"filter": {"name": "osdev-tiny"}}}}}}),
            json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
                   "metadata": {"name": name, "namespace": ns, "annotations": {
                       "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
                       "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": max.to_string()}},
                   "spec": {"clusterName": CLUSTER, "replicas": 0,
                            "selector": {"matchLabels": {"pool": name}},
                            "template": {"metadata": {"labels": {"pool": name}},
                                         "spec": {"clusterName": CLUSTER, "version": KUBERNETES_VERSION, "bootstrap": {"dataSecretName": "workers-bootstrap"},
                                                  "infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": "OpenStackWorkerMachineTemplate", "name": name}}}}}),
        ];
        for o in &objects {
            apply_json(&self.client, o)
                .await
                .unwrap_or_else(|e| panic!("apply {}: {e}", o["kind"]));
        }
        // Settled: capow has derived the template's capacity from the flavor (so the
        // OpenStack calls of that lookup are not counted against the machines).
        let templates = dynamic(
            &self.client,
            ns,
            INFRA_GROUP,
            "v1alpha1",
            "OpenStackWorkerMachineTemplate",
        )
        .await;
        Poll::new(
            format!("capacity on template {name}"),
            Duration::from_secs(60),
        )
        .log_tail(&self.manager.log, 30)
        .until(|| async {
            let t = serde_json::to_value(templates.get(name).await.unwrap()).unwrap();
            if t["status"]["capacity"]["cpu"].is_string() {
                Ok(())
            } else {
                Err(format!("status {}", t["status"]))
            }
        })
        .await;
    }

    /// Starts another manager replica with the same flags but its own externalgrpc port (for
    /// leader-election tests); returns it with a cloud-config file that dials it (written next
    /// to the published one: call [`HcpCluster::cloud_config`] first).
    pub async fn start_replica(&self) -> (Manager, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = self.manager_args.clone();
        if let Some(i) = args.iter().position(|a| a == "--autoscaler-address") {
            args[i + 1] = addr.clone();
        }
        let manager = Manager::start(
            &self.ns,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        let base = std::fs::read_to_string(self.mount.join("cloud-config")).unwrap();
        let text: String = base
            .lines()
            .map(|l| {
                if l.starts_with("address:") {
                    format!("address: {addr}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = self.mount.join(format!("cloud-config-{port}"));
        std::fs::write(&path, text + "\n").unwrap();
        (manager, path.display().to_string())
    }

    /// Kills the manager with SIGKILL (no graceful shutdown, as a crashed or evicted pod) and
    /// starts a new one with the same flags; returns once the new one is ready.
    pub async fn kill_and_restart_manager(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(self.manager.pid().to_string())
            .status();
        let _ = self.manager.wait_exit(Duration::from_secs(10)).await;
        self.manager = Manager::start(
            &self.ns,
            &self
                .manager_args
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    }

    /// Sets the MachineDeployment's replicas through its `scale` subresource.
    pub async fn set_replicas(&self, md: &str, replicas: i32) {
        let api: Api<capow::capi::MachineDeployment> =
            Api::namespaced(self.client.clone(), &self.ns);
        api.patch_scale(
            md,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
    }

    /// The MachineDeployment's `spec.replicas`.
    pub async fn replicas(&self, md: &str) -> i32 {
        let api: Api<capow::capi::MachineDeployment> =
            Api::namespaced(self.client.clone(), &self.ns);
        api.get(md).await.unwrap().spec.replicas.unwrap_or_default()
    }

    /// Waits until the MachineDeployment `md` has exactly `n` Machines, all `Running` with a
    /// nodeRef; returns how long that took. Fails after `timeout`.
    pub async fn wait_running(&self, md: &str, n: usize, timeout: Duration) -> Duration {
        wait_running(&self.client, &self.ns, md, n, timeout, &self.manager.log).await
    }

    /// Waits until Nova has exactly `n` servers tagged with the cluster.
    pub async fn wait_servers(&self, n: usize, timeout: Duration) {
        Poll::new(format!("{n} servers of the cluster in Nova"), timeout)
            .every(Duration::from_millis(500))
            .until(|| async {
                let s = servers_of(&self.cluster_uid).len();
                if s == n {
                    Ok(())
                } else {
                    Err(format!("Nova has {s}"))
                }
            })
            .await;
    }

    /// Waits for the cloud-config Secret capow publishes for the cluster, writes its keys where
    /// the cloud-config expects them (as a Secret volume would), and returns the cloud-config
    /// file's path.
    pub async fn cloud_config(&self) -> String {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let secret_name = capow::tls::cloud_config::secret_name(CLUSTER);
        let secret = Poll::new("the credentials Secret", Duration::from_secs(30))
            .until(|| async { secrets.get_opt(&secret_name).await.unwrap() })
            .await;
        for (k, v) in secret.data.unwrap() {
            std::fs::write(self.mount.join(&k), &v.0).unwrap();
        }
        self.mount.join("cloud-config").display().to_string()
    }

    /// Deletes the Cluster and waits until it and its OpenStackWorkerCluster are gone (capow
    /// removes the cluster's network, router and security group while it still runs), then
    /// stops the registrar and the manager and deletes the namespace and the workload cluster.
    pub async fn finish(self) {
        let clusters = dynamic(
            &self.client,
            &self.ns,
            "cluster.x-k8s.io",
            "v1beta2",
            "Cluster",
        )
        .await;
        let oswc = dynamic(
            &self.client,
            &self.ns,
            INFRA_GROUP,
            "v1alpha1",
            "OpenStackWorkerCluster",
        )
        .await;
        let _ = clusters
            .delete(CLUSTER, &kube::api::DeleteParams::default())
            .await;
        Poll::new(
            format!("Cluster {}/{CLUSTER} deleted", self.ns),
            Duration::from_secs(180),
        )
        .every(Duration::from_millis(500))
        .log_tail(&self.manager.log, 30)
        .until(|| async {
            clusters.get_opt(CLUSTER).await.ok().flatten().is_none()
                && oswc.get_opt(CLUSTER).await.ok().flatten().is_none()
        })
        .await;
        self.release().await;
    }

    /// Tears down what [`HcpCluster::start`] made except the Cluster itself: stops the registrar
    /// and the manager, deletes the namespace and the workload cluster. For a test that deleted
    /// the Cluster elsewhere (after `clusterctl move`, on the target management cluster).
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.registrar.await;
        self.manager.stop().await;
        self.guard.delete().await;
        workload_down(&self.workload_name);
    }
}

/// The Machines of a MachineDeployment (label `cluster.x-k8s.io/deployment-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineCounts {
    /// All of them, including those being deleted.
    pub all: usize,
    /// Those not being deleted whose `status.phase` is `Running` with a `status.nodeRef`.
    pub running: usize,
    /// `status.phase` of each (empty when unset).
    pub phases: Vec<String>,
}

/// Counts the Machines of MachineDeployment `md` in namespace `ns` of `client`.
///
/// # Errors
/// When the API server fails the list.
pub async fn machines_of(client: &Client, ns: &str, md: &str) -> kube::Result<MachineCounts> {
    let machines: Api<capow::capi::Machine> = Api::namespaced(client.clone(), ns);
    let list = machines
        .list(&ListParams::default().labels(&format!("cluster.x-k8s.io/deployment-name={md}")))
        .await?
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
    let phases = list
        .iter()
        .map(|m| {
            m.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default()
        })
        .collect();
    Ok(MachineCounts {
        all: list.len(),
        running,
        phases,
    })
}

/// Waits until MachineDeployment `md` in namespace `ns` of `client` has exactly `n` Machines, all
/// Running with a nodeRef; returns how long that took. Panics after `timeout` with the phases and
/// the tail of the manager's log at `manager_log`.
pub async fn wait_running(
    client: &Client,
    ns: &str,
    md: &str,
    n: usize,
    timeout: Duration,
    manager_log: &std::path::Path,
) -> Duration {
    let poll =
        Poll::new(format!("{n} Running machines in {md}"), timeout).log_tail(manager_log, 30);
    loop {
        let c = machines_of(client, ns, md).await.unwrap();
        if c.running == n && c.all == n {
            return poll.elapsed();
        }
        poll.tick(format_args!("phases {:?}", c.phases)).await;
    }
}

/// The infrastructure machine kind the node registrar reads: group, version, kind, and the
/// kind of its templates (for the capacity of the Node).
#[derive(Clone, Copy, Debug)]
pub struct InfraKinds {
    /// API group, e.g. `infrastructure.cluster.x-k8s.io`.
    pub group: &'static str,
    /// Version, e.g. `v1alpha1`.
    pub version: &'static str,
    /// Machine kind, e.g. `OpenStackWorkerMachine`.
    pub machine: &'static str,
    /// Template kind, e.g. `OpenStackWorkerMachineTemplate`.
    pub template: &'static str,
    /// Whether the kind reports the server's state as `status.instanceState` (capow; CAPO's
    /// v1beta1) or only `status.initialization.provisioned` (CAPO's v1beta2, set once the server
    /// is ACTIVE: `controllers/openstackmachine_controller.go` of CAPO v0.15).
    pub instance_state: bool,
}

/// capow's kinds.
pub const CAPOW_KINDS: InfraKinds = InfraKinds {
    group: INFRA_GROUP,
    version: "v1alpha1",
    machine: "OpenStackWorkerMachine",
    template: "OpenStackWorkerMachineTemplate",
    instance_state: true,
};

/// Registers a Node for every ACTIVE server of the namespace's capow machines (see
/// [`node_registrar_for`]). `mgmt` is the management cluster the machines live in (a second one
/// after `clusterctl move`), `workload` the cluster the Nodes join; runs until `stop` is
/// cancelled. While `paused` is set it registers nothing.
pub fn node_registrar(
    mgmt: Client,
    workload: Client,
    ns: String,
    stop: CancellationToken,
    paused: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    node_registrar_with(mgmt, workload, ns, stop, paused, Registration::default())
}

/// [`node_registrar`] registering Nodes as `registration` says (taints, NotReady).
pub fn node_registrar_with(
    mgmt: Client,
    workload: Client,
    ns: String,
    stop: CancellationToken,
    paused: Arc<AtomicBool>,
    registration: Registration,
) -> tokio::task::JoinHandle<()> {
    node_registrar_for(mgmt, workload, ns, CAPOW_KINDS, stop, paused, registration)
}

/// Registers a Node for every ACTIVE server of the namespace's machines of `kinds`, as a
/// kubelet would: named after the machine, with the machine's `spec.providerID` once its
/// server is ACTIVE (see [`InfraKinds::instance_state`]), the capacity its template reports
/// (`status.capacity` of the template it was cloned from, plus 110 pods), and the taints and
/// readiness `registration` asks for. Looks every 500 ms; one list of machines and one of Nodes
/// per look. While `paused` is set it registers nothing.
pub fn node_registrar_for(
    mgmt: Client,
    workload: Client,
    ns: String,
    kinds: InfraKinds,
    stop: CancellationToken,
    paused: Arc<AtomicBool>,
    registration: Registration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let machines = dynamic(&mgmt, &ns, kinds.group, kinds.version, kinds.machine).await;
        let templates = dynamic(&mgmt, &ns, kinds.group, kinds.version, kinds.template).await;
        let nodes: Api<Node> = Api::all(workload);
        while !stop.is_cancelled() {
            if paused.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let existing: std::collections::BTreeSet<String> =
                match nodes.list_metadata(&ListParams::default()).await {
                    Ok(l) => l
                        .items
                        .into_iter()
                        .filter_map(|n| n.metadata.name)
                        .collect(),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
            if let Ok(list) = machines.list(&ListParams::default()).await {
                for m in list.items {
                    let v = serde_json::to_value(&m).unwrap();
                    let active = if kinds.instance_state {
                        v["status"]["instanceState"].as_str() == Some("ACTIVE")
                    } else {
                        v["status"]["initialization"]["provisioned"].as_bool() == Some(true)
                    };
                    let (Some(pid), true) = (v["spec"]["providerID"].as_str(), active) else {
                        continue;
                    };
                    if v["metadata"]["deletionTimestamp"].is_string() {
                        continue;
                    }
                    let name = m.metadata.name.clone().unwrap();
                    if existing.contains(&name) {
                        continue;
                    }
                    let mut capacity = json!({"pods": "110"});
                    if let Some(t) =
                        v["metadata"]["annotations"]["cluster.x-k8s.io/cloned-from-name"].as_str()
                        && let Ok(t) = templates.get(t).await
                        && let Some(c) =
                            serde_json::to_value(&t).unwrap()["status"]["capacity"].as_object()
                    {
                        for (k, q) in c {
                            capacity[k] = q.clone();
                        }
                    }
                    let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "type": "kwok"});
                    if registration.not_ready {
                        labels[KWOK_DISABLED_LABEL.0] = json!(KWOK_DISABLED_LABEL.1);
                    }
                    let node: Node = serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": labels,
                                     "annotations": {"kwok.x-k8s.io/node": "fake"}},
                        "spec": {"providerID": pid, "taints": registration.taints},
                        "status": {"capacity": capacity, "allocatable": capacity,
                                   "nodeInfo": node_info()}
                    }))
                    .unwrap();
                    let _ = nodes.create(&PostParams::default(), &node).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}
