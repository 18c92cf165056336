//! The Helm chart (`charts/capow`) with the real helm (built from `helm.sh/helm/v3`, pinned in
//! e2e/versions.env) against the real API server: it lints; it renders exactly the RBAC rules
//! and CRDs the code generates, and arguments the manager's CLI accepts; it installs, upgrades
//! and uninstalls; and the capow manager, started with the installed Deployment's arguments as
//! the chart's ServiceAccount, becomes ready (watches, leader-election Lease and CA Secret in
//! the release namespace all allowed by the chart's RBAC). Also the Cluster Stack's
//! `cluster-class` chart (`clusterstack/`): it renders the repository's ClusterClass under the
//! Cluster Stack Operator's names, and the real CAPI core accepts it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::PathBuf;
use std::time::Duration;

use capow::manifests;
use capow_e2e::{Env, Manager, Poll, TestNamespace, service_account_kubeconfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

const KUBE_VERSION: &str = "1.36.3";

fn chart() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(manifests::CHART_DIR)
        .display()
        .to_string()
}

fn helm(args: &[&str]) -> String {
    let bin = std::env::var("CAPOW_E2E_HELM").expect("CAPOW_E2E_HELM (set by e2e/test.sh)");
    let env = Env::get();
    let out = std::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("HELM_CACHE_HOME", env.state.join("helm/cache"))
        .env("HELM_CONFIG_HOME", env.state.join("helm/config"))
        .env("HELM_DATA_HOME", env.state.join("helm/data"))
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` with `set` values, as JSON documents.
fn render(namespace: &str, set: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "capow",
        chart.as_str(),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    let text = helm(&args);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn container_args(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// True when every key/value of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels[k] == *v)
}

#[test]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
fn the_chart_lints_and_renders_what_the_code_generates() {
    helm(&["lint", "--strict", &chart()]);

    let docs = render("capow-system", &[]);
    for d in &docs {
        assert_eq!(
            d["metadata"]["labels"]["cluster.x-k8s.io/provider"],
            "infrastructure-openstack-workers",
            "{} {}",
            d["kind"],
            d["metadata"]["name"]
        );
        if ![
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
        ]
        .contains(&d["kind"].as_str().unwrap())
        {
            assert_eq!(d["metadata"]["namespace"], "capow-system", "{}", d["kind"]);
        }
    }
    // The same least-privilege rules as config/rbac.
    let roles = kind(&docs, "ClusterRole");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["rules"], manifests::cluster_role()["rules"]);
    // The CRDs the code defines, kept on uninstall.
    let crds = kind(&docs, "CustomResourceDefinition");
    let want = capow::api::crds();
    assert_eq!(crds.len(), want.len());
    for w in &want {
        let w = serde_json::to_value(w).unwrap();
        let got = crds
            .iter()
            .find(|c| c["metadata"]["name"] == w["metadata"]["name"])
            .unwrap_or_else(|| panic!("{} not rendered", w["metadata"]["name"]));
        assert_eq!(got["spec"], w["spec"]);
        assert_eq!(got["metadata"]["labels"], w["metadata"]["labels"]);
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
    }
    // The manager's arguments parse with its own CLI; selectors select its pods.
    let deployment = kind(&docs, "Deployment")[0];
    let args = container_args(deployment);
    let mut argv = vec!["capow".to_owned()];
    argv.extend(args.iter().cloned());
    let parsed = <capow::runtime::cli::Cli as clap::Parser>::try_parse_from(&argv);
    assert!(parsed.is_ok(), "{args:?}: {}", parsed.err().unwrap());
    assert!(args.contains(&"--leader-elect".to_owned()), "{args:?}");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let service = kind(&docs, "Service")[0];
    assert!(selects(&service["spec"]["selector"], pod_labels));
    assert!(
        args.contains(&format!(
            "--autoscaler-service={}",
            service["metadata"]["name"].as_str().unwrap()
        )),
        "the serving certificate names the Service: {args:?}"
    );
    let pdb = kind(&docs, "PodDisruptionBudget")[0];
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    // A rollout and a drain both finish (e2e/tests/ha.rs shows that every replica is Ready,
    // not only the Lease holder): the new pod starts before an old one stops, and the budget
    // lets one replica go whatever replicaCount is.
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "{deployment}"
    );
    assert!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
            .as_i64()
            .is_some_and(|s| s >= 1),
        "{deployment}"
    );
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    assert!(pdb["spec"]["minAvailable"].is_null(), "{pdb}");
    let spread = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert!(selects(&spread["labelSelector"]["matchLabels"], pod_labels));
    let one = render("capow-system", &["replicaCount=1"]);
    assert_eq!(
        kind(&one, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"],
        1,
        "one replica can still be drained"
    );
    assert!(kind(&docs, "NetworkPolicy").is_empty(), "off by default");

    // Switches: no CRDs, no autoscaler, a NetworkPolicy selecting the pods.
    let docs = render(
        "capow-system",
        &[
            "crds.install=false",
            "autoscaler.enabled=false",
            "networkPolicy.enabled=true",
            "watchNamespace=team-a",
        ],
    );
    assert!(kind(&docs, "CustomResourceDefinition").is_empty());
    assert!(kind(&docs, "Service").is_empty());
    let deployment = kind(&docs, "Deployment")[0];
    let args = container_args(deployment);
    assert!(
        !args.iter().any(|a| a.starts_with("--autoscaler-address")),
        "{args:?}"
    );
    assert!(args.contains(&"--namespace=team-a".to_owned()), "{args:?}");
    let policy = kind(&docs, "NetworkPolicy")[0];
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(
        policy["spec"]["ingress"].as_array().map(Vec::len),
        Some(0),
        "without the autoscaler and admin peers nothing may connect: {policy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn the_chart_installs_and_its_service_account_runs_the_manager() {
    let env = Env::get();
    let client = env.client().await;
    let guard = TestNamespace::create(&client, "helm").await;
    let ns = guard.name.clone();
    let release = format!("r{}", &ns[ns.len() - 8..]);
    let chart = chart();
    // CRDs: the e2e API server has them already (not owned by a release); watch only the
    // test's namespace.
    helm(&[
        "install",
        &release,
        &chart,
        "--namespace",
        &ns,
        "--set",
        "crds.install=false",
        "--set",
        &format!("watchNamespace={ns}"),
    ]);
    let fullname = format!("{release}-capow");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = deployments
        .get(&format!("{fullname}-controller-manager"))
        .await
        .unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = roles
        .get(&format!("{fullname}-manager-role"))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&role.rules).unwrap(),
        manifests::cluster_role()["rules"]
    );

    // The API server's own view of the installed RBAC: what the code needs is allowed, more
    // is not.
    let sa = format!("{fullname}-manager");
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let can = |verb: &str, group: &str, resource: &str, sub: &str, namespace: &str| {
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {"user": user, "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
                     "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": sub, "namespace": namespace}}
        }))
        .unwrap();
        let reviews = reviews.clone();
        async move {
            reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .unwrap()
                .allowed
        }
    };
    assert!(
        can(
            "patch",
            "cluster.x-k8s.io",
            "machinedeployments",
            "scale",
            "any"
        )
        .await
    );
    assert!(
        can(
            "patch",
            "infrastructure.cluster.x-k8s.io",
            "openstackworkermachines",
            "status",
            "any"
        )
        .await
    );
    assert!(can("update", "coordination.k8s.io", "leases", "", &ns).await);
    assert!(
        !can("update", "coordination.k8s.io", "leases", "", "default").await,
        "Leases only in the release namespace"
    );
    assert!(!can("delete", "", "secrets", "", &ns).await);
    assert!(
        !can("list", "", "secrets", "", &ns).await,
        "capow never lists Secrets"
    );
    // The one CAPI delete capow has: the maximum node age replaces the oldest Machine of a
    // group through CAPI (docs/node-lifecycle.md); never a MachineDeployment or a Cluster.
    assert!(can("delete", "cluster.x-k8s.io", "machines", "", &ns).await);
    assert!(!can("delete", "cluster.x-k8s.io", "machinedeployments", "", &ns).await);
    assert!(!can("delete", "cluster.x-k8s.io", "clusters", "", &ns).await);

    // The manager, with the installed Deployment's arguments, as the chart's ServiceAccount.
    // Only the listen addresses change: loopback ports instead of the pod's.
    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args: Vec<String> = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap()
        .into_iter()
        .filter(|a| !a.starts_with("--admin-address") && !a.starts_with("--autoscaler-address"))
        .collect();
    args.extend([
        format!("--autoscaler-address=127.0.0.1:{grpc_port}"),
        "--autoscaler-ip-san=127.0.0.1".into(),
    ]);
    let kubeconfig = service_account_kubeconfig(&client, &ns, &sa).await;
    let manager = Manager::start_with(
        &kubeconfig,
        &ns,
        args,
        &[("POD_NAMESPACE", ns.as_str()), ("POD_NAME", "manager-0")],
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let lease_name = format!("{fullname}-manager");
    let ca_name = format!("{fullname}-ca");
    Poll::new(
        "the leader Lease and the CA Secret in the release namespace",
        Duration::from_secs(30),
    )
    .until(|| async {
        let lease = leases.get_opt(&lease_name).await?;
        let ca = secrets.get_opt(&ca_name).await?;
        anyhow::Ok(
            lease
                .and_then(|l| l.spec?.holder_identity)
                .is_some_and(|h| !h.is_empty())
                && ca.is_some(),
        )
    })
    .await;
    manager.stop().await;

    // Upgrade changes the Deployment; uninstall removes what the release made.
    helm(&[
        "upgrade",
        &release,
        &chart,
        "--namespace",
        &ns,
        "--reuse-values",
        "--set",
        "replicaCount=1",
    ]);
    let d = deployments
        .get(&format!("{fullname}-controller-manager"))
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1));
    helm(&["uninstall", &release, "--namespace", &ns]);
    assert!(
        roles
            .get_opt(&format!("{fullname}-manager-role"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        deployments
            .get_opt(&format!("{fullname}-controller-manager"))
            .await
            .unwrap()
            .is_none()
    );
    guard.delete().await;
}

/// The Cluster Stack's cluster-class chart renders the repository's ClusterClass under the
/// Cluster Stack Operator's names, and CAPI accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn the_cluster_stack_renders_the_cluster_class_that_capi_accepts() {
    let env = Env::get();
    let client = env.client().await;
    capow_e2e::ensure_control_plane_standin(&client).await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let chart = root
        .join(manifests::CLUSTER_STACK_DIR)
        .join("cluster-class")
        .display()
        .to_string();
    helm(&["lint", "--strict", &chart]);
    let guard = TestNamespace::create(&client, "cstack").await;
    let ns = guard.name.clone();
    // CSO installs the chart as release <provider>-<stack>-<minor>; objects are <release>-<version>.
    let release = "openstack-capow-hcp-1-34";
    let text = helm(&["template", release, &chart, "--namespace", &ns]);
    let rendered: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let original: Vec<Value> = serde_yaml::Deserializer::from_str(
        &std::fs::read_to_string(root.join("templates/clusterclass-openstack-hcp.yaml")).unwrap(),
    )
    .map(|d| Value::deserialize(d).unwrap())
    .filter(|v| !v.is_null())
    .collect();
    assert_eq!(rendered.len(), original.len());
    let prefix = format!("{release}-v1");
    let renamed = serde_json::to_string(&original)
        .unwrap()
        .replace(
            "\"openstack-hcp-control-plane\"",
            &format!("\"{prefix}-control-plane\""),
        )
        .replace(
            "\"openstack-hcp-default-worker\"",
            &format!("\"{prefix}-default-worker\""),
        )
        .replace("\"openstack-hcp\"", &format!("\"{prefix}\""));
    let renamed: Vec<Value> = serde_json::from_str(&renamed).unwrap();
    // Helm orders documents by kind; compare them by kind and name.
    let key = |v: &Value| format!("{}/{}", v["kind"], v["metadata"]["name"]);
    for want in &renamed {
        let got = rendered
            .iter()
            .find(|r| key(r) == key(want))
            .unwrap_or_else(|| panic!("{} not rendered", key(want)));
        assert_eq!(
            got,
            want,
            "{}: the chart is the repository's ClusterClass, CAPI's template expressions untouched",
            key(want)
        );
    }
    for doc in &rendered {
        let mut doc = doc.clone();
        doc["metadata"]["namespace"] = json!(ns);
        capow_e2e::apply_json(&client, &doc).await.unwrap();
    }
    let gvk = kube::api::GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "ClusterClass");
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let classes: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    Poll::new(
        "the Cluster Stack's ClusterClass to have VariablesReady",
        Duration::from_secs(60),
    )
    .until(|| async {
        let c = serde_json::to_value(classes.get(&prefix).await?)?;
        anyhow::Ok(c["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "VariablesReady" && c["status"] == "True")
        }))
    })
    .await;
    guard.delete().await;
}
