//! `OpenStackWorkerCluster.spec.autoscaler`: the cluster-autoscaler (CA) capow runs for the
//! workload cluster, as a Deployment next to the hosted control plane in the management cluster
//! (`docs/adr/0006-managed-cluster-autoscaler.md`).
//!
//! The fields map onto CA's command-line flags as CA 1.36 defines them
//! (kubernetes/autoscaler, tag `cluster-autoscaler-1.36.1`,
//! `cluster-autoscaler/config/flags/flags.go`). Static rules are CEL rules the API server
//! enforces; the controller checks the same rules again (objects stored before a rule existed)
//! and reports a violation in the `AutoscalerReady` condition without touching what runs.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The expanders capow accepts in `expander`, as CA registers them
/// (`cluster-autoscaler/expander/expander.go`, `AvailableExpanders` plus `least-nodes`, which
/// `expander/factory/expander_factory.go` registers too). `grpc` is left out: it needs
/// `--grpc-expander-url` and a certificate capow does not manage.
pub const EXPANDERS: &[&str] = &[
    "random",
    "most-pods",
    "least-waste",
    "least-nodes",
    "price",
    "priority",
];

/// CA's default expander (`--expander` in `config/flags/flags.go`), which capow passes when
/// `expander` is unset.
pub const DEFAULT_EXPANDER: &str = "least-waste";

/// The flags capow sets itself or derives from a field of `spec.autoscaler`; `extraArgs` must
/// not name them (CA keeps the last occurrence of a flag, so an extra argument would silently
/// override capow's). Without the leading `--`.
pub const RESERVED_FLAGS: &[&str] = &[
    "cloud-provider",
    "cloud-config",
    "kubeconfig",
    "kubernetes",
    "namespace",
    "address",
    "leader-elect",
    "leader-elect-resource-lock",
    "leader-elect-resource-name",
    "leader-elect-resource-namespace",
    "status-config-map-name",
    "expander",
    "scale-down-enabled",
    "scale-down-unneeded-time",
    "scale-down-delay-after-add",
    "scale-down-delay-after-delete",
    "scale-down-delay-after-failure",
    "scale-down-utilization-threshold",
    "balance-similar-node-groups",
    "max-node-provision-time",
];

/// A Go `time.ParseDuration` string with units (`10m`, `1h30m`, `90s`, `1.5h`), the form CA's
/// duration flags take. A bare number is not a Go duration.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A container image with a tag, a digest or both: `<repository>:<tag>`,
/// `<repository>@sha256:<hex>` or `<repository>:<tag>@sha256:<hex>`. The repository may name a
/// registry with a port (`host:5000/path`); a port alone is not a tag.
pub const IMAGE_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?(/[A-Za-z0-9][A-Za-z0-9._-]*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$";

/// One `extraArgs` item: a single long flag, `--name` or `--name=value`.
pub const EXTRA_ARG_PATTERN: &str = r"^--[a-z0-9][a-z0-9-]*(=.*)?$";

/// The expander chain pattern: known expanders separated by commas.
fn expander_pattern() -> String {
    let one = format!("({})", EXPANDERS.join("|"));
    format!("^{one}(,{one})*$")
}

/// CEL rule of `expander`: known names, each once, `random` only last (CA's expander factory
/// refuses a repeated expander and anything after the `random` strategy,
/// `expander/factory/expander_factory.go` `Build`).
pub fn expander_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "self.matches(r'{}') && [{}].all(n, self.split(',').filter(x, x == n).size() <= 1) && (!self.split(',').exists(e, e == 'random') || self.endsWith('random'))",
        expander_pattern(),
        EXPANDERS
            .iter()
            .map(|e| format!("'{e}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .message(kube::core::Message::Message(format!(
        "expander must be one of {} or a comma-separated chain of them, each at most once, with random only last",
        EXPANDERS.join(", ")
    )))
}

/// CEL rule of `extraArgs`: one flag per item, none of [`RESERVED_FLAGS`].
pub fn extra_args_rule() -> kube::core::Rule {
    let reserved: Vec<String> = RESERVED_FLAGS.iter().map(|f| format!("'--{f}'")).collect();
    kube::core::Rule::new(format!(
        "self.all(a, a.matches(r'{EXTRA_ARG_PATTERN}') && !(a.split('=')[0] in [{}]))",
        reserved.join(", ")
    ))
    .message(kube::core::Message::Message(format!(
        "each extraArgs item must be one flag (--name or --name=value) and must not be one capow sets: --{}",
        RESERVED_FLAGS.join(", --")
    )))
}

/// CEL rule of `image`.
pub fn image_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!("self.matches(r'{IMAGE_PATTERN}')")).message(
        "image must name a tag or a digest, e.g. <repository>:v1.36.1 or <repository>@sha256:<digest>",
    )
}

/// CEL rule of a duration field.
pub fn duration_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!("self.matches(r'{DURATION_PATTERN}')"))
        .message("must be a Go duration with units, e.g. 10m, 90s or 1h30m")
}

/// The cluster-autoscaler capow runs for this cluster. Absent (or `enabled: false`): capow runs
/// none and removes what it made for an earlier setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.expander) || !self.expander.split(',').exists(e, e == 'priority') || (has(self.priorities) && size(self.priorities) > 0)").message("the priority expander needs spec.autoscaler.priorities"))]
#[x_kube(validation = Rule::new("!has(self.priorities) || size(self.priorities) == 0 || (has(self.expander) && self.expander.split(',').exists(e, e == 'priority'))").message("spec.autoscaler.priorities is read only by the priority expander: add priority to spec.autoscaler.expander"))]
pub struct ManagedAutoscaler {
    /// Run the cluster-autoscaler. Default true; false removes it and keeps these settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// The cluster-autoscaler image, with a tag or digest. Default: the repository given to
    /// the manager with `--autoscaler-image-repository`, tagged with the CA release of the
    /// Cluster's Kubernetes minor version (`docs/managed-autoscaler.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = crate::api::autoscaler::image_rule())]
    pub image: Option<String>,

    /// CA's `--expander`: one of `random`, `most-pods`, `least-waste`, `least-nodes`, `price`,
    /// `priority`, or a comma-separated chain (`priority,least-waste`). Default `least-waste`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = crate::api::autoscaler::expander_rule())]
    pub expander: Option<String>,

    /// The priority expander's list (CA's `cluster-autoscaler-priority-expander` ConfigMap):
    /// node groups whose id matches a pattern of a higher priority win. Needed by, and only
    /// allowed with, the `priority` expander.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["priority".into()]))]
    pub priorities: Vec<ExpanderPriority>,

    /// Scale-down settings; CA's defaults where unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDown>,

    /// CA's `--balance-similar-node-groups`: keep similar node groups (e.g. one per failure
    /// domain) at similar sizes. CA's default (false) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_similar_node_groups: Option<bool>,

    /// CA's `--max-node-provision-time`: how long CA waits for a new node to register before
    /// it gives up on it (Go duration, e.g. `15m`). CA's default (15m) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::api::autoscaler::duration_rule())]
    pub max_node_provision_time: Option<String>,

    /// More CA flags, one per item (`--name=value`), appended after capow's. Flags capow sets
    /// or derives from the fields above are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 3, max = 1024)))]
    #[x_kube(validation = crate::api::autoscaler::extra_args_rule())]
    pub extra_args: Vec<String>,

    /// Requests and limits of the cluster-autoscaler container (quantities as strings). Default
    /// requests: 100m CPU, 300Mi memory; no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::autoscaler::resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

/// One priority of the priority expander.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpanderPriority {
    /// The priority; higher wins. CA never picks a negative priority, so it must be ≥ 0.
    #[schemars(range(min = 0, max = 100_000))]
    pub priority: i32,
    /// Regular expressions (RE2, as CA compiles them) matched against node-group ids, which
    /// are `MachineDeployment/<namespace>/<name>` for capow's node groups.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = Rule::new("self.all(p, type(p.matches(p)) == bool)").message("each nodeGroups entry must be a regular expression in RE2 syntax, as the cluster-autoscaler compiles it"))]
    pub node_groups: Vec<String>,
}

/// Scale-down settings (CA's `--scale-down-*` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    /// `--scale-down-enabled`: whether CA removes unneeded nodes at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `--scale-down-unneeded-time`: how long a node must be unneeded before CA removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::api::autoscaler::duration_rule())]
    pub unneeded_time: Option<String>,
    /// `--scale-down-delay-after-add`: no scale-down for this long after a scale-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::api::autoscaler::duration_rule())]
    pub delay_after_add: Option<String>,
    /// `--scale-down-delay-after-delete`: no scale-down for this long after a node deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::api::autoscaler::duration_rule())]
    pub delay_after_delete: Option<String>,
    /// `--scale-down-delay-after-failure`: no scale-down for this long after a failed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = crate::api::autoscaler::duration_rule())]
    pub delay_after_failure: Option<String>,
    /// `--scale-down-utilization-threshold`: a node whose requested CPU and memory are below
    /// this fraction of its allocatable is a scale-down candidate (a decimal from 0 to 1 as a
    /// string, e.g. `"0.5"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"))]
    pub utilization_threshold: Option<String>,
}

impl ManagedAutoscaler {
    /// True unless `enabled` is false.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// Schema of `resources`: `requests` and `limits` maps of quantities (strings in Kubernetes'
/// quantity syntax; apimachinery `resource.Quantity`), the parts of `corev1.ResourceRequirements`
/// a container of capow's Deployment uses.
pub fn resources_schema(_: &mut SchemaGenerator) -> Schema {
    let quantities = json_schema!({
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": {
            "type": "string",
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
        }
    });
    json_schema!({
        "type": "object",
        "description": "Requests and limits of the cluster-autoscaler container (corev1.ResourceRequirements without claims).",
        "properties": {
            "requests": quantities.clone(),
            "limits": quantities
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_accept_what_ca_accepts_and_refuse_the_rest() {
        let re = |p: &str| regex::Regex::new(p).unwrap();
        let image = re(IMAGE_PATTERN);
        for ok in [
            "cluster-autoscaler:v1.36.1",
            "mirror.example:5000/autoscaling/cluster-autoscaler:v1.36.1",
            "cluster-autoscaler@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a/b:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image.is_match(ok), "{ok}");
        }
        for bad in [
            "cluster-autoscaler",
            "mirror.example:5000/autoscaling/cluster-autoscaler",
            "a/b:",
            "a b:v1",
            "a@sha256:xyz",
        ] {
            assert!(!image.is_match(bad), "{bad}");
        }
        let expander = re(&expander_pattern());
        for ok in [
            "priority",
            "priority,least-waste",
            "price,random",
            "least-nodes",
        ] {
            assert!(expander.is_match(ok), "{ok}");
        }
        for bad in ["", "cheapest", "priority,", "grpc", "priority, random"] {
            assert!(!expander.is_match(bad), "{bad}");
        }
        let duration = re(DURATION_PATTERN);
        for ok in ["10m", "1h30m", "1.5h", "300ms", "0s"] {
            assert!(duration.is_match(ok), "{ok}");
        }
        for bad in ["10", "m", "10 m", "-1m", "1d"] {
            assert!(!duration.is_match(bad), "{bad}");
        }
        let arg = re(EXTRA_ARG_PATTERN);
        assert!(arg.is_match("--scan-interval=5s"));
        assert!(arg.is_match("--skip-nodes-with-local-storage"));
        assert!(!arg.is_match("-v=2"));
        assert!(!arg.is_match("5s"));
    }

    #[test]
    fn the_rules_name_every_reserved_flag_and_expander() {
        let rule = extra_args_rule();
        for f in RESERVED_FLAGS {
            assert!(rule.rule.contains(&format!("'--{f}'")), "{f}");
        }
        let rule = expander_rule();
        for e in EXPANDERS {
            assert!(rule.rule.contains(e), "{e}");
        }
    }
}
