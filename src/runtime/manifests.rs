//! The install manifests, generated from code so they cannot drift from it:
//! `config/` (kustomize bases: CRDs, RBAC, manager) and the clusterctl provider files
//! `templates/metadata.yaml` and `templates/infrastructure-components.yaml` (clusterctl
//! provider contract, cluster-api `docs/book/src/developer/providers/contracts/clusterctl.md`:
//! one Namespace, every object labelled `cluster.x-k8s.io/provider`, the controller container
//! named `manager`, `${VAR}` substitution), and the generated parts of the Helm chart
//! `charts/capow` (`Chart.yaml`, the CRDs, the manager's RBAC rules; the rest of the chart is
//! hand-written templates). `capow manifests --output-dir .` writes them; a test fails when the
//! committed files differ.
//!
//! The RBAC rules are the least the manager needs; each rule names the code that needs it.

use serde_json::{Value, json};

use crate::api::PROVIDER_LABEL;

/// Namespace clusterctl installs capow into.
pub const NAMESPACE: &str = "capow-system";
/// Name prefix of capow's objects.
pub const NAME: &str = "capow";
/// The manager's container image, a clusterctl variable with a default.
pub const IMAGE: &str = "${CAPOW_IMAGE:=capow:v0.1.0}";

/// One ClusterRole rule with the reason it exists.
struct Rule {
    groups: &'static [&'static str],
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        groups: &["infrastructure.cluster.x-k8s.io"],
        resources: &["openstackworkermachines", "openstackworkerclusters"],
        verbs: &["get", "list", "watch", "patch", "update"],
        why: "controllers::{machine,cluster}: watch, finalizers (JSON patch), spec.providerID (apply)",
    },
    Rule {
        groups: &["infrastructure.cluster.x-k8s.io"],
        resources: &["openstackworkermachinetemplates"],
        verbs: &["get", "list", "watch"],
        why: "controllers::machine_template and the autoscaler index read templates",
    },
    Rule {
        groups: &["infrastructure.cluster.x-k8s.io"],
        resources: &[
            "openstackworkermachines/status",
            "openstackworkerclusters/status",
            "openstackworkermachinetemplates/status",
        ],
        verbs: &["get", "patch", "update"],
        why: "every controller writes status by server-side apply",
    },
    Rule {
        groups: &["infrastructure.cluster.x-k8s.io"],
        resources: &[
            "openstackworkermachines/finalizers",
            "openstackworkerclusters/finalizers",
        ],
        verbs: &["update"],
        why: "finalizers, under OwnerReferencesPermissionEnforcement",
    },
    Rule {
        groups: &["cluster.x-k8s.io"],
        resources: &["clusters", "machinesets"],
        verbs: &["get", "list", "watch"],
        why: "owners, pause, infrastructure readiness; the autoscaler index",
    },
    Rule {
        groups: &["cluster.x-k8s.io"],
        resources: &["machines"],
        verbs: &["get", "list", "watch", "patch"],
        why: "owner Machines; NodeGroupDeleteNodes sets cluster.x-k8s.io/delete-machine",
    },
    Rule {
        groups: &["cluster.x-k8s.io"],
        resources: &["machinedeployments"],
        verbs: &["get", "list", "watch"],
        why: "the autoscaler index",
    },
    Rule {
        groups: &["cluster.x-k8s.io"],
        resources: &["machinedeployments/scale", "machinesets/scale"],
        verbs: &["get", "patch"],
        why: "NodeGroupIncreaseSize, DeleteNodes, DecreaseTargetSize",
    },
    Rule {
        groups: &[""],
        resources: &["secrets"],
        verbs: &["get", "create", "patch"],
        why: "identityRef and bootstrap data (get); capow's CA (create); per-cluster credentials (apply)",
    },
    Rule {
        groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
        why: "kube-runtime's event recorder (series are patched)",
    },
];

fn labels() -> Value {
    json!({ PROVIDER_LABEL.0: PROVIDER_LABEL.1 })
}

fn meta(name: &str, namespaced: bool) -> Value {
    let mut m = json!({ "name": name, "labels": labels() });
    if namespaced {
        m["namespace"] = json!(NAMESPACE);
    }
    m
}

/// The manager's ClusterRole.
pub fn cluster_role() -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| json!({ "apiGroups": r.groups, "resources": r.resources, "verbs": r.verbs }))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(&format!("{NAME}-manager-role"), false),
        "rules": rules,
    })
}

/// The reasons of the ClusterRole's rules, one line each (for the docs).
pub fn rule_reasons() -> Vec<String> {
    RULES
        .iter()
        .map(|r| format!("{} {:?}: {}", r.resources.join(","), r.verbs, r.why))
        .collect()
}

/// The manager's ServiceAccount.
pub fn service_account() -> Value {
    json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(&format!("{NAME}-manager"), true) })
}

/// Binds the ClusterRole to the ServiceAccount.
pub fn cluster_role_binding() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(&format!("{NAME}-manager-rolebinding"), false),
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{NAME}-manager-role") },
        "subjects": [{ "kind": "ServiceAccount", "name": format!("{NAME}-manager"), "namespace": NAMESPACE }],
    })
}

/// The Role that lets the manager keep its leader-election Lease in its own namespace.
pub fn leader_election_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(&format!("{NAME}-leader-election-role"), true),
        "rules": [{ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "update"] }],
    })
}

/// Binds [`leader_election_role`] to the manager's ServiceAccount.
pub fn leader_election_role_binding() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta(&format!("{NAME}-leader-election-rolebinding"), true),
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{NAME}-leader-election-role") },
        "subjects": [{ "kind": "ServiceAccount", "name": format!("{NAME}-manager"), "namespace": NAMESPACE }],
    })
}

fn deployment() -> Value {
    let env = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } });
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(&format!("{NAME}-controller-manager"), true),
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "control-plane": format!("{NAME}-controller-manager") } },
            "template": {
                "metadata": { "labels": { "control-plane": format!("{NAME}-controller-manager"), PROVIDER_LABEL.0: PROVIDER_LABEL.1 } },
                "spec": {
                    "serviceAccountName": format!("{NAME}-manager"),
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
                    "containers": [{
                        "name": "manager",
                        "image": IMAGE,
                        "args": [
                            "manager",
                            "--leader-elect",
                            "--admin-address=0.0.0.0:8080",
                            "--autoscaler-address=0.0.0.0:8086",
                            "--namespace=${CAPOW_WATCH_NAMESPACE:=}",
                        ],
                        "env": [env("POD_NAME", "metadata.name"), env("POD_NAMESPACE", "metadata.namespace")],
                        "ports": [
                            { "name": "admin", "containerPort": 8080, "protocol": "TCP" },
                            { "name": "grpc", "containerPort": 8086, "protocol": "TCP" },
                        ],
                        "livenessProbe": { "httpGet": { "path": "/live", "port": "admin" }, "periodSeconds": 10 },
                        "readinessProbe": { "httpGet": { "path": "/ready", "port": "admin" }, "periodSeconds": 5 },
                        "resources": { "requests": { "cpu": "50m", "memory": "64Mi" }, "limits": { "memory": "512Mi" } },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                    }],
                },
            },
        },
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(&format!("{NAME}-autoscaler"), true),
        "spec": {
            "selector": { "control-plane": format!("{NAME}-controller-manager") },
            "ports": [{ "name": "grpc", "port": 8086, "targetPort": "grpc", "protocol": "TCP" }],
        },
    })
}

fn namespace() -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE, "labels": labels() } })
}

fn yaml(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(out)
}

fn kustomization(resources: &[&str], extra: Value) -> anyhow::Result<String> {
    let mut k = json!({ "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources });
    if let (Some(k), Some(e)) = (k.as_object_mut(), extra.as_object()) {
        k.extend(e.clone());
    }
    Ok(serde_yaml::to_string(&k)?)
}

/// The clusterctl `metadata.yaml`: capow 0.1 implements the CAPI v1beta2 contract.
pub fn metadata() -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&json!({
        "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3",
        "kind": "Metadata",
        "releaseSeries": [{ "major": 0, "minor": 1, "contract": "v1beta2" }],
    }))?)
}

/// Every generated file, as `(path relative to the repository, content)`.
///
/// # Errors
/// When serialization fails.
pub fn files() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut crd_names = Vec::new();
    let mut crds = Vec::new();
    for (name, content) in super::crd_files()? {
        crds.push(content.clone());
        crd_names.push(format!("bases/{name}"));
        out.push((format!("config/crd/bases/{name}"), content));
    }
    let crd_refs: Vec<&str> = crd_names.iter().map(String::as_str).collect();
    out.push((
        "config/crd/kustomization.yaml".into(),
        kustomization(&crd_refs, json!({}))?,
    ));

    let rbac = [
        ("role.yaml", cluster_role()),
        ("role_binding.yaml", cluster_role_binding()),
        ("service_account.yaml", service_account()),
        ("leader_election_role.yaml", leader_election_role()),
        (
            "leader_election_role_binding.yaml",
            leader_election_role_binding(),
        ),
    ];
    for (file, doc) in &rbac {
        out.push((
            format!("config/rbac/{file}"),
            yaml(std::slice::from_ref(doc))?,
        ));
    }
    let rbac_files: Vec<&str> = rbac.iter().map(|(f, _)| *f).collect();
    out.push((
        "config/rbac/kustomization.yaml".into(),
        kustomization(&rbac_files, json!({}))?,
    ));
    out.push(("config/manager/manager.yaml".into(), yaml(&[deployment()])?));
    out.push(("config/manager/service.yaml".into(), yaml(&[service()])?));
    out.push((
        "config/manager/kustomization.yaml".into(),
        kustomization(&["manager.yaml", "service.yaml"], json!({}))?,
    ));
    out.push((
        "config/default/namespace.yaml".into(),
        yaml(&[namespace()])?,
    ));
    out.push((
        "config/default/kustomization.yaml".into(),
        kustomization(
            &["namespace.yaml", "../crd", "../rbac", "../manager"],
            json!({ "namespace": NAMESPACE, "labels": [{ "pairs": { PROVIDER_LABEL.0: PROVIDER_LABEL.1 }, "includeSelectors": false }] }),
        )?,
    ));

    // The components file: what `kustomize build config/default` yields, in clusterctl's order.
    let mut components = yaml(&[namespace()])?;
    for c in &crds {
        components.push_str(c);
    }
    components.push_str(&yaml(&[
        service_account(),
        cluster_role(),
        cluster_role_binding(),
        leader_election_role(),
        leader_election_role_binding(),
        service(),
        deployment(),
    ])?);
    out.push((
        "templates/infrastructure-components.yaml".into(),
        components,
    ));
    out.push(("templates/metadata.yaml".into(), metadata()?));
    out.extend(chart_files()?);
    out.extend(cluster_stack_files()?);
    Ok(out)
}

/// Directory of the Cluster Stack (SCS csctl layout), relative to the repository.
pub const CLUSTER_STACK_DIR: &str = "clusterstack";
/// Kubernetes minor the Cluster Stack is built for (csctl `kubernetesVersion`).
pub const CLUSTER_STACK_KUBERNETES_VERSION: &str = "v1.34.3";
const CLUSTER_CLASS: &str = include_str!("../../templates/clusterclass-openstack-hcp.yaml");

/// Wraps every `{{ ... }}` of `text` (ClusterClass patch templates, evaluated by CAPI) in a Helm
/// raw string, so that Helm prints it instead of evaluating it.
///
/// # Errors
/// When a `{{` has no closing `}}` or the expression contains a backtick.
fn helm_escape(text: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("}}") else {
            anyhow::bail!("unclosed {{{{ in the ClusterClass");
        };
        let expr = &rest[start..start + len + 2];
        anyhow::ensure!(!expr.contains('`'), "a backtick in {expr}");
        out.push_str("{{`");
        out.push_str(expr);
        out.push_str("`}}");
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The generated Cluster Stack (`clusterstack/`, SCS csctl layout): `csctl.yaml` and the
/// `cluster-class` Helm chart holding `templates/clusterclass-openstack-hcp.yaml` with the Cluster
/// Stack Operator's naming (`<release>-<chart version>`, e.g.
/// `openstack-capow-hcp-1-34-v1`). No `cluster-addon`: workload addons (CCM, CSI, CNI) are the
/// SCS hosted-control-plane stack's business, not capow's.
///
/// # Errors
/// When the ClusterClass file cannot be escaped or renamed (its names changed).
pub fn cluster_stack_files() -> anyhow::Result<Vec<(String, String)>> {
    let minor = CLUSTER_STACK_KUBERNETES_VERSION
        .trim_start_matches('v')
        .rsplit_once('.')
        .map_or(CLUSTER_STACK_KUBERNETES_VERSION, |(m, _)| m)
        .replace('.', "-");
    let csctl = json!({
        "apiVersion": "csctl.clusterstack.x-k8s.io/v1alpha1",
        "config": {
            "clusterStackName": "capow-hcp",
            "kubernetesVersion": CLUSTER_STACK_KUBERNETES_VERSION,
            "provider": { "apiVersion": "openstack.csctl.clusterstack.x-k8s.io/v1alpha1", "type": "openstack" },
        },
    });
    let chart = json!({
        "apiVersion": "v2",
        "name": format!("openstack-capow-hcp-{minor}-cluster-class"),
        "description": "ClusterClass for hosted-control-plane clusters with capow workers and autoscaling variables (generated from templates/clusterclass-openstack-hcp.yaml by capow manifests)",
        "type": "application",
        "version": "v1",
    });
    let mut class = helm_escape(CLUSTER_CLASS)?;
    let prefix = "{{ .Release.Name }}-{{ .Chart.Version }}";
    for (from, to) in [
        (
            "  name: openstack-hcp-control-plane\n",
            format!("  name: {prefix}-control-plane\n"),
        ),
        (
            "  name: openstack-hcp-default-worker\n",
            format!("  name: {prefix}-default-worker\n"),
        ),
        ("  name: openstack-hcp\n", format!("  name: {prefix}\n")),
    ] {
        anyhow::ensure!(
            class.contains(from),
            "the ClusterClass no longer has {from:?}"
        );
        class = class.replace(from, &to);
    }
    let dir = CLUSTER_STACK_DIR;
    Ok(vec![
        (format!("{dir}/csctl.yaml"), serde_yaml::to_string(&csctl)?),
        (
            format!("{dir}/cluster-class/Chart.yaml"),
            serde_yaml::to_string(&chart)?,
        ),
        (
            format!("{dir}/cluster-class/templates/cluster-class.yaml"),
            format!(
                "# Generated by `capow manifests` from templates/clusterclass-openstack-hcp.yaml; do not edit.\n{class}"
            ),
        ),
    ])
}

/// Directory of the Helm chart, relative to the repository.
pub const CHART_DIR: &str = "charts/capow";

const GENERATED: &str = "{{- /* Generated by `capow manifests` from src/; do not edit. */ -}}\n";

/// The generated files of the Helm chart: `Chart.yaml` (version = the crate's), the CRDs in
/// `templates/crds.yaml` (installed when `crds.install`, annotated
/// `helm.sh/resource-policy: keep` so that `helm uninstall` never deletes them and with them
/// every machine), and the ClusterRole rules as the named template `capow.managerRules`.
///
/// # Errors
/// When serialization fails.
pub fn chart_files() -> anyhow::Result<Vec<(String, String)>> {
    let version = env!("CARGO_PKG_VERSION");
    let chart = json!({
        "apiVersion": "v2",
        "name": NAME,
        "description": "capow: Cluster API infrastructure provider for the OpenStack worker machines of hosted-control-plane clusters, with a cluster-autoscaler externalgrpc cloud provider",
        "type": "application",
        "version": version,
        "appVersion": version,
        "kubeVersion": ">=1.31.0-0",
        "keywords": ["cluster-api", "openstack", "cluster-autoscaler", "hosted-control-plane"],
        "annotations": { "cluster.x-k8s.io/contract": "v1beta2" },
    });
    let mut crds = format!("{GENERATED}{{{{- if .Values.crds.install }}}}\n");
    for crd in crate::api::crds() {
        let mut v = serde_json::to_value(&crd)?;
        v["metadata"]["annotations"]["helm.sh/resource-policy"] = json!("keep");
        crds.push_str("---\n");
        crds.push_str(&serde_yaml::to_string(&v)?);
    }
    crds.push_str("{{- end }}\n");
    let rules = format!(
        "{GENERATED}{{{{- define \"capow.managerRules\" -}}}}\n{}{{{{- end }}}}\n",
        serde_yaml::to_string(&cluster_role()["rules"])?
    );
    Ok(vec![
        (
            format!("{CHART_DIR}/Chart.yaml"),
            serde_yaml::to_string(&chart)?,
        ),
        (format!("{CHART_DIR}/templates/crds.yaml"), crds),
        (format!("{CHART_DIR}/templates/_manager_rules.tpl"), rules),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_carries_the_provider_label_and_namespaced_ones_the_namespace() {
        let files = files().unwrap();
        let components = &files
            .iter()
            .find(|(p, _)| p == "templates/infrastructure-components.yaml")
            .unwrap()
            .1;
        let mut namespaces = 0;
        let mut kinds = Vec::new();
        for doc in components.split("---\n").filter(|d| !d.trim().is_empty()) {
            let v: Value = serde_yaml::from_str(doc).unwrap();
            let kind = v["kind"].as_str().unwrap().to_owned();
            assert_eq!(
                v["metadata"]["labels"][PROVIDER_LABEL.0], PROVIDER_LABEL.1,
                "{kind}"
            );
            if kind == "Namespace" {
                namespaces += 1;
            }
            if [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "Service",
                "Deployment",
            ]
            .contains(&kind.as_str())
            {
                assert_eq!(v["metadata"]["namespace"], NAMESPACE, "{kind}");
            }
            kinds.push(kind);
        }
        assert_eq!(namespaces, 1, "clusterctl wants exactly one Namespace");
        assert!(
            kinds
                .iter()
                .filter(|k| *k == "CustomResourceDefinition")
                .count()
                >= 4
        );
        let deployment = deployment();
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["name"],
            "manager"
        );
    }

    #[test]
    fn the_role_grants_only_what_the_rule_table_lists() {
        let role = cluster_role();
        let rules = role["rules"].as_array().unwrap();
        assert_eq!(rules.len(), RULES.len());
        let all: Vec<String> = rules
            .iter()
            .flat_map(|r| {
                let verbs: Vec<String> = r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(move |res| {
                        let res = res.as_str().unwrap().to_owned();
                        verbs.clone().into_iter().map(move |v| format!("{res}:{v}"))
                    })
            })
            .collect();
        assert!(
            !all.iter()
                .any(|r| r.ends_with(":delete") || r.ends_with(":*") || r.starts_with('*')),
            "{all:?}"
        );
        assert!(
            !all.iter()
                .any(|r| r.starts_with("secrets:list") || r.starts_with("secrets:watch")),
            "capow never lists Secrets"
        );
    }
}
