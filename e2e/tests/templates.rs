//! capow's clusterctl templates, rendered with the real `clusterctl` (built from
//! `sigs.k8s.io/cluster-api`) and applied to the e2e API server with the real CAPI core
//! running: `cluster-template.yaml` applies cleanly; the ClusterClass is accepted by CAPI
//! (variables ready) and a topology Cluster of it makes CAPI create capow's
//! `OpenStackWorkerCluster` and the autoscaled MachineDeployments from the class's templates;
//! the managed cluster-autoscaler's variables set the `OpenStackWorkerCluster`'s
//! `spec.autoscaler`. And every variable of the class (those of the SCS OpenStack
//! hosted-control-plane Cluster Stack) reaches the object it patches through the real topology
//! controller, bad values are refused, and the Cluster Stack's `cluster-addon` chart renders
//! with the per-cluster values of such a cluster (docs/cluster-stack.md).

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
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
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

/// Writes the status the hosted control plane reports once its `replicas` are up (the stand-in
/// has no controller): initialized, ready, externally managed.
async fn control_plane_ready(hcps: &Api<DynamicObject>, hcp: &Value, replicas: u32) {
    let name = hcp["metadata"]["name"].as_str().unwrap();
    hcps.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {
        "initialization": {"controlPlaneInitialized": true}, "initialized": true, "ready": true, "version": "v1.34.2",
        "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
        "availableReplicas": replicas, "upToDateReplicas": replicas,
        "externalManagedControlPlane": true}})))
        .await
        .unwrap();
}

/// Applies the repository's ClusterClass (rendered by clusterctl) in `ns` and waits until CAPI
/// reports its variables ready (`VariablesReady`).
async fn apply_class(client: &kube::Client, ns: &str) {
    let class = repo().join("templates/clusterclass-openstack-hcp.yaml");
    apply(
        ns,
        &clusterctl(&["generate", "yaml", "--from", &class.display().to_string()]),
    );
    let classes = dynamic(client, ns, "cluster.x-k8s.io", "v1beta2", "ClusterClass").await;
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
    apply_class(&client, &ns2.name).await;
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
    control_plane_ready(&hcps, &hcp, 2).await;
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

/// `helm` (the e2e components' build) with its state under the environment's directory.
fn helm(args: &[&str]) -> String {
    let env = Env::get();
    let bin = std::env::var("CAPOW_E2E_HELM").expect("CAPOW_E2E_HELM (set by e2e/test.sh)");
    let out = std::process::Command::new(bin)
        .args(args)
        .env("HELM_CACHE_HOME", env.state.join("helm/cache"))
        .env("HELM_CONFIG_HOME", env.state.join("helm/config"))
        .env("HELM_DATA_HOME", env.state.join("helm/data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

const SG_ID_1: &str = "0f0e0d0c-0b0a-4909-8807-060504030201";
const SG_ID_2: &str = "1f1e1d1c-1b1a-4919-8817-161514131211";
const EXTERNAL_NET: &str = "2f2e2d2c-2b2a-4929-8827-262524232221";
const SERVER_GROUP: &str = "3f3e3d3c-3b3a-4939-8837-363534333231";

/// Every variable of the class set to a value other than its default.
fn every_variable() -> Vec<Value> {
    [
        ("controlPlaneReplicas", json!(3)),
        ("gatewayName", json!("gw-e2e")),
        ("gatewayNamespace", json!("gw-ns")),
        (
            "identityRef",
            json!({"name": "c3-cloud", "cloudName": "mycloud", "region": "RegionTwo"}),
        ),
        ("sshKeyName", json!("e2e-key")),
        ("securityGroups", json!(["sg-a", "shared"])),
        ("securityGroupIDs", json!([SG_ID_1])),
        ("workerSecurityGroups", json!(["shared", "sg-b"])),
        ("workerSecurityGroupIDs", json!([SG_ID_2, SG_ID_1])),
        ("nodeCIDR", json!("10.9.0.0/24")),
        ("dnsNameservers", json!(["192.0.2.53", "2001:db8::53"])),
        ("networkMTU", json!(1400)),
        ("networkExternalID", json!(EXTERNAL_NET)),
        ("workerFlavor", json!("m1.small")),
        ("workerRootDisk", json!(30)),
        ("workerServerGroupID", json!(SERVER_GROUP)),
        (
            "workerAdditionalBlockDevices",
            json!([{"name": "data", "sizeGiB": 5, "type": "ssd"}, {"name": "scratch"}]),
        ),
        ("imageName", json!("ubuntu-capi")),
        ("imageAddVersion", json!(true)),
        ("workerMinSize", json!(1)),
        ("workerMaxSize", json!(4)),
        // replicas left to the variable's default (1).
        ("headroom", json!({"cpu": "1", "memory": "512Mi"})),
        (
            "imageWarmup",
            json!({"images": ["pause:3.10", "mirror.example:5000/team/app:1.2"],
                   "ignore": ["mirror.example:5000/*"], "timeout": "5m"}),
        ),
    ]
    .into_iter()
    .map(|(name, value)| json!({"name": name, "value": value}))
    .collect()
}

/// A Cluster of the class with every variable set: the real topology controller patches each
/// into the HostedControlPlane, the OpenStackWorkerCluster and the MachineDeployment's
/// OpenStackWorkerMachineTemplate; values the variables' schemas refuse never reach them, and
/// duplicate block device names are refused by capow's schema with a Cluster condition. Then
/// the Cluster Stack's per-cluster addon values, rendered over those live objects, reach each
/// addon of the `cluster-addon` chart (its dependencies stubbed: the real charts cannot be
/// downloaded here).
#[tokio::test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn the_cluster_class_patches_every_variable_and_refuses_bad_values() {
    let client = Env::get().client().await;
    ensure_control_plane_standin(&client).await;
    ensure_crds(&client).await;
    let ns = TestNamespace::create(&client, "ccvars").await;
    apply_class(&client, &ns.name).await;
    // No spec.topology.controlPlane.replicas: controlPlaneReplicas decides. Zero replicas: no
    // Machines, only the objects under test.
    let cluster = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "c3", "namespace": ns.name},
        "spec": {
            "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
            "topology": {
                "classRef": {"name": "openstack-hcp"},
                "version": "v1.34.2",
                "workers": {"machineDeployments": [{"class": "default-worker", "name": "md-a", "replicas": 0}]},
                "variables": every_variable(),
            },
        },
    });
    capow_e2e::apply_json(&client, &cluster).await.unwrap();

    let hcps = dynamic(
        &client,
        &ns.name,
        STANDIN_GROUP,
        "v1alpha1",
        "HostedControlPlane",
    )
    .await;
    let hcp = eventually("the HostedControlPlane from the class")
        .until(|| async {
            let items = hcps.list(&ListParams::default()).await.ok()?.items;
            items
                .into_iter()
                .next()
                .map(|o| serde_json::to_value(o).unwrap())
        })
        .await;
    assert_eq!(hcp["spec"]["replicas"], 3, "{}", hcp["spec"]);
    assert_eq!(
        hcp["spec"]["gateway"],
        json!({"name": "gw-e2e", "namespace": "gw-ns"})
    );
    control_plane_ready(&hcps, &hcp, 3).await;

    let oswcs = dynamic(
        &client,
        &ns.name,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    let infra = eventually("the OpenStackWorkerCluster from the class")
        .until(|| async {
            let items = oswcs.list(&ListParams::default()).await.ok()?.items;
            items
                .into_iter()
                .next()
                .map(|o| serde_json::to_value(o).unwrap())
        })
        .await;
    let spec = &infra["spec"];
    assert_eq!(spec["identityRef"]["name"], "c3-cloud", "{spec}");
    assert_eq!(spec["identityRef"]["cloudName"], "mycloud");
    assert_eq!(spec["identityRef"]["region"], "RegionTwo");
    assert_eq!(
        spec["managedSubnets"],
        json!([{"cidr": "10.9.0.0/24", "dnsNameservers": ["192.0.2.53", "2001:db8::53"]}])
    );
    assert_eq!(spec["managedNetwork"], json!({"mtu": 1400}));
    assert_eq!(spec["externalNetwork"], json!({"id": EXTERNAL_NET}));
    assert_eq!(
        spec["nodeLifecycle"],
        json!({
            "headroom": {"cpu": "1", "memory": "512Mi", "replicas": 1},
            "imageWarmup": {"images": ["pause:3.10", "mirror.example:5000/team/app:1.2"],
                            "ignore": ["mirror.example:5000/*"], "timeout": "5m"},
        }),
        "the headroom and imageWarmup variables, the headroom's replicas defaulted"
    );

    let mds = dynamic(
        &client,
        &ns.name,
        "cluster.x-k8s.io",
        "v1beta2",
        "MachineDeployment",
    )
    .await;
    let md = eventually("the topology's MachineDeployment")
        .until(|| async {
            let items = mds.list(&ListParams::default()).await.ok()?.items;
            items
                .into_iter()
                .next()
                .map(|o| serde_json::to_value(o).unwrap())
        })
        .await;
    let templates = dynamic(
        &client,
        &ns.name,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerMachineTemplate",
    )
    .await;
    let template_name = md["spec"]["template"]["spec"]["infrastructureRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let template = serde_json::to_value(templates.get(&template_name).await.unwrap()).unwrap();
    let t = &template["spec"]["template"];
    let spec = &t["spec"];
    assert_eq!(spec["flavor"], json!({"filter": {"name": "m1.small"}}));
    assert_eq!(
        spec["image"],
        json!({"filter": {"name": "ubuntu-capi-v1.34.2"}}),
        "imageAddVersion appends the MachineDeployment's version"
    );
    assert_eq!(spec["rootVolume"]["sizeGiB"], 30);
    assert_eq!(spec["serverGroup"], json!({"id": SERVER_GROUP}));
    assert_eq!(spec["sshKeyName"], "e2e-key");
    assert_eq!(
        spec["additionalBlockDevices"],
        json!([
            {"name": "data", "sizeGiB": 5, "storage": {"type": "Volume", "volume": {"type": "ssd"}}},
            {"name": "scratch", "sizeGiB": 20, "storage": {"type": "Volume"}},
        ])
    );
    assert_eq!(
        spec["securityGroups"],
        json!([
            {"filter": {"name": "sg-a"}}, {"filter": {"name": "shared"}}, {"filter": {"name": "sg-b"}},
            {"id": SG_ID_1}, {"id": SG_ID_2},
        ]),
        "the four security group variables joined without duplicates"
    );
    let annotations = &t["metadata"]["annotations"];
    assert_eq!(
        annotations["cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size"],
        "1"
    );
    assert_eq!(
        annotations["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"],
        "4"
    );

    // Values the schemas refuse: the API server answers 422 and nothing changes.
    let clusters = dynamic(&client, &ns.name, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    let bad = [
        ("workerRootDisk", json!(-1)),
        ("workerRootDisk", json!(20000)),
        ("networkMTU", json!(10)),
        ("networkMTU", json!(100_000)),
        ("nodeCIDR", json!("10.0.0.0/33")),
        ("dnsNameservers", json!(["not-an-ip"])),
        ("networkExternalID", json!("external")),
        ("workerServerGroupID", json!("group-a")),
        ("workerSecurityGroupIDs", json!(["sg-a"])),
        ("securityGroupIDs", json!(["sg-a"])),
        ("workerAdditionalBlockDevices", json!([{"name": "root"}])),
        (
            "workerAdditionalBlockDevices",
            json!([{"name": "a", "sizeGiB": 0}]),
        ),
        ("controlPlaneReplicas", json!(0)),
        ("gatewayName", json!("Not_A_Name")),
        ("identityRef", json!({"name": "", "cloudName": "x"})),
        ("imageAddVersion", json!("yes")),
        ("workerFlavor", json!("")),
        ("workerMaxSize", json!(5000)),
        ("sshKeyName", json!("k".repeat(256))),
        ("headroom", json!({"cpu": "-1", "memory": "1Gi"})),
        ("headroom", json!({"cpu": "1"})),
        ("imageWarmup", json!({"images": ["Busybox:latest"]})),
        ("imageWarmup", json!({"images": []})),
        (
            "imageWarmup",
            json!({"images": ["pause:3.10"], "ignore": ["*"]}),
        ),
    ];
    for (name, value) in bad {
        let mut variables = every_variable();
        for v in &mut variables {
            if v["name"] == name {
                v["value"] = value.clone();
            }
        }
        let refused = clusters
            .patch(
                "c3",
                &PatchParams {
                    dry_run: true,
                    ..PatchParams::default()
                },
                &Patch::Merge(json!({"spec": {"topology": {"variables": variables}}})),
            )
            .await
            .expect_err(&format!("{name} = {value} was accepted"));
        assert!(
            matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.message.contains(name)),
            "{name} = {value}: {refused}"
        );
    }
    let after = serde_json::to_value(templates.get(&template_name).await.unwrap()).unwrap();
    assert_eq!(after["spec"], template["spec"]);

    // Duplicate block device names pass the variable's schema (CAPI v1.14 cannot compile a CEL
    // rule on a whole list variable) and are refused by the OpenStackWorkerMachineTemplate's
    // schema: the topology controller says so on the Cluster, and the template keeps its spec.
    let mut duplicate = every_variable();
    for v in &mut duplicate {
        if v["name"] == "workerAdditionalBlockDevices" {
            v["value"] = json!([{"name": "a"}, {"name": "a"}]);
        }
    }
    clusters
        .patch(
            "c3",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topology": {"variables": duplicate}}})),
        )
        .await
        .unwrap();
    let condition = eventually("the topology controller to report the refusal")
        .until(|| async {
            let c = serde_json::to_value(clusters.get("c3").await.ok()?).ok()?;
            c["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| {
                    c["type"] == "TopologyReconciled"
                        && c["status"] == "False"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("block device names must be unique"))
                })
                .cloned()
        })
        .await;
    let after = serde_json::to_value(templates.get(&template_name).await.unwrap()).unwrap();
    assert_eq!(after["spec"], template["spec"], "{condition}");
    clusters
        .patch(
            "c3",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topology": {"variables": every_variable()}}})),
        )
        .await
        .unwrap();

    // The Cluster Stack's per-cluster addon values over these live objects, with the control
    // plane endpoint the hosted control plane provider writes.
    let mut cluster = serde_json::to_value(clusters.get("c3").await.unwrap()).unwrap();
    cluster["spec"]["controlPlaneEndpoint"] = json!({"host": "c3.hcp.example", "port": 443});
    let infra = serde_json::to_value(
        oswcs
            .get(infra["metadata"]["name"].as_str().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    let hcp = serde_json::to_value(
        hcps.get(hcp["metadata"]["name"].as_str().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    render_cluster_addon(&ns.name, &cluster, &hcp, &infra);
    ns.delete().await;
}

/// Renders `clusterstack/cluster-addon-values.yaml` as the Cluster Stack Operator does (a Go
/// template with the sprig functions over `.Cluster`, `.ControlPlane`, `.InfraCluster`; here
/// through helm's `tpl`), then the `cluster-addon` chart with those values and each dependency
/// replaced by a stub chart of the same name and version that prints the values it receives.
fn render_cluster_addon(ns: &str, cluster: &Value, control_plane: &Value, infra: &Value) {
    let stack = repo().join("clusterstack");
    let dir = Env::get().state.join(format!("cluster-addon-{ns}"));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let tpl = dir.join("tpl");
    write(
        &tpl.join("Chart.yaml"),
        "apiVersion: v2\nname: tpl\nversion: 0.0.1\n",
    );
    write(
        &tpl.join("cav.yaml"),
        &std::fs::read_to_string(stack.join("cluster-addon-values.yaml")).unwrap(),
    );
    write(
        &tpl.join("templates/out.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: out}\ndata:\n  rendered: {{ tpl (.Files.Get \"cav.yaml\") (dict \"Cluster\" .Values.Cluster \"ControlPlane\" .Values.ControlPlane \"InfraCluster\" .Values.InfraCluster \"Template\" .Template) | toJson }}\n",
    );
    let objects = dir.join("objects.json");
    write(
        &objects,
        &json!({"Cluster": cluster, "ControlPlane": control_plane, "InfraCluster": infra})
            .to_string(),
    );
    let out = yaml_docs(&helm(&[
        "template",
        "tpl",
        &tpl.display().to_string(),
        "-f",
        &objects.display().to_string(),
    ]));
    let rendered: Value =
        serde_yaml::from_str(out[0]["data"]["rendered"].as_str().unwrap()).unwrap();
    let values = dir.join("cluster-values.yaml");
    write(&values, rendered["values"].as_str().unwrap());

    // The chart as the stack ships it: every dependency pinned, none downloadable here.
    let addon = stack.join("cluster-addon");
    let listed = helm(&["dependency", "list", &addon.display().to_string()]);
    for a in capow::manifests::ADDONS {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([a.chart, a.version])),
            "{} {} in:\n{listed}",
            a.chart,
            a.version
        );
    }
    // A copy with stub dependencies lints strictly and renders.
    let copy = dir.join("cluster-addon");
    for f in ["Chart.yaml", "values.yaml"] {
        write(
            &copy.join(f),
            &std::fs::read_to_string(addon.join(f)).unwrap(),
        );
    }
    for a in capow::manifests::ADDONS {
        let sub = copy.join("charts").join(a.chart);
        if a.chart == "openstack-cloud-controller-manager" {
            // The real chart's default placement (kubernetes/cloud-provider-openstack
            // charts/openstack-cloud-controller-manager/values.yaml), which the stack's values
            // must remove: a hosted-control-plane cluster has no control-plane nodes.
            write(
                &sub.join("values.yaml"),
                "nodeSelector:\n  node-role.kubernetes.io/control-plane: \"\"\n",
            );
        }
        write(
            &sub.join("Chart.yaml"),
            &format!(
                "apiVersion: v2\nname: {}\nversion: {}\ndescription: stub\n",
                a.chart, a.version
            ),
        );
        write(
            &sub.join("templates/values.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Chart.Name }}-values\ndata:\n  values: {{ toJson .Values | quote }}\n",
        );
    }
    let copy_s = copy.display().to_string();
    let values_s = values.display().to_string();
    helm(&["lint", "--strict", &copy_s, "-f", &values_s]);
    let docs = yaml_docs(&helm(&[
        "template",
        "addon",
        &copy_s,
        "-f",
        &values_s,
        "--namespace",
        "kube-system",
    ]));
    let of = |chart: &str| -> Value {
        let cm = docs
            .iter()
            .find(|d| d["metadata"]["name"] == format!("{chart}-values"))
            .unwrap_or_else(|| panic!("{chart} not rendered"));
        serde_json::from_str(cm["data"]["values"].as_str().unwrap()).unwrap()
    };
    let occm = of("openstack-cloud-controller-manager");
    assert_eq!(occm["cluster"]["name"], "c3");
    assert_eq!(
        occm["cloudConfig"]["global"],
        json!({"use-clouds": "true", "clouds-file": "/etc/openstack/clouds.yaml", "cloud": "mycloud", "region": "RegionTwo"})
    );
    assert!(
        occm.get("nodeSelector").is_none(),
        "no control-plane node selector: {occm}"
    );
    let csi = of("openstack-cinder-csi");
    assert_eq!(csi["clusterID"], "c3");
    let conf = csi["secret"]["data"]["cloud.conf"].as_str().unwrap();
    assert!(
        conf.contains("cloud = \"mycloud\"") && conf.contains("region = \"RegionTwo\""),
        "{conf}"
    );
    let cilium = of("cilium");
    assert_eq!(cilium["k8sServiceHost"], "c3.hcp.example");
    assert_eq!(cilium["k8sServicePort"], 443);
    assert_eq!(cilium["ipam"]["mode"], "cluster-pool");
    assert_eq!(
        cilium["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"],
        json!(["192.168.0.0/16"])
    );
    let metrics = of("metrics-server");
    assert!(metrics["args"].as_array().is_some_and(|a| !a.is_empty()));
    let _ = std::fs::remove_dir_all(&dir);
}
