//! The cluster-autoscaler's size and options annotations of a node group as capow reads them:
//! the min/max size rules of the in-tree clusterapi provider, and the annotations a group takes
//! from its OpenStackWorkerMachineTemplate. Pure logic shared by the externalgrpc index
//! (`crate::autoscaler::index`) and the node lifecycle controller (min size of a replacement).

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::machine_template::OpenStackWorkerMachineTemplate;
use crate::capi;

/// What the group's size annotations allow ([`size_limits`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeLimits {
    /// No max-size annotation, or a max of 0: not a node group.
    NotAutoscaled,
    /// Valid limits.
    Valid {
        /// Minimum (0 when the annotation is absent).
        min: i32,
        /// Maximum (> 0).
        max: i32,
    },
    /// At least one limit is unusable: the group is frozen at its current size. Each entry is
    /// `(annotation, value, rule)`.
    Invalid(Vec<(String, String, String)>),
}

/// Rule of both size annotations.
pub const SIZE_RULE: &str = "it must be a whole number ≥ 0";
/// What a frozen group does, as a sentence part of `crate::autoscaler::index::AnnotationProblem::consequence`.
pub const FROZEN_CONSEQUENCE: &str = "the node group is served with min = max = its current replicas, so the cluster-autoscaler neither scales it up nor down, until the value is fixed";

fn parse_size(value: &str) -> Option<i32> {
    value.trim().parse::<i32>().ok().filter(|v| *v >= 0)
}

/// The size limits of a group with (effective) `annotations`, with the in-tree clusterapi
/// provider's rules (cluster-autoscaler-1.36.1 `cloudprovider/clusterapi/clusterapi_utils.go`,
/// `parseScalingBounds`): both values are whole numbers ≥ 0 and max ≥ min; a missing min is 0;
/// a missing max, or a max of 0, means the object is not autoscaled.
///
/// Where the in-tree provider drops a group with an invalid limit, and capow used to read an
/// invalid min as 0 (so a `"1.0"` meant to keep one node let CA delete the last one), an
/// invalid limit here never widens what CA may do: the group is [`SizeLimits::Invalid`], which
/// the index serves *frozen* (min = max = current replicas, writes refused) so that CA neither
/// scales it up nor down while it still sees its nodes as members of a group.
pub fn size_limits(annotations: &BTreeMap<String, String>) -> SizeLimits {
    let Some(max_raw) = annotations.get(capi::NODE_GROUP_MAX_SIZE_ANNOTATION) else {
        return SizeLimits::NotAutoscaled;
    };
    let min_raw = annotations.get(capi::NODE_GROUP_MIN_SIZE_ANNOTATION);
    let max = parse_size(max_raw);
    let min = min_raw.map(|v| parse_size(v));
    if max == Some(0) {
        return SizeLimits::NotAutoscaled;
    }
    let mut problems = Vec::new();
    if max.is_none() {
        problems.push((
            capi::NODE_GROUP_MAX_SIZE_ANNOTATION.to_owned(),
            max_raw.clone(),
            SIZE_RULE.to_owned(),
        ));
    }
    if let (Some(raw), Some(None)) = (min_raw, min) {
        problems.push((
            capi::NODE_GROUP_MIN_SIZE_ANNOTATION.to_owned(),
            raw.clone(),
            SIZE_RULE.to_owned(),
        ));
    }
    if !problems.is_empty() {
        return SizeLimits::Invalid(problems);
    }
    let min = min.flatten().unwrap_or(0);
    let max = max.unwrap_or(0);
    if min > max {
        return SizeLimits::Invalid(vec![(
            capi::NODE_GROUP_MAX_SIZE_ANNOTATION.to_owned(),
            max_raw.clone(),
            format!(
                "it must not be below {} ({min})",
                capi::NODE_GROUP_MIN_SIZE_ANNOTATION
            ),
        )]);
    }
    SizeLimits::Valid { min, max }
}

/// Prefixes of the autoscaling annotations capow also reads from the group's
/// OpenStackWorkerMachineTemplate (`spec.template.metadata.annotations`, then
/// `metadata.annotations`): ClusterClass patches may only change `/spec/...` of a template and
/// nothing of a MachineDeployment, so the openstack-hcp ClusterClass's autoscaling variables
/// land in the template's `spec.template.metadata`.
pub const TEMPLATE_ANNOTATION_PREFIXES: &[&str] = &[
    "cluster.x-k8s.io/cluster-api-autoscaler-node-group-",
    "cluster.x-k8s.io/autoscaling-options-",
    "capacity.cluster-autoscaler.kubernetes.io/",
];

/// The group's annotations: those of the MachineDeployment/MachineSet, plus the autoscaling
/// annotations ([`TEMPLATE_ANNOTATION_PREFIXES`]) of its infrastructure template that the
/// MachineDeployment does not set itself (the MachineDeployment wins, then the template's
/// `spec.template.metadata`, then its `metadata`).
pub fn effective_annotations(
    own: &BTreeMap<String, String>,
    template: Option<&OpenStackWorkerMachineTemplate>,
) -> BTreeMap<String, String> {
    let mut out = own.clone();
    let from_template = template.into_iter().flat_map(|t| {
        let inner = t.spec.template.metadata.as_ref().map(|m| &m.annotations);
        inner.into_iter().flatten().chain(t.annotations())
    });
    for (k, v) in from_template {
        if TEMPLATE_ANNOTATION_PREFIXES
            .iter()
            .any(|p| k.starts_with(p))
        {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    out
}
