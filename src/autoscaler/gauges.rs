//! Node-group gauges in `/metrics`, computed at scrape time from the externalgrpc server's watch
//! caches (the same [`Index`] the cluster-autoscaler is answered from, built unscoped), so they
//! need no hook in the RPC or reconcile paths and a group that stops being autoscaled or is
//! deleted disappears from the next scrape.
//!
//! Series (prefix `capow_node_group_`), each labelled `node_group` (the node group id,
//! `<Kind>/<namespace>/<name>`, as cluster-autoscaler logs it) and `cluster`
//! (`<namespace>/<name>`):
//!
//! | name | value |
//! |---|---|
//! | `min_size` | the min-size annotation (0 when absent) |
//! | `max_size` | the max-size annotation |
//! | `target_size` | `spec.replicas` of the MachineDeployment/MachineSet |
//! | `current_size` | Machines the group has, in any state (cluster-autoscaler's `Nodes()`) |
//! | `instances{state}` | those Machines by state: `running`, `creating`, `failed` (creating, with an error the autoscaler sees), `deleting` |
//! | `last_error_class` | cluster-autoscaler's `InstanceErrorClass` of the group's most recent failed creation (by the `Ready` condition's `lastTransitionTime`): 1 out of resources (quota, no valid host), 99 other, 0 none |
//!
//! Cardinality: nine series per autoscaled group (a MachineDeployment, or a MachineSet no
//! MachineDeployment owns, whose infrastructure template is an `OpenStackWorkerMachineTemplate`
//! and whose max-size annotation is set); groups of other providers and groups without the
//! annotation have none.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::index::{Index, InstanceState, NodeGroup, Snapshot};
use super::service::Snapshots;
use crate::api::conditions::READY;
use crate::api::machine::OpenStackWorkerMachine;

/// Instance states of `capow_node_group_instances`, in output order.
pub const STATES: [&str; 4] = ["running", "creating", "failed", "deleting"];

/// The numbers of one node group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupGauges {
    /// Node group id (`<Kind>/<namespace>/<name>`).
    pub node_group: String,
    /// `<namespace>/<name>` of its Cluster.
    pub cluster: String,
    /// Minimum size.
    pub min_size: i64,
    /// Maximum size.
    pub max_size: i64,
    /// Target size (`spec.replicas`).
    pub target_size: i64,
    /// Machines of the group in any state.
    pub current_size: i64,
    /// Machines by state, in the order of [`STATES`].
    pub instances: [i64; 4],
    /// `InstanceErrorClass` of the most recent failed creation; 0 when none fails.
    pub last_error_class: i64,
}

/// The gauges of every group of `index`, built from `snapshot` (which supplies the failure
/// times of failed instances).
pub fn compute(index: &Index, snapshot: &Snapshot) -> Vec<GroupGauges> {
    let by_name: HashMap<(String, String), &OpenStackWorkerMachine> = snapshot
        .infra_machines
        .iter()
        .map(|m| {
            (
                (m.namespace().unwrap_or_default(), m.name_any()),
                m.as_ref(),
            )
        })
        .collect();
    // OpenStackWorkerMachine by the (namespace, name) of the Machine whose infrastructureRef
    // names it.
    let infra: HashMap<(String, String), &OpenStackWorkerMachine> = snapshot
        .machines
        .iter()
        .filter_map(|m| {
            let ns = m.namespace().unwrap_or_default();
            let im = by_name.get(&(ns.clone(), m.spec.infrastructure_ref.name.clone()))?;
            Some(((ns, m.name_any()), *im))
        })
        .collect();
    index
        .groups()
        .map(|g| {
            group_gauges(g, |machine| {
                infra.get(&(g.namespace.clone(), machine.into())).copied()
            })
        })
        .collect()
}

/// When the `Ready` condition of `m` last changed.
fn failed_at(m: &OpenStackWorkerMachine) -> Option<jiff::Timestamp> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.last_transition_time.0)
}

fn group_gauges<'a>(
    g: &NodeGroup,
    infra_of: impl Fn(&str) -> Option<&'a OpenStackWorkerMachine>,
) -> GroupGauges {
    let mut instances = [0i64; 4];
    let mut last: Option<(Option<jiff::Timestamp>, i32)> = None;
    for i in &g.instances {
        let slot = match (i.state, &i.error) {
            (InstanceState::Running, _) => 0,
            (InstanceState::Creating, None) => 1,
            (InstanceState::Creating, Some(e)) => {
                let at = infra_of(&i.machine).and_then(failed_at);
                if last.as_ref().is_none_or(|(t, _)| at > *t) {
                    last = Some((at, e.class));
                }
                2
            }
            (InstanceState::Deleting, _) => 3,
        };
        instances[slot] += 1;
    }
    GroupGauges {
        node_group: g.id.clone(),
        cluster: format!("{}/{}", g.cluster.namespace, g.cluster.name),
        min_size: g.min_size.into(),
        max_size: g.max_size.into(),
        target_size: g.target_size.into(),
        current_size: i64::try_from(g.instances.len()).unwrap_or(i64::MAX),
        instances,
        last_error_class: last.map_or(0, |(_, class)| class.into()),
    }
}

/// A gauge with the group labels only: name, help, value.
type Plain = (&'static str, &'static str, fn(&GroupGauges) -> i64);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    node_group: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    node_group: String,
    cluster: String,
    state: &'static str,
}

/// The scrape-time collector of the node-group gauges. Registered before the externalgrpc
/// server starts; reports nothing until [`NodeGroupCollector::attach`] gives it the watch
/// caches (and nothing at all when the server is off: `--autoscaler-address` unset).
#[derive(Clone, Default)]
pub struct NodeGroupCollector {
    sources: Arc<OnceLock<Arc<dyn Snapshots>>>,
}

impl std::fmt::Debug for NodeGroupCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeGroupCollector")
            .field("attached", &self.sources.get().is_some())
            .finish()
    }
}

impl NodeGroupCollector {
    /// Reads the groups from `sources` from now on (the first call wins).
    pub fn attach(&self, sources: Arc<dyn Snapshots>) {
        let _ = self.sources.set(sources);
    }
}

/// Encodes `family` as a gauge named `name`.
fn encode_family<S>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Family<S, Gauge>,
) -> Result<(), std::fmt::Error>
where
    S: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
    family.encode(metric)
}

impl Collector for NodeGroupCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sources) = self.sources.get() else {
            return Ok(());
        };
        let snapshot = sources.snapshot();
        let index = Index::build(&snapshot, None);
        let groups = compute(&index, &snapshot);
        let plain: [Plain; 5] = [
            (
                "node_group_min_size",
                "Minimum size of the node group (its min-size annotation)",
                |g| g.min_size,
            ),
            (
                "node_group_max_size",
                "Maximum size of the node group (its max-size annotation)",
                |g| g.max_size,
            ),
            (
                "node_group_target_size",
                "Target size of the node group (spec.replicas)",
                |g| g.target_size,
            ),
            (
                "node_group_current_size",
                "Machines of the node group in any state",
                |g| g.current_size,
            ),
            (
                "node_group_last_error_class",
                "cluster-autoscaler InstanceErrorClass of the node group's most recent failed creation: 1 out of resources, 99 other, 0 none",
                |g| g.last_error_class,
            ),
        ];
        for (name, help, value) in plain {
            let family = Family::<GroupLabels, Gauge>::default();
            for g in &groups {
                family
                    .get_or_create(&GroupLabels {
                        node_group: g.node_group.clone(),
                        cluster: g.cluster.clone(),
                    })
                    .set(value(g));
            }
            encode_family(&mut encoder, name, help, &family)?;
        }
        let family = Family::<StateLabels, Gauge>::default();
        for g in &groups {
            for (state, n) in STATES.iter().zip(g.instances) {
                family
                    .get_or_create(&StateLabels {
                        node_group: g.node_group.clone(),
                        cluster: g.cluster.clone(),
                        state,
                    })
                    .set(n);
            }
        }
        encode_family(
            &mut encoder,
            "node_group_instances",
            "Machines of the node group by state: running, creating, failed (creating with an error), deleting",
            &family,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::index::error_class;
    use crate::autoscaler::index::tests::{infra, machine, md};
    use serde_json::json;

    fn failed(name: &str, message: &str, at: &str) -> Arc<OpenStackWorkerMachine> {
        let mut m = infra(
            "ns",
            name,
            None,
            None,
            Some(("InstanceCreateFailed", message)),
        );
        if let Some(s) = Arc::make_mut(&mut m).status.as_mut() {
            s.conditions[0].last_transition_time =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at.parse().unwrap());
        }
        m
    }

    fn snapshot(quota_at: &str, other_at: &str) -> Snapshot {
        let scaling = json!({
            "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": "1",
            "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": "6",
        });
        let mut deleting = machine("ns", "m-deleting", "md-0", Some("openstack:///u-4"), true);
        Arc::make_mut(&mut deleting).metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        Snapshot {
            machine_deployments: vec![
                md("ns", "md-0", 5, scaling),
                md("ns", "not-autoscaled", 1, json!({})),
            ],
            machines: vec![
                machine("ns", "m-running", "md-0", Some("openstack:///u-1"), true),
                machine("ns", "m-building", "md-0", None, false),
                machine("ns", "m-quota", "md-0", None, false),
                machine("ns", "m-other", "md-0", None, false),
                deleting,
                machine("ns", "x", "not-autoscaled", Some("openstack:///u-9"), true),
            ],
            infra_machines: vec![
                infra("ns", "m-running", Some("u-1"), Some("ACTIVE"), None),
                infra("ns", "m-building", Some("u-2"), Some("BUILD"), None),
                failed(
                    "m-quota",
                    "compute server_create failed with HTTP 403 Forbidden: Quota exceeded for cores",
                    quota_at,
                ),
                failed(
                    "m-other",
                    "compute server_create failed with HTTP 400: bad image",
                    other_at,
                ),
            ],
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_group_shows_its_sizes_and_instances_by_state() {
        let s = snapshot("2026-01-01T00:00:10Z", "2026-01-01T00:00:05Z");
        let groups = compute(&Index::build(&s, None), &s);
        assert_eq!(
            groups,
            [GroupGauges {
                node_group: "MachineDeployment/ns/md-0".into(),
                cluster: "ns/c1".into(),
                min_size: 1,
                max_size: 6,
                target_size: 5,
                current_size: 5,
                // running, creating, failed, deleting
                instances: [1, 1, 2, 1],
                last_error_class: error_class::OUT_OF_RESOURCES.into(),
            }],
            "the group that is not autoscaled has no gauges"
        );
    }

    #[test]
    fn the_last_error_class_is_that_of_the_most_recent_failure() {
        let s = snapshot("2026-01-01T00:00:05Z", "2026-01-01T00:00:10Z");
        let groups = compute(&Index::build(&s, None), &s);
        assert_eq!(groups[0].last_error_class, i64::from(error_class::OTHER));
        // No failure: 0.
        let mut s = s;
        s.infra_machines.truncate(2);
        s.machines
            .retain(|m| !["m-quota", "m-other"].contains(&m.name_any().as_str()));
        let groups = compute(&Index::build(&s, None), &s);
        assert_eq!(groups[0].last_error_class, 0);
        assert_eq!(groups[0].instances, [1, 1, 0, 1]);
    }

    struct Fixed(Snapshot);

    impl Snapshots for Fixed {
        fn snapshot(&self) -> Snapshot {
            self.0.clone()
        }
        fn cluster_uid(&self, _: &str, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn the_collector_writes_the_gauges_once_attached() {
        let collector = NodeGroupCollector::default();
        let mut registry = prometheus_client::registry::Registry::with_prefix("capow");
        registry.register_collector(Box::new(collector.clone()));
        let text = |registry: &prometheus_client::registry::Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
            out
        };
        assert!(
            !text(&registry).contains("capow_node_group"),
            "nothing before attach"
        );
        collector.attach(Arc::new(Fixed(snapshot(
            "2026-01-01T00:00:10Z",
            "2026-01-01T00:00:05Z",
        ))));
        let out = text(&registry);
        let labels = r#"node_group="MachineDeployment/ns/md-0",cluster="ns/c1""#;
        for line in [
            format!("capow_node_group_min_size{{{labels}}} 1"),
            format!("capow_node_group_max_size{{{labels}}} 6"),
            format!("capow_node_group_target_size{{{labels}}} 5"),
            format!("capow_node_group_current_size{{{labels}}} 5"),
            format!("capow_node_group_last_error_class{{{labels}}} 1"),
            format!("capow_node_group_instances{{{labels},state=\"running\"}} 1"),
            format!("capow_node_group_instances{{{labels},state=\"failed\"}} 2"),
            "# TYPE capow_node_group_instances gauge".to_owned(),
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }
}
