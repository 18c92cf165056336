//! The node lifecycle settings in force for one MachineDeployment (pure): the cluster's
//! `spec.nodeLifecycle` overridden by the MachineDeployment's annotations. Read by the node
//! lifecycle controller (`crate::controllers::lifecycle`) and by the autoscaler index (the
//! startup taint of template nodes).
//!
//! | annotation | value | overrides |
//! | --- | --- | --- |
//! | [`MAX_NODE_AGE_ANNOTATION`] | a Go duration (`168h`) within the bounds, or `off` | `maxNodeAge` |
//! | [`REPLACEMENT_BUDGET_ANNOTATION`] | a whole number 1–100 | `replacementBudget` |
//! | [`STARTUP_TAINT_ANNOTATION`] | `key[=value]:Effect` (`NoSchedule`, `NoExecute`), or `off` | `startupTaint` |
//!
//! CAPI's MachineDeployment CRD cannot validate capow's annotations, so a value that does not
//! parse is a [`Problem`]: capow reports it (condition and Warning event) and falls back to
//! the safe side: no replacements for that MachineDeployment, and the cluster's startup taint.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use crate::api::lifecycle::{
    DEFAULT_REPLACEMENT_BUDGET, DEFAULT_STARTUP_TAINT_KEY, NodeLifecycle, StartupTaint,
    StartupTaintEffect,
};

/// MachineDeployment annotation overriding `spec.nodeLifecycle.maxNodeAge`.
pub const MAX_NODE_AGE_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/max-node-age";
/// MachineDeployment annotation overriding `spec.nodeLifecycle.replacementBudget`.
pub const REPLACEMENT_BUDGET_ANNOTATION: &str =
    "capow.infrastructure.cluster.x-k8s.io/replacement-budget";
/// MachineDeployment annotation overriding `spec.nodeLifecycle.startupTaint`.
pub const STARTUP_TAINT_ANNOTATION: &str = "capow.infrastructure.cluster.x-k8s.io/startup-taint";
/// The annotation value that turns a feature off for one MachineDeployment.
pub const OFF: &str = "off";
/// Largest `maxNodeAge` (8760h, 365 days), as the CRD's CEL rule.
pub const MAX_NODE_AGE_CEILING: Duration = Duration::from_secs(8760 * 3600);
/// Smallest `maxNodeAge` by default (1h, as the CRD's CEL rule); the manager flag
/// `--max-node-age-floor` lowers it for the annotation (tests only).
pub const DEFAULT_MAX_NODE_AGE_FLOOR: Duration = Duration::from_secs(3600);

/// A taint (key, value, effect), as the Node API spells it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// `NoSchedule` or `NoExecute`.
    pub effect: String,
}

impl Taint {
    /// `key[=value]:Effect`.
    pub fn describe(&self) -> String {
        if self.value.is_empty() {
            format!("{}:{}", self.key, self.effect)
        } else {
            format!("{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// The taint a [`StartupTaint`] stands for, with the defaults filled in.
pub fn taint_of(t: &StartupTaint) -> Taint {
    Taint {
        key: t
            .key
            .clone()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| DEFAULT_STARTUP_TAINT_KEY.to_owned()),
        value: t.value.clone().unwrap_or_default(),
        effect: t.effect.unwrap_or_default().as_str().to_owned(),
    }
}

/// An annotation capow cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Annotation key.
    pub annotation: String,
    /// Value as written.
    pub value: String,
    /// The rule it breaks, as a sentence part.
    pub rule: String,
    /// What capow does instead, as a sentence part.
    pub consequence: &'static str,
}

impl Problem {
    /// `annotation <key> is "<value>" on MachineDeployment <ns>/<name>; <rule>; <consequence>`.
    pub fn message(&self, machine_deployment: &str) -> String {
        format!(
            "annotation {} is {:?} on MachineDeployment {machine_deployment}; {}; {}",
            self.annotation, self.value, self.rule, self.consequence
        )
    }
}

const NO_REPLACEMENTS: &str =
    "capow replaces no Machine of this MachineDeployment for age until it is fixed";
const CLUSTER_TAINT: &str = "capow uses the cluster's spec.nodeLifecycle.startupTaint instead";

/// Parses a Go duration (`time.ParseDuration`, the form CEL's `duration()` and
/// `metav1.Duration` use).
///
/// # Errors
/// A sentence part saying what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim().is_empty() {
        return Err("it must not be empty".into());
    }
    let d = kube::core::Duration::from_str(s.trim())
        .map_err(|e| format!("it must be a Go duration such as 168h or 90m ({e})"))?;
    if d.is_negative() {
        return Err("it must not be negative".into());
    }
    Ok(d.into())
}

/// A duration in the largest whole unit that represents it exactly (`168h`, `90m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 {
        return format!("{}ms", d.as_millis());
    }
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The max-age settings of one MachineDeployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxAge {
    /// Machines older than this are replaced.
    pub limit: Duration,
    /// Machines replaced at once.
    pub budget: u32,
}

/// What is in force for one MachineDeployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSettings {
    /// Max-age replacement, `None` when off (or when an annotation keeps it off).
    pub max_age: Option<MaxAge>,
    /// The startup taint of the group's Nodes, `None` when off.
    pub startup_taint: Option<Taint>,
    /// Annotations capow cannot use.
    pub problems: Vec<Problem>,
}

/// The startup taint of a group: the annotation when it parses (`off` turns it off), else the
/// cluster's. Shared by the lifecycle controller (which taint to remove) and the autoscaler's
/// template node (which taint the group's nodes start with).
///
/// # Errors
/// The [`Problem`] of an annotation that does not parse, together with the cluster's taint
/// that applies instead.
pub fn startup_taint(
    cluster: Option<&NodeLifecycle>,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Taint>, Box<(Problem, Option<Taint>)>> {
    let default = cluster.and_then(|l| l.startup_taint.as_ref()).map(taint_of);
    let Some(raw) = annotations.get(STARTUP_TAINT_ANNOTATION) else {
        return Ok(default);
    };
    let v = raw.trim();
    if v == OFF {
        return Ok(None);
    }
    match parse_taint(v) {
        Ok(t) => Ok(Some(t)),
        Err(rule) => Err(Box::new((
            Problem {
                annotation: STARTUP_TAINT_ANNOTATION.to_owned(),
                value: raw.clone(),
                rule,
                consequence: CLUSTER_TAINT,
            },
            default,
        ))),
    }
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                let b = label.as_bytes();
                !label.is_empty()
                    && label.len() <= 63
                    && b[0].is_ascii_alphanumeric()
                    && b[b.len() - 1].is_ascii_alphanumeric()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    prefix_ok && valid_name(name)
}

/// Parses `key[=value]:Effect`.
fn parse_taint(v: &str) -> Result<Taint, String> {
    const RULE: &str = "it must be key[=value]:Effect with a qualified-name key, a label value and the effect NoSchedule or NoExecute, or off";
    let (kv, effect) = v.rsplit_once(':').ok_or_else(|| RULE.to_owned())?;
    let effect = match effect {
        "NoSchedule" => StartupTaintEffect::NoSchedule,
        "NoExecute" => StartupTaintEffect::NoExecute,
        _ => return Err(RULE.to_owned()),
    };
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if !valid_key(key) || !(value.is_empty() || valid_name(value)) {
        return Err(RULE.to_owned());
    }
    Ok(Taint {
        key: key.to_owned(),
        value: value.to_owned(),
        effect: effect.as_str().to_owned(),
    })
}

/// The settings of a MachineDeployment with `annotations` in a cluster with `cluster`;
/// `floor` is the smallest max age accepted from an annotation.
pub fn group_settings(
    cluster: Option<&NodeLifecycle>,
    annotations: &BTreeMap<String, String>,
    floor: Duration,
) -> GroupSettings {
    let mut problems = Vec::new();
    let problem = |annotation: &str, value: &str, rule: String, consequence| Problem {
        annotation: annotation.to_owned(),
        value: value.to_owned(),
        rule,
        consequence,
    };

    // Max age: annotation, else cluster field (the CRD bounds it; parsed defensively).
    let limit = match annotations.get(MAX_NODE_AGE_ANNOTATION) {
        Some(raw) if raw.trim() == OFF => Ok(None),
        Some(raw) => parse_duration(raw)
            .and_then(|d| {
                if d < floor || d > MAX_NODE_AGE_CEILING {
                    Err(format!(
                        "it must be between {} and {}",
                        format_duration(floor),
                        format_duration(MAX_NODE_AGE_CEILING)
                    ))
                } else {
                    Ok(Some(d))
                }
            })
            .map_err(|rule| problem(MAX_NODE_AGE_ANNOTATION, raw, rule, NO_REPLACEMENTS)),
        None => match cluster.and_then(|l| l.max_node_age.as_deref()) {
            None => Ok(None),
            Some(raw) => parse_duration(raw).map(Some).map_err(|rule| Problem {
                annotation: "spec.nodeLifecycle.maxNodeAge".to_owned(),
                value: raw.to_owned(),
                rule,
                consequence: NO_REPLACEMENTS,
            }),
        },
    };
    let budget = match annotations.get(REPLACEMENT_BUDGET_ANNOTATION) {
        Some(raw) => raw
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|b| (1..=100).contains(b))
            .ok_or_else(|| {
                problem(
                    REPLACEMENT_BUDGET_ANNOTATION,
                    raw,
                    "it must be a whole number from 1 to 100".into(),
                    NO_REPLACEMENTS,
                )
            }),
        None => Ok(cluster
            .and_then(|l| l.replacement_budget)
            .and_then(|b| u32::try_from(b).ok())
            .filter(|b| *b >= 1)
            .unwrap_or(DEFAULT_REPLACEMENT_BUDGET.unsigned_abs())),
    };
    let max_age = match (limit, budget) {
        (Ok(Some(limit)), Ok(budget)) => Some(MaxAge { limit, budget }),
        (Ok(None), Err(p)) => {
            // A bad budget matters only where max age is on; report it all the same.
            problems.push(p);
            None
        }
        (Ok(None), Ok(_)) => None,
        (l, b) => {
            problems.extend(l.err());
            problems.extend(b.err());
            None
        }
    };
    let startup_taint = match startup_taint(cluster, annotations) {
        Ok(t) => t,
        Err(e) => {
            let (p, fallback) = *e;
            problems.push(p);
            fallback
        }
    };
    GroupSettings {
        max_age,
        startup_taint,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn cluster(
        age: Option<&str>,
        budget: Option<i32>,
        taint: Option<StartupTaint>,
    ) -> NodeLifecycle {
        NodeLifecycle {
            max_node_age: age.map(str::to_owned),
            replacement_budget: budget,
            startup_taint: taint,
            headroom: None,
            image_warmup: None,
        }
    }

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn go_durations_parse_and_print() {
        assert_eq!(parse_duration("168h"), Ok(168 * H));
        assert_eq!(parse_duration("1h30m"), Ok(H + Duration::from_secs(1800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-1h").unwrap_err().contains("negative"));
        assert!(parse_duration("7d").unwrap_err().contains("Go duration"));
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(168 * H), "168h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn everything_is_off_by_default() {
        let s = group_settings(None, &BTreeMap::new(), DEFAULT_MAX_NODE_AGE_FLOOR);
        assert_eq!(s, GroupSettings::default());
        let s = group_settings(
            Some(&NodeLifecycle::default()),
            &BTreeMap::new(),
            DEFAULT_MAX_NODE_AGE_FLOOR,
        );
        assert_eq!(s, GroupSettings::default());
    }

    #[test]
    fn annotations_override_the_cluster() {
        let c = cluster(Some("168h"), Some(2), Some(StartupTaint::default()));
        let s = group_settings(Some(&c), &BTreeMap::new(), DEFAULT_MAX_NODE_AGE_FLOOR);
        assert_eq!(
            s.max_age,
            Some(MaxAge {
                limit: 168 * H,
                budget: 2
            })
        );
        assert_eq!(
            s.startup_taint.unwrap().describe(),
            format!("{DEFAULT_STARTUP_TAINT_KEY}:NoSchedule")
        );
        let s = group_settings(
            Some(&c),
            &ann(&[
                (MAX_NODE_AGE_ANNOTATION, "72h"),
                (REPLACEMENT_BUDGET_ANNOTATION, "1"),
                (
                    STARTUP_TAINT_ANNOTATION,
                    "example.com/booting=yes:NoExecute",
                ),
            ]),
            DEFAULT_MAX_NODE_AGE_FLOOR,
        );
        assert_eq!(
            s.max_age,
            Some(MaxAge {
                limit: 72 * H,
                budget: 1
            })
        );
        assert_eq!(
            s.startup_taint,
            Some(Taint {
                key: "example.com/booting".into(),
                value: "yes".into(),
                effect: "NoExecute".into()
            })
        );
        assert!(s.problems.is_empty());
        let off = group_settings(
            Some(&c),
            &ann(&[
                (MAX_NODE_AGE_ANNOTATION, "off"),
                (STARTUP_TAINT_ANNOTATION, "off"),
            ]),
            DEFAULT_MAX_NODE_AGE_FLOOR,
        );
        assert_eq!(off, GroupSettings::default());
        // An annotation alone turns max age on, with the default budget.
        let s = group_settings(
            None,
            &ann(&[(MAX_NODE_AGE_ANNOTATION, "2h")]),
            DEFAULT_MAX_NODE_AGE_FLOOR,
        );
        assert_eq!(
            s.max_age,
            Some(MaxAge {
                limit: 2 * H,
                budget: 1
            })
        );
    }

    #[test]
    fn bad_annotations_are_problems_and_fall_back_to_the_safe_side() {
        let c = cluster(Some("168h"), None, Some(StartupTaint::default()));
        for (key, value) in [
            (MAX_NODE_AGE_ANNOTATION, "-1h"),
            (MAX_NODE_AGE_ANNOTATION, "1s"),
            (MAX_NODE_AGE_ANNOTATION, "100000h"),
            (MAX_NODE_AGE_ANNOTATION, "7 days"),
            (REPLACEMENT_BUDGET_ANNOTATION, "0"),
            (REPLACEMENT_BUDGET_ANNOTATION, "-1"),
            (REPLACEMENT_BUDGET_ANNOTATION, "many"),
        ] {
            let s = group_settings(Some(&c), &ann(&[(key, value)]), DEFAULT_MAX_NODE_AGE_FLOOR);
            assert_eq!(s.max_age, None, "{key}={value}: no replacements");
            assert_eq!(s.problems.len(), 1, "{key}={value}");
            let m = s.problems[0].message("ns/md");
            assert!(
                m.starts_with(&format!(
                    "annotation {key} is {value:?} on MachineDeployment ns/md; it must"
                )),
                "{m}"
            );
            assert!(m.ends_with(NO_REPLACEMENTS), "{m}");
        }
        for value in [
            "",
            "key",
            "key:Maybe",
            "Bad Key:NoSchedule",
            "k=v v:NoSchedule",
            "-k:NoSchedule",
        ] {
            let s = group_settings(
                Some(&c),
                &ann(&[(STARTUP_TAINT_ANNOTATION, value)]),
                DEFAULT_MAX_NODE_AGE_FLOOR,
            );
            assert_eq!(
                s.startup_taint.as_ref().map(|t| t.key.as_str()),
                Some(DEFAULT_STARTUP_TAINT_KEY),
                "{value:?}: the cluster's taint"
            );
            assert_eq!(s.problems.len(), 1, "{value:?}");
        }
        // The floor is a flag: tests lower it to 1m.
        let s = group_settings(
            None,
            &ann(&[(MAX_NODE_AGE_ANNOTATION, "1m")]),
            Duration::from_secs(60),
        );
        assert_eq!(s.max_age.map(|m| m.limit), Some(Duration::from_secs(60)));
    }
}
