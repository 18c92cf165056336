//! The cluster-autoscaler capow runs for a cluster (`OpenStackWorkerCluster.spec.autoscaler`),
//! end to end: capow makes the Deployment, its kubeconfig Secret and the RBAC inside the
//! workload cluster; the real cluster-autoscaler 1.36.1 runs with exactly the Deployment's
//! arguments and the mounted Secrets' contents and scales a node group from zero for pending
//! pods (scenario 2a: capow's template node → Machines Running → pods Running); a reissued
//! client certificate rolls the Deployment; bad input is refused and deletes nothing; disabling
//! the field, and deleting the Cluster, remove everything again.
//!
//! Pods cannot run on this machine (no container runtime; the management cluster has no
//! kubelet and no Deployment controller), so the test plays the kubelet the way the Helm test
//! plays it for the manager: it reads the Deployment capow made, writes the Secrets the pod
//! mounts into a directory that stands for the pod's filesystem root (mount paths, and paths
//! inside the mounted files, are rooted there), and runs `$CAPOW_E2E_CLUSTER_AUTOSCALER` with
//! the container's arguments plus `--address=127.0.0.1:<free port>` (CA's only listener, which
//! the Deployment binds on all interfaces for the kubelet's probe). It then writes the
//! Deployment's status as the Deployment controller would, to see capow report it available.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use capow::controllers::cluster::autoscaler as managed;
use capow_e2e::hcp::{CLUSTER, HcpCluster, HcpOptions, dynamic};
use capow_e2e::{Env, Poll, ensure_crds, log_tail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// The default image: the manager's repository flag and the tag of the control plane's
/// Kubernetes minor (the HostedControlPlane stand-in says v1.36.3). No registry host.
const REPOSITORY: &str = "capow-e2e/cluster-autoscaler";
/// CPU each workload pod requests: one pod per m1.tiny (1 vCPU), so two pods need two nodes.
const POD_CPU: &str = "600m";
const PODS: usize = 2;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Binds this checkout's manager rules (`capow::manifests::cluster_role()`, with the
/// Deployment rules capow needs for the cluster-autoscaler) to the manager's ServiceAccount
/// under a ClusterRole of their own. The environment's ServiceAccount and its ClusterRole
/// `capow-manager-role` are shared by every test, and a test of another checkout re-applies
/// that role with its own rules at any time.
async fn ensure_checkout_rules(client: &kube::Client) {
    use capow::manifests;
    let name = "capow-manager-role-managed-autoscaler-e2e";
    let mut role = manifests::cluster_role();
    role["metadata"]["name"] = json!(name);
    let mut binding = manifests::cluster_role_binding();
    binding["metadata"]["name"] = json!(name);
    binding["roleRef"]["name"] = json!(name);
    let pp = PatchParams::apply("capow-e2e-managed-autoscaler").force();
    Api::<ClusterRole>::all(client.clone())
        .patch(name, &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(name, &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
}

async fn oswc(c: &HcpCluster) -> Value {
    let api = dynamic(
        &c.client,
        &c.ns,
        INFRA_GROUP,
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    serde_json::to_value(api.get(CLUSTER).await.unwrap()).unwrap()
}

async fn patch_oswc(c: &HcpCluster, patch: Value) -> Result<Value, kube::Error> {
    let api = dynamic(
        &c.client,
        &c.ns,
        INFRA_GROUP,
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    api.patch(CLUSTER, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|o| serde_json::to_value(o).unwrap())
}

fn condition(oswc: &Value) -> Option<Value> {
    oswc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == "AutoscalerReady")
        .cloned()
}

/// Waits until the `AutoscalerReady` condition has `reason` (or is gone, for `None`).
async fn wait_condition(c: &HcpCluster, reason: Option<&str>, timeout: Duration) -> Option<Value> {
    Poll::new(format!("AutoscalerReady reason {reason:?}"), timeout)
        .log_tail(&c.manager.log, 30)
        .until(|| async {
            let cond = condition(&oswc(c).await);
            if cond
                .as_ref()
                .map(|x| x["reason"].as_str().unwrap_or_default())
                == reason
            {
                Ok(cond)
            } else {
                Err(format!("have {cond:?}"))
            }
        })
        .await
}

async fn wait_deployment(c: &HcpCluster, timeout: Duration) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    let name = managed::deployment_name(CLUSTER);
    Poll::new(format!("capow's Deployment {name}"), timeout)
        .log_tail(&c.manager.log, 30)
        .until(|| async {
            match api.get_opt(&name).await.unwrap() {
                Some(d) => Ok(d),
                None => Err(format!("condition {:?}", condition(&oswc(c).await))),
            }
        })
        .await
}

/// The pod's filesystem, rooted at `root`: every Secret volume written at its mount path.
/// Returns the container's arguments with the mount paths rooted there too.
async fn materialize(c: &HcpCluster, d: &Deployment, root: &Path) -> Vec<String> {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in container.volume_mounts.as_ref().unwrap() {
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == m.name)
            .unwrap();
        let secret_name = volume.secret.as_ref().unwrap().secret_name.clone().unwrap();
        let secret = secrets.get(&secret_name).await.unwrap();
        let dir = root.join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        for (key, value) in secret.data.unwrap_or_default() {
            std::fs::write(dir.join(key), &value.0).unwrap();
        }
        mounts.push((m.mount_path.clone(), dir));
    }
    let rooted = |text: &str| {
        mounts.iter().fold(text.to_owned(), |t, (from, to)| {
            t.replace(from.as_str(), &to.display().to_string())
        })
    };
    // Paths inside the mounted files (the cloud-config names its certificate files) point into
    // the pod's filesystem as well.
    for (_, dir) in &mounts {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if let Ok(text) = std::fs::read_to_string(&path) {
                std::fs::write(&path, rooted(&text)).unwrap();
            }
        }
    }
    container
        .args
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| rooted(a))
        .collect()
}

async fn pods_running(pods: &Api<Pod>) -> (usize, Vec<String>) {
    let list = pods
        .list(&ListParams::default().labels("app=load"))
        .await
        .unwrap()
        .items;
    let phases: Vec<String> = list
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default()
        })
        .collect();
    (phases.iter().filter(|p| *p == "Running").count(), phases)
}

/// Plays the Deployment controller: the current generation has rolled out, one replica
/// available.
async fn play_rollout(deployments: &Api<Deployment>, name: &str) {
    let generation = deployments.get(name).await.unwrap().metadata.generation;
    deployments
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"observedGeneration": generation, "replicas": 1,
                "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}),
            ),
        )
        .await
        .unwrap();
}

/// Every object capow makes inside the workload cluster, by kind, and whether it exists.
async fn workload_objects(workload: &kube::Client) -> BTreeMap<&'static str, bool> {
    let ns = managed::WORKLOAD_NAMESPACE;
    let name = managed::WORKLOAD_NAME;
    BTreeMap::from([
        (
            "ServiceAccount",
            exists(
                Api::<ServiceAccount>::namespaced(workload.clone(), ns),
                name,
            )
            .await,
        ),
        (
            "token Secret",
            exists(
                Api::<Secret>::namespaced(workload.clone(), ns),
                managed::TOKEN_SECRET,
            )
            .await,
        ),
        (
            "ClusterRole",
            exists(Api::<ClusterRole>::all(workload.clone()), name).await,
        ),
        (
            "ClusterRoleBinding",
            exists(Api::<ClusterRoleBinding>::all(workload.clone()), name).await,
        ),
        (
            "Role",
            exists(Api::<Role>::namespaced(workload.clone(), ns), name).await,
        ),
        (
            "RoleBinding",
            exists(Api::<RoleBinding>::namespaced(workload.clone(), ns), name).await,
        ),
        (
            "priority ConfigMap",
            exists(
                Api::<ConfigMap>::namespaced(workload.clone(), ns),
                managed::PRIORITY_CONFIG_MAP.0,
            )
            .await,
        ),
    ])
}

/// Whether `api` has an object `name`.
async fn exists<K>(api: Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.get_opt(name).await.unwrap().is_some()
}

/// Waits until nothing capow made for the cluster-autoscaler is left, in either cluster.
async fn wait_all_removed(c: &HcpCluster, what: &str, timeout: Duration) {
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let poll = Poll::new(format!("{what}: nothing left"), timeout)
        .every(Duration::from_millis(500))
        .log_tail(&c.manager.log, 30);
    loop {
        let deployment = deployments
            .get_opt(&managed::deployment_name(CLUSTER))
            .await
            .unwrap()
            .is_some();
        let secret = secrets
            .get_opt(&managed::kubeconfig_secret_name(CLUSTER))
            .await
            .unwrap()
            .is_some();
        let left: Vec<&str> = workload_objects(&c.workload)
            .await
            .into_iter()
            .filter_map(|(k, exists)| exists.then_some(k))
            .collect();
        if !deployment && !secret && left.is_empty() {
            return;
        }
        poll.tick(format_args!(
            "Deployment left {deployment}, kubeconfig Secret left {secret}, in the workload cluster {left:?}"
        ))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment (and CAPOW_E2E_CLUSTER_AUTOSCALER)"]
async fn capow_runs_the_clusters_autoscaler_which_scales_from_zero() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(ca_bin) = std::env::var("CAPOW_E2E_CLUSTER_AUTOSCALER") else {
        println!(
            "SKIPPED: set CAPOW_E2E_CLUSTER_AUTOSCALER to a cluster-autoscaler 1.36.1 binary \
             (tag cluster-autoscaler-1.36.1, built with -tags externalgrpc; e2e/dev-env.sh \
             exports it) to run this test"
        );
        return;
    };
    let env = Env::get();
    let admin = env.client().await;
    ensure_crds(&admin).await;
    ensure_checkout_rules(&admin).await;
    let c = HcpCluster::start_with(
        "mca",
        HcpOptions {
            manager_args: vec![format!("--autoscaler-image-repository={REPOSITORY}")],
            ..HcpOptions::default()
        },
    )
    .await;
    c.add_machine_deployment("small", "m1.tiny", 3).await;

    // --- Enable it. -----------------------------------------------------------------------
    let autoscaler = json!({
        "expander": "priority,least-waste",
        "priorities": [{"priority": 10, "nodeGroups": [".*/small$"]}],
        "scaleDown": {"unneededTime": "10m"},
        "maxNodeProvisionTime": "5m",
        "extraArgs": ["--scan-interval=5s", "--skip-nodes-with-system-pods=false",
                      "--skip-nodes-with-local-storage=false", "--v=4"],
    });
    let patched = patch_oswc(&c, json!({"spec": {"autoscaler": autoscaler}}))
        .await
        .unwrap();
    assert_eq!(
        patched["spec"]["autoscaler"]["expander"], "priority,least-waste",
        "the API server serves spec.autoscaler"
    );
    let d = wait_deployment(&c, Duration::from_secs(60)).await;
    let cond = wait_condition(&c, Some("AutoscalerDeployed"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(cond["status"], "False", "{cond}");
    println!("AutoscalerReady: {}", cond["message"]);

    // The Deployment: one replica, hardened, no ServiceAccount token, the default image.
    let spec = d.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("Recreate")
    );
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("OpenStackWorkerCluster", CLUSTER, Some(true))
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(pod.host_network != Some(true) && pod.service_account_name.is_none());
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(format!("{REPOSITORY}:v1.36.1").as_str()),
        "the tag of the control plane's Kubernetes minor (v1.36.3)"
    );
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert!(sc.privileged != Some(true));
    assert!(
        container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .all(|m| m.read_only == Some(true))
    );
    let checksum = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[managed::CHECKSUM_ANNOTATION]
        .clone();
    // Its kubeconfig Secret, owned by the Deployment (the garbage collector removes it with it).
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &c.ns);
    let kubeconfig = Poll::new(
        "the kubeconfig Secret for the cluster-autoscaler",
        Duration::from_secs(30),
    )
    .until(|| async {
        secrets
            .get_opt(&managed::kubeconfig_secret_name(CLUSTER))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        kubeconfig.metadata.owner_references.as_ref().unwrap()[0].uid,
        d.metadata.uid.clone().unwrap()
    );
    // Inside the workload cluster: ServiceAccount, token, RBAC, the priority list.
    let objects = workload_objects(&c.workload).await;
    assert!(objects.values().all(|e| *e), "{objects:?}");
    let cm = Api::<ConfigMap>::namespaced(c.workload.clone(), managed::WORKLOAD_NAMESPACE)
        .get(managed::PRIORITY_CONFIG_MAP.0)
        .await
        .unwrap();
    assert_eq!(
        cm.data.unwrap()[managed::PRIORITY_CONFIG_MAP.1],
        "10:\n  - \".*/small$\"\n"
    );

    // --- The pod, played: the real cluster-autoscaler with the Deployment's arguments. -----
    let root = env.state.join(format!("{}-pod", c.ns));
    let mut args = materialize(&c, &d, &root).await;
    assert!(
        args.iter().all(|a| !a.starts_with("--address=127.0.0.1")),
        "{args:?}"
    );
    args.push(format!("--address=127.0.0.1:{}", free_port()));
    println!("cluster-autoscaler {}", args.join(" "));
    let log = root.join("cluster-autoscaler.log");
    let mut ca = tokio::process::Command::new(&ca_bin)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Scenario 2a: a Deployment whose pods no node can take.
    capow_e2e::workload::wait_default_service_account(&c.workload, "default").await;
    let load: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "load", "namespace": "default"},
        "spec": {"replicas": PODS, "selector": {"matchLabels": {"app": "load"}},
                 "template": {"metadata": {"labels": {"app": "load"}},
                              "spec": {"containers": [{"name": "app", "image": "capow-e2e-pause",
                                       "resources": {"requests": {"cpu": POD_CPU, "memory": "64Mi"}}}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(c.workload.clone(), "default")
        .create(&PostParams::default(), &load)
        .await
        .unwrap();
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(c.workload.clone(), "default");
    let poll = Poll::new(
        "the cluster-autoscaler to scale up small",
        Duration::from_secs(180),
    )
    .every(Duration::from_secs(1))
    .log_tail(&log, 60);
    loop {
        if let Ok(Some(status)) = ca.try_wait() {
            panic!(
                "cluster-autoscaler exited ({status}):\n{}",
                log_tail(&log, 40)
            );
        }
        let replicas = c.replicas("small").await;
        if replicas > 0 {
            assert_eq!(
                replicas,
                i32::try_from(PODS).unwrap(),
                "one m1.tiny per pod, sized from capow's template node\n{}",
                log_tail(&log, 40)
            );
            break;
        }
        poll.tick(format_args!("pods {:?}", pods_running(&pods).await.1))
            .await;
    }
    let scale_up = started.elapsed();
    c.wait_running("small", PODS, Duration::from_secs(300))
        .await;
    let machines_running = started.elapsed();
    Poll::new(
        "the pods Running on the new nodes",
        Duration::from_secs(120),
    )
    .every(Duration::from_millis(500))
    .until(|| async {
        let (running, phases) = pods_running(&pods).await;
        if running == PODS {
            Ok(())
        } else {
            Err(format!("phases {phases:?}"))
        }
    })
    .await;
    env.record(&format!(
        "managed cluster-autoscaler scale from zero: scale-up {:.1} s, {PODS} Machines Running {:.1} s, pods Running {:.1} s after the pods were created",
        scale_up.as_secs_f64(),
        machines_running.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // RBAC refusals read `... is forbidden: User "system:serviceaccount:..." cannot list ...`
    // (the workload API server's refusal of WatchList streams is not one: it falls back).
    let forbidden: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("is forbidden: User"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the RBAC capow made inside the workload cluster lacks permissions:\n{}",
        forbidden.join("\n")
    );
    let _ = ca.kill().await;

    // --- The Deployment controller, played: available → AutoscalerAvailable. -------------
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &c.ns);
    let name = managed::deployment_name(CLUSTER);
    play_rollout(&deployments, &name).await;
    let cond = wait_condition(&c, Some("AutoscalerAvailable"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(cond["status"], "True", "{cond}");

    // --- A reissued client certificate rolls the Deployment. -----------------------------
    let credentials = capow::tls::cloud_config::secret_name(CLUSTER);
    let old_cert = secrets.get(&credentials).await.unwrap().data.unwrap()["tls.crt"].clone();
    secrets
        .delete(&credentials, &DeleteParams::default())
        .await
        .unwrap();
    let poke = |n: u32| json!({"metadata": {"annotations": {"e2e.capow.dev/poke": n.to_string()}}});
    let clusters = dynamic(&c.client, &c.ns, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    clusters
        .patch(CLUSTER, &PatchParams::default(), &Patch::Merge(poke(1)))
        .await
        .unwrap();
    Poll::new("a new client certificate", Duration::from_secs(30))
        .until(|| async {
            anyhow::Ok(
                secrets
                    .get_opt(&credentials)
                    .await?
                    .and_then(|s| s.data)
                    .is_some_and(|d| d.get("tls.crt") != Some(&old_cert)),
            )
        })
        .await;
    patch_oswc(&c, poke(2)).await.unwrap();
    Poll::new("the Deployment to roll", Duration::from_secs(30))
        .until(|| async {
            let d = deployments.get(&name).await?;
            anyhow::Ok(
                d.spec
                    .unwrap()
                    .template
                    .metadata
                    .unwrap()
                    .annotations
                    .unwrap()[managed::CHECKSUM_ANNOTATION]
                    != checksum,
            )
        })
        .await;
    // The new pod template is a new generation: not available until it has rolled out.
    wait_condition(&c, Some("AutoscalerDeployed"), Duration::from_secs(30)).await;
    play_rollout(&deployments, &name).await;
    wait_condition(&c, Some("AutoscalerAvailable"), Duration::from_secs(30)).await;

    // --- Bad input: refused by the API server, and nothing is deleted. -------------------
    let before = deployments.get(&name).await.unwrap();
    for (bad, field) in [
        (json!({"expander": "cheapest"}), "spec.autoscaler.expander"),
        (
            json!({"priorities": [{"priority": 10, "nodeGroups": ["small-(a"]}]}),
            "spec.autoscaler.priorities[0].nodeGroups",
        ),
        (
            json!({"image": "mirror.example:5000/cluster-autoscaler"}),
            "spec.autoscaler.image",
        ),
        (
            json!({"extraArgs": ["--scan-interval=5s", "--kubeconfig=/tmp/admin.kubeconfig"]}),
            "spec.autoscaler.extraArgs",
        ),
    ] {
        let refused = patch_oswc(&c, json!({"spec": {"autoscaler": bad}}))
            .await
            .unwrap_err();
        let text = capow::controllers::describe_kube_error(&refused);
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 422) && text.contains(field),
            "{bad}: {text}"
        );
        println!("refused: {text}");
    }
    let after = deployments.get(&name).await.unwrap();
    assert_eq!(
        (after.metadata.uid, after.metadata.generation),
        (before.metadata.uid, before.metadata.generation),
        "bad input changed the Deployment"
    );
    assert_eq!(
        condition(&oswc(&c).await).unwrap()["reason"],
        "AutoscalerAvailable"
    );

    // --- Disabled: everything goes, in both clusters. -------------------------------------
    patch_oswc(&c, json!({"spec": {"autoscaler": {"enabled": false}}}))
        .await
        .unwrap();
    wait_all_removed(
        &c,
        "after spec.autoscaler.enabled=false",
        Duration::from_secs(60),
    )
    .await;
    assert!(
        wait_condition(&c, None, Duration::from_secs(30))
            .await
            .is_none()
    );

    // --- Enabled again, then the Cluster deleted: everything goes with it. ----------------
    patch_oswc(&c, json!({"spec": {"autoscaler": {"enabled": true}}}))
        .await
        .unwrap();
    wait_deployment(&c, Duration::from_secs(60)).await;
    wait_condition(&c, Some("AutoscalerDeployed"), Duration::from_secs(30)).await;
    assert!(workload_objects(&c.workload).await.values().all(|e| *e));
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .unwrap();
    wait_all_removed(
        &c,
        "after the Cluster was deleted",
        Duration::from_secs(180),
    )
    .await;
    std::fs::remove_dir_all(&root).ok();
    c.finish().await;
}
