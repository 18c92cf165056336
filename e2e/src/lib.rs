//! End-to-end harness of capow: talks to the real kube-apiserver and the real OpenStack that
//! `e2e/env.sh up` starts on loopback, runs the real `capow` binary as a process, and checks
//! OpenStack with the independent `openstack` CLI (python-openstackclient).
//!
//! The tests read the environment from variables set by `e2e/test.sh`:
//! `CAPOW_E2E_KUBECONFIG`, `CAPOW_E2E_CLOUDS_YAML`, `CAPOW_E2E_CLOUD` (capow's identity),
//! `CAPOW_E2E_ADMIN_CLOUD` (used only to verify), `CAPOW_BIN`, and `CAPOW_E2E_STATE`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a failed step must fail the test at once"
)]

pub mod autoscaler;
pub mod bench;
pub mod cloud;
pub mod hcp;
pub mod osproxy;
pub mod poll;
pub mod stall;
pub mod workload;

pub use poll::Poll;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

/// The environment the tests run against.
#[derive(Debug, Clone)]
pub struct Env {
    /// Admin kubeconfig of the e2e API server.
    pub kubeconfig: PathBuf,
    /// clouds.yaml with capow's cloud and the admin cloud.
    pub clouds_yaml: PathBuf,
    /// Cloud capow uses (a member of project `demo`).
    pub cloud: String,
    /// Cloud the tests verify with (admin: sees user data and every project).
    pub admin_cloud: String,
    /// The capow binary under test.
    pub capow_bin: PathBuf,
    /// State directory (logs, measurements).
    pub state: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the e2e tests through e2e/test.sh (it starts the environment)"
        )
    })
}

impl Env {
    /// The environment, read once from the variables `e2e/test.sh` exports.
    pub fn get() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| {
            let env = Env {
                kubeconfig: var("CAPOW_E2E_KUBECONFIG").into(),
                clouds_yaml: var("CAPOW_E2E_CLOUDS_YAML").into(),
                cloud: var("CAPOW_E2E_CLOUD"),
                admin_cloud: var("CAPOW_E2E_ADMIN_CLOUD"),
                capow_bin: var("CAPOW_BIN").into(),
                state: var("CAPOW_E2E_STATE").into(),
            };
            assert!(
                env.capow_bin.exists(),
                "CAPOW_BIN {} does not exist",
                env.capow_bin.display()
            );
            env
        })
    }

    /// A Kubernetes client for the e2e API server (admin).
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read the e2e kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("load the e2e kubeconfig");
        Client::try_from(config).expect("build the Kubernetes client")
    }

    /// Appends a measurement line to `$CAPOW_E2E_STATE/measurements.txt` (printed by test.sh).
    pub fn record(&self, line: &str) {
        let path = self.state.join("measurements.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
        println!("measure: {line}");
    }
}

/// A namespace of its own per test (`<prefix>-<random>`), deleted by [`TestNamespace::delete`].
pub struct TestNamespace {
    /// Namespace name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// [`TestNamespace::create`], then writes the Secret `identity` with the environment's
    /// clouds.yaml under the key `clouds.yaml` (what an OpenStackWorkerCluster's
    /// `spec.identityRef` names).
    pub async fn with_identity(client: &Client, prefix: &str, identity: &str) -> TestNamespace {
        let ns = TestNamespace::create(client, prefix).await;
        apply_secret(
            client,
            &ns.name,
            identity,
            &[("clouds.yaml", clouds_yaml_text().as_bytes())],
        )
        .await;
        ns
    }

    /// Creates the namespace.
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create the test namespace");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    /// Deletes the namespace (objects with finalizers must be gone first).
    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.write_u32(std::process::id());
    h.finish() as u32
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `capow manager` process watching one namespace.
pub struct Manager {
    child: tokio::process::Child,
    /// Admin server address (loopback).
    pub admin: SocketAddr,
    /// Log file.
    pub log: PathBuf,
}

/// `capow manager --namespace <ns>` with the suite's poll interval and log filter, then `extra`.
fn manager_args(ns: &str, extra: &[&str]) -> Vec<String> {
    [
        "manager",
        "--namespace",
        ns,
        "--build-poll-interval",
        "1s",
        "--log",
        "info,capow=debug",
    ]
    .iter()
    .chain(extra)
    .map(|s| (*s).to_owned())
    .collect()
}

/// Stops `child` with SIGTERM and waits for it; SIGKILL when it has not exited after `grace`.
pub async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

impl Manager {
    /// Starts `capow manager --namespace <ns>` with `extra` flags; waits for `/ready`.
    pub async fn start(ns: &str, extra: &[&str]) -> Manager {
        let kubeconfig = manager_kubeconfig().await;
        Manager::start_with(&kubeconfig, ns, manager_args(ns, extra), &[]).await
    }

    /// Like [`Manager::start`], against another management API server: `capow manager
    /// --namespace <ns>` with `extra` flags as the user of `kubeconfig` (made by
    /// [`manager_kubeconfig_on`] for that server); waits for `/ready`.
    pub async fn start_on(kubeconfig: &Path, ns: &str, extra: &[&str]) -> Manager {
        Manager::start_with(
            kubeconfig,
            &format!("{ns}-target"),
            manager_args(ns, extra),
            &[],
        )
        .await
    }

    /// Starts `capow manager --namespace <ns>` with `extra` flags and nothing else of the test
    /// defaults (no faster build poll, info logging): the manager as an operator runs it, for
    /// benchmarks. Waits for `/ready`.
    pub async fn start_plain(ns: &str, extra: &[&str]) -> Manager {
        let kubeconfig = manager_kubeconfig().await;
        let mut args: Vec<String> = vec!["manager".into(), "--namespace".into(), ns.into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Manager::start_with(&kubeconfig, ns, args, &[]).await
    }

    /// Starts `capow <args>` (the first being `manager`) as the user of `kubeconfig`, with
    /// `--admin-address` on a free loopback port appended and `envs` set; waits for `/ready`.
    /// `label` names the log file.
    pub async fn start_with(
        kubeconfig: &Path,
        label: &str,
        args: Vec<String>,
        envs: &[(&str, &str)],
    ) -> Manager {
        let env = Env::get();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = env.state.join(format!("capow-{label}-{}.log", rand_u32()));
        let file = std::fs::File::create(&log).expect("create the manager log");
        let mut cmd = tokio::process::Command::new(&env.capow_bin);
        cmd.args(&args)
            .arg("--admin-address")
            .arg(admin.to_string())
            .envs(envs.iter().copied())
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("start capow");
        let m = Manager { child, admin, log };
        let url = format!("http://{admin}/ready");
        Poll::new("capow /ready", Duration::from_secs(30))
            .until(|| async {
                reqwest_get(&url)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            })
            .await;
        m
    }

    /// The manager's pid.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sum of `capow_openstack_requests_total` over all labels.
    pub async fn openstack_requests(&self) -> u64 {
        self.openstack_requests_matching("").await
    }

    /// Sum of `capow_openstack_requests_total` over the series whose labels contain `labels`
    /// (e.g. `operation="server_create",code="403"`).
    pub async fn openstack_requests_matching(&self, labels: &str) -> u64 {
        let (_, body) = reqwest_get(&format!("http://{}/metrics", self.admin))
            .await
            .expect("scrape /metrics");
        body.lines()
            .filter(|l| l.starts_with("capow_openstack_requests_total{") && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest_get(&format!("http://{}/metrics", self.admin))
            .await
            .expect("scrape /metrics")
            .1
    }

    /// Peak resident set size (`VmHWM`) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Resident set size, peak resident set size and CPU time of the process now.
    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }

    /// Waits for the process to exit by itself (fault injection), up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Kills the process (SIGKILL: no graceful shutdown).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the process with SIGTERM and waits for it.
    pub async fn stop(mut self) {
        terminate(&mut self.child, Duration::from_secs(20)).await;
    }
}

/// What `/proc` says about a process: memory and CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcStats {
    /// Resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// User plus system CPU time, seconds (`utime + stime` of `/proc/<pid>/stat`).
    pub cpu_seconds: f64,
}

impl ProcStats {
    /// The stats of process `pid`; zeros when it does not exist.
    pub fn of(pid: u32) -> ProcStats {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which may hold spaces) in parentheses; utime and stime are
        // fields 14 and 15 (proc(5)), counted in clock ticks (100 per second on Linux).
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        ProcStats {
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            cpu_seconds: (ticks(11) + ticks(12)) / 100.0,
        }
    }
}

/// GET `url` (loopback, plain HTTP): `(status, body)`.
pub async fn reqwest_get(url: &str) -> Result<(u16, String)> {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    let http = HTTP.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client")
    });
    let resp = http.get(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// The value of the series `name{labels}` in a Prometheus text exposition (`labels` exactly as
/// written, e.g. `a="1",b="2"`; empty for a series without labels); `None` when absent.
pub fn metric_value(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    exposition.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok()).flatten()
    })
}

/// Runs the `openstack` CLI as `cloud` and parses its JSON output.
pub fn openstack(cloud: &str, args: &[&str]) -> Result<Value> {
    let env = Env::get();
    let out = std::process::Command::new("openstack")
        .env("OS_CLIENT_CONFIG_FILE", &env.clouds_yaml)
        .args(["--os-cloud", cloud, "--os-compute-api-version", "2.61"])
        .args(args)
        .args(["-f", "json"])
        .output()
        .context("run the openstack CLI")?;
    if !out.status.success() {
        bail!(
            "openstack {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Runs an `openstack` CLI command that prints nothing useful (delete, set).
pub fn openstack_run(cloud: &str, args: &[&str]) -> Result<()> {
    let env = Env::get();
    let out = std::process::Command::new("openstack")
        .env("OS_CLIENT_CONFIG_FILE", &env.clouds_yaml)
        .args(["--os-cloud", cloud])
        .args(args)
        .output()
        .context("run the openstack CLI")?;
    if !out.status.success() {
        bail!(
            "openstack {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Servers (all projects) carrying `tag`, as the admin sees them.
pub fn servers_tagged(tag: &str) -> Vec<Value> {
    let env = Env::get();
    match openstack(
        &env.admin_cloud,
        &["server", "list", "--all-projects", "--tags", tag, "--long"],
    ) {
        Ok(Value::Array(v)) => v,
        other => panic!("listing servers failed: {other:?}"),
    }
}

/// Ports (all projects) carrying `tag`.
pub fn ports_tagged(tag: &str) -> Vec<Value> {
    let env = Env::get();
    match openstack(&env.admin_cloud, &["port", "list", "--tags", tag, "--long"]) {
        Ok(Value::Array(v)) => v,
        other => panic!("listing ports failed: {other:?}"),
    }
}

/// One server, as the admin sees it (includes `OS-EXT-SRV-ATTR:user_data`).
pub fn server_show(id: &str) -> Value {
    let env = Env::get();
    openstack(&env.admin_cloud, &["server", "show", id]).expect("show server")
}

/// Creates or replaces a Secret with `data` (raw values).
pub async fn apply_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &[u8])]) {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "data": data});
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply("capow-e2e").force(),
        &Patch::Apply(&secret),
    )
    .await
    .expect("apply secret");
}

/// Applies any namespaced object given as JSON with server-side apply.
pub async fn apply_json(client: &Client, obj: &Value) -> Result<Value> {
    let api_version = obj["apiVersion"].as_str().context("apiVersion")?;
    let kind = obj["kind"].as_str().context("kind")?;
    let ns = obj["metadata"]["namespace"].as_str().context("namespace")?;
    let name = obj["metadata"]["name"].as_str().context("name")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let applied = api
        .patch(
            name,
            &PatchParams::apply("capow-e2e").force(),
            &Patch::Apply(obj),
        )
        .await?;
    Ok(serde_json::to_value(applied)?)
}

/// Path of the clouds.yaml the tests hand to capow.
pub fn clouds_yaml_text() -> String {
    std::fs::read_to_string(&Env::get().clouds_yaml).expect("read clouds.yaml")
}

/// Reads the tail of a manager log (for failure messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// API group of the control-plane stand-in: teutonet's HostedControlPlane group (a stand-in
/// because the hosted control plane's apiserver pods need a container runtime, and the module
/// is not served here; README.md, "Honest limits of the demo and the tests").
pub const STANDIN_GROUP: &str = "controlplane.cluster.x-k8s.io";

/// Installs the stand-in CRDs of `e2e/manifests/hostedcontrolplane-standin.yaml`
/// (`HostedControlPlane`, `HostedControlPlaneTemplate`: teutonet's kinds, with only the CAPI
/// v1beta2 control-plane contract). The tests play the controller: they write
/// `status.initialization.controlPlaneInitialized` and, as the real one does,
/// `spec.controlPlaneEndpoint` onto the OpenStackWorkerCluster.
pub async fn ensure_control_plane_standin(client: &Client) {
    use serde::Deserialize;
    let text = include_str!("../manifests/hostedcontrolplane-standin.yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in serde_yaml::Deserializer::from_str(text) {
        let crd = Value::deserialize(doc).expect("stand-in CRD YAML");
        let name = crd["metadata"]["name"].as_str().expect("name").to_owned();
        api.patch(
            &name,
            &PatchParams::apply("capow-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply a stand-in CRD");
        crds_established(client, &[&name], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Waits until the API server reports every CRD of `names` (`<plural>.<group>`) `Established`
/// (condition `Established=True`).
///
/// # Errors
/// When one is not within `timeout`; the message names those that were not.
pub async fn crds_established(client: &Client, names: &[&str], timeout: Duration) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    Poll::new("the CRDs established", timeout)
        .try_until(|| async {
            let mut pending = Vec::new();
            for &name in names {
                match api.get(name).await {
                    Ok(c)
                        if c.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter()
                                    .any(|c| c.type_ == "Established" && c.status == "True")
                            }) => {}
                    Ok(_) => pending.push(name.to_owned()),
                    Err(e) => pending.push(format!("{name} ({e})")),
                }
            }
            if pending.is_empty() {
                Ok(())
            } else {
                Err(format!("not established: {}", pending.join(", ")))
            }
        })
        .await
}

/// Server-side applies Cluster `name` in `ns` with an OpenStackWorkerCluster `name` (labelled
/// with the cluster name) of spec `infra_spec` as its infrastructure; returns the Cluster as
/// the API server stored it.
///
/// # Errors
/// When the API server refuses either object.
pub async fn apply_cluster(
    client: &Client,
    ns: &str,
    name: &str,
    infra_spec: Value,
) -> Result<Value> {
    let cluster = apply_json(client, &json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "OpenStackWorkerCluster", "name": name}}}))
        .await?;
    apply_json(client, &json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerCluster",
        "metadata": {"name": name, "namespace": ns, "labels": {"cluster.x-k8s.io/cluster-name": name}},
        "spec": infra_spec}))
        .await?;
    Ok(cluster)
}

/// An OpenStackWorkerCluster spec on the environment's existing network `osdev-net`, with
/// capow's credentials from Secret `identity` (cloud `$CAPOW_E2E_CLOUD`).
pub fn existing_network_spec(identity: &str) -> Value {
    json!({"identityRef": {"name": identity, "cloudName": Env::get().cloud},
           "network": {"filter": {"name": "osdev-net"}}})
}

/// Applies capow's CRDs as this checkout's code defines them (`capow::api::crds()`) and waits
/// until the API server serves them. The environment installs the CRDs of the checkout that
/// started it; a test of a field added since then calls this first (adding a field changes
/// nothing for objects without it).
pub async fn ensure_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in capow::api::crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        let mut crd = serde_json::to_value(&crd).expect("CRD JSON");
        crd["apiVersion"] = json!("apiextensions.k8s.io/v1");
        crd["kind"] = json!("CustomResourceDefinition");
        api.patch(
            &name,
            &PatchParams::apply("capow-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply the CRD {name}: {e}"));
        crds_established(client, &[&name], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Starts (or reuses) workload cluster `name` with `e2e/workload/up.sh`; returns its admin
/// kubeconfig path.
pub fn workload_up(name: &str) -> PathBuf {
    let dir = std::env::var("CAPOW_E2E_DIR").expect("CAPOW_E2E_DIR (set by e2e/test.sh)");
    let out = std::process::Command::new("bash")
        .arg(format!("{dir}/workload/up.sh"))
        .arg(name)
        .output()
        .expect("run workload/up.sh");
    assert!(
        out.status.success(),
        "workload/up.sh {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    )
}

/// Stops and purges workload cluster `name`.
pub fn workload_down(name: &str) {
    let dir = std::env::var("CAPOW_E2E_DIR").expect("CAPOW_E2E_DIR (set by e2e/test.sh)");
    let _ = std::process::Command::new("bash")
        .arg(format!("{dir}/workload/down.sh"))
        .args([name, "--purge"])
        .output();
}

/// A client for a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("load kubeconfig");
    Client::try_from(config).expect("build the Kubernetes client")
}

/// A kubeconfig for the manager's ServiceAccount `capow-system/capow-manager`, bound to the
/// ClusterRole of `config/rbac` (generated by `capow::manifests`). Every manager the
/// tests start runs with it, so a permission the code needs but the role lacks fails the e2e
/// tests. Made once per test binary.
pub async fn manager_kubeconfig() -> PathBuf {
    static KUBECONFIG: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    KUBECONFIG
        .get_or_init(|| async { manager_kubeconfig_on(&Env::get().kubeconfig).await })
        .await
        .clone()
}

/// [`manager_kubeconfig`] for the API server of the admin kubeconfig `admin` (e.g. the second
/// management plane of `e2e/mgmt2/up.sh`): applies the ServiceAccount and the RBAC of
/// `config/rbac` there and returns a kubeconfig for the ServiceAccount.
pub async fn manager_kubeconfig_on(admin: &Path) -> PathBuf {
    use capow::manifests;
    let client = client_for(admin).await;
    let ns = manifests::NAMESPACE;
    let apply = |v: Value| {
        let client = client.clone();
        async move {
            let mut v = v;
            if v["kind"] == "Namespace" || v["metadata"]["namespace"].is_null() {
                let gvk = kube::api::GroupVersionKind::gvk(
                    v["apiVersion"]
                        .as_str()
                        .unwrap()
                        .split_once('/')
                        .map_or("", |(g, _)| g),
                    v["apiVersion"]
                        .as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap(),
                    v["kind"].as_str().unwrap(),
                );
                let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
                let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
                let name = v["metadata"]["name"].as_str().unwrap().to_owned();
                api.patch(
                    &name,
                    &PatchParams::apply("capow-e2e").force(),
                    &Patch::Apply(&v),
                )
                .await
                .unwrap();
            } else {
                v["metadata"]["namespace"] = json!(ns);
                apply_json(&client, &v).await.unwrap();
            }
        }
    };
    apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await;
    apply(manifests::service_account()).await;
    apply(manifests::cluster_role()).await;
    apply(manifests::cluster_role_binding()).await;
    apply(manifests::leader_election_role()).await;
    apply(manifests::leader_election_role_binding()).await;
    service_account_kubeconfig_at(&client, admin, ns, "capow-manager").await
}

/// A kubeconfig (written under the state directory) that authenticates to the e2e API server
/// as ServiceAccount `ns/sa`, with a token valid for 24 h.
pub async fn service_account_kubeconfig(client: &Client, ns: &str, sa: &str) -> PathBuf {
    service_account_kubeconfig_at(client, &Env::get().kubeconfig, ns, sa).await
}

/// [`service_account_kubeconfig`] for the API server of the admin kubeconfig `admin` (its
/// `server` and `certificate-authority` are copied); `client` must talk to that server.
pub async fn service_account_kubeconfig_at(
    client: &Client,
    admin: &Path,
    ns: &str,
    sa: &str,
) -> PathBuf {
    let env = Env::get();
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 86400}});
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    let token: Value = api
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .expect("request a ServiceAccount token");
    let token = token["status"]["token"].as_str().expect("token").to_owned();
    let admin = std::fs::read_to_string(admin).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_owned();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
        .unwrap()
        .to_owned();
    let port = server.rsplit(':').next().unwrap_or_default().to_owned();
    let path = env.state.join(format!(
        "sa-{ns}-{sa}-{port}-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: {sa}}}\ncurrent-context: e2e\n"
        ),
    )
    .unwrap();
    path
}
