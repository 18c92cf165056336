//! Prices for cluster-autoscaler's `price` expander (`PricingNodePrice`, `PricingPodPrice`).
//!
//! Units: prices are per hour in whatever currency the flavors' `capow:price-per-hour` extra
//! spec (or the template's `capow.infrastructure.cluster.x-k8s.io/price-per-hour` annotation)
//! uses, as resolved into `OpenStackWorkerMachineTemplate.status.resolved.pricePerHour`; a
//! request's period comes from its start and end timestamps (seconds and nanoseconds since the
//! Unix epoch) and the answer is the hourly price × the period in hours.
//!
//! How CA asks (cluster-autoscaler-1.36.1 `expander/price/price.go`): for every expansion
//! option it prices the group's *template node*, which CA built from `NodeGroupTemplateNodeInfo`
//! and renamed `template-node-for-<group id>-<random>` without a providerID
//! (`simulator/node_info_utils.go`, `SanitizedTemplateNodeInfoFromNodeInfo`; labels and
//! annotations are deep-copied, so they survive), and it prices the pending pods and a
//! stabilisation pod with `PodPrice`. An error on any pod drops the option, and an error on
//! the stabilisation pod is logged as "Failed to get price for stabilization pod"; with
//! `PodPrice` unimplemented every option was filtered out and nothing scaled.
//!
//! - Node price: the node's group is found by providerID (real nodes, and templates CA made
//!   from a real node), else by the [`NODE_GROUP_ANNOTATION`] capow puts on its template nodes,
//!   else by the template name's prefix ([`group_of_node`]).
//! - Pod price: like CA's own cloud pricing models (e.g. GCE's, cluster-autoscaler
//!   `cloudprovider/gce/gce_price_model.go`, `PodPrice`: cpu request × price per CPU + memory
//!   request × price per GB), the pod's effective cpu and memory requests ([`pod_requests`])
//!   times per-vCPU and per-GiB rates. capow's flavors only have whole-machine prices, so the
//!   rates are derived ([`Rates::of`]): a group's hourly price is split over its allocatable
//!   vCPUs and GiB with one vCPU weighing [`VCPU_PRICE_IN_GIB`] GiB, and the cheapest group's
//!   rates are used: the price of the pod on the best-matching machine, as CA's interface asks
//!   ("theoretical minimum price of running a pod ... on a perfectly matching machine").
//!   Extended resources (GPUs) are not priced: CA's price expander already sets GPU groups
//!   apart by their node price and its unfitness override.

use super::index::{Index, NodeGroup};
use super::node::{NODE_GROUP_ANNOTATION, TemplateOptions, template_node};
use super::proto::core_v1::{Container, Pod};
use super::proto::externalgrpc::ExternalGrpcNode;
use super::proto::meta_v1;
use super::quantity;

/// How many GiB of memory cost as much as one vCPU: 7.46, the ratio of the per-vCPU and the
/// per-GB hourly prices CA's GCE pricing model uses for machines it has no list price for
/// (0.033174 and 0.004446; cluster-autoscaler `cloudprovider/gce/gce_price_model.go`).
pub const VCPU_PRICE_IN_GIB: f64 = 7.46;
/// Prefix of the names CA gives template nodes (`template-node-for-<group id>-<random>`).
pub const TEMPLATE_NODE_PREFIX: &str = "template-node-for-";

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The hourly price of one machine of `group`, if its template resolved one.
pub fn price_per_hour(group: &NodeGroup) -> Option<f64> {
    group
        .template
        .as_ref()?
        .status
        .as_ref()?
        .resolved
        .as_ref()?
        .price_per_hour
        .as_ref()?
        .trim()
        .parse()
        .ok()
        .filter(|p: &f64| p.is_finite() && *p >= 0.0)
}

/// Hours between `start` and `end` (new wire: `google.protobuf.Timestamp`, CA ≥ 1.34.2) or
/// `old_start` and `old_end` (old wire: `metav1.Time`); 0 when the period is empty or missing.
pub fn hours(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
    old_start: Option<&meta_v1::Time>,
    old_end: Option<&meta_v1::Time>,
) -> f64 {
    let secs = |new: Option<&prost_types::Timestamp>, old: Option<&meta_v1::Time>| {
        new.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
            .or_else(|| old.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9))
    };
    match (secs(start, old_start), secs(end, old_end)) {
        (Some(s), Some(e)) if e > s => (e - s) / 3600.0,
        _ => 0.0,
    }
}

/// The node group `node` belongs to or is the template of: by providerID; else by capow's
/// [`NODE_GROUP_ANNOTATION`] (on every template node capow serves, kept by CA's
/// sanitisation); else by the name CA gives template nodes, `template-node-for-<id>-<suffix>`
/// (at least one `-<suffix>` is stripped, then the longest prefix naming a group wins).
pub fn group_of_node<'a>(index: &'a Index, node: &ExternalGrpcNode) -> Option<&'a NodeGroup> {
    if let Some(g) = index.group_of_instance(&node.provider_id) {
        return Some(g);
    }
    if let Some(g) = node
        .annotations
        .get(NODE_GROUP_ANNOTATION)
        .and_then(|id| index.group(id))
    {
        return Some(g);
    }
    let mut rest = node.name.strip_prefix(TEMPLATE_NODE_PREFIX)?;
    while let Some((head, _)) = rest.rsplit_once('-') {
        if let Some(g) = index.group(head) {
            return Some(g);
        }
        rest = head;
    }
    None
}

/// Per-hour prices of one vCPU and one GiB of memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// The group the rates come from.
    pub group: String,
    /// Price of one vCPU for one hour.
    pub per_vcpu_hour: f64,
    /// Price of one GiB of memory for one hour.
    pub per_gib_hour: f64,
}

impl Rates {
    /// The rates of `group`: its hourly price over its allocatable resources (template node,
    /// so capacity annotations and reservations count), one vCPU weighing
    /// [`VCPU_PRICE_IN_GIB`] GiB: `per_gib = price / (vcpus × 7.46 + GiB)`,
    /// `per_vcpu = 7.46 × per_gib`. `None` without a price or a template.
    pub fn of(group: &NodeGroup) -> Option<Rates> {
        let price = price_per_hour(group)?;
        let node = template_node(group, &TemplateOptions::default()).ok()?;
        let allocatable = &node.status.as_ref()?.allocatable;
        let amount = |k: &str| {
            allocatable
                .get(k)
                .and_then(|q| quantity::parse(&q.string).ok())
                .map(|m| m.0 as f64 / 1000.0)
        };
        let vcpus = amount("cpu")?;
        let gib = amount("memory")? / GIB;
        let units = vcpus * VCPU_PRICE_IN_GIB + gib;
        (units > 0.0).then(|| Rates {
            group: group.id.clone(),
            per_vcpu_hour: price / units * VCPU_PRICE_IN_GIB,
            per_gib_hour: price / units,
        })
    }

    /// The cheapest rates among `groups` (ties: the first group id).
    pub fn cheapest<'a>(groups: impl Iterator<Item = &'a NodeGroup>) -> Option<Rates> {
        groups
            .filter_map(Rates::of)
            .fold(None, |best: Option<Rates>, r| match best {
                Some(b) if b.per_gib_hour <= r.per_gib_hour => Some(b),
                _ => Some(r),
            })
    }
}

/// Effective requests of a pod: `(vCPUs, GiB of memory)`, as the scheduler counts them
/// (k8s.io/component-helpers v0.36 `resource/helpers.go`, `PodRequests`): the containers' sum;
/// sidecars (init containers with `restartPolicy: Always`) add to it; an ordinary init
/// container needs its own requests plus the sidecars started before it, and the pod needs the
/// largest of those if it is more; pod-level `spec.resources.requests` replace the cpu and
/// memory sums; `spec.overhead` is added. Unparsable quantities count as 0.
pub fn pod_requests(pod: &Pod) -> (f64, f64) {
    let req = |c: &Container, resource: &str| -> f64 {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.get(resource))
            .and_then(|q| quantity::parse(&q.string).ok())
            .map_or(0.0, |m| m.0 as f64 / 1000.0)
    };
    let Some(spec) = pod.spec.as_ref() else {
        return (0.0, 0.0);
    };
    let mut out = [0.0f64; 2];
    for (i, resource) in ["cpu", "memory"].into_iter().enumerate() {
        let mut sum: f64 = spec.containers.iter().map(|c| req(c, resource)).sum();
        let mut sidecars = 0.0;
        let mut init_max = 0.0f64;
        for c in &spec.init_containers {
            let r = req(c, resource);
            let needs = if c.restart_policy == "Always" {
                sum += r;
                sidecars += r;
                sidecars
            } else {
                r + sidecars
            };
            init_max = init_max.max(needs);
        }
        let mut total = sum.max(init_max);
        if let Some(q) = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.get(resource))
            .and_then(|q| quantity::parse(&q.string).ok())
        {
            total = q.0 as f64 / 1000.0;
        }
        total += spec
            .overhead
            .get(resource)
            .and_then(|q| quantity::parse(&q.string).ok())
            .map_or(0.0, |m| m.0 as f64 / 1000.0);
        out[i] = total;
    }
    (out[0], out[1] / GIB)
}

/// The price of running `pod` for `hours` at `rates`.
pub fn pod_price(pod: &Pod, rates: &Rates, hours: f64) -> f64 {
    let (vcpus, gib) = pod_requests(pod);
    (vcpus * rates.per_vcpu_hour + gib * rates.per_gib_hour) * hours
}

/// The cheapest rates of the groups in `index` (cached in the index).
pub fn index_rates(index: &Index) -> Option<&Rates> {
    index.pod_rates()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::machine_template::OpenStackWorkerMachineTemplate;
    use crate::autoscaler::index::Snapshot;
    use crate::autoscaler::index::tests::md;
    use crate::autoscaler::proto::core_v1::{PodSpec, ResourceRequirements};
    use crate::autoscaler::proto::resource::Quantity;
    use serde_json::json;

    fn template(
        name: &str,
        cpu: &str,
        memory: &str,
        price: Option<&str>,
    ) -> Arc<OpenStackWorkerMachineTemplate> {
        let mut resolved = json!({"flavorName": "f"});
        if let Some(p) = price {
            resolved["pricePerHour"] = json!(p);
        }
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "OpenStackWorkerMachineTemplate",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"template": {"spec": {"flavor": {"id": "1"}, "image": {"id": "i"}}}},
                "status": {"capacity": {"cpu": cpu, "memory": memory}, "resolved": resolved}
            }))
            .unwrap(),
        )
    }

    /// Groups `small` (2 vCPU, 4 GiB, 0.10/h), `large` (8 vCPU, 32 GiB, 0.30/h: cheaper per
    /// unit), `free` (no price) and `md-0` whose name prefixes `md-0-1`.
    fn index() -> Index {
        let max = json!({"cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "5"});
        let s = Snapshot {
            machine_deployments: ["small", "large", "free", "md-0", "md-0-1"]
                .iter()
                .map(|n| md("ns", n, 0, max.clone()))
                .collect(),
            templates: vec![
                template("small-t", "2", "4Gi", Some("0.10")),
                template("large-t", "8", "32Gi", Some("0.30")),
                template("free-t", "8", "32Gi", None),
                template("md-0-t", "2", "4Gi", Some("0.10")),
                template("md-0-1-t", "2", "4Gi", Some("0.10")),
            ],
            ..Snapshot::default()
        };
        Index::build(&s, None)
    }

    fn node(name: &str, provider_id: &str, annotation: Option<&str>) -> ExternalGrpcNode {
        ExternalGrpcNode {
            provider_id: provider_id.into(),
            name: name.into(),
            annotations: annotation
                .map(|a| [(NODE_GROUP_ANNOTATION.to_owned(), a.to_owned())].into())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn template_nodes_are_priced_by_their_group() {
        let index = index();
        let id = |n: &ExternalGrpcNode| group_of_node(&index, n).map(|g| g.name.clone());
        // What CA 1.36.1 sends for capow's template: annotation kept, name replaced.
        assert_eq!(
            id(&node(
                "template-node-for-MachineDeployment/ns/large-5577006791947779410",
                "",
                Some("MachineDeployment/ns/large")
            ))
            .as_deref(),
            Some("large")
        );
        // Without the annotation, by the name: the random suffix is always stripped, then the
        // longest group id wins.
        let by_name = |n: &str| id(&node(n, "", None));
        assert_eq!(
            by_name("template-node-for-MachineDeployment/ns/md-0-1-8674665223082153551").as_deref(),
            Some("md-0-1")
        );
        assert_eq!(
            by_name("template-node-for-MachineDeployment/ns/md-0-8674665223082153551").as_deref(),
            Some("md-0")
        );
        assert_eq!(
            by_name("template-node-for-MachineDeployment/ns/md-0-1").as_deref(),
            Some("md-0"),
            "md-0 with suffix 1, not md-0-1 without a suffix"
        );
        assert_eq!(
            by_name("template-node-for-MachineDeployment/ns/md-0-1-2-3").as_deref(),
            Some("md-0-1"),
            "sanitised twice"
        );
        assert_eq!(
            by_name("template-node-for-MachineDeployment/ns/gone-1"),
            None
        );
        assert_eq!(by_name("worker-1"), None);
        assert_eq!(
            id(&node("x", "", Some("MachineDeployment/other/large"))),
            None,
            "an annotation naming a group outside the view"
        );
    }

    #[test]
    fn rates_come_from_the_cheapest_group_per_unit() {
        let index = index();
        let small = Rates::of(index.group("MachineDeployment/ns/small").unwrap()).unwrap();
        // allocatable: 2 vCPU, 4 GiB - 100 MiB eviction threshold.
        let units = 2.0 * VCPU_PRICE_IN_GIB + (4096.0 - 100.0) / 1024.0;
        assert!((small.per_gib_hour - 0.10 / units).abs() < 1e-12);
        assert!((small.per_vcpu_hour - 0.10 / units * VCPU_PRICE_IN_GIB).abs() < 1e-12);
        let best = index_rates(&index).unwrap();
        assert_eq!(best.group, "MachineDeployment/ns/large");
        assert!(Rates::of(index.group("MachineDeployment/ns/free").unwrap()).is_none());
        // A fully packed large machine costs its price.
        let large = index.group("MachineDeployment/ns/large").unwrap();
        let alloc_gib = (32.0 * 1024.0 - 100.0) / 1024.0;
        let full = 8.0 * best.per_vcpu_hour + alloc_gib * best.per_gib_hour;
        assert!((full - price_per_hour(large).unwrap()).abs() < 1e-12);
    }

    fn q(s: &str) -> Quantity {
        Quantity { string: s.into() }
    }

    fn container(cpu: &str, memory: &str, restart: &str) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: [("cpu".into(), q(cpu)), ("memory".into(), q(memory))].into(),
                ..Default::default()
            }),
            restart_policy: restart.into(),
        }
    }

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: None,
            spec: Some(spec),
        }
    }

    #[test]
    fn pod_requests_count_like_the_scheduler() {
        let cases: Vec<(&str, PodSpec, (f64, f64))> = vec![
            ("empty", PodSpec::default(), (0.0, 0.0)),
            (
                "containers add up",
                PodSpec {
                    containers: vec![container("500m", "1Gi", ""), container("1", "512Mi", "")],
                    ..Default::default()
                },
                (1.5, 1.5),
            ),
            (
                "a big init container sets the floor",
                PodSpec {
                    containers: vec![container("500m", "1Gi", "")],
                    init_containers: vec![container("2", "256Mi", "")],
                    ..Default::default()
                },
                (2.0, 1.0),
            ),
            (
                "sidecars run along",
                PodSpec {
                    containers: vec![container("500m", "1Gi", "")],
                    init_containers: vec![
                        container("250m", "1Gi", "Always"),
                        container("1", "1Gi", ""),
                    ],
                    ..Default::default()
                },
                (1.25, 2.0),
            ),
            (
                "pod-level requests and overhead",
                PodSpec {
                    containers: vec![container("500m", "1Gi", "")],
                    resources: Some(ResourceRequirements {
                        requests: [("cpu".into(), q("3"))].into(),
                        ..Default::default()
                    }),
                    overhead: [("memory".into(), q("1Gi"))].into(),
                    ..Default::default()
                },
                (3.0, 2.0),
            ),
        ];
        for (what, spec, want) in cases {
            assert_eq!(pod_requests(&pod(spec)), want, "{what}");
        }
    }

    #[test]
    fn pod_price_scales_with_requests_and_hours() {
        let rates = Rates {
            group: "g".into(),
            per_vcpu_hour: 0.02,
            per_gib_hour: 0.005,
        };
        // CA's stabilisation pod: 500m, 500 MiB (expander/price/price.go).
        let p = pod(PodSpec {
            containers: vec![container("500m", "500Mi", "")],
            ..Default::default()
        });
        let want = 0.5 * 0.02 + (500.0 / 1024.0) * 0.005;
        assert!((pod_price(&p, &rates, 1.0) - want).abs() < 1e-12);
        assert!((pod_price(&p, &rates, 2.5) - 2.5 * want).abs() < 1e-12);
        let t = |s: i64| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        assert_eq!(hours(Some(&t(0)), Some(&t(5400)), None, None), 1.5);
        assert_eq!(hours(Some(&t(10)), Some(&t(10)), None, None), 0.0);
    }
}
