//! capow's clusterctl templates, rendered with the real `clusterctl` (built from
//! `sigs.k8s.io/cluster-api`) and applied to the e2e API server with the real CAPI core
//! running: `cluster-template.yaml` applies cleanly; the ClusterClass is accepted by CAPI
//! (variables ready) and a topology Cluster of it makes CAPI create capow's
//! `OpenStackWorkerCluster` and the autoscaled MachineDeployments from the class's templates;
//! the managed cluster-autoscaler's variables set the `OpenStackWorkerCluster`'s
//! `spec.autoscaler`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use capow_e2e::hcp::dynamic;
use capow_e2e::{
    Env, Poll, STANDIN_GROUP, TestNamespace, clouds_yaml_text, ensure_control_plane_standin,
    ensure_crds,
};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// Every object of kind `K` in `ns`, as the reflector stores would hold them.
async fn typed<K>(client: &kube::Client, ns: &str) -> Vec<std::sync::Arc<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    kube::Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(std::sync::Arc::new)
        .collect()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `clusterctl generate ...` with the template variables set.
fn clusterctl(args: &[&str]) -> String {
    let env = Env::get();
    let bin =
        std::env::var("CAPOW_E2E_CLUSTERCTL").expect("CAPOW_E2E_CLUSTERCTL (set by e2e/test.sh)");
    let home = env.state.join("clusterctl-home");
    std::fs::create_dir_all(&home).unwrap();
    let out = std::process::Command::new(bin)
        .args(args)
        .env("HOME", &home)
        .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
        .env("KUBECONFIG", &env.kubeconfig)
        .env(
            "OPENSTACK_CLOUD_YAML_B64",
            base64::engine::general_purpose::STANDARD.encode(clouds_yaml_text()),
        )
        .env("OPENSTACK_CLOUD", &env.cloud)
        .env("OPENSTACK_IMAGE_NAME", "osdev-tiny")
        .env("OPENSTACK_WORKER_FLAVOR", "m1.tiny")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "clusterctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl apply --server-side` of a YAML stream into `ns`.
fn apply(ns: &str, yaml: &str) {
    use std::io::Write;
    let env = Env::get();
    let bin = std::env::var("CAPOW_E2E_KUBECTL").expect("CAPOW_E2E_KUBECTL (set by e2e/test.sh)");
    let mut child = std::process::Command::new(bin)
        .args([
            "--kubeconfig",
            &env.kubeconfig.display().to_string(),
            "apply",
            "--server-side",
            "--field-manager=capow-e2e",
            "-n",
            ns,
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `clusterctl generate cluster <name> --from <file>` for Kubernetes v1.34.2 in `ns`; asserts
/// that every variable was substituted.
fn generate_cluster(name: &str, file: &std::path::Path, ns: &str) -> String {
    let rendered = clusterctl(&[
        "generate",
        "cluster",
        name,
        "--from",
        &file.display().to_string(),
        "--kubernetes-version",
        "v1.34.2",
        "--target-namespace",
        ns,
    ]);
    assert!(
        !rendered.contains("${"),
        "unsubstituted variables:\n{rendered}"
    );
    rendered
}

/// A wait of the template test: up to 90 s, looking every 500 ms.
fn eventually(what: &str) -> Poll {
    Poll::new(what, Duration::from_secs(90)).every(Duration::from_millis(500))
}

#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn cluster_templates_render_with_clusterctl_and_apply() {
    let client = Env::get().client().await;
    ensure_control_plane_standin(&client).await;
    // The class patches spec.autoscaler, which the environment's CRDs may predate.
    ensure_crds(&client).await;

    // Plain template: renders with every variable substituted and applies as it is.
    let ns = TestNamespace::create(&client, "tmpl").await;
    let file = repo().join("templates/cluster-template.yaml");
    apply(&ns.name, &generate_cluster("c1", &file, &ns.name));
    let mds = dynamic(
        &client,
        &ns.name,
        "cluster.x-k8s.io",
        "v1beta2",
        "MachineDeployment",
    )
    .await;
    let list = mds.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 2, "one MachineDeployment per failure domain");
    for md in &list {
        let ann = md.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            ann.get("cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size")
                .map(String::as_str),
            Some("5")
        );
    }
    let oswc = dynamic(
        &client,
        &ns.name,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    let c1 = serde_json::to_value(oswc.get("c1").await.unwrap()).unwrap();
    assert_eq!(c1["spec"]["managedSubnets"][0]["cidr"], "10.6.0.0/24");

    // ClusterClass: clusterctl renders it, CAPI accepts its variables, and a topology Cluster
    // makes CAPI create capow's objects from the class's templates.
    let ns2 = TestNamespace::create(&client, "tmplcc").await;
    let class = repo().join("templates/clusterclass-openstack-hcp.yaml");
    apply(
        &ns2.name,
        &clusterctl(&["generate", "yaml", "--from", &class.display().to_string()]),
    );
    let classes = dynamic(
        &client,
        &ns2.name,
        "cluster.x-k8s.io",
        "v1beta2",
        "ClusterClass",
    )
    .await;
    eventually("the ClusterClass's VariablesReady condition")
        .until(|| async {
            let cc = serde_json::to_value(classes.get("openstack-hcp").await.ok()?).ok()?;
            let ready = cc["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "VariablesReady" && c["status"] == "True");
            ready.then_some(cc)
        })
        .await;
    let topology = repo().join("templates/cluster-template-topology.yaml");
    apply(&ns2.name, &generate_cluster("c2", &topology, &ns2.name));

    // The topology controller creates the control plane (our stand-in) and the infrastructure
    // cluster; play the control plane's controller, then the MachineDeployments follow.
    let hcps = dynamic(
        &client,
        &ns2.name,
        STANDIN_GROUP,
        "v1alpha1",
        "HostedControlPlane",
    )
    .await;
    let hcp = eventually("the HostedControlPlane from the class")
        .until(|| async {
            hcps.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
                .map(|o| serde_json::to_value(o).unwrap())
        })
        .await;
    assert_eq!(
        hcp["spec"]["gateway"]["name"], "capi-gateway",
        "gateway patched from the variable"
    );
    let hcp_name = hcp["metadata"]["name"].as_str().unwrap().to_owned();
    hcps.patch_status(&hcp_name, &PatchParams::default(), &Patch::Merge(json!({"status": {
        "initialization": {"controlPlaneInitialized": true}, "initialized": true, "ready": true, "version": "v1.34.2",
        "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "upToDateReplicas": 2,
        "externalManagedControlPlane": true}})))
        .await
        .unwrap();
    let oswc2 = dynamic(
        &client,
        &ns2.name,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    let infra = eventually("the OpenStackWorkerCluster from the class")
        .until(|| async {
            oswc2
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
                .map(|o| serde_json::to_value(o).unwrap())
        })
        .await;
    assert_eq!(
        infra["spec"]["identityRef"]["name"], "c2-cloud-config",
        "identityRef patched from the variable"
    );
    assert_eq!(infra["spec"]["managedSubnets"][0]["cidr"], "10.8.0.0/20");
    assert!(
        infra["spec"]["autoscaler"].is_null(),
        "autoscalerEnabled defaults to false: {}",
        infra["spec"]
    );
    let mds2 = dynamic(
        &client,
        &ns2.name,
        "cluster.x-k8s.io",
        "v1beta2",
        "MachineDeployment",
    )
    .await;
    let list = eventually("the topology's two MachineDeployments")
        .until(|| async {
            let items = mds2.list(&ListParams::default()).await.ok()?.items;
            (items.len() == 2).then(|| serde_json::to_value(items).unwrap())
        })
        .await;
    let templates = dynamic(
        &client,
        &ns2.name,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerMachineTemplate",
    )
    .await;
    for md in list.as_array().unwrap() {
        let template = md["spec"]["template"]["spec"]["infrastructureRef"]["name"]
            .as_str()
            .unwrap();
        let t = serde_json::to_value(templates.get(template).await.unwrap()).unwrap();
        assert_eq!(
            t["spec"]["template"]["spec"]["flavor"]["filter"]["name"], "m1.tiny",
            "flavor patched from the variable"
        );
        assert_eq!(
            t["spec"]["template"]["metadata"]["annotations"]["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"],
            "5",
            "limits patched from the workerMaxSize variable onto the template: {}",
            t["spec"]["template"]
        );
    }

    // A per-MachineDeployment override reaches that MachineDeployment's template only, and
    // capow's node-group index (built here from the live objects CAPI made) reads the limits.
    let clusters = dynamic(&client, &ns2.name, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    clusters
        .patch(
            "c2",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "add", "path": "/spec/topology/workers/machineDeployments/1/variables",
                     "value": {"overrides": [{"name": "workerMaxSize", "value": 3}]}}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    let index = eventually("the override in capow's index")
        .until(|| async {
            let snapshot = capow::autoscaler::index::Snapshot {
                machine_deployments: typed::<capow::capi::MachineDeployment>(&client, &ns2.name)
                    .await,
                templates: typed::<capow::api::machine_template::OpenStackWorkerMachineTemplate>(
                    &client, &ns2.name,
                )
                .await,
                ..Default::default()
            };
            let index = capow::autoscaler::index::Index::build(&snapshot, None);
            let sizes: Vec<(i32, i32)> = index.groups().map(|g| (g.min_size, g.max_size)).collect();
            let mut sorted = sizes.clone();
            sorted.sort_unstable();
            (sorted == [(0, 3), (0, 5)]).then(|| json!(sizes))
        })
        .await;
    assert_eq!(index.as_array().map(Vec::len), Some(2));

    // The managed cluster-autoscaler's variables reach the OpenStackWorkerCluster.
    let cluster = serde_json::to_value(clusters.get("c2").await.unwrap()).unwrap();
    let mut variables: Vec<Value> = cluster["spec"]["topology"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            !v["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("autoscaler")
        })
        .cloned()
        .collect();
    variables.extend([
        json!({"name": "autoscalerEnabled", "value": true}),
        json!({"name": "autoscalerExpander", "value": "price,random"}),
        json!({"name": "autoscalerScaleDownUnneededTime", "value": "5m"}),
    ]);
    clusters
        .patch(
            "c2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topology": {"variables": variables}}})),
        )
        .await
        .unwrap();
    let infra_name = infra["metadata"]["name"].as_str().unwrap().to_owned();
    let autoscaler = eventually("spec.autoscaler patched from the variables")
        .until(|| async {
            let o = serde_json::to_value(oswc2.get(&infra_name).await.ok()?).ok()?;
            let a = o["spec"]["autoscaler"].clone();
            (!a.is_null()).then_some(a)
        })
        .await;
    assert_eq!(
        autoscaler,
        json!({"enabled": true, "expander": "price,random", "scaleDown": {"unneededTime": "5m"}})
    );
    // A value the variable's schema refuses never reaches the object.
    let mut bad = variables.clone();
    for v in &mut bad {
        if v["name"] == "autoscalerExpander" {
            v["value"] = json!("priority");
        }
    }
    let refused = clusters
        .patch(
            "c2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topology": {"variables": bad}}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 422),
        "{refused}"
    );
    ns.delete().await;
    ns2.delete().await;
}
