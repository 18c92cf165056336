//! CAPO (cluster-api-provider-openstack) on the e2e management cluster, for the side-by-side
//! benchmark: its CRDs (`config/crd/bases` of the CAPO tree, with the contract labels of
//! `config/crd/kustomization.yaml` and Webhook conversion on the CRDs that
//! `config/crd/patches` names), its admission webhooks (`config/webhook/manifests.yaml`), its
//! ClusterRole (`config/rbac/role.yaml`) bound to a ServiceAccount the manager runs as, ORC's
//! `Image` CRD (CAPO's OpenStackServer controller watches ORC Images; images given by filter, as
//! here, need no ORC manager), and the manager as a process.
//!
//! Every listener is on 127.0.0.1: `--health-addr` and `--diagnostics-address` take a host;
//! the webhook server does not (CAPO v0.15's `main.go` passes only a port), so
//! `e2e/components/build.sh capo` builds CAPO from a scratch copy whose `main.go` sets the
//! webhook server's host to 127.0.0.1, as it does for the CAPI core. Webhook configurations and
//! CRD conversion point at `https://127.0.0.1:<port>` with a CA made by `e2e/bench.sh`
//! (`url:` client configs, as `e2e/capi/up.sh` does for CAPI), and are removed again by
//! [`CapoInstall::uninstall`] (the CRDs stay, like CAPI's).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::{Env, ProcStats, apply_json, service_account_kubeconfig};

const FIELD_MANAGER: &str = "capow-bench";
/// Namespace of CAPO's ServiceAccount.
pub const SYSTEM_NAMESPACE: &str = "capo-bench-system";
/// Names of CAPO's webhook configurations here (removed by [`CapoInstall::uninstall`]).
const WEBHOOK_PREFIX: &str = "capo-bench-";
/// CRDs CAPO's `config/crd/patches` switch to Webhook conversion.
const CONVERTED: &[&str] = &[
    "openstackclusters.infrastructure.cluster.x-k8s.io",
    "openstackmachines.infrastructure.cluster.x-k8s.io",
    "openstackmachinetemplates.infrastructure.cluster.x-k8s.io",
    "openstackclustertemplates.infrastructure.cluster.x-k8s.io",
];

/// Where CAPO's pieces are (all set by `e2e/bench.sh`).
#[derive(Clone, Debug)]
pub struct CapoPaths {
    /// The manager binary (`$CAPOW_CACHE/bin/capo-<version>/manager`).
    pub bin: PathBuf,
    /// The CAPO source tree (its `config/`).
    pub tree: PathBuf,
    /// The ORC module source (its `config/crd/bases`).
    pub orc: PathBuf,
    /// Directory with the webhook serving certificate (`tls.crt`, `tls.key`) and its CA
    /// (`ca.crt`).
    pub certs: PathBuf,
    /// CAPO's version.
    pub version: String,
}

impl CapoPaths {
    /// From `CAPOW_BENCH_CAPO_BIN`, `CAPOW_BENCH_CAPO_DIR`, `CAPOW_BENCH_ORC_DIR`,
    /// `CAPOW_BENCH_CAPO_CERTS` and `CAPOW_BENCH_CAPO_VERSION`.
    ///
    /// # Errors
    /// When one is not set.
    pub fn from_env() -> Result<CapoPaths> {
        Ok(CapoPaths {
            bin: super::need_var("CAPOW_BENCH_CAPO_BIN")?.into(),
            tree: super::need_var("CAPOW_BENCH_CAPO_DIR")?.into(),
            orc: super::need_var("CAPOW_BENCH_ORC_DIR")?.into(),
            certs: super::need_var("CAPOW_BENCH_CAPO_CERTS")?.into(),
            version: super::need_var("CAPOW_BENCH_CAPO_VERSION")?,
        })
    }
}

/// CAPO installed on the management cluster, its webhook on a loopback port.
pub struct CapoInstall {
    /// Paths.
    pub paths: CapoPaths,
    /// The webhook server's port.
    pub webhook_port: u16,
    /// The kubeconfig of CAPO's ServiceAccount.
    pub kubeconfig: PathBuf,
    client: Client,
}

/// The YAML documents of the file at `path` (empty documents skipped).
pub(super) fn yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).with_context(|| format!("parse {}", path.display()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Server-side applies a cluster-scoped object.
pub(super) async fn apply_cluster_scoped(client: &Client, obj: &Value) -> Result<()> {
    let api_version = obj["apiVersion"].as_str().context("apiVersion")?;
    let kind = obj["kind"].as_str().context("kind")?;
    let name = obj["metadata"]["name"].as_str().context("name")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| format!("apply {kind} {name}"))?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl CapoInstall {
    /// Installs CRDs, webhooks and RBAC; the webhook configurations point at a fresh free port
    /// that [`CapoInstall::start`] serves.
    ///
    /// # Errors
    /// When a file is missing or the API server refuses.
    pub async fn install(client: &Client, paths: CapoPaths) -> Result<CapoInstall> {
        let webhook_port = free_port()?;
        let url = format!("https://127.0.0.1:{webhook_port}");
        let ca = base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(paths.certs.join("ca.crt")).context("webhook ca.crt")?);
        // CRDs: CAPO's, with the contract labels and Webhook conversion on loopback; ORC's Image.
        let mut crds = Vec::new();
        for entry in std::fs::read_dir(paths.tree.join("config/crd/bases"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                crds.extend(yaml_docs(&path)?);
            }
        }
        for crd in &mut crds {
            crd["metadata"]["labels"] = json!({
                "cluster.x-k8s.io/v1beta1": "v1beta1",
                "cluster.x-k8s.io/v1beta2": "v1beta2",
                "cluster.x-k8s.io/provider": "infrastructure-openstack"});
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            if CONVERTED.contains(&name) {
                crd["spec"]["conversion"] = json!({"strategy": "Webhook", "webhook": {
                    "conversionReviewVersions": ["v1", "v1beta1"],
                    "clientConfig": {"url": format!("{url}/convert"), "caBundle": ca}}});
            }
        }
        crds.extend(yaml_docs(
            &paths
                .orc
                .join("config/crd/bases/openstack.k-orc.cloud_images.yaml"),
        )?);
        for crd in &crds {
            apply_cluster_scoped(client, crd).await?;
        }
        // Admission webhooks with url: client configs.
        for mut w in yaml_docs(&paths.tree.join("config/webhook/manifests.yaml"))? {
            let name = format!(
                "{WEBHOOK_PREFIX}{}",
                w["metadata"]["name"].as_str().unwrap_or_default()
            );
            w["metadata"] = json!({"name": name});
            if let Some(hooks) = w["webhooks"].as_array_mut() {
                for h in hooks {
                    let path = h["clientConfig"]["service"]["path"]
                        .as_str()
                        .unwrap_or("/")
                        .to_owned();
                    h["clientConfig"] = json!({"url": format!("{url}{path}"), "caBundle": ca});
                }
            }
            apply_cluster_scoped(client, &w).await?;
        }
        // RBAC: CAPO's ClusterRole for a ServiceAccount of its own.
        apply_cluster_scoped(
            client,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}),
        )
        .await?;
        apply_json(
            client,
            &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "capo-manager", "namespace": SYSTEM_NAMESPACE}}),
        )
        .await?;
        for mut role in yaml_docs(&paths.tree.join("config/rbac/role.yaml"))? {
            role["metadata"]["name"] = json!("capo-bench-manager-role");
            // CAPO v0.15.0-beta.0's manager records events through events.k8s.io, but its
            // config/rbac grants only core `events`: every event is refused (403) and logged.
            // The rule lets its events land as capow's do.
            if let Some(rules) = role["rules"].as_array_mut() {
                rules.push(
                    json!({"apiGroups": ["events.k8s.io"], "resources": ["events"],
                                  "verbs": ["create", "patch", "update"]}),
                );
            }
            apply_cluster_scoped(client, &role).await?;
        }
        apply_cluster_scoped(
            client,
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "capo-bench-manager"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "capo-bench-manager-role"},
                    "subjects": [{"kind": "ServiceAccount", "name": "capo-manager", "namespace": SYSTEM_NAMESPACE}]}),
        )
        .await?;
        // Established before anyone uses them.
        let names: Vec<&str> = crds
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap_or_default())
            .collect();
        crate::crds_established(client, &names, Duration::from_secs(60)).await?;
        let kubeconfig = service_account_kubeconfig(client, SYSTEM_NAMESPACE, "capo-manager").await;
        Ok(CapoInstall {
            paths,
            webhook_port,
            kubeconfig,
            client: client.clone(),
        })
    }

    /// Starts the manager watching `ns`, with every listener on loopback, and waits until it
    /// is ready (webhook server started). Default concurrency and sync period.
    ///
    /// # Errors
    /// When it does not become ready in 120 s.
    pub async fn start(&self, ns: &str, extra: &[&str]) -> Result<CapoProcess> {
        let env = Env::get();
        let health = free_port()?;
        let metrics = free_port()?;
        let log = env.state.join(format!("capo-{ns}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new(&self.paths.bin);
        cmd.arg(format!("--namespace={ns}"))
            .arg("--leader-elect=false")
            .arg(format!("--health-addr=127.0.0.1:{health}"))
            .arg(format!("--diagnostics-address=127.0.0.1:{metrics}"))
            .arg("--insecure-diagnostics=true")
            .arg(format!("--webhook-port={}", self.webhook_port))
            .arg(format!("--webhook-cert-dir={}", self.paths.certs.display()))
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().context("start the CAPO manager")?;
        let p = CapoProcess {
            child,
            log,
            metrics,
        };
        let url = format!("http://127.0.0.1:{health}/readyz");
        crate::Poll::new("CAPO /readyz", Duration::from_secs(120))
            .log_tail(&p.log, 30)
            .try_until(|| async {
                crate::reqwest_get(&url)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            })
            .await?;
        Ok(p)
    }

    /// Removes the webhook configurations (the CRDs stay; without a running CAPO nothing
    /// would answer the webhooks, and creates of CAPO kinds would fail).
    pub async fn uninstall(&self) {
        for kind in [
            "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration",
        ] {
            let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
            let Ok((ar, _)) = kube::discovery::pinned_kind(&self.client, &gvk).await else {
                continue;
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            if let Ok(list) = api.list(&Default::default()).await {
                for o in list.items {
                    if let Some(name) = o.metadata.name.filter(|n| n.starts_with(WEBHOOK_PREFIX)) {
                        let _ = api.delete(&name, &Default::default()).await;
                    }
                }
            }
        }
    }
}

/// A running CAPO manager.
pub struct CapoProcess {
    child: tokio::process::Child,
    /// Its log (stderr).
    pub log: PathBuf,
    metrics: u16,
}

impl CapoProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Memory and CPU time now.
    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }

    /// Its Prometheus metrics (plain HTTP on loopback).
    ///
    /// # Errors
    /// When the endpoint does not answer.
    pub async fn metrics(&self) -> Result<String> {
        Ok(
            crate::reqwest_get(&format!("http://127.0.0.1:{}/metrics", self.metrics))
                .await?
                .1,
        )
    }

    /// Stops it with SIGTERM (SIGKILL after 20 s).
    pub async fn stop(mut self) {
        crate::terminate(&mut self.child, Duration::from_secs(20)).await;
    }
}
