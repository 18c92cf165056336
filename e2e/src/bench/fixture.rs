//! One hosted-control-plane cluster per provider for the benchmark, in the same shape for capow
//! and CAPO: its own namespace and workload cluster (kwok), the Cluster with the
//! `HostedControlPlane` stand-in, the infrastructure cluster on the cloud's **existing**
//! network with the control-plane endpoint written by hand (no load balancer, no floating IP,
//! no managed security group), the provider's manager with its defaults, an identity Secret whose
//! clouds.yaml points at the provider's own counting proxy, the node registrar of
//! `capow_e2e::hcp` (the same for both), and a MachineDeployment of `m1.tiny` / `osdev-tiny` at
//! 0 replicas.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::capo::{CapoInstall, CapoProcess};
use crate::hcp::{CAPOW_KINDS, InfraKinds, dynamic, node_registrar_for};
use crate::osproxy::{Config, Proxy};
use crate::{
    Env, Manager, Poll, ProcStats, STANDIN_GROUP, TestNamespace, apply_json, apply_secret,
    client_for, clouds_yaml_text, ensure_control_plane_standin, workload_down, workload_up,
};

const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
const CLUSTER: &str = "c1";
const IDENTITY: &str = "cloud-config";

/// CAPO's v1beta2 kinds.
pub const CAPO_KINDS: InfraKinds = InfraKinds {
    group: INFRA_GROUP,
    version: "v1beta2",
    machine: "OpenStackMachine",
    template: "OpenStackMachineTemplate",
    instance_state: false,
};

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    /// Servers POSTed straight at Nova.
    Floor,
    /// capow.
    Capow,
    /// CAPO.
    Capo,
}

impl System {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            System::Floor => "floor",
            System::Capow => "capow",
            System::Capo => "capo",
        }
    }

    /// Parses `floor`, `capow` or `capo`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<System> {
        match s {
            "floor" => Ok(System::Floor),
            "capow" => Ok(System::Capow),
            "capo" => Ok(System::Capo),
            other => bail!("unknown system {other:?} (floor, capow, capo)"),
        }
    }
}

/// What the benchmark boots: flavor, image and network names (the same for every system).
#[derive(Clone, Debug)]
pub struct Boot {
    /// Flavor name.
    pub flavor: String,
    /// Image name.
    pub image: String,
    /// Existing network name.
    pub network: String,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            flavor: "m1.tiny".into(),
            image: "osdev-tiny".into(),
            network: "osdev-net".into(),
        }
    }
}

enum Process {
    Capow(Manager),
    Capo(CapoProcess),
}

/// A provider's cluster; see the module docs. Tear down with [`ProviderCluster::finish`].
pub struct ProviderCluster {
    /// capow or CAPO.
    pub system: System,
    /// Admin client of the management cluster.
    pub client: Client,
    /// The cluster's namespace.
    pub ns: String,
    /// The MachineDeployment (and its template), named `bench-<system>`; its servers are named
    /// `bench-<system>-...`.
    pub md: String,
    /// The provider's counting proxy.
    pub proxy: Proxy,
    process: Process,
    guard: TestNamespace,
    workload_name: String,
    stop: CancellationToken,
    registrar: tokio::task::JoinHandle<()>,
}

impl ProviderCluster {
    /// Sets up the cluster for `system` (capow or CAPO; CAPO needs `capo`) and its
    /// MachineDeployment at 0, and waits until CAPI reports the infrastructure provisioned.
    /// `capow_args` are extra flags for capow's manager.
    ///
    /// # Errors
    /// When a step fails or the cluster is not provisioned within 120 s.
    pub async fn start(
        system: System,
        boot: &Boot,
        capo: Option<&CapoInstall>,
        capow_args: &[String],
    ) -> Result<ProviderCluster> {
        let env = Env::get();
        let client = env.client().await;
        ensure_control_plane_standin(&client).await;
        let prefix = format!("bench-{}", system.name());
        let guard = TestNamespace::create(&client, &prefix).await;
        let ns = guard.name.clone();
        let workload_name = ns.replace(&format!("{prefix}-"), "wb");
        let workload_kubeconfig = workload_up(&workload_name);
        let workload = client_for(&workload_kubeconfig).await;
        let workload_port: i64 = std::fs::read_to_string(&workload_kubeconfig)?
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .and_then(|s| s.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .context("workload kubeconfig server port")?;

        let auth_url = crate::osproxy::auth_url_of(&env.clouds_yaml, &env.cloud)?;
        let proxy = Proxy::start(Config::new(&auth_url)).await?;
        let clouds = proxy.clouds_yaml(&clouds_yaml_text(), &env.cloud)?;
        apply_secret(
            &client,
            &ns,
            IDENTITY,
            &[("clouds.yaml", clouds.as_bytes())],
        )
        .await;
        apply_secret(
            &client,
            &ns,
            &format!("{CLUSTER}-kubeconfig"),
            &[("value", std::fs::read(&workload_kubeconfig)?.as_slice())],
        )
        .await;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .patch(
                &format!("{CLUSTER}-kubeconfig"),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}}}),
                ),
            )
            .await?;
        apply_secret(
            &client,
            &ns,
            "workers-bootstrap",
            &[("value", b"#cloud-config\n"), ("format", b"cloud-config")],
        )
        .await;
        let endpoint = json!({"host": "127.0.0.1", "port": workload_port});
        let (infra_kind, infra) = match system {
            System::Capow => (
                "OpenStackWorkerCluster",
                json!({"apiVersion": format!("{INFRA_GROUP}/v1alpha1"), "kind": "OpenStackWorkerCluster",
                       "metadata": {"name": CLUSTER, "namespace": ns},
                       "spec": {"identityRef": {"name": IDENTITY, "cloudName": env.cloud},
                                "network": {"filter": {"name": boot.network}}}}),
            ),
            System::Capo => (
                "OpenStackCluster",
                json!({"apiVersion": format!("{INFRA_GROUP}/v1beta2"), "kind": "OpenStackCluster",
                       "metadata": {"name": CLUSTER, "namespace": ns},
                       "spec": {"identityRef": {"type": "Secret", "name": IDENTITY, "cloudName": env.cloud},
                                "network": {"filter": {"name": boot.network}},
                                "enableExternalNetwork": false,
                                "apiServer": {"enableFloatingIP": false},
                                "controlPlaneEndpoint": endpoint}}),
            ),
            System::Floor => bail!("the floor has no cluster"),
        };
        let objects = [
            json!({"apiVersion": format!("{STANDIN_GROUP}/v1alpha1"), "kind": "HostedControlPlane", "metadata": {"name": CLUSTER, "namespace": ns}, "spec": {"version": "v1.36.3", "gateway": {"name": "none", "namespace": "none"}}}),
            infra,
            json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster", "metadata": {"name": CLUSTER, "namespace": ns},
                   "spec": {"controlPlaneRef": {"apiGroup": STANDIN_GROUP, "kind": "HostedControlPlane", "name": CLUSTER},
                            "infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": infra_kind, "name": CLUSTER}}}),
        ];
        // CAPO's manager first: its admission webhooks must answer before its objects are made.
        let process = match system {
            System::Capow => {
                // The externalgrpc server on a free loopback port, its credentials published
                // in the cluster's namespace and mounted where the cloud-config says.
                let grpc = format!("127.0.0.1:{}", free_port()?);
                let mount = env.state.join(format!("{ns}-ca"));
                std::fs::create_dir_all(&mount)?;
                let mut args: Vec<String> = [
                    "--autoscaler-address",
                    &grpc,
                    "--autoscaler-ip-san",
                    "127.0.0.1",
                    "--system-namespace",
                    &ns,
                    "--autoscaler-published-address",
                    &grpc,
                    "--autoscaler-mount-dir",
                    &mount.display().to_string(),
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                args.extend(capow_args.iter().cloned());
                Process::Capow(
                    Manager::start_plain(&ns, &args.iter().map(String::as_str).collect::<Vec<_>>())
                        .await,
                )
            }
            System::Capo => Process::Capo(
                capo.context("CAPO is not installed")?
                    .start(&ns, &[])
                    .await?,
            ),
            System::Floor => unreachable!("checked above"),
        };
        for o in &objects {
            apply_json(&client, o)
                .await
                .with_context(|| format!("apply {}", o["kind"]))?;
        }
        let cp = dynamic(
            &client,
            &ns,
            STANDIN_GROUP,
            "v1alpha1",
            "HostedControlPlane",
        )
        .await;
        cp.patch_status(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "initialization": {"controlPlaneInitialized": true}, "initialized": true, "ready": true,
            "version": "v1.36.3", "externalManagedControlPlane": true}})),
        )
        .await?;
        if system == System::Capow {
            // The hosted control plane writes the endpoint onto the infrastructure cluster.
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
                &Patch::Merge(json!({"spec": {"controlPlaneEndpoint": endpoint}})),
            )
            .await?;
        }
        let stop = CancellationToken::new();
        let kinds = match system {
            System::Capo => CAPO_KINDS,
            _ => CAPOW_KINDS,
        };
        let registrar = node_registrar_for(
            client.clone(),
            workload.clone(),
            ns.clone(),
            kinds,
            stop.clone(),
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            crate::hcp::Registration::default(),
        );
        let md = format!("bench-{}", system.name());
        let c = ProviderCluster {
            system,
            client,
            ns,
            md,
            proxy,
            process,
            guard,
            workload_name,
            stop,
            registrar,
        };
        c.wait_provisioned().await?;
        c.add_machine_deployment(boot).await?;
        Ok(c)
    }

    async fn wait_provisioned(&self) -> Result<()> {
        let clusters = dynamic(
            &self.client,
            &self.ns,
            "cluster.x-k8s.io",
            "v1beta2",
            "Cluster",
        )
        .await;
        Poll::new(
            format!("the {} cluster provisioned", self.system.name()),
            Duration::from_secs(120),
        )
        .log_tail(self.log(), 30)
        .try_until(|| async {
            let c = match clusters.get(CLUSTER).await {
                Ok(c) => serde_json::to_value(c).map_err(|e| e.to_string())?,
                Err(e) => return Err(format!("error {e}")),
            };
            if c["status"]["initialization"]["infrastructureProvisioned"] == true
                && c["spec"]["controlPlaneEndpoint"]["host"] == "127.0.0.1"
            {
                Ok(())
            } else {
                Err(format!("status {}", c["status"]))
            }
        })
        .await
    }

    async fn add_machine_deployment(&self, boot: &Boot) -> Result<()> {
        let (version, kind, template) = match self.system {
            System::Capow => (
                "v1alpha1",
                "OpenStackWorkerMachineTemplate",
                json!({"flavor": {"filter": {"name": boot.flavor}}, "image": {"filter": {"name": boot.image}}}),
            ),
            _ => (
                "v1beta2",
                "OpenStackMachineTemplate",
                json!({"flavor": {"filter": {"name": boot.flavor}}, "image": {"filter": {"name": boot.image}}}),
            ),
        };
        let name = &self.md;
        let ns = &self.ns;
        let objects = [
            json!({"apiVersion": format!("{INFRA_GROUP}/{version}"), "kind": kind,
                   "metadata": {"name": name, "namespace": ns, "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
                   "spec": {"template": {"spec": template}}}),
            json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
                   "metadata": {"name": name, "namespace": ns, "annotations": {
                       "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
                       "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "200"}},
                   "spec": {"clusterName": CLUSTER, "replicas": 0,
                            "selector": {"matchLabels": {"pool": name}},
                            "template": {"metadata": {"labels": {"pool": name}},
                                         "spec": {"clusterName": CLUSTER, "bootstrap": {"dataSecretName": "workers-bootstrap"},
                                                  "infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": kind, "name": name}}}}}),
        ];
        for o in &objects {
            apply_json(&self.client, o)
                .await
                .with_context(|| format!("apply {}", o["kind"]))?;
        }
        if self.system == System::Capow {
            // capow derives the template's capacity from the flavor (its lookups are not
            // counted against the machines).
            let templates = dynamic(&self.client, ns, INFRA_GROUP, version, kind).await;
            Poll::new(
                format!("capacity on template {name}"),
                Duration::from_secs(60),
            )
            .try_until(|| async {
                let t = match templates.get(name).await {
                    Ok(t) => serde_json::to_value(t).map_err(|e| e.to_string())?,
                    Err(e) => return Err(format!("error {e}")),
                };
                if t["status"]["capacity"]["cpu"].is_string() {
                    Ok(())
                } else {
                    Err(format!("status {}", t["status"]))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// The manager's log.
    pub fn log(&self) -> &std::path::Path {
        match &self.process {
            Process::Capow(m) => &m.log,
            Process::Capo(p) => &p.log,
        }
    }

    /// The manager's memory and CPU time.
    pub fn stats(&self) -> ProcStats {
        match &self.process {
            Process::Capow(m) => m.stats(),
            Process::Capo(p) => p.stats(),
        }
    }

    /// The capow manager (None for CAPO).
    pub fn capow(&self) -> Option<&Manager> {
        match &self.process {
            Process::Capow(m) => Some(m),
            Process::Capo(_) => None,
        }
    }

    /// Waits for the cloud-config Secret capow publishes for the cluster, writes its keys where
    /// the cloud-config expects them (as a Secret volume would), and returns the cloud-config.
    ///
    /// # Errors
    /// When it is not published within 60 s.
    pub async fn cloud_config(&self) -> Result<capow::tls::CloudConfig> {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &self.ns);
        let name = capow::tls::cloud_config::secret_name(CLUSTER);
        let mount = Env::get().state.join(format!("{}-ca", self.ns));
        let s = Poll::new(
            format!("the credentials Secret {name}"),
            Duration::from_secs(60),
        )
        .try_until(|| async { anyhow::Ok(secrets.get_opt(&name).await?) })
        .await?;
        for (k, v) in s.data.unwrap_or_default() {
            std::fs::write(mount.join(&k), &v.0)?;
        }
        let text = std::fs::read_to_string(mount.join("cloud-config"))?;
        Ok(capow::tls::CloudConfig::from_yaml(&text)?)
    }

    /// The node-group id of the MachineDeployment.
    pub fn node_group(&self) -> String {
        format!("MachineDeployment/{}/{}", self.ns, self.md)
    }

    /// Sets the MachineDeployment's replicas through its `scale` subresource.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn set_replicas(&self, replicas: usize) -> Result<()> {
        let api: Api<capow::capi::MachineDeployment> =
            Api::namespaced(self.client.clone(), &self.ns);
        api.patch_scale(
            &self.md,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
        Ok(())
    }

    /// `(Machines, Machines Running with a nodeRef)` of the MachineDeployment.
    ///
    /// # Errors
    /// When the API server fails.
    pub async fn machines(&self) -> Result<(usize, usize)> {
        let c = crate::hcp::machines_of(&self.client, &self.ns, &self.md).await?;
        Ok((c.all, c.running))
    }

    /// Deletes the Cluster (waits up to 180 s), stops the registrar, the manager and the
    /// proxy, and deletes the namespace and the workload cluster.
    pub async fn finish(self) {
        let clusters = dynamic(
            &self.client,
            &self.ns,
            "cluster.x-k8s.io",
            "v1beta2",
            "Cluster",
        )
        .await;
        let _ = self.set_replicas(0).await;
        let _ = clusters.delete(CLUSTER, &DeleteParams::default()).await;
        // Best effort: the teardown goes on after 180 s.
        let _ = Poll::new("the Cluster deleted", Duration::from_secs(180))
            .every(Duration::from_millis(500))
            .try_until(|| async { clusters.get_opt(CLUSTER).await.ok().flatten().is_none() })
            .await;
        self.stop.cancel();
        let _ = self.registrar.await;
        match self.process {
            Process::Capow(m) => m.stop().await,
            Process::Capo(p) => p.stop().await,
        }
        self.proxy.stop().await;
        self.guard.delete().await;
        workload_down(&self.workload_name);
    }
}
