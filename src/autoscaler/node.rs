//! The template `v1.Node` of a node group, for scale-from-zero (`NodeGroupTemplateNodeInfo`; how
//! CA uses it: cluster-autoscaler-1.36.1
//! `processors/nodeinfosprovider/mixed_nodeinfos_processor.go` and
//! `simulator/node_info_utils.go`): capacity from the `OpenStackWorkerMachineTemplate`'s status
//! (flavor and image), overridden by the in-tree provider's
//! `capacity.cluster-autoscaler.kubernetes.io/*` annotations; allocatable after kube/system
//! reservations and the kubelet's hard eviction thresholds; the labels and taints the group's
//! nodes will carry; `Ready=True`.

use std::collections::BTreeMap;

use super::index::NodeGroup;
use super::proto::core_v1::{Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint};
use super::proto::meta_v1::ObjectMeta;
use super::proto::resource::Quantity;
use super::quantity::{self, Milli};

/// Annotation prefix of the in-tree clusterapi provider's capacity overrides.
pub const CAPACITY_PREFIX: &str = "capacity.cluster-autoscaler.kubernetes.io/";
/// Group annotation: resources the kubelet reserves for Kubernetes daemons
/// (`cpu=100m,memory=256Mi`), as kubelet `--kube-reserved`.
pub const KUBE_RESERVED_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/kube-reserved";
/// Group annotation: resources reserved for the OS (`--system-reserved`).
pub const SYSTEM_RESERVED_ANNOTATION: &str =
    "capow.infrastructure.cluster.x-k8s.io/system-reserved";
/// Group annotation: hard eviction thresholds (`memory.available=100Mi,nodefs.available=10%`),
/// as kubelet `--eviction-hard`. Default: the kubelet's own defaults.
pub const EVICTION_HARD_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/eviction-hard";
/// Annotation on every template node capow serves: the node group id. CA keeps a template
/// node's annotations when it renames it `template-node-for-<group id>-<random>` and drops
/// nothing capow could key on (cluster-autoscaler-1.36.1 `simulator/node_info_utils.go`), so
/// `PricingNodePrice` finds the group of a template node from it ([`super::pricing`]). An
/// annotation, not a label: group ids contain `/`, which label values may not.
pub const NODE_GROUP_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/node-group";
/// Pods per node when neither the annotation `maxPods` nor anything else says (kubelet default).
pub const DEFAULT_MAX_PODS: i64 = 110;
/// The kubelet's default hard eviction thresholds that reduce allocatable (kubelet
/// `--eviction-hard` default `memory.available<100Mi,nodefs.available<10%`).
pub const DEFAULT_EVICTION_HARD: &str = "memory.available=100Mi,nodefs.available=10%";

/// Label domains CAPI propagates from `Machine` labels to the Node (CAPI book "Metadata
/// propagation"): `node-role.kubernetes.io`, `node-restriction.kubernetes.io`,
/// `node.cluster.x-k8s.io`, and their subdomains.
pub fn is_propagated_label(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    [
        "node-role.kubernetes.io",
        "node-restriction.kubernetes.io",
        "node.cluster.x-k8s.io",
    ]
    .iter()
    .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")))
}

/// Why no template can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Neither the template status nor the annotations give cpu and memory.
    #[error(
        "node group {0} has no capacity yet: the OpenStackWorkerMachineTemplate has no status.capacity (flavor not resolved) and the {CAPACITY_PREFIX}cpu/memory annotations are not set"
    )]
    NoCapacity(String),
    /// An annotation does not parse.
    #[error("node group {group}: annotation {annotation}: {message}")]
    BadAnnotation {
        /// Group id.
        group: String,
        /// Annotation key.
        annotation: String,
        /// What is wrong.
        message: String,
    },
}

fn kv_list(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Options of template building that do not come from the group.
#[derive(Clone, Debug, Default)]
pub struct TemplateOptions {
    /// Label GPU nodes carry (the `GPULabel` RPC's answer), set to the GPU type.
    pub gpu_label: String,
}

/// Builds the template Node of `group`: its [`capacity`], [`allocatable`], [`labels`] and
/// [`taints`], `Ready=True`.
///
/// # Errors
/// [`TemplateError::NoCapacity`] when cpu or memory are unknown; [`TemplateError::BadAnnotation`]
/// when an override does not parse.
pub fn template_node(group: &NodeGroup, options: &TemplateOptions) -> Result<Node, TemplateError> {
    let status = group.template.as_ref().and_then(|t| t.status.as_ref());
    let (capacity, gpu_type) = capacity(group)?;
    let allocatable = allocatable(group, &capacity)?;
    let node_info = status.and_then(|s| s.node_info.clone()).unwrap_or_default();
    let os = node_info.operating_system.unwrap_or_else(|| "linux".into());
    let arch = node_info.architecture.unwrap_or_else(|| "amd64".into());
    let name = format!(
        "template-node-for-{}",
        group.id.replace('/', "-").to_lowercase()
    );
    let labels = labels(group, options, &name, &os, &arch, gpu_type);
    Ok(Node {
        metadata: Some(ObjectMeta {
            name,
            labels: labels.into_iter().collect(),
            annotations: [(NODE_GROUP_ANNOTATION.to_owned(), group.id.clone())].into(),
            ..Default::default()
        }),
        spec: Some(NodeSpec {
            provider_id: String::new(),
            unschedulable: false,
            taints: taints(group)?,
        }),
        status: Some(NodeStatus {
            capacity: quantities(&capacity),
            allocatable: quantities(&allocatable),
            conditions: vec![NodeCondition {
                r#type: "Ready".into(),
                status: "True".into(),
                reason: "KubeletReady".into(),
                message: "template node of a capow node group".into(),
                ..Default::default()
            }],
            node_info: Some(NodeSystemInfo {
                kubelet_version: group
                    .machine_template
                    .spec
                    .version
                    .clone()
                    .unwrap_or_default(),
                operating_system: os,
                architecture: arch,
            }),
        }),
    })
}

/// The group's `capacity.cluster-autoscaler.kubernetes.io/<name>` annotation.
fn capacity_annotation<'a>(group: &'a NodeGroup, name: &str) -> Option<&'a String> {
    group.annotations.get(&format!("{CAPACITY_PREFIX}{name}"))
}

/// A [`TemplateError::BadAnnotation`] of `group` at `annotation`.
fn bad(group: &NodeGroup, annotation: &str, message: String) -> TemplateError {
    TemplateError::BadAnnotation {
        group: group.id.clone(),
        annotation: annotation.to_owned(),
        message,
    }
}

/// The node's capacity by resource name (the template's `status.capacity` overridden by the
/// `capacity.cluster-autoscaler.kubernetes.io/*` annotations; `pods` from `maxPods` or
/// [`DEFAULT_MAX_PODS`]; a GPU count under its type's resource name) and its GPU type (the
/// part after the last `/` of the annotated type, else the flavor's).
fn capacity(group: &NodeGroup) -> Result<(BTreeMap<String, Milli>, Option<String>), TemplateError> {
    let resolved = group.template.as_ref().and_then(|t| t.status.as_ref());
    let mut capacity: BTreeMap<String, Milli> = BTreeMap::new();
    for (k, v) in resolved.iter().flat_map(|s| &s.capacity) {
        if let Ok(q) = quantity::parse(&v.0) {
            capacity.insert(k.clone(), q);
        }
    }
    for (name, resource) in [
        ("cpu", "cpu"),
        ("memory", "memory"),
        ("ephemeral-disk", "ephemeral-storage"),
    ] {
        if let Some(v) = capacity_annotation(group, name) {
            let q = quantity::parse(v)
                .map_err(|e| bad(group, &format!("{CAPACITY_PREFIX}{name}"), e.to_string()))?;
            capacity.insert(resource.to_owned(), q);
        }
    }
    let pods = match capacity_annotation(group, "maxPods") {
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                bad(
                    group,
                    &format!("{CAPACITY_PREFIX}maxPods"),
                    format!("{v:?} is not a positive integer"),
                )
            })?,
        None => DEFAULT_MAX_PODS,
    };
    capacity.insert("pods".to_owned(), Milli(i128::from(pods) * 1000));
    let mut gpu_type = resolved
        .and_then(|s| s.resolved.as_ref())
        .and_then(|r| r.gpu_type.clone());
    if let (Some(t), Some(c)) = (
        capacity_annotation(group, "gpu-type"),
        capacity_annotation(group, "gpu-count"),
    ) {
        let count = c.trim().parse::<i64>().map_err(|_| {
            bad(
                group,
                &format!("{CAPACITY_PREFIX}gpu-count"),
                format!("{c:?} is not an integer"),
            )
        })?;
        capacity.insert(t.clone(), Milli(i128::from(count) * 1000));
        gpu_type = Some(t.rsplit('/').next().unwrap_or(t).to_owned());
    }
    if !capacity.contains_key("cpu") || !capacity.contains_key("memory") {
        return Err(TemplateError::NoCapacity(group.id.clone()));
    }
    Ok((capacity, gpu_type))
}

/// allocatable = capacity - kube-reserved - system-reserved - hard eviction thresholds (the
/// group's annotations, else [`DEFAULT_EVICTION_HARD`]), at least zero.
fn allocatable(
    group: &NodeGroup,
    capacity: &BTreeMap<String, Milli>,
) -> Result<BTreeMap<String, Milli>, TemplateError> {
    let ann = &group.annotations;
    let mut allocatable = capacity.clone();
    for key in [KUBE_RESERVED_ANNOTATION, SYSTEM_RESERVED_ANNOTATION] {
        if let Some(v) = ann.get(key) {
            for (resource, amount) in kv_list(v) {
                let q = quantity::parse(amount).map_err(|e| bad(group, key, e.to_string()))?;
                if let Some(a) = allocatable.get_mut(resource) {
                    a.0 -= q.0;
                }
            }
        }
    }
    let eviction = ann
        .get(EVICTION_HARD_ANNOTATION)
        .map_or(DEFAULT_EVICTION_HARD, String::as_str);
    for (signal, amount) in kv_list(eviction) {
        let resource = match signal {
            "memory.available" => "memory",
            "nodefs.available" => "ephemeral-storage",
            _ => continue,
        };
        let Some(cap) = capacity.get(resource).copied() else {
            continue;
        };
        let q = match amount.strip_suffix('%') {
            Some(pct) => {
                let pct: i128 = pct.trim().parse().map_err(|_| {
                    bad(
                        group,
                        EVICTION_HARD_ANNOTATION,
                        format!("{amount:?} is not a percentage"),
                    )
                })?;
                Milli(cap.0 * pct / 100)
            }
            None => quantity::parse(amount)
                .map_err(|e| bad(group, EVICTION_HARD_ANNOTATION, e.to_string()))?,
        };
        if let Some(a) = allocatable.get_mut(resource) {
            a.0 -= q.0;
        }
    }
    for a in allocatable.values_mut() {
        a.0 = a.0.max(0);
    }
    Ok(allocatable)
}

/// Resources as the Node's quantities (cpu in cores or millicores, memory and storage in
/// bytes, counts as integers).
fn quantities(resources: &BTreeMap<String, Milli>) -> std::collections::HashMap<String, Quantity> {
    resources
        .iter()
        .map(|(resource, &q)| {
            let string = match resource.as_str() {
                "cpu" => quantity::format_cpu(q),
                "memory" | "ephemeral-storage" => quantity::format_bytes(q),
                _ => quantity::format_count(q),
            };
            (resource.clone(), Quantity { string })
        })
        .collect()
}

/// The labels the group's nodes carry: well-known OS, architecture, host name, instance type
/// (the flavor), zone (the failure domain) and region; the template Machine's labels CAPI
/// propagates ([`is_propagated_label`]); the `labels` capacity annotation; the GPU label.
fn labels(
    group: &NodeGroup,
    options: &TemplateOptions,
    name: &str,
    os: &str,
    arch: &str,
    gpu_type: Option<String>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/os".to_owned(), os.to_owned());
    labels.insert("kubernetes.io/arch".to_owned(), arch.to_owned());
    labels.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
    if let Some(flavor) = group
        .template
        .as_ref()
        .and_then(|t| t.status.as_ref())
        .and_then(|s| s.resolved.as_ref())
        .and_then(|r| r.flavor_name.clone())
    {
        labels.insert("node.kubernetes.io/instance-type".to_owned(), flavor);
    }
    if let Some(zone) = group
        .machine_template
        .spec
        .failure_domain
        .clone()
        .filter(|z| !z.is_empty())
    {
        labels.insert("topology.kubernetes.io/zone".to_owned(), zone);
    }
    if let Some(region) = group.region.clone().filter(|r| !r.is_empty()) {
        labels.insert("topology.kubernetes.io/region".to_owned(), region);
    }
    for (k, v) in &group.machine_template.metadata.labels {
        if is_propagated_label(k) {
            labels.insert(k.clone(), v.clone());
        }
    }
    if let Some(extra) = capacity_annotation(group, "labels") {
        for (k, v) in kv_list(extra) {
            labels.insert(k.to_owned(), v.to_owned());
        }
    }
    if let Some(t) = gpu_type.filter(|_| !options.gpu_label.is_empty()) {
        labels.insert(options.gpu_label.clone(), t);
    }
    labels
}

/// The taints the group's nodes carry: the template Machine's, the `taints` capacity
/// annotation's (`key=value:Effect,...`; it wins over a template taint with the same key and
/// effect) and the group's startup taint when cluster-autoscaler counts it as one.
fn taints(group: &NodeGroup) -> Result<Vec<Taint>, TemplateError> {
    let mut taints: Vec<Taint> = group
        .machine_template
        .spec
        .taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
        })
        .collect();
    let mut put = |key: &str, value: &str, effect: &str| {
        taints.retain(|t| !(t.key == key && t.effect == effect));
        taints.push(Taint {
            key: key.to_owned(),
            value: value.to_owned(),
            effect: effect.to_owned(),
        });
    };
    if let Some(extra) = capacity_annotation(group, "taints") {
        for entry in extra.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (kv, effect) = entry.rsplit_once(':').ok_or_else(|| {
                bad(
                    group,
                    &format!("{CAPACITY_PREFIX}taints"),
                    format!("{entry:?} is not key=value:Effect"),
                )
            })?;
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            put(key, value, effect);
        }
    }
    // The startup taint, declared as one: only a key cluster-autoscaler itself counts as a
    // startup taint (its `startup-taint.cluster-autoscaler.kubernetes.io/` prefixes) is put
    // on the template. CA drops such taints from every template it simulates with
    // (cluster-autoscaler-1.36.1 `utils/taints/taints.go` `SanitizeTaints`, called by
    // `simulator/node_info_utils.go`), so scale-up sees the node as its pods will once the
    // taint is gone. Any other key would stay on CA's copy and make every pod without a
    // toleration unschedulable on the group; it is left off (the lifecycle controller's
    // condition then asks for CA's `--startup-taint` flag).
    if let Some(t) = group.startup_taint.as_ref().filter(|t| {
        crate::api::lifecycle::AUTOSCALER_STARTUP_TAINT_PREFIXES
            .iter()
            .any(|p| t.key.starts_with(p))
    }) {
        put(&t.key, &t.value, &t.effect);
    }
    Ok(taints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine_template::OpenStackWorkerMachineTemplate;
    use crate::autoscaler::index::{ClusterKey, GroupKind};
    use serde_json::json;
    use std::sync::Arc;

    fn group(annotations: serde_json::Value, status: Option<serde_json::Value>) -> NodeGroup {
        let mut t = json!({
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"template": {"spec": {"flavor": {"id": "1"}, "image": {"id": "i"}}}}
        });
        if let Some(s) = status {
            t["status"] = s;
        }
        let template: OpenStackWorkerMachineTemplate = serde_json::from_value(t).unwrap();
        let machine_template = serde_json::from_value(json!({
            "metadata": {"labels": {"node-role.kubernetes.io/worker": "", "team": "a", "x.node-restriction.kubernetes.io/pool": "p1"}},
            "spec": {"failureDomain": "az1", "version": "v1.34.2", "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}
        }))
        .unwrap();
        NodeGroup {
            id: "MachineDeployment/ns/md-0".into(),
            kind: GroupKind::MachineDeployment,
            namespace: "ns".into(),
            name: "md-0".into(),
            cluster: ClusterKey {
                namespace: "ns".into(),
                name: "c1".into(),
            },
            min_size: 0,
            max_size: 3,
            target_size: 0,
            annotations: serde_json::from_value(annotations).unwrap(),
            machine_template,
            template: Some(Arc::new(template)),
            region: Some("RegionOne".into()),
            instances: vec![],
            frozen: None,
            startup_taint: None,
        }
    }

    fn flavor_status() -> serde_json::Value {
        json!({
            "capacity": {"cpu": "4", "memory": "8192Mi", "ephemeral-storage": "40Gi", "nvidia.com/gpu": "1"},
            "nodeInfo": {"architecture": "arm64", "operatingSystem": "linux"},
            "resolved": {"flavorName": "gpu.small", "gpuType": "a100"}
        })
    }

    fn q(node: &Node, part: &str, k: &str) -> String {
        let s = node.status.as_ref().unwrap();
        let m = if part == "capacity" {
            &s.capacity
        } else {
            &s.allocatable
        };
        m.get(k).map(|q| q.string.clone()).unwrap_or_default()
    }

    #[test]
    fn capacity_and_allocatable_from_the_template_with_kubelet_default_eviction() {
        let node = template_node(
            &group(json!({}), Some(flavor_status())),
            &TemplateOptions {
                gpu_label: "cluster-api/accelerator".into(),
            },
        )
        .unwrap();
        assert_eq!(q(&node, "capacity", "cpu"), "4");
        assert_eq!(q(&node, "capacity", "memory"), "8Gi");
        assert_eq!(q(&node, "capacity", "pods"), "110");
        assert_eq!(q(&node, "capacity", "nvidia.com/gpu"), "1");
        assert_eq!(
            q(&node, "allocatable", "memory"),
            "8092Mi",
            "100Mi eviction threshold"
        );
        assert_eq!(
            q(&node, "allocatable", "ephemeral-storage"),
            "36Gi",
            "10% of 40Gi kept for nodefs eviction"
        );
        assert_eq!(q(&node, "allocatable", "cpu"), "4");
        let labels = &node.metadata.as_ref().unwrap().labels;
        assert_eq!(
            node.metadata.as_ref().unwrap().annotations[NODE_GROUP_ANNOTATION],
            "MachineDeployment/ns/md-0",
            "the group, for pricing the template CA renames"
        );
        assert_eq!(labels["kubernetes.io/arch"], "arm64");
        assert_eq!(labels["node.kubernetes.io/instance-type"], "gpu.small");
        assert_eq!(labels["topology.kubernetes.io/zone"], "az1");
        assert_eq!(labels["topology.kubernetes.io/region"], "RegionOne");
        assert_eq!(labels["node-role.kubernetes.io/worker"], "");
        assert_eq!(labels["x.node-restriction.kubernetes.io/pool"], "p1");
        assert!(
            !labels.contains_key("team"),
            "only CAPI-propagated label domains reach the node"
        );
        assert_eq!(labels["cluster-api/accelerator"], "a100");
        let taints = &node.spec.as_ref().unwrap().taints;
        assert_eq!(taints.len(), 1);
        assert_eq!(node.status.as_ref().unwrap().conditions[0].status, "True");
        assert_eq!(
            node.status
                .as_ref()
                .unwrap()
                .node_info
                .as_ref()
                .unwrap()
                .kubelet_version,
            "v1.34.2"
        );
    }

    #[test]
    fn annotations_override_and_reserve() {
        let ann = json!({
            "capacity.cluster-autoscaler.kubernetes.io/cpu": "8",
            "capacity.cluster-autoscaler.kubernetes.io/memory": "16G",
            "capacity.cluster-autoscaler.kubernetes.io/maxPods": "50",
            "capacity.cluster-autoscaler.kubernetes.io/labels": "pool=big,tier=2",
            "capacity.cluster-autoscaler.kubernetes.io/taints": "dedicated=batch:NoSchedule,spot:NoExecute",
            "capow.infrastructure.cluster.x-k8s.io/kube-reserved": "cpu=100m,memory=256Mi",
            "capow.infrastructure.cluster.x-k8s.io/system-reserved": "cpu=100m",
            "capow.infrastructure.cluster.x-k8s.io/eviction-hard": "memory.available=500Mi",
        });
        let node = template_node(
            &group(ann, Some(flavor_status())),
            &TemplateOptions::default(),
        )
        .unwrap();
        assert_eq!(q(&node, "capacity", "cpu"), "8");
        assert_eq!(q(&node, "allocatable", "cpu"), "7800m");
        let bytes = |s: String| quantity::parse(&s).unwrap().0 / 1000;
        assert_eq!(bytes(q(&node, "capacity", "memory")), 16_000_000_000);
        assert_eq!(
            bytes(q(&node, "allocatable", "memory")),
            16_000_000_000 - (256 + 500) * 1_048_576
        );
        assert_eq!(q(&node, "capacity", "pods"), "50");
        assert_eq!(
            q(&node, "allocatable", "ephemeral-storage"),
            "40Gi",
            "no nodefs threshold when the annotation omits it"
        );
        let labels = &node.metadata.as_ref().unwrap().labels;
        assert_eq!(labels["pool"], "big");
        let taints = &node.spec.as_ref().unwrap().taints;
        assert_eq!(taints.len(), 2, "{taints:?}");
        assert!(
            taints
                .iter()
                .any(|t| t.key == "dedicated" && t.value == "batch" && t.effect == "NoSchedule")
        );
        assert!(
            taints
                .iter()
                .any(|t| t.key == "spot" && t.value.is_empty() && t.effect == "NoExecute")
        );
    }

    #[test]
    fn scale_from_zero_with_annotations_only_and_errors() {
        let ann = json!({"capacity.cluster-autoscaler.kubernetes.io/cpu": "2", "capacity.cluster-autoscaler.kubernetes.io/memory": "4Gi",
                         "capacity.cluster-autoscaler.kubernetes.io/gpu-type": "nvidia.com/gpu", "capacity.cluster-autoscaler.kubernetes.io/gpu-count": "2"});
        let node = template_node(
            &group(ann, None),
            &TemplateOptions {
                gpu_label: "cluster-api/accelerator".into(),
            },
        )
        .unwrap();
        assert_eq!(q(&node, "capacity", "nvidia.com/gpu"), "2");
        assert_eq!(
            node.metadata.as_ref().unwrap().labels["kubernetes.io/arch"],
            "amd64",
            "default architecture"
        );
        assert_eq!(
            template_node(&group(json!({}), None), &TemplateOptions::default()).unwrap_err(),
            TemplateError::NoCapacity("MachineDeployment/ns/md-0".into())
        );
        let err = template_node(
            &group(
                json!({"capacity.cluster-autoscaler.kubernetes.io/memory": "lots"}),
                Some(flavor_status()),
            ),
            &TemplateOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("capacity.cluster-autoscaler.kubernetes.io/memory"),
            "{err}"
        );
    }

    #[test]
    fn propagated_label_domains() {
        assert!(is_propagated_label("node-role.kubernetes.io/worker"));
        assert!(is_propagated_label("node.cluster.x-k8s.io/pool"));
        assert!(is_propagated_label("a.node-restriction.kubernetes.io/x"));
        assert!(!is_propagated_label("kubernetes.io/role"));
        assert!(!is_propagated_label("team"));
    }

    #[test]
    fn the_startup_taint_is_declared_only_where_the_autoscaler_ignores_it() {
        use crate::api::lifecycle::settings::Taint as StartupTaint;
        let mut g = group(json!({}), Some(flavor_status()));
        g.startup_taint = Some(StartupTaint {
            key: crate::api::lifecycle::DEFAULT_STARTUP_TAINT_KEY.into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        });
        let node = template_node(&g, &TemplateOptions::default()).unwrap();
        let keys: Vec<String> = node
            .spec
            .unwrap()
            .taints
            .into_iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        assert_eq!(
            keys,
            [
                "dedicated:NoSchedule".to_owned(),
                format!(
                    "{}:NoSchedule",
                    crate::api::lifecycle::DEFAULT_STARTUP_TAINT_KEY
                )
            ]
        );
        // A key CA does not know as a startup taint is not put on the template.
        g.startup_taint = Some(StartupTaint {
            key: "example.com/booting".into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        });
        let node = template_node(&g, &TemplateOptions::default()).unwrap();
        assert_eq!(node.spec.unwrap().taints.len(), 1);
    }
}
