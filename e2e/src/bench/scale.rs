//! Part 3 of the benchmark: a manager's memory and CPU with many machines, capow beside CAPO.
//!
//! For each machine count and system: a private, fresh API server (`e2e/bench/apiserver.sh`:
//! its own etcd and kube-apiserver on loopback, so tens of thousands of objects never touch the
//! shared e2e cluster), the CRDs (capow's, CAPI's of the pinned CAPI module, CAPO's and ORC's
//! `Image`), one Cluster with its infrastructure cluster, 200 MachineDeployments with their
//! templates, and per machine a Machine (Running, nodeRef, providerID) and the provider's
//! objects as its controllers leave them once the server is ACTIVE (capow: an
//! `OpenStackWorkerMachine`; CAPO: an `OpenStackMachine` and its `OpenStackServer`), with
//! finalizers, owner references and status. No CAPI controller runs: the Machines stay as
//! written. OpenStack is [`super::fakecloud`], serving the same machines as ACTIVE servers.
//!
//! Then the manager starts (capow with its defaults; CAPO with its defaults) and is measured:
//! the initial pass (until its CPU use stays under 5 % of a core for 15 s, at most
//! `settle_max`), then a steady window: CPU seconds over the window, RSS at its end, peak RSS
//! (`VmHWM`), and the OpenStack requests the fake saw in the window.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::capo::{CapoPaths, apply_cluster_scoped, yaml_docs};
use super::fakecloud::{FLAVOR_ID, FakeCloud, FakeServer, IMAGE_ID, NETWORK_ID, SUBNET_ID};
use super::fixture::System;
use super::{Report, need_var};
use crate::{Env, Poll, ProcStats, client_for, crds_established};

const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";
const NS: &str = "bench-scale";
const CLUSTER: &str = "c1";
const CONCURRENCY: usize = 24;

/// What to run.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Machine counts.
    pub machines: Vec<usize>,
    /// Systems (capow, capo).
    pub systems: Vec<System>,
    /// MachineDeployments (node groups) the machines are spread over.
    pub groups: usize,
    /// Steady window.
    pub window: Duration,
    /// Longest initial pass waited for.
    pub settle_max: Duration,
}

struct PrivateApi {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PrivateApi {
    fn up() -> Result<PrivateApi> {
        let env = Env::get();
        let e2e = need_var("CAPOW_E2E_DIR")?;
        let dir = env
            .state
            .join(format!("bench/apiserver-{}", std::process::id()));
        let out = std::process::Command::new("bash")
            .arg(format!("{e2e}/bench/apiserver.sh"))
            .arg("up")
            .arg(&dir)
            .arg(free_port()?.to_string())
            .arg(free_port()?.to_string())
            .arg(free_port()?.to_string())
            .output()?;
        if !out.status.success() {
            bail!("apiserver.sh up: {}", String::from_utf8_lossy(&out.stderr));
        }
        let kubeconfig = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        Ok(PrivateApi {
            dir,
            kubeconfig: kubeconfig.into(),
        })
    }

    fn down(&self) {
        if let Ok(e2e) = need_var("CAPOW_E2E_DIR") {
            let _ = std::process::Command::new("bash")
                .arg(format!("{e2e}/bench/apiserver.sh"))
                .arg("down")
                .arg(&self.dir)
                .output();
        }
    }
}

impl Drop for PrivateApi {
    fn drop(&mut self) {
        self.down();
    }
}

fn yaml_dir(dir: &std::path::Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        out.extend(yaml_docs(&p)?);
    }
    Ok(out)
}

/// CRDs on the private API server (no conversion webhooks: every client here uses the storage
/// version).
async fn install_crds(client: &Client, system: System) -> Result<()> {
    let capi = need_var("CAPOW_BENCH_CAPI_DIR")?;
    let mut crds = yaml_dir(&PathBuf::from(capi).join("core/config/crd/bases"))?;
    for mut crd in yaml_dir(&PathBuf::from(need_var("CAPOW_E2E_DIR")?).join("../config/crd/bases"))?
    {
        if crd["kind"] == "CustomResourceDefinition" {
            crd["metadata"]["labels"]["cluster.x-k8s.io/v1beta2"] = json!("v1alpha1");
            crds.push(crd);
        }
    }
    if system == System::Capo {
        let paths = CapoPaths::from_env()?;
        for mut crd in yaml_dir(&paths.tree.join("config/crd/bases"))? {
            crd["metadata"]["labels"] = json!({"cluster.x-k8s.io/v1beta2": "v1beta2"});
            crds.push(crd);
        }
        crds.extend(yaml_docs(
            &paths
                .orc
                .join("config/crd/bases/openstack.k-orc.cloud_images.yaml"),
        )?);
    }
    for crd in &crds {
        if let Some(c) = crd["spec"].get("conversion") {
            let _ = c;
        }
        let mut crd = crd.clone();
        if let Some(spec) = crd["spec"].as_object_mut() {
            spec.remove("conversion");
        }
        apply_cluster_scoped(client, &crd).await?;
    }
    let names: Vec<&str> = crds
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    crds_established(client, &names, Duration::from_secs(60)).await
}

async fn api_for(client: &Client, api_version: &str, kind: &str) -> Result<Api<DynamicObject>> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok(Api::namespaced_with(client.clone(), NS, &ar))
}

/// Creates `obj` (then writes its `status`, when it has one); returns the created object's UID.
async fn create(api: &Api<DynamicObject>, obj: &Value) -> Result<String> {
    let o: DynamicObject = serde_json::from_value(obj.clone())?;
    let name = o.metadata.name.clone().unwrap_or_default();
    let created = match api.create(&PostParams::default(), &o).await {
        Ok(c) => c,
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
        Err(e) => return Err(e.into()),
    };
    if let Some(status) = obj.get("status") {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .with_context(|| format!("status of {name}"))?;
    }
    Ok(created.metadata.uid.unwrap_or_default())
}

/// Creates `objs` with bounded concurrency; returns the UIDs in order.
async fn create_all(api: &Api<DynamicObject>, objs: Vec<Value>) -> Result<Vec<String>> {
    let results: Vec<Result<String>> = futures::stream::iter(objs)
        .map(|o| {
            let api = api.clone();
            async move { create(&api, &o).await }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

fn uuid(kind: u8, i: usize) -> String {
    format!("{kind:02x}000000-0000-4000-8000-{i:012x}")
}

fn ip(i: usize) -> String {
    format!("10.0.{}.{}", 1 + i / 250, 1 + i % 250)
}

/// The objects of one system; returns the servers for the fake cloud.
async fn populate(
    client: &Client,
    system: System,
    machines: usize,
    groups: usize,
    identity_yaml: &str,
) -> Result<Vec<FakeServer>> {
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    for (name, data) in [
        ("cloud-config", json!({"clouds.yaml": identity_yaml})),
        (
            "bootstrap",
            json!({"value": "#cloud-config\n", "format": "cloud-config"}),
        ),
    ] {
        let _ = secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))?,
            )
            .await;
    }
    let cloud = "bench";
    let (infra_version, infra_cluster_kind, machine_kind, template_kind) = match system {
        System::Capo => (
            "v1beta2",
            "OpenStackCluster",
            "OpenStackMachine",
            "OpenStackMachineTemplate",
        ),
        _ => (
            "v1alpha1",
            "OpenStackWorkerCluster",
            "OpenStackWorkerMachine",
            "OpenStackWorkerMachineTemplate",
        ),
    };
    let infra_av = format!("{INFRA_GROUP}/{infra_version}");
    let network_status = json!({"id": NETWORK_ID, "name": "osdev-net",
        "subnets": [{"id": SUBNET_ID, "name": "osdev-subnet", "cidr": "10.0.0.0/16"}]});
    let infra = match system {
        System::Capo => json!({"apiVersion": infra_av, "kind": infra_cluster_kind,
            "metadata": {"name": CLUSTER, "namespace": NS, "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER},
                         "finalizers": ["openstackcluster.infrastructure.cluster.x-k8s.io"]},
            "spec": {"identityRef": {"type": "Secret", "name": "cloud-config", "cloudName": cloud},
                     "network": {"id": NETWORK_ID}, "enableExternalNetwork": false,
                     "apiServer": {"enableFloatingIP": false},
                     "controlPlaneEndpoint": {"host": "127.0.0.1", "port": 6443}},
            "status": {"initialization": {"provisioned": true}, "network": network_status,
                       "failureDomains": [{"name": "nova", "controlPlane": true}]}}),
        _ => json!({"apiVersion": infra_av, "kind": infra_cluster_kind,
            "metadata": {"name": CLUSTER, "namespace": NS, "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER},
                         "finalizers": ["openstackworkercluster.infrastructure.cluster.x-k8s.io"]},
            "spec": {"identityRef": {"name": "cloud-config", "cloudName": cloud},
                     "network": {"id": NETWORK_ID},
                     "controlPlaneEndpoint": {"host": "127.0.0.1", "port": 6443}},
            "status": {"initialization": {"provisioned": true},
                       "network": {"id": NETWORK_ID, "name": "osdev-net", "managed": false,
                                   "subnets": [{"id": SUBNET_ID, "name": "osdev-subnet", "cidr": "10.0.0.0/16"}]},
                       "failureDomains": [{"name": "nova", "controlPlane": true}]}}),
    };
    create(
        &api_for(client, &infra_av, infra_cluster_kind).await?,
        &infra,
    )
    .await?;
    let cluster_api = api_for(client, "cluster.x-k8s.io/v1beta2", "Cluster").await?;
    let cluster_uid = create(&cluster_api, &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": CLUSTER, "namespace": NS},
        "spec": {"infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": infra_cluster_kind, "name": CLUSTER},
                 "controlPlaneEndpoint": {"host": "127.0.0.1", "port": 6443}},
        "status": {"initialization": {"infrastructureProvisioned": true, "controlPlaneInitialized": true},
                   "phase": "Provisioned"}}))
    .await?;

    // Templates and MachineDeployments.
    let template_api = api_for(client, &infra_av, template_kind).await?;
    let templates: Vec<Value> = (0..groups)
        .map(|g| json!({"apiVersion": infra_av, "kind": template_kind,
            "metadata": {"name": format!("md-{g}"), "namespace": NS, "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
            "spec": {"template": {"spec": {"flavor": {"filter": {"name": "m1.tiny"}}, "image": {"filter": {"name": "osdev-tiny"}}}}}}))
        .collect();
    create_all(&template_api, templates).await?;
    let md_api = api_for(client, "cluster.x-k8s.io/v1beta2", "MachineDeployment").await?;
    let per_group = machines.div_ceil(groups);
    let mds: Vec<Value> = (0..groups)
        .map(|g| json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
            "metadata": {"name": format!("md-{g}"), "namespace": NS, "annotations": {
                "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "0",
                "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "1000"}},
            "spec": {"clusterName": CLUSTER, "replicas": per_group,
                     "selector": {"matchLabels": {"pool": format!("md-{g}")}},
                     "template": {"metadata": {"labels": {"pool": format!("md-{g}")}},
                                  "spec": {"clusterName": CLUSTER, "bootstrap": {"dataSecretName": "bootstrap"},
                                           "infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": template_kind, "name": format!("md-{g}")}}}}}))
        .collect();
    create_all(&md_api, mds).await?;

    // Machines.
    let provider_id = |i: usize| format!("openstack:///{}", uuid(1, i));
    let machine_api = api_for(client, "cluster.x-k8s.io/v1beta2", "Machine").await?;
    let machine_objs: Vec<Value> = (0..machines)
        .map(|i| {
            let g = i % groups;
            json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "metadata": {"name": format!("m-{i}"), "namespace": NS, "labels": {
                    "cluster.x-k8s.io/cluster-name": CLUSTER, "cluster.x-k8s.io/deployment-name": format!("md-{g}"),
                    "pool": format!("md-{g}")}},
                "spec": {"clusterName": CLUSTER, "bootstrap": {"dataSecretName": "bootstrap"},
                         "infrastructureRef": {"apiGroup": INFRA_GROUP, "kind": machine_kind, "name": format!("m-{i}")},
                         "providerID": provider_id(i)},
                "status": {"phase": "Running", "nodeRef": {"name": format!("m-{i}")},
                           "initialization": {"infrastructureProvisioned": true, "bootstrapDataSecretCreated": true}}})
        })
        .collect();
    let machine_uids = create_all(&machine_api, machine_objs).await?;

    // The provider's objects, as its controllers leave them.
    let addresses = |i: usize| json!([{"type": "InternalIP", "address": ip(i)}]);
    let owner = |i: usize, uid: &str| {
        json!([{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "name": format!("m-{i}"), "uid": uid, "controller": true, "blockOwnerDeletion": true}])
    };
    let infra_api = api_for(client, &infra_av, machine_kind).await?;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ready = |reason: &str, message: &str| {
        json!([{"type": "Ready", "status": "True", "reason": reason,
        "message": message, "lastTransitionTime": now, "observedGeneration": 1}])
    };
    let infra_objs: Vec<Value> = (0..machines)
        .map(|i| {
            let g = i % groups;
            let meta = json!({"name": format!("m-{i}"), "namespace": NS,
                "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER, "cluster.x-k8s.io/deployment-name": format!("md-{g}")},
                "annotations": {"cluster.x-k8s.io/cloned-from-name": format!("md-{g}"),
                                "cluster.x-k8s.io/cloned-from-groupkind": format!("{template_kind}.{INFRA_GROUP}")},
                "ownerReferences": owner(i, &machine_uids[i])});
            match system {
                System::Capo => {
                    let mut meta = meta;
                    meta["finalizers"] = json!(["openstackmachine.infrastructure.cluster.x-k8s.io"]);
                    json!({"apiVersion": infra_av, "kind": machine_kind, "metadata": meta,
                        "spec": {"flavor": {"filter": {"name": "m1.tiny"}}, "image": {"filter": {"name": "osdev-tiny"}},
                                 "providerID": provider_id(i)},
                        "status": {"initialization": {"provisioned": true}, "instanceID": uuid(1, i),
                                   "instanceState": "ACTIVE", "addresses": addresses(i),
                                   "conditions": ready("Ready", "")}})
                }
                _ => {
                    let mut meta = meta;
                    meta["finalizers"] = json!([capow::controllers::machine::FINALIZER]);
                    json!({"apiVersion": infra_av, "kind": machine_kind, "metadata": meta,
                        "spec": {"flavor": {"filter": {"name": "m1.tiny"}}, "image": {"filter": {"name": "osdev-tiny"}},
                                 "providerID": provider_id(i)},
                        "status": {"initialization": {"provisioned": true}, "instanceID": uuid(1, i),
                                   "instanceState": "ACTIVE", "addresses": addresses(i),
                                   "failureDomain": "nova",
                                   "resolved": {"flavorID": FLAVOR_ID, "imageID": IMAGE_ID,
                                                "ports": [{"name": format!("m-{i}-0"), "networkID": NETWORK_ID}]},
                                   "resources": {"ports": [{"id": uuid(2, i)}]},
                                   "conditions": ready("InstanceActive", &format!("server {} is ACTIVE", uuid(1, i)))}})
                }
            }
        })
        .collect();
    let infra_uids = create_all(&infra_api, infra_objs).await?;
    if system == System::Capo {
        let server_api = api_for(
            client,
            &format!("{INFRA_GROUP}/v1alpha1"),
            "OpenStackServer",
        )
        .await?;
        let servers: Vec<Value> = (0..machines)
            .map(|i| json!({"apiVersion": format!("{INFRA_GROUP}/v1alpha1"), "kind": "OpenStackServer",
                "metadata": {"name": format!("m-{i}"), "namespace": NS,
                    "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER},
                    "finalizers": ["openstackserver.infrastructure.cluster.x-k8s.io"],
                    "ownerReferences": [{"apiVersion": infra_av, "kind": machine_kind, "name": format!("m-{i}"),
                                         "uid": infra_uids[i]}]},
                "spec": {"flavor": "m1.tiny", "identityRef": {"type": "Secret", "name": "cloud-config", "cloudName": cloud},
                         "image": {"filter": {"name": "osdev-tiny"}}, "ports": [{"network": {"id": NETWORK_ID}}],
                         "sshKeyName": "", "userDataRef": {"name": "bootstrap"}},
                "status": {"ready": true, "instanceID": uuid(1, i), "instanceState": "ACTIVE",
                           "addresses": addresses(i),
                           "resolved": {"imageID": IMAGE_ID, "flavorID": FLAVOR_ID,
                                        "ports": [{"name": format!("m-{i}-0"), "description": "", "networkID": NETWORK_ID}]},
                           "resources": {"ports": [{"id": uuid(2, i)}]},
                           "conditions": ready("Ready", "")}}))
            .collect();
        create_all(&server_api, servers).await?;
    }
    Ok((0..machines)
        .map(|i| {
            let tags = match system {
                System::Capo => Vec::new(),
                _ => vec![
                    "capow".to_owned(),
                    format!("capow-machine-uid={}", infra_uids[i]),
                    format!("capow-cluster-uid={cluster_uid}"),
                ],
            };
            FakeServer {
                id: uuid(1, i),
                name: format!("m-{i}"),
                tags,
                metadata: Default::default(),
                port_id: uuid(2, i),
                ip: ip(i),
            }
        })
        .collect())
}

enum Manager {
    Capow(tokio::process::Child, PathBuf),
    Capo(tokio::process::Child, PathBuf),
}

impl Manager {
    fn pid(&self) -> u32 {
        match self {
            Manager::Capow(c, _) | Manager::Capo(c, _) => c.id().unwrap_or(0),
        }
    }

    fn log(&self) -> &std::path::Path {
        match self {
            Manager::Capow(_, l) | Manager::Capo(_, l) => l,
        }
    }

    async fn stop(self) {
        let (Manager::Capow(mut c, _) | Manager::Capo(mut c, _)) = self;
        if let Some(pid) = c.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(20), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
}

async fn start_manager(system: System, kubeconfig: &std::path::Path) -> Result<Manager> {
    let env = Env::get();
    let log = env.state.join(format!(
        "bench/scale-{}-{}.log",
        system.name(),
        std::process::id()
    ));
    let file = std::fs::File::create(&log)?;
    match system {
        System::Capo => {
            let paths = CapoPaths::from_env()?;
            let child = tokio::process::Command::new(&paths.bin)
                .arg(format!("--namespace={NS}"))
                .arg("--leader-elect=false")
                .arg(format!("--health-addr=127.0.0.1:{}", free_port()?))
                .arg(format!("--diagnostics-address=127.0.0.1:{}", free_port()?))
                .arg("--insecure-diagnostics=true")
                .arg(format!("--webhook-port={}", free_port()?))
                .arg(format!("--webhook-cert-dir={}", paths.certs.display()))
                .env("KUBECONFIG", kubeconfig)
                .stdout(std::process::Stdio::null())
                .stderr(file)
                .kill_on_drop(true)
                .spawn()?;
            Ok(Manager::Capo(child, log))
        }
        _ => {
            let child = tokio::process::Command::new(&env.capow_bin)
                .args(["manager", "--namespace", NS])
                .arg("--admin-address")
                .arg(format!("127.0.0.1:{}", free_port()?))
                .env("KUBECONFIG", kubeconfig)
                .stdout(std::process::Stdio::null())
                .stderr(file)
                .kill_on_drop(true)
                .spawn()?;
            Ok(Manager::Capow(child, log))
        }
    }
}

/// Runs part 3; one `scale` record per system and machine count.
///
/// # Errors
/// When the private API server cannot be started.
pub async fn run(opts: &ScaleOptions, report: &Report) -> Result<()> {
    for &machines in &opts.machines {
        for &system in &opts.systems {
            report.note(&format!(
                "scale: {} with {machines} machines",
                system.name()
            ));
            match one(opts, system, machines, report).await {
                Ok(v) => report.record(v),
                Err(e) => report.record(json!({"kind": "scale", "system": system.name(),
                    "machines": machines, "error": format!("{e:#}")})),
            }
        }
    }
    Ok(())
}

async fn one(
    opts: &ScaleOptions,
    system: System,
    machines: usize,
    report: &Report,
) -> Result<Value> {
    let api = PrivateApi::up()?;
    let client = client_for(&api.kubeconfig).await;
    install_crds(&client, system).await?;
    // The fake's address is needed for the identity Secret before the servers are known:
    // start a placeholder-free fake after populating, with the Secret pointing at a fixed port.
    let port = free_port()?;
    let identity = format!(
        "clouds:\n  bench:\n    auth:\n      auth_url: http://127.0.0.1:{port}/identity/v3\n      username: demo\n      password: fake\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    interface: public\n    identity_api_version: 3\n"
    );
    let t = Instant::now();
    let servers = populate(&client, system, machines, opts.groups, &identity).await?;
    report.note(&format!(
        "scale: {machines} machines written in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    let fake = FakeCloud::start_on(servers, port).await?;
    let manager = start_manager(system, &api.kubeconfig).await?;
    let pid = manager.pid();
    // The initial pass: until CPU use stays under 5 % of a core for 15 s (one sample every 5 s;
    // none when `settle_max` passes first).
    let poll =
        Poll::new("the manager's initial pass", opts.settle_max).every(Duration::from_secs(5));
    let mut last = ProcStats::of(pid);
    let mut quiet_since: Option<Instant> = None;
    let mut initial = None;
    tokio::time::sleep(Duration::from_secs(5)).await;
    loop {
        let now = ProcStats::of(pid);
        if now.rss_kib == 0 {
            bail!(
                "the manager exited:\n{}",
                crate::log_tail(manager.log(), 20)
            );
        }
        let busy = (now.cpu_seconds - last.cpu_seconds) / 5.0;
        last = now;
        if busy < 0.05 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(10) {
                initial = Some(poll.elapsed());
                break;
            }
        } else {
            quiet_since = None;
        }
        if poll.try_tick("").await.is_err() {
            break;
        }
    }
    let after_initial = ProcStats::of(pid);
    let counts_before = fake.counts();
    tokio::time::sleep(opts.window).await;
    let end = ProcStats::of(pid);
    let counts = super::diff(&fake.counts(), &counts_before);
    let initial_counts = counts_before;
    manager.stop().await;
    drop(fake);
    drop(api);
    Ok(json!({
        "kind": "scale", "system": system.name(), "machines": machines, "groups": opts.groups,
        "initial_pass_s": initial.map(|d| d.as_secs_f64()),
        "initial_pass_settled": initial.is_some(),
        "cpu_s_initial": after_initial.cpu_seconds,
        "window_s": opts.window.as_secs_f64(),
        "cpu_s_window": end.cpu_seconds - after_initial.cpu_seconds,
        "cpu_percent_window": 100.0 * (end.cpu_seconds - after_initial.cpu_seconds) / opts.window.as_secs_f64(),
        "rss_mib_end": end.rss_kib as f64 / 1024.0,
        "peak_rss_mib": end.hwm_kib as f64 / 1024.0,
        "openstack_requests_initial": super::total(&initial_counts),
        "openstack_requests_window": super::total(&counts),
        "openstack_window_operations": counts,
        "openstack_initial_operations": initial_counts,
    }))
}
