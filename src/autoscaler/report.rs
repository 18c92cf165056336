//! Tells people about autoscaling annotations capow cannot use ([`AnnotationProblem`]s found
//! by the index): a Warning event on the node group's MachineDeployment/MachineSet, a log line
//! and the gauge `capow_autoscaler_invalid_annotations{annotation}`.
//!
//! Each bad value yields one event series: problems are keyed by (object, annotation, value,
//! rule), and a key is published when it is first seen and then again every
//! [`REPUBLISH_INTERVAL`] while it persists, through a kube-runtime `Recorder` of its own.
//! kube-runtime's recorder folds events with the same object, reason and action into one series
//! for 6 minutes whatever their note says (kube-runtime 5 `events.rs`, `EventKey`), so one
//! shared recorder would count a second bad annotation, or a new bad value, into the first
//! one's series under the old message; a recorder per key keeps every value's message and makes
//! the repeats of one value a series (`series.count`) on a single Event object. A fixed value
//! drops its key; if it turns bad again, it is reported again.
//!
//! The index is rebuilt per caller scope (one cluster per cluster-autoscaler), so each report
//! replaces the keys of that scope only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::index::{AnnotationProblem, ClusterKey};

/// How often a persisting problem is published again (5 min: within kube-runtime's 6-minute
/// series cache, so the repeats extend one series and the event does not expire from the API
/// server's event TTL while the value is still bad).
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(300);
/// Event reason.
pub const REASON: &str = "InvalidAutoscalingAnnotation";
/// Event action.
pub const ACTION: &str = "ReadAutoscalingAnnotations";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnnotationLabels {
    annotation: String,
}

/// `capow_autoscaler_invalid_annotations{annotation}`: how many MachineDeployments/MachineSets
/// currently have an unusable value of that annotation (as of the last `Refresh` of their
/// cluster's autoscaler).
#[derive(Clone, Debug, Default)]
pub struct InvalidAnnotationMetrics {
    current: Family<AnnotationLabels, Gauge>,
}

impl InvalidAnnotationMetrics {
    /// Registers `invalid_annotations` in `registry` (the manager passes the `autoscaler`
    /// sub-registry of `capow`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "invalid_annotations",
            "Node groups with an unusable autoscaling annotation value, by annotation",
            self.current.clone(),
        );
    }

    /// Current value for `annotation` (tests).
    pub fn get(&self, annotation: &str) -> i64 {
        self.current
            .get_or_create(&AnnotationLabels {
                annotation: annotation.to_owned(),
            })
            .get()
    }
}

/// Identity of one bad value: the object, the annotation, the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    group: String,
    uid: Option<String>,
    annotation: String,
    value: String,
    rule: String,
}

impl Key {
    fn of(p: &AnnotationProblem) -> Key {
        Key {
            group: p.group.clone(),
            uid: p.uid.clone(),
            annotation: p.annotation.clone(),
            value: p.value.clone(),
            rule: p.rule.clone(),
        }
    }
}

#[derive(Debug)]
struct Seen {
    problem: AnnotationProblem,
    published: Instant,
}

/// The pure part: which problems are current, and which are due for publishing.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashMap<Key, Seen>,
}

impl Dedup {
    /// Replaces the problems of `scope` (`None`: every cluster) by `problems`, observed at
    /// `now`; returns those to publish now: new ones, and persisting ones last published
    /// [`REPUBLISH_INTERVAL`] ago or earlier.
    pub fn observe(
        &mut self,
        scope: Option<&ClusterKey>,
        problems: &[AnnotationProblem],
        now: Instant,
    ) -> Vec<AnnotationProblem> {
        let current: HashMap<Key, &AnnotationProblem> =
            problems.iter().map(|p| (Key::of(p), p)).collect();
        self.seen.retain(|k, s| {
            let in_scope = scope.is_none_or(|c| *c == s.problem.cluster);
            !in_scope || current.contains_key(k)
        });
        let mut due = Vec::new();
        for (key, p) in current {
            match self.seen.get_mut(&key) {
                Some(s) => {
                    if now.saturating_duration_since(s.published) >= REPUBLISH_INTERVAL {
                        s.published = now;
                        due.push(p.clone());
                    }
                }
                None => {
                    self.seen.insert(
                        key,
                        Seen {
                            problem: p.clone(),
                            published: now,
                        },
                    );
                    due.push(p.clone());
                }
            }
        }
        due.sort_by(|a, b| (&a.group, &a.annotation).cmp(&(&b.group, &b.annotation)));
        due
    }

    /// Current problems per annotation.
    pub fn counts(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for s in self.seen.values() {
            *out.entry(s.problem.annotation.clone()).or_insert(0) += 1;
        }
        out
    }
}

/// Publishes [`AnnotationProblem`]s as events and metrics (module docs).
pub struct AnnotationReporter {
    events: Option<(kube::Client, Reporter)>,
    metrics: InvalidAnnotationMetrics,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    dedup: Dedup,
    recorders: HashMap<Key, Recorder>,
    /// Annotations the gauge has a series for (reset to 0 when fixed).
    labelled: Vec<String>,
}

impl AnnotationReporter {
    /// A reporter publishing events with `client` as `reporter` (controller `capow`, instance
    /// the pod name), and counting into `metrics`.
    pub fn new(
        client: kube::Client,
        reporter: Reporter,
        metrics: InvalidAnnotationMetrics,
    ) -> Self {
        Self {
            events: Some((client, reporter)),
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    /// A reporter that only logs and counts (no events): tests and benchmarks.
    pub fn log_only(metrics: InvalidAnnotationMetrics) -> Self {
        Self {
            events: None,
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    /// Takes the problems of an index built for `scope`; publishes what is due in the
    /// background (needs a Tokio runtime for events; without one, only logs and metrics).
    pub fn observe(&self, scope: Option<&ClusterKey>, problems: &[AnnotationProblem]) {
        let mut state = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let due = state.dedup.observe(scope, problems, Instant::now());
        let counts = state.dedup.counts();
        for a in counts.keys() {
            if !state.labelled.contains(a) {
                state.labelled.push(a.clone());
            }
        }
        for a in &state.labelled {
            self.metrics
                .current
                .get_or_create(&AnnotationLabels {
                    annotation: a.clone(),
                })
                .set(counts.get(a).copied().unwrap_or(0));
        }
        let live: Vec<Key> = state.dedup.seen.keys().cloned().collect();
        state.recorders.retain(|k, _| live.contains(k));
        for p in due {
            let message = p.message();
            tracing::warn!(group = %p.group, annotation = %p.annotation, value = %p.value, "{message}");
            let Some((client, reporter)) = &self.events else {
                continue;
            };
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                continue;
            };
            let recorder = state
                .recorders
                .entry(Key::of(&p))
                .or_insert_with(|| Recorder::new(client.clone(), reporter.clone()))
                .clone();
            let reference = object_ref(&p);
            runtime.spawn(async move {
                let event = Event {
                    type_: EventType::Warning,
                    reason: REASON.to_owned(),
                    note: Some(truncate(message, 1024)),
                    action: ACTION.to_owned(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(error = %e, group = %p.group, "Failed to publish the invalid-annotation event");
                }
            });
        }
    }
}

fn object_ref(p: &AnnotationProblem) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!("{}/{}", crate::capi::GROUP, crate::capi::VERSION)),
        kind: Some(p.kind.as_str().to_owned()),
        namespace: Some(p.namespace.clone()),
        name: Some(p.name.clone()),
        uid: p.uid.clone(),
        ..Default::default()
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::index::GroupKind;

    fn cluster(name: &str) -> ClusterKey {
        ClusterKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn problem(
        cluster_name: &str,
        group: &str,
        annotation: &str,
        value: &str,
    ) -> AnnotationProblem {
        AnnotationProblem {
            group: format!("MachineDeployment/ns/{group}"),
            kind: GroupKind::MachineDeployment,
            namespace: "ns".into(),
            name: group.into(),
            uid: Some(format!("uid-{group}")),
            cluster: cluster(cluster_name),
            source: format!("MachineDeployment ns/{group}"),
            annotation: annotation.into(),
            value: value.into(),
            rule: "it must be a whole number ≥ 0".into(),
            consequence: "frozen".into(),
        }
    }

    const MIN: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size";
    const MAX: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size";

    fn values(v: &[AnnotationProblem]) -> Vec<&str> {
        v.iter().map(|p| p.value.as_str()).collect()
    }

    #[test]
    fn one_publication_per_bad_value_then_one_per_interval() {
        let mut d = Dedup::default();
        let t0 = Instant::now();
        let c1 = cluster("c1");
        let bad = vec![
            problem("c1", "md-0", MIN, "1.0"),
            problem("c1", "md-0", MAX, "x"),
        ];
        assert_eq!(
            values(&d.observe(Some(&c1), &bad, t0)),
            ["x", "1.0"],
            "max-size sorts first"
        );
        // Every Refresh (10 s apart) sees the same values: nothing new to say.
        for i in 1..30 {
            let at = t0 + Duration::from_secs(10 * i);
            assert!(d.observe(Some(&c1), &bad, at).is_empty());
        }
        // The series continues every interval while the value stays bad.
        let later = t0 + REPUBLISH_INTERVAL;
        assert_eq!(d.observe(Some(&c1), &bad, later).len(), 2);
        assert!(
            d.observe(Some(&c1), &bad, later + Duration::from_secs(10))
                .is_empty()
        );
        assert_eq!(
            d.counts(),
            BTreeMap::from([(MAX.to_owned(), 1), (MIN.to_owned(), 1)])
        );
    }

    #[test]
    fn a_new_value_is_a_new_report_and_a_fixed_one_is_forgotten() {
        let mut d = Dedup::default();
        let t = Instant::now();
        let c1 = cluster("c1");
        d.observe(Some(&c1), &[problem("c1", "md-0", MIN, "1.0")], t);
        assert_eq!(
            values(&d.observe(Some(&c1), &[problem("c1", "md-0", MIN, "-1")], t)),
            ["-1"]
        );
        assert_eq!(d.counts(), BTreeMap::from([(MIN.to_owned(), 1)]));
        assert!(d.observe(Some(&c1), &[], t).is_empty());
        assert!(d.counts().is_empty(), "fixed");
        // Broken again with an old value: reported again.
        assert_eq!(
            values(&d.observe(Some(&c1), &[problem("c1", "md-0", MIN, "1.0")], t)),
            ["1.0"]
        );
    }

    #[test]
    fn a_scoped_report_keeps_other_clusters_problems() {
        let mut d = Dedup::default();
        let t = Instant::now();
        d.observe(Some(&cluster("c1")), &[problem("c1", "a", MIN, "x")], t);
        d.observe(Some(&cluster("c2")), &[problem("c2", "b", MIN, "y")], t);
        assert_eq!(d.counts(), BTreeMap::from([(MIN.to_owned(), 2)]));
        d.observe(Some(&cluster("c1")), &[], t);
        assert_eq!(
            d.counts(),
            BTreeMap::from([(MIN.to_owned(), 1)]),
            "c2's stays"
        );
        d.observe(None, &[], t);
        assert!(
            d.counts().is_empty(),
            "an unscoped report covers every cluster"
        );
    }

    #[test]
    fn the_gauge_counts_current_problems_and_returns_to_zero() {
        let metrics = InvalidAnnotationMetrics::default();
        let r = AnnotationReporter::log_only(metrics.clone());
        let c1 = cluster("c1");
        r.observe(
            Some(&c1),
            &[problem("c1", "a", MIN, "x"), problem("c1", "b", MIN, "1.5")],
        );
        assert_eq!(metrics.get(MIN), 2);
        r.observe(Some(&c1), &[problem("c1", "b", MIN, "1.5")]);
        assert_eq!(metrics.get(MIN), 1);
        r.observe(Some(&c1), &[]);
        assert_eq!(metrics.get(MIN), 0);
    }
}
