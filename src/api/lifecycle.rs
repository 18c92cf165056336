//! `OpenStackWorkerCluster.spec.nodeLifecycle`: node lifecycle features ported from the
//! "Autoscaler for K3s on OpenStack" (CSCfi pebbles-deploy `container-src/k3s-autoscaler/`),
//! done the Cluster API way (ADR `docs/adr/0007-node-lifecycle.md`). Every
//! feature is off until its field is set:
//!
//! - `maxNodeAge`: Machines older than this are replaced one at a time through CAPI;
//! - `startupTaint`: a taint new nodes register with, which capow removes once the Node is
//!   Ready (and, with `imageWarmup`, once the images are pulled);
//! - `headroom`: free capacity kept by low-priority placeholder pods in the workload cluster;
//! - `imageWarmup`: images pre-pulled on every node by a DaemonSet in the workload cluster.
//!
//! `maxNodeAge`, `replacementBudget` and `startupTaint` can be overridden per
//! MachineDeployment by annotations (`crate::controllers::lifecycle::settings`). The
//! controller is `crate::controllers::lifecycle`. Shapes are validated by the CRD schema and
//! CEL rules; what only the running system can judge (a headroom no node group can hold, an
//! annotation that does not parse) is reported in `status.nodeLifecycle.conditions`.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Default key of the startup taint. It lies under cluster-autoscaler's built-in startup-taint
/// prefix `startup-taint.cluster-autoscaler.kubernetes.io/` (cluster-autoscaler-1.36.1
/// `utils/taints/taints.go`, `StartupTaintPrefix`), so every cluster-autoscaler treats it as a
/// startup taint without flags: it drops it from template nodes (`SanitizeTaints`, used by
/// `simulator/node_info_utils.go`) and counts a Node carrying it as not ready yet
/// (`FilterOutNodesWithStartupTaints`, `core/static_autoscaler.go`).
pub const DEFAULT_STARTUP_TAINT_KEY: &str = "startup-taint.cluster-autoscaler.kubernetes.io/capow";
/// Key prefixes cluster-autoscaler treats as startup taints without a `--startup-taint` flag
/// (cluster-autoscaler-1.36.1 `utils/taints/taints.go`, `NewTaintConfig`).
pub const AUTOSCALER_STARTUP_TAINT_PREFIXES: &[&str] = &[
    "startup-taint.cluster-autoscaler.kubernetes.io/",
    "ignore-taint.cluster-autoscaler.kubernetes.io/",
];
/// Default priority of the headroom placeholder pods. It must not be below the
/// cluster-autoscaler's `--expendable-pods-priority-cutoff` (default -10): pods below it are
/// "expendable" and never cause a scale-up (cluster-autoscaler-1.36.1
/// `core/utils/expendable.go`, `IsExpendablePod`: `priority < cutoff`).
pub const DEFAULT_HEADROOM_PRIORITY: i32 = -10;
/// Default replacement budget: Machines of one MachineDeployment replaced at once.
pub const DEFAULT_REPLACEMENT_BUDGET: i32 = 1;
/// Default time after a Node registered at which the startup taint is removed even though
/// the image warm-up has not finished (10 minutes).
pub const DEFAULT_WARMUP_TIMEOUT: &str = "10m";
/// Default command of the init containers of the `InitContainers` warm-up method.
pub const DEFAULT_WARMUP_COMMAND: &[&str] = &["sh", "-c", "exit 0"];

/// A Go duration string (`time.ParseDuration`: `90m`, `168h`, `1h30m`; units `ns`, `us`,
/// `ms`, `s`, `m`, `h`; no days), as CEL's `duration()` reads it.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// An image reference: optional registry host (with port), lowercase path components,
/// optional tag and optional digest (the grammar of the OCI distribution reference format,
/// `github.com/distribution/reference` `reference.go`).
pub const IMAGE_REFERENCE_PATTERN: &str = concat!(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?",
    r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*",
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
);

/// The pattern of `resource.Quantity` in its string form (apimachinery
/// `pkg/api/resource/quantity.go`, the grammar in `Quantity`'s documentation).
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Node lifecycle settings of a cluster (all off by default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeLifecycle {
    /// Machines older than this (since their `metadata.creationTimestamp`) are replaced: capow
    /// marks the oldest with `cluster.x-k8s.io/delete-machine` and deletes it, CAPI drains its
    /// Node, and its MachineSet creates the successor. Only while the MachineDeployment is
    /// fully available, not rolling out and not being scaled, and never below its min size.
    /// A Go duration between 1h and 8760h (365 days), e.g. `168h` for a week. Off when unset;
    /// a MachineDeployment annotation `capow.infrastructure.cluster.x-k8s.io/max-node-age`
    /// overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h') && duration(self) <= duration('8760h')").message("maxNodeAge must be a duration between 1h and 8760h (365 days), e.g. 168h"))]
    pub max_node_age: Option<String>,

    /// Machines of one MachineDeployment replaced at once (marked and deleted together once
    /// the MachineDeployment is fully available). Default 1. Annotation
    /// `capow.infrastructure.cluster.x-k8s.io/replacement-budget` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replacement_budget: Option<i32>,

    /// The taint new nodes carry until capow removes it (set, even as `{}`, to turn the
    /// feature on). Bootstrap must register Nodes with it (kubeadm
    /// `nodeRegistration.taints`, kubelet `--register-with-taints`); capow removes it through
    /// the workload cluster's kubeconfig once the Node is Ready and, with `imageWarmup`, once
    /// the images are pulled. Annotation `capow.infrastructure.cluster.x-k8s.io/startup-taint`
    /// (`key[=value]:Effect`, or `off`) overrides it per MachineDeployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_taint: Option<StartupTaint>,

    /// Free capacity kept available in the workload cluster by placeholder pods of a priority
    /// below every real pod's: they make the cluster-autoscaler keep spare nodes, and a real
    /// pod preempts them at once. Needs the manager flag `--placeholder-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<Headroom>,

    /// Images pre-pulled on every node by a DaemonSet capow manages in the workload cluster;
    /// with `startupTaint`, a new node keeps its taint until its images are pulled (at most
    /// `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_warmup: Option<ImageWarmup>,
}

/// The startup taint (a `v1.Taint` without `timeAdded`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartupTaint {
    /// Taint key; default `startup-taint.cluster-autoscaler.kubernetes.io/capow`. A key
    /// outside `startup-taint.cluster-autoscaler.kubernetes.io/` needs the cluster-autoscaler
    /// flag `--startup-taint=<key>`, or CA takes tainted nodes for ready ones and may copy the
    /// taint into its template of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 316),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
        )
    )]
    pub key: Option<String>,
    /// Taint value; empty by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 63),
        regex(pattern = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    )]
    pub value: Option<String>,
    /// `NoSchedule` (default) or `NoExecute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<StartupTaintEffect>,
}

/// Effect of the startup taint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StartupTaintEffect {
    /// No new pods without a toleration.
    #[default]
    NoSchedule,
    /// Also evicts running pods without a toleration.
    NoExecute,
}

impl StartupTaintEffect {
    /// The effect as the Node API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StartupTaintEffect::NoSchedule => "NoSchedule",
            StartupTaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// The free capacity to keep.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.cpu) || has(self.memory)").message("set cpu, memory or both"))]
pub struct Headroom {
    /// CPU to keep free (a quantity, e.g. `2` or `1500m`), at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "headroom_cpu_schema")]
    pub cpu: Option<Quantity>,
    /// Memory to keep free (a quantity, e.g. `4Gi`), at most 64Ti.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "headroom_memory_schema")]
    pub memory: Option<Quantity>,
    /// Priority of the placeholder pods (the value of the PriorityClass capow makes), below
    /// 0 (the priority of pods without a class) so every real pod preempts them, and not below
    /// the cluster-autoscaler's `--expendable-pods-priority-cutoff` (default -10), or CA
    /// ignores them. Default -10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1_000_000, max = -1))]
    pub priority: Option<i32>,
}

fn quantity_schema(max: &str, what: &str) -> Schema {
    json_schema!({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": true,
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-validations": [{
            "rule": format!("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0')) && quantity(string(self)).compareTo(quantity('{max}')) <= 0"),
            "message": format!("{what} must be a quantity above 0 and at most {max}"),
        }],
    })
}

fn headroom_cpu_schema(_: &mut SchemaGenerator) -> Schema {
    quantity_schema("1000", "cpu")
}

fn headroom_memory_schema(_: &mut SchemaGenerator) -> Schema {
    quantity_schema("64Ti", "memory")
}

/// Images to pre-pull on every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageWarmup {
    /// Image references (`[host[:port]/]path[:tag][@digest]`), each pulled once per node.
    #[schemars(
        length(min = 1, max = 50),
        inner(length(min = 1, max = 512), regex(pattern = IMAGE_REFERENCE_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub images: Vec<String>,
    /// Prefixes of references never pulled, even when listed (e.g. when `images` comes from a
    /// ClusterClass variable shared by clusters that cannot reach every registry): an image is
    /// skipped when its reference starts with one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 50),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
        )
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub ignore: Vec<String>,
    /// How the images are pulled. `ImageVolume` (default): one image volume per image on a
    /// pod of the placeholder image; nothing in the warmed images is run, so images without a
    /// shell (distroless, scratch) work; needs Kubernetes ≥ 1.35 (the `ImageVolume` feature is
    /// on by default since 1.35 and GA in 1.36) and a container runtime that mounts image
    /// volumes. `InitContainers`: one init container per image running `command`, for older
    /// clusters; an image without that command never finishes (then `timeout` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<WarmupMethod>,
    /// Command of each init container of the `InitContainers` method; default
    /// `["sh", "-c", "exit 0"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 256)))]
    pub command: Vec<String>,
    /// Longest time a new Node keeps its startup taint waiting for the warm-up (since the
    /// Node registered); then the taint is removed anyway and a Warning event says which
    /// images were missing. A Go duration between 1m and 2h; default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('2h')").message("timeout must be a duration between 1m and 2h"))]
    pub timeout: Option<String>,
}

/// How [`ImageWarmup`] pulls images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WarmupMethod {
    /// Image volumes (KEP-4639) on a pod of the placeholder image.
    #[default]
    ImageVolume,
    /// Init containers running a command from each image.
    InitContainers,
}

/// Observed state of the node lifecycle features (`status.nodeLifecycle`), written by the
/// lifecycle controller with its own field manager (`capow-lifecycle`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeLifecycleStatus {
    /// One condition per configured feature: `MaxNodeAge`, `StartupTaint`, `Headroom`,
    /// `ImageWarmup` (True when it works; False with the reason and the field path when input
    /// or the workload cluster keeps it from working).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The placeholder pods capow keeps for `spec.nodeLifecycle.headroom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<HeadroomStatus>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How the headroom is held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadroomStatus {
    /// Placeholder pods (replicas of the placeholder Deployment).
    pub replicas: i32,
    /// CPU each placeholder requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_per_pod: Option<String>,
    /// Memory each placeholder requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_per_pod: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_startup_taint_is_one_the_autoscaler_knows() {
        assert!(
            AUTOSCALER_STARTUP_TAINT_PREFIXES
                .iter()
                .any(|p| DEFAULT_STARTUP_TAINT_KEY.starts_with(p))
        );
        let name = DEFAULT_STARTUP_TAINT_KEY.rsplit('/').next().unwrap();
        assert!(name.len() <= 63);
    }
}
