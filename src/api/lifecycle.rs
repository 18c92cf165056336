//! `OpenStackWorkerCluster.spec.nodeLifecycle`: node lifecycle features ported from the
//! "Autoscaler for K3s on OpenStack" (CSCfi pebbles-deploy `container-src/k3s-autoscaler/`),
//! done the Cluster API way (ADR `docs/adr/0007-node-lifecycle.md`). Every
//! feature is off until its field is set:
//!
//! - `maxNodeAge`: Machines older than this are replaced one at a time through CAPI;
//! - `startupTaint`: a taint new nodes register with, which capow removes once the Node is
//!   Ready (and, with `imageWarmup`, once the Node's warm-up pod is Ready);
//! - `headroom`: placeholder pods that keep spare capacity for the cluster-autoscaler to add;
//! - `imageWarmup`: images a DaemonSet pre-pulls on every Node of the workload cluster.
//!
//! `maxNodeAge`, `replacementBudget` and `startupTaint` can be overridden per
//! MachineDeployment by annotations ([`settings`]). The
//! controller is `crate::controllers::lifecycle`. Shapes are validated by the CRD schema and
//! CEL rules; what only the running system can judge (an annotation that does not parse) is
//! reported in `status.nodeLifecycle.conditions`.

pub mod settings;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
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
/// Default replacement budget: Machines of one MachineDeployment replaced at once.
pub const DEFAULT_REPLACEMENT_BUDGET: i32 = 1;
/// A Go duration string (`time.ParseDuration`: `90m`, `168h`, `1h30m`; units `ns`, `us`,
/// `ms`, `s`, `m`, `h`; no days), as CEL's `duration()` reads it.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

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
    /// the workload cluster's kubeconfig once the Node is Ready. Annotation `capow.infrastructure.cluster.x-k8s.io/startup-taint`
    /// (`key[=value]:Effect`, or `off`) overrides it per MachineDeployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_taint: Option<StartupTaint>,

    /// Spare capacity kept free in the workload cluster: capow runs placeholder pods that ask
    /// for it at a priority below every workload's (PriorityClass `capow-headroom`, value
    /// [`HEADROOM_PRIORITY`]), so the cluster-autoscaler adds nodes for them ahead of demand
    /// and a real pod preempts a placeholder at once. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<Headroom>,

    /// Images pre-pulled on every Node of the workload cluster by a DaemonSet capow keeps there
    /// (namespace `capow-image-warmup`); with a startup taint on, a new Node keeps its taint
    /// until its warm-up pod is Ready (at most `timeout`). Off when unset; removing it deletes
    /// the DaemonSet. Per cluster only (no MachineDeployment annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_warmup: Option<ImageWarmup>,
}

/// Largest number of entries of `imageWarmup.images` and of `imageWarmup.ignore`: one init
/// container per image, and a pod spec stays far below the 1.5 MiB object limit of etcd.
pub const MAX_WARMUP_IMAGES: usize = 50;

/// An image reference `name[:tag][@sha256:digest]` as the container runtime reads it
/// (distribution/reference `reference.go` grammar, v2.8): an optional registry host with port
/// (`mirror.example:5000/`), lower-case path components separated by `/` (each
/// alphanumeric runs joined by `.`, `_`, `__` or dashes), a tag of at most 128 of
/// `[A-Za-z0-9_.-]` not starting with `.` or `-`, and a sha256 digest of 64 lower-case hex
/// digits. No registry host is assumed: `pause:3.10` stays as written and the runtime
/// resolves it as it would for any pod. IPv6 registry hosts are not accepted.
pub const IMAGE_REFERENCE_PATTERN: &str = concat!(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
);

/// An entry of `imageWarmup.ignore`: an image reference ([`IMAGE_REFERENCE_PATTERN`]) that
/// ignores exactly that image, or a prefix ending in `*` (`mirror.example/team/*`,
/// `busybox:*`) that ignores every image starting with it.
pub const IGNORE_PATTERN: &str = concat!(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?",
    r"|[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}\*)$"
);

/// Default of `imageWarmup.timeout`: how long a new Node's startup taint waits for its
/// warm-up pod.
pub const DEFAULT_WARMUP_TIMEOUT: &str = "10m";

/// Images pre-pulled on the workload cluster's Nodes (`spec.nodeLifecycle.imageWarmup`).
///
/// capow runs a DaemonSet `capow-image-warmup/capow-image-warmup` whose pods have one init
/// container per image (the list minus `ignore`) running `/bin/sh -c true` with
/// `imagePullPolicy: IfNotPresent`, so the kubelet pulls each image once; every image must
/// therefore contain `/bin/sh` (images without a shell fail with `StartError` after their pull
/// and are reported; ignore them). The pattern is the pre-puller of Zero to JupyterHub
/// (`jupyterhub/zero-to-jupyterhub-k8s` `image-puller` chart templates) in capow's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageWarmup {
    /// Images to pre-pull, 1 to 50 distinct references `name[:tag][@sha256:digest]`
    /// ([`IMAGE_REFERENCE_PATTERN`]; e.g. `pause:3.10`, `mirror.example:5000/team/app:1.2`),
    /// each at most 512 characters, pulled in this order.
    #[schemars(
        length(min = 1, max = 50),
        inner(length(min = 1, max = 512), regex(pattern = IMAGE_REFERENCE_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub images: Vec<String>,
    /// Images not to pre-pull, up to 50 distinct entries: an exact reference, or a prefix
    /// ending in `*` ([`IGNORE_PATTERN`]; e.g. `busybox:*`, `mirror.example/big/*`). Meant for
    /// a cluster that takes its `images` from a ClusterClass default and must skip some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 50),
        inner(length(min = 1, max = 512), regex(pattern = IGNORE_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub ignore: Vec<String>,
    /// How long a new Node keeps its startup taint waiting for its warm-up pod, counted from
    /// the Node's `Ready` condition turning `True`. After it capow removes the taint anyway
    /// and records a Warning event `ImageWarmupTimedOut` naming the Node and what its warm-up
    /// waited for (images that fail to pull are reported all along in the `ImageWarmup`
    /// condition, reason `ImageWarmupFailed`). A Go duration between 30s and 24h; default
    /// `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('30s') && duration(self) <= duration('24h')").message("timeout must be a duration between 30s and 24h, e.g. 10m"))]
    pub timeout: Option<String>,
}

/// Priority of the headroom placeholder pods: below the default 0 of workloads, so any pod
/// preempts them, and not below the cluster-autoscaler's `--expendable-pods-priority-cutoff`
/// (default -10; pods below it never cause a scale-up, cluster-autoscaler FAQ "How can I
/// configure overprovisioning with Cluster Autoscaler?").
pub const HEADROOM_PRIORITY: i32 = -1;

/// Free capacity kept by placeholder pods (`spec.nodeLifecycle.headroom`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.replicas) || !isQuantity(self.cpu) || (quantity(self.cpu).asApproximateFloat() / double(self.replicas) >= 0.001)").message("each placeholder pod must ask for at least 1m CPU: lower replicas or raise cpu"))]
pub struct Headroom {
    /// CPU kept free, a Kubernetes quantity greater than 0 and at most 1024 (e.g. `2`, `500m`).
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0')) && quantity(self).compareTo(quantity('1024')) <= 0").message("cpu must be a quantity greater than 0 and at most 1024, e.g. 2 or 500m"))]
    pub cpu: String,
    /// Memory kept free, a Kubernetes quantity greater than 0 and at most 16Ti (e.g. `4Gi`).
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0')) && quantity(self).compareTo(quantity('16Ti')) <= 0").message("memory must be a quantity greater than 0 and at most 16Ti, e.g. 4Gi"))]
    pub memory: String,
    /// Placeholder pods the headroom is split into; each asks for `cpu / replicas` and
    /// `memory / replicas`, so it must fit one node. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,
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
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
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

    #[test]
    fn image_references_are_checked_without_assuming_a_registry() {
        let image = regex::Regex::new(IMAGE_REFERENCE_PATTERN).unwrap();
        let ignore = regex::Regex::new(IGNORE_PATTERN).unwrap();
        let digest = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for ok in [
            "pause:3.10".to_owned(),
            "busybox".to_owned(),
            "team/app_x__y.z-w:v1.2-rc.1".to_owned(),
            "mirror.example:5000/team/app:1.2".to_owned(),
            "localhost:5000/app".to_owned(),
            format!("mirror.example/app{digest}"),
            format!("mirror.example/app:1.2{digest}"),
        ] {
            assert!(image.is_match(&ok), "{ok} is a reference");
            assert!(ignore.is_match(&ok), "{ok} is an ignore entry");
        }
        for bad in [
            "",
            "Pause:3.10",
            "app:",
            "app:-x",
            "app@sha256:abc",
            "app:1 2",
            "/app",
            "app/",
            "mirror.example/*",
        ] {
            assert!(!image.is_match(bad), "{bad:?} is not a reference");
        }
        for rule in ["busybox:*", "mirror.example/team/*", "*"] {
            assert_eq!(ignore.is_match(rule), rule != "*", "{rule}");
        }
    }
}
