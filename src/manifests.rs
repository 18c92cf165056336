//! The install manifests, generated from code so they cannot drift from it:
//! `config/` (kustomize bases: CRDs, RBAC, manager) and the clusterctl provider files
//! `templates/metadata.yaml` and `templates/infrastructure-components.yaml` (clusterctl
//! provider contract, cluster-api `docs/book/src/developer/providers/contracts/clusterctl.md`:
//! one Namespace, every object labelled `cluster.x-k8s.io/provider`, the controller container
//! named `manager`, `${VAR}` substitution), and the generated parts of the Helm chart
//! `charts/capow` (`Chart.yaml`, the CRDs, the manager's RBAC rules; the rest of the chart is
//! hand-written templates; `values.yaml` is hand-written except its `image.repository` and
//! `image.tag`). `capow manifests --output-dir .` writes them; a test fails when the committed
//! files differ.
//!
//! The manager's container image is named in one place, [`Image`] (default
//! [`IMAGE_REPOSITORY`]`:v<Cargo.toml version>`, or `capow manifests --image`): the Deployment
//! in `config/manager` and `templates/infrastructure-components.yaml` (as the default of the
//! clusterctl variable `CAPOW_IMAGE`) and the chart's `values.yaml` and `Chart.yaml` take it
//! from there. The image itself is built by the repository's `Dockerfile` or, without a
//! container engine, by `e2e/image.sh` (docs/release.md).
//!
//! The RBAC rules are the least the manager needs; each rule names the code that needs it.

use serde_json::{Value, json};

use crate::api::PROVIDER_LABEL;

/// Namespace clusterctl installs capow into.
pub const NAMESPACE: &str = "capow-system";
/// Name prefix of capow's objects.
pub const NAME: &str = "capow";
/// capow's version, from `Cargo.toml` (`version` of the workspace package): the chart's
/// `version` and `appVersion`, the default image tag (`v<VERSION>`), the image's
/// `org.opencontainers.image.version` label and what `capow --version` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// capow's source repository, from `Cargo.toml` (`repository`): the image's
/// `org.opencontainers.image.source` label.
pub const SOURCE: &str = env!("CARGO_PKG_REPOSITORY");
/// capow's license (SPDX), from `Cargo.toml` (`license`): the image's
/// `org.opencontainers.image.licenses` label.
pub const LICENSE: &str = env!("CARGO_PKG_LICENSE");
/// Repository a release publishes capow's image to (docs/release.md), without a registry host:
/// the container runtime resolves it with its default registry, and operators who mirror the
/// image name their registry with `capow manifests --image`, the clusterctl variable
/// `CAPOW_IMAGE` or the chart's `image.repository`.
pub const IMAGE_REPOSITORY: &str = "capow-dev/capow";

/// The manager's container image as the manifests name it: `repository:tag`, no digest.
///
/// A simplified check of the distribution reference grammar (`name[:tag]`,
/// <https://github.com/distribution/reference/blob/v0.6.0/reference.go>) that keeps out what a
/// clusterctl variable default or a Helm value cannot carry: path components of lowercase
/// `[a-z0-9._-]` starting and ending alphanumeric (the grammar's rules for repeated separators
/// are not checked), an optional `host[:port]` first component, and a tag of `[A-Za-z0-9_.-]`
/// (at most 128 characters, not starting with `.` or `-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Repository, e.g. `capow-dev/capow`.
    pub repository: String,
    /// Tag, e.g. `v0.1.0`.
    pub tag: String,
}

impl Default for Image {
    /// [`IMAGE_REPOSITORY`]`:v`[`VERSION`].
    fn default() -> Self {
        Self {
            repository: IMAGE_REPOSITORY.to_owned(),
            tag: format!("v{VERSION}"),
        }
    }
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

impl std::str::FromStr for Image {
    type Err = String;

    /// Parses `repository[:tag]`; without a tag, the tag is `v`[`VERSION`].
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('@') {
            return Err(format!(
                "{s:?}: digests are not supported here; give repository:tag"
            ));
        }
        let last = s.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match s[last..].rfind(':') {
            Some(i) => (&s[..last + i], Some(&s[last + i + 1..])),
            None => (s, None),
        };
        let mut parts = repository.split('/').peekable();
        let mut first = true;
        while let Some(part) = parts.next() {
            // A first component followed by more is a registry host and may carry a port.
            let host = first && parts.peek().is_some();
            first = false;
            let (name, port) = match part.split_once(':') {
                Some((n, p)) if host => (n, Some(p)),
                _ => (part, None),
            };
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && name
                    .bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_alphanumeric());
            let port_ok =
                port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !name_ok || !port_ok {
                return Err(format!(
                    "{s:?}: {part:?} is not a valid repository path component (lowercase letters, digits, '.', '_', '-'; a registry host may have a :port)"
                ));
            }
        }
        let tag = match tag {
            None => format!("v{VERSION}"),
            Some(t) => {
                let ok = (1..=128).contains(&t.len())
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                    && t.bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(format!(
                        "{s:?}: tag {t:?} is not valid (1 to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-')"
                    ));
                }
                t.to_owned()
            }
        };
        Ok(Self {
            repository: repository.to_owned(),
            tag,
        })
    }
}

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
        verbs: &["get", "list", "watch", "patch", "delete"],
        why: "owner Machines; NodeGroupDeleteNodes sets cluster.x-k8s.io/delete-machine; controllers::lifecycle marks and deletes Machines over their max node age",
    },
    Rule {
        groups: &["cluster.x-k8s.io"],
        resources: &["machinedeployments"],
        verbs: &["get", "list", "watch"],
        why: "the autoscaler index; controllers::lifecycle (max node age)",
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
        why: "identityRef, bootstrap data and the <cluster>-kubeconfig of workload clusters (get); capow's CA (create); per-cluster credentials and the managed cluster-autoscaler's kubeconfig (apply)",
    },
    Rule {
        groups: &["apps"],
        resources: &["deployments"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "controllers::cluster::autoscaler: the managed cluster-autoscaler's Deployment (apply; watched by label to report availability; deleted when spec.autoscaler is unset or disabled)",
    },
    Rule {
        groups: &["controlplane.cluster.x-k8s.io"],
        resources: &[
            "hostedcontrolplanes",
            "kamajicontrolplanes",
            "k0smotroncontrolplanes",
            "kubeadmcontrolplanes",
        ],
        verbs: &["get"],
        why: "controllers::cluster::autoscaler: the Kubernetes version of a Cluster without topology (spec.version of its control plane) picks the default cluster-autoscaler image",
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

fn deployment(image: &Image) -> Value {
    let env = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } });
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(&format!("{NAME}-controller-manager"), true),
        "spec": {
            "replicas": 1,
            // A rolling update starts the new pod first and stops the old one once the new one
            // is Ready (caches synced; readiness does not wait for the Lease), so a rollout
            // never leaves the externalgrpc Service without an endpoint. No PDB here: with
            // clusterctl's one replica a PDB would either block drains or allow everything.
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
            "selector": { "matchLabels": { "control-plane": format!("{NAME}-controller-manager") } },
            "template": {
                "metadata": { "labels": { "control-plane": format!("{NAME}-controller-manager"), PROVIDER_LABEL.0: PROVIDER_LABEL.1 } },
                "spec": {
                    "serviceAccountName": format!("{NAME}-manager"),
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
                    "containers": [{
                        "name": "manager",
                        "image": format!("${{CAPOW_IMAGE:={image}}}"),
                        "args": [
                            "manager",
                            "--leader-elect",
                            "--admin-address=0.0.0.0:8080",
                            "--autoscaler-address=0.0.0.0:8086",
                            "--namespace=${CAPOW_WATCH_NAMESPACE:=}",
                            "--autoscaler-image-repository=${CAPOW_AUTOSCALER_IMAGE_REPOSITORY:=cluster-autoscaler}",
                            "--headroom-image=${CAPOW_HEADROOM_IMAGE:=pause:3.10}",
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

/// Every generated file, naming the default [`Image`], as `(path relative to the repository,
/// content)`: what is committed.
///
/// # Errors
/// When serialization fails.
pub fn files() -> anyhow::Result<Vec<(String, String)>> {
    files_for(&Image::default())
}

/// Every generated file, naming `image` as the manager's container image, as `(path relative to
/// the repository, content)`.
///
/// # Errors
/// When serialization fails.
pub fn files_for(image: &Image) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut crd_names = Vec::new();
    let mut crds = Vec::new();
    for (name, content) in crd_files()? {
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
    out.push((
        "config/manager/manager.yaml".into(),
        yaml(&[deployment(image)])?,
    ));
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
        deployment(image),
    ])?);
    out.push((
        "templates/infrastructure-components.yaml".into(),
        components,
    ));
    out.push(("templates/metadata.yaml".into(), metadata()?));
    out.extend(chart_files(image)?);
    out.extend(cluster_stack_files()?);
    Ok(out)
}

/// Directory of the Cluster Stack (SCS csctl layout), relative to the repository.
pub const CLUSTER_STACK_DIR: &str = "clusterstack";
/// Kubernetes minor the Cluster Stack is built for (csctl `kubernetesVersion`).
pub const CLUSTER_STACK_KUBERNETES_VERSION: &str = "v1.34.3";
const CLUSTER_CLASS: &str = include_str!("../templates/clusterclass-openstack-hcp.yaml");

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

/// One workload-cluster addon of the Cluster Stack's `cluster-addon` chart: a Helm chart
/// dependency pinned to one version. The addons and versions are those the SCS OpenStack
/// hosted-control-plane Cluster Stack ships, with the OpenStack cloud controller manager and
/// Cinder CSI at the chart release matching [`CLUSTER_STACK_KUBERNETES_VERSION`]'s minor
/// (kubernetes/cloud-provider-openstack tags `openstack-cloud-controller-manager-2.34.1`,
/// `openstack-cinder-csi-2.34.1`).
#[derive(Clone, Copy, Debug)]
pub struct Addon {
    /// Name of the chart in its repository, and its alias (the top-level key of its values).
    pub chart: &'static str,
    /// Exact chart version (no range: a Cluster Stack release is reproducible).
    pub version: &'static str,
    /// The chart repository as a Helm repository name (`@name`), resolved by
    /// `helm dependency build` from the repositories the builder added with `helm repo add`
    /// (docs/cluster-stack.md names the project behind each).
    pub repository: &'static str,
    /// What the addon does in the workload cluster.
    pub what: &'static str,
}

/// The addons of the Cluster Stack's `cluster-addon` chart.
pub const ADDONS: &[Addon] = &[
    Addon {
        chart: "openstack-cloud-controller-manager",
        version: "2.34.1",
        repository: "@cloud-provider-openstack",
        what: "initialises Nodes from Nova (addresses, zone, provider ID) and runs Octavia load balancers for Services",
    },
    Addon {
        chart: "openstack-cinder-csi",
        version: "2.34.1",
        repository: "@cloud-provider-openstack",
        what: "Cinder volumes for PersistentVolumeClaims (default StorageClass)",
    },
    Addon {
        chart: "cilium",
        version: "1.18.1",
        repository: "@cilium",
        what: "the CNI: pod network and NetworkPolicy",
    },
    Addon {
        chart: "metrics-server",
        version: "3.13.0",
        repository: "@metrics-server",
        what: "the resource metrics API (kubectl top, HorizontalPodAutoscaler)",
    },
];

/// The generated Cluster Stack (`clusterstack/`, SCS csctl layout): `csctl.yaml`, the
/// `cluster-class` Helm chart holding `templates/clusterclass-openstack-hcp.yaml` with the Cluster
/// Stack Operator's naming (`<release>-<chart version>`, e.g.
/// `openstack-capow-hcp-1-34-v1`), and the `cluster-addon` chart's `Chart.yaml` declaring
/// [`ADDONS`] as dependencies (its `values.yaml` and the stack's `cluster-addon-values.yaml`
/// are hand-written).
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
    let addon_chart = json!({
        "apiVersion": "v2",
        "name": format!("openstack-capow-hcp-{minor}-cluster-addon"),
        "description": "Workload-cluster addons of the capow-hcp Cluster Stack: OpenStack cloud controller manager, Cinder CSI, Cilium, metrics-server (generated by capow manifests; values in values.yaml and ../cluster-addon-values.yaml)",
        "type": "application",
        "version": "v1",
        "dependencies": ADDONS.iter().map(|a| json!({
            "name": a.chart, "alias": a.chart, "version": a.version, "repository": a.repository,
        })).collect::<Vec<_>>(),
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
            format!("{dir}/cluster-addon/Chart.yaml"),
            serde_yaml::to_string(&addon_chart)?,
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

/// The chart's hand-written `values.yaml`, whose `image.repository` and `image.tag` lines
/// [`values_yaml`] rewrites.
const VALUES: &str = include_str!("../charts/capow/values.yaml");

/// `values.yaml` of the chart with `image.repository` and `image.tag` set to `image`; every other
/// line (and comment) as written by hand.
///
/// # Errors
/// When the top-level `image:` block no longer has exactly one `repository:` and one `tag:` line.
pub fn values_yaml(image: &Image) -> anyhow::Result<String> {
    let scalar =
        |s: &str| -> anyhow::Result<String> { Ok(serde_yaml::to_string(s)?.trim_end().to_owned()) };
    let (repository, tag) = (scalar(&image.repository)?, scalar(&image.tag)?);
    let mut out = String::with_capacity(VALUES.len() + 64);
    let (mut in_image, mut repos, mut tags) = (false, 0, 0);
    for line in VALUES.lines() {
        if !line.starts_with([' ', '#']) && !line.is_empty() {
            in_image = line == "image:";
        }
        if in_image && line.starts_with("  repository:") {
            out.push_str(&format!("  repository: {repository}\n"));
            repos += 1;
        } else if in_image && line.starts_with("  tag:") {
            out.push_str(&format!("  tag: {tag}\n"));
            tags += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(
        repos == 1 && tags == 1,
        "charts/capow/values.yaml: the top-level image: block must have one `  repository:` and one `  tag:` line (found {repos} and {tags})"
    );
    Ok(out)
}

/// The generated files of the Helm chart: `Chart.yaml` (`version` and `appVersion` =
/// [`VERSION`]), `values.yaml` with `image` (see [`values_yaml`]), the CRDs in
/// `templates/crds.yaml` (installed when `crds.install`, annotated
/// `helm.sh/resource-policy: keep` so that `helm uninstall` never deletes them and with them
/// every machine), and the ClusterRole rules as the named template `capow.managerRules`.
///
/// # Errors
/// When serialization fails.
pub fn chart_files(image: &Image) -> anyhow::Result<Vec<(String, String)>> {
    let version = VERSION;
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
        (format!("{CHART_DIR}/values.yaml"), values_yaml(image)?),
        (format!("{CHART_DIR}/templates/crds.yaml"), crds),
        (format!("{CHART_DIR}/templates/_manager_rules.tpl"), rules),
    ])
}

/// Every CRD as one multi-document YAML stream (the content of `config/crd/bases/`).
///
/// # Errors
/// When serialization fails.
pub fn crds_yaml() -> anyhow::Result<String> {
    Ok(crd_files()?.into_iter().map(|(_, yaml)| yaml).collect())
}

/// Every CRD as `(file name, YAML)`, the file name being `<group>_<plural>.yaml`
/// (kubebuilder's layout of `config/crd/bases/`).
///
/// # Errors
/// When serialization fails.
pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    crate::api::crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            Ok((name, format!("---\n{}", serde_yaml::to_string(&crd)?)))
        })
        .collect()
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
        let deployment = deployment(&Image::default());
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["name"],
            "manager"
        );
        // A rollout finishes with one replica: the new pod comes up before the old one goes.
        let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
        assert_eq!(rolling["maxUnavailable"], 0, "{deployment}");
        assert_eq!(rolling["maxSurge"], 1, "{deployment}");
    }

    #[test]
    fn image_references_parse_as_repository_and_tag() {
        let ok = [
            ("capow", "capow", format!("v{VERSION}")),
            ("capow:dev", "capow", "dev".to_owned()),
            (
                "capow-dev/capow:v1.2.3",
                "capow-dev/capow",
                "v1.2.3".to_owned(),
            ),
            (
                "localhost:5000/capow",
                "localhost:5000/capow",
                format!("v{VERSION}"),
            ),
            (
                "localhost:5000/a/b_c:1.0-rc.1",
                "localhost:5000/a/b_c",
                "1.0-rc.1".to_owned(),
            ),
        ];
        for (input, repository, tag) in ok {
            let image: Image = input.parse().unwrap();
            assert_eq!(
                image,
                Image {
                    repository: repository.to_owned(),
                    tag
                },
                "{input}"
            );
            assert_eq!(image.to_string().parse::<Image>().unwrap(), image);
        }
        for bad in [
            "",
            "Capow:v1",
            "capow:",
            "capow:-x",
            "capow:.x",
            "/capow",
            "capow/",
            "a//b",
            "capow@sha256:0123",
            "host:port/capow",
            "capow:${X}",
            "capow}",
        ] {
            assert!(bad.parse::<Image>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            Image::default().to_string(),
            format!("{IMAGE_REPOSITORY}:v{VERSION}")
        );
    }

    #[test]
    fn one_image_reaches_the_deployment_and_the_chart_values() {
        let image: Image = "registry.example:5000/team/capow:v9.9.9-test"
            .parse()
            .unwrap();
        let files = files_for(&image).unwrap();
        let get = |path: &str| &files.iter().find(|(p, _)| p == path).unwrap().1;
        let want = "${CAPOW_IMAGE:=registry.example:5000/team/capow:v9.9.9-test}";
        for path in [
            "config/manager/manager.yaml",
            "templates/infrastructure-components.yaml",
        ] {
            let deployments: Vec<Value> = get(path)
                .split("---\n")
                .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
                .filter(|d| d["kind"] == "Deployment")
                .collect();
            assert_eq!(deployments.len(), 1, "{path}");
            assert_eq!(
                deployments[0]["spec"]["template"]["spec"]["containers"][0]["image"], want,
                "{path}"
            );
        }
        let values: Value = serde_yaml::from_str(get("charts/capow/values.yaml")).unwrap();
        assert_eq!(
            values["image"]["repository"],
            "registry.example:5000/team/capow"
        );
        assert_eq!(values["image"]["tag"], "v9.9.9-test");
        // Everything else of values.yaml is the hand-written file.
        let hand: Value = serde_yaml::from_str(VALUES).unwrap();
        let (mut a, mut b) = (values.clone(), hand);
        a["image"]["repository"] = Value::Null;
        a["image"]["tag"] = Value::Null;
        b["image"]["repository"] = Value::Null;
        b["image"]["tag"] = Value::Null;
        assert_eq!(a, b);
        let chart: Value = serde_yaml::from_str(get("charts/capow/Chart.yaml")).unwrap();
        assert_eq!(chart["appVersion"], VERSION);
    }

    #[test]
    fn the_role_grants_only_what_the_rule_table_lists() {
        // The one delete capow holds: a Machine over its max node age
        // (`controllers::lifecycle`, ADR 0007); CAPI drains its Node and the MachineSet
        // creates the successor.
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
        // capow deletes only the cluster-autoscaler Deployments it made (their kubeconfig
        // Secrets go with them through the garbage collector) and, for the maximum node age,
        // the oldest CAPI Machine of a group (CAPI drains it and the MachineSet replaces it);
        // never anything else.
        assert!(
            !all.iter()
                .filter(|r| r.as_str() != "machines:delete" && r.as_str() != "deployments:delete")
                .any(|r| r.ends_with(":delete") || r.ends_with(":*") || r.starts_with('*')),
            "{all:?}"
        );
        assert!(
            !all.iter()
                .any(|r| r.starts_with("secrets:list") || r.starts_with("secrets:watch")),
            "capow never lists Secrets"
        );
    }
    #[test]
    fn the_cluster_class_sets_the_managed_autoscaler_from_its_variables() {
        use serde::Deserialize;
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(CLUSTER_CLASS)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        let class = docs.iter().find(|d| d["kind"] == "ClusterClass").unwrap();
        let variable = |name: &str| {
            class["spec"]["variables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("no variable {name}"))["schema"]["openAPIV3Schema"]
                .clone()
        };
        assert_eq!(variable("autoscalerEnabled")["default"], false);
        let expander = variable("autoscalerExpander");
        assert_eq!(
            expander["default"],
            crate::api::autoscaler::DEFAULT_EXPANDER
        );
        // Every expander the variable admits is one the CRD admits; priority needs
        // priorities, which the variables do not carry.
        let pattern = regex::Regex::new(expander["pattern"].as_str().unwrap()).unwrap();
        for e in crate::api::autoscaler::EXPANDERS {
            assert_eq!(pattern.is_match(e), *e != "priority", "{e}");
        }
        assert!(pattern.is_match("price,least-waste,random"));
        assert!(!pattern.is_match("cheapest"));
        let unneeded = variable("autoscalerScaleDownUnneededTime");
        let duration = regex::Regex::new(unneeded["pattern"].as_str().unwrap()).unwrap();
        let crd = regex::Regex::new(crate::api::autoscaler::DURATION_PATTERN).unwrap();
        for d in ["10m", "90s", "1h30m", "1.5h", "10", "m", "-1m"] {
            assert_eq!(duration.is_match(d), crd.is_match(d), "{d}");
        }
        assert!(duration.is_match(unneeded["default"].as_str().unwrap()));
        // The patch: only when enabled, onto the infrastructure cluster's template.
        let patch = class["spec"]["patches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "managed-autoscaler")
            .unwrap();
        assert_eq!(patch["enabledIf"], "{{ .autoscalerEnabled }}");
        let definition = &patch["definitions"][0];
        assert_eq!(
            definition["selector"]["kind"],
            "OpenStackWorkerClusterTemplate"
        );
        assert_eq!(
            definition["selector"]["matchResources"]["infrastructureCluster"],
            true
        );
        let json_patch = &definition["jsonPatches"][0];
        assert_eq!(json_patch["path"], "/spec/template/spec/autoscaler");
        let template = json_patch["valueFrom"]["template"].as_str().unwrap();
        for needle in [
            "enabled: true",
            "expander: {{ .autoscalerExpander | quote }}",
            "unneededTime: {{ .autoscalerScaleDownUnneededTime | quote }}",
        ] {
            assert!(template.contains(needle), "{needle} in {template}");
        }
    }

    #[test]
    fn the_cluster_class_sets_headroom_and_image_warmup_from_its_variables() {
        use crate::api::lifecycle::{DURATION_PATTERN, IGNORE_PATTERN, IMAGE_REFERENCE_PATTERN};
        let class = cluster_class();
        let variable = |name: &str| {
            class["spec"]["variables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("no variable {name}"))["schema"]["openAPIV3Schema"]
                .clone()
        };
        // The variables admit what the CRD admits: the same patterns and bounds.
        let warmup = variable("imageWarmup");
        let p = &warmup["properties"];
        assert_eq!(p["images"]["items"]["pattern"], IMAGE_REFERENCE_PATTERN);
        assert_eq!(p["ignore"]["items"]["pattern"], IGNORE_PATTERN);
        assert_eq!(p["timeout"]["pattern"], DURATION_PATTERN);
        assert_eq!(
            p["images"]["maxItems"],
            crate::api::lifecycle::MAX_WARMUP_IMAGES
        );
        assert_eq!(warmup["required"], json!(["images"]));
        let headroom = variable("headroom");
        assert_eq!(headroom["required"], json!(["cpu", "memory"]));
        assert_eq!(headroom["properties"]["replicas"]["default"], 1);
        let cpu =
            regex::Regex::new(headroom["properties"]["cpu"]["pattern"].as_str().unwrap()).unwrap();
        let memory = regex::Regex::new(
            headroom["properties"]["memory"]["pattern"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        for (q, is_cpu, is_memory) in [
            ("2", true, true),
            ("500m", true, false),
            ("1.5", true, true),
            ("4Gi", false, true),
            ("-1", false, false),
            ("two", false, false),
        ] {
            assert_eq!(cpu.is_match(q), is_cpu, "cpu {q}");
            assert_eq!(memory.is_match(q), is_memory, "memory {q}");
            // Whatever the variable admits is a quantity capow parses.
            if is_cpu || is_memory {
                assert!(crate::api::quantity::parse(q).is_ok(), "{q}");
            }
        }
        // One patch sets both, each only when its variable is set.
        let patch = class["spec"]["patches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "node-lifecycle")
            .unwrap();
        assert_eq!(
            patch["enabledIf"],
            "{{ if or .headroom .imageWarmup }}true{{ end }}"
        );
        let json_patch = &patch["definitions"][0]["jsonPatches"][0];
        assert_eq!(json_patch["path"], "/spec/template/spec/nodeLifecycle");
        let template = json_patch["valueFrom"]["template"].as_str().unwrap();
        for needle in [
            "{{- if .headroom }}\nheadroom: {{ .headroom | toJson }}",
            "{{- if .imageWarmup }}\nimageWarmup: {{ .imageWarmup | toJson }}",
        ] {
            assert!(template.contains(needle), "{needle} in {template}");
        }
    }

    /// The `cluster-addon` chart's hand-written values.
    const ADDON_VALUES: &str = include_str!("../clusterstack/cluster-addon/values.yaml");
    /// The per-cluster values the Cluster Stack Operator renders.
    const ADDON_CLUSTER_VALUES: &str = include_str!("../clusterstack/cluster-addon-values.yaml");

    fn cluster_class() -> Value {
        use serde::Deserialize;
        serde_yaml::Deserializer::from_str(CLUSTER_CLASS)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "ClusterClass")
            .unwrap()
    }

    #[test]
    fn the_cluster_class_defines_every_variable_of_the_scs_hosted_control_plane_stack_with_bounds()
    {
        let class = cluster_class();
        let variables = class["spec"]["variables"].as_array().unwrap();
        let schema = |name: &str| {
            variables
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("no variable {name}"))["schema"]["openAPIV3Schema"]
                .clone()
        };
        // The SCS OpenStack hosted-control-plane stack's variables for workers, network, images
        // and access, its control-plane and Gateway variables, and capow's autoscaling ones.
        let seed = [
            "workerFlavor",
            "workerRootDisk",
            "workerServerGroupID",
            "workerAdditionalBlockDevices",
            "workerSecurityGroups",
            "workerSecurityGroupIDs",
            "networkExternalID",
            "networkMTU",
            "dnsNameservers",
            "nodeCIDR",
            "imageName",
            "imageAddVersion",
            "sshKeyName",
            "identityRef",
            "securityGroups",
            "securityGroupIDs",
            "controlPlaneReplicas",
            "gatewayName",
            "gatewayNamespace",
            "workerMinSize",
            "workerMaxSize",
            "autoscalerEnabled",
            "autoscalerExpander",
            "autoscalerScaleDownUnneededTime",
            "headroom",
            "imageWarmup",
        ];
        for name in seed {
            schema(name);
        }
        // The seed's defaults, so that its example Cluster means the same here.
        assert_eq!(schema("workerFlavor")["default"], "SCS-4V-8");
        assert_eq!(schema("workerRootDisk")["default"], 50);
        assert_eq!(schema("imageName")["default"], "ubuntu-capi-image");
        assert_eq!(schema("imageAddVersion")["default"], true);
        assert_eq!(schema("nodeCIDR")["default"], "10.8.0.0/20");
        assert_eq!(
            schema("dnsNameservers")["default"],
            json!(["9.9.9.9", "149.112.112.112"])
        );
        assert_eq!(
            schema("identityRef")["default"],
            json!({"name": "openstack", "cloudName": "openstack"})
        );
        // Every variable is described and bounded: integers by a minimum and a maximum below
        // 1e6 (Go prints larger float64 in exponent form in patch templates), strings by a
        // length, pattern, format or rule, arrays by maxItems.
        fn bounded(path: &str, s: &Value) {
            match s["type"].as_str().unwrap() {
                "integer" => {
                    assert!(s["minimum"].is_i64(), "{path}: no minimum");
                    assert!(
                        s["maximum"].as_i64().is_some_and(|m| m < 1_000_000),
                        "{path}: no maximum below 1e6"
                    );
                }
                "string" => assert!(
                    s["maxLength"].is_u64()
                        || s["pattern"].is_string()
                        || s["format"].is_string()
                        || s["x-kubernetes-validations"].is_array(),
                    "{path}: unbounded string"
                ),
                "array" => {
                    assert!(s["maxItems"].is_u64(), "{path}: no maxItems");
                    bounded(&format!("{path}[]"), &s["items"]);
                }
                "object" => {
                    for (k, v) in s["properties"].as_object().unwrap() {
                        bounded(&format!("{path}.{k}"), v);
                    }
                }
                "boolean" => {}
                t => panic!("{path}: type {t}"),
            }
        }
        for v in variables {
            let name = v["name"].as_str().unwrap();
            let s = &v["schema"]["openAPIV3Schema"];
            assert!(
                s["description"].as_str().is_some_and(|d| d.len() > 10),
                "{name}: no description"
            );
            bounded(name, s);
        }
    }

    /// Walks `path` (a JSON pointer below the object) through a CRD's structural schema.
    fn schema_has(schema: &Value, path: &str) -> bool {
        let mut node = schema;
        for segment in path.trim_start_matches('/').split('/') {
            node = if node["type"] == "array" {
                &node["items"]
            } else if let Some(p) = node["properties"].get(segment) {
                p
            } else {
                return false;
            };
        }
        true
    }

    #[test]
    fn every_patch_of_the_cluster_class_targets_a_field_of_the_templates_schema() {
        let class = cluster_class();
        let crds: Vec<Value> = crate::api::crds()
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        // teutonet's HostedControlPlaneTemplate is not capow's CRD: its spec.template.spec fields
        // this class patches (teutonet/cluster-api-provider-hosted-control-plane
        // api/v1alpha1/hostedcontrolplane_types.go: Replicas, Gateway).
        let hcp = [
            "/spec/template/spec/replicas",
            "/spec/template/spec/gateway",
        ];
        let mut checked = 0;
        for patch in class["spec"]["patches"].as_array().unwrap() {
            for definition in patch["definitions"].as_array().unwrap() {
                let kind = definition["selector"]["kind"].as_str().unwrap();
                for p in definition["jsonPatches"].as_array().unwrap() {
                    let path = p["path"].as_str().unwrap();
                    // CAPI's ClusterClass webhook admits patches below /spec only.
                    assert!(path.starts_with("/spec/"), "{path}");
                    if kind == "HostedControlPlaneTemplate" {
                        assert!(hcp.contains(&path), "{path} of {kind}");
                        continue;
                    }
                    let crd = crds
                        .iter()
                        .find(|c| c["spec"]["names"]["kind"] == kind)
                        .unwrap_or_else(|| panic!("no CRD {kind}"));
                    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
                    assert!(schema_has(schema, path), "{kind} has no {path}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 12, "{checked}");
    }

    #[test]
    fn the_cluster_addon_pins_every_addon_of_the_seed_stack_and_configures_each() {
        let version = regex::Regex::new(r"^[0-9]+\.[0-9]+\.[0-9]+$").unwrap();
        let charts: Vec<&str> = ADDONS.iter().map(|a| a.chart).collect();
        assert_eq!(
            charts,
            [
                "openstack-cloud-controller-manager",
                "openstack-cinder-csi",
                "cilium",
                "metrics-server"
            ]
        );
        for a in ADDONS {
            assert!(version.is_match(a.version), "{}: {}", a.chart, a.version);
            // A Helm repository name, not a URL: no registry host in the repository.
            assert!(
                a.repository.starts_with('@') && !a.repository.contains(['.', '/', ':']),
                "{}",
                a.repository
            );
        }
        let files = cluster_stack_files().unwrap();
        let chart: Value = serde_yaml::from_str(
            &files
                .iter()
                .find(|(p, _)| p.ends_with("cluster-addon/Chart.yaml"))
                .unwrap()
                .1,
        )
        .unwrap();
        assert_eq!(chart["name"], "openstack-capow-hcp-1-34-cluster-addon");
        assert_eq!(
            chart["dependencies"].as_array().unwrap().len(),
            ADDONS.len()
        );
        // values.yaml and the per-cluster values address each dependency by its alias.
        let values: Value = serde_yaml::from_str(ADDON_VALUES).unwrap();
        let mut keys: Vec<&String> = values.as_object().unwrap().keys().collect();
        keys.sort();
        let mut want = charts.clone();
        want.sort_unstable();
        assert_eq!(keys, want);
        let per_cluster: Value = serde_yaml::from_str(ADDON_CLUSTER_VALUES).unwrap();
        let text = per_cluster["values"].as_str().unwrap();
        for line in text
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
        {
            let key = line.trim_end_matches(':');
            assert!(charts.contains(&key), "{key} is no addon");
        }
    }
}
