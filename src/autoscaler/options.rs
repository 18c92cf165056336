//! `NodeGroupGetOptions`: per node group autoscaling options from the in-tree provider's
//! `cluster.x-k8s.io/autoscaling-options-*` annotations (cluster-autoscaler-1.36.1
//! `cloudprovider/clusterapi/README.md`, "Per-NodeGroup autoscaling options").
//!
//! Rules from CA's client: whatever the server returns replaces CA's defaults field by field,
//! zero values included (kubernetes/autoscaler#5936, #5998), so every field the group does not
//! override echoes the default CA sent; CA ≤ 1.34.1 dereferences the old duration fields 3/4/5
//! and CA ≥ 1.35 reads only 8/9/10, so both are filled (`GetOptions` in
//! `cloudprovider/externalgrpc/externalgrpc_node_group.go` of cluster-autoscaler-1.34.1 and
//! -1.36.1; `proto/externalgrpc.proto`); and because
//! `MaxNodeStartupTime` has no proto field (kubernetes/autoscaler#10245), a group without
//! option annotations gets `Unimplemented`, which makes CA keep all its defaults.
//!
//! An annotation whose value does not parse costs only its own field: CA's client treats any
//! error code other than `Unimplemented` as a failure of the whole call
//! (cluster-autoscaler-1.36.1 `cloudprovider/externalgrpc/externalgrpc_node_group.go`,
//! `GetOptions`), so the group's valid overrides are served and the bad field echoes CA's
//! default; the index reports the bad value ([`validate`], `super::report`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::proto::externalgrpc::NodeGroupAutoscalingOptions;
use super::proto::meta_v1;

/// Annotation prefix of per-group options.
pub const PREFIX: &str = "cluster.x-k8s.io/autoscaling-options-";

/// What capow does with an unusable option, as a sentence part of the warning.
pub const INVALID_CONSEQUENCE: &str = "the cluster-autoscaler's default is used for this option (the group's other options still apply) until it is fixed";

/// Rule of the threshold options.
const FRACTION_RULE: &str = "it must be a number between 0 and 1";
/// Rule of the boolean options.
const BOOL_RULE: &str = "it must be true or false";
/// Rule of the duration options.
const DURATION_RULE: &str =
    "it must be a duration such as 10m or 1h30m (units ns, us, ms, s, m, h)";

/// Why an option annotation is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation} is {value:?}; {rule}")]
pub struct OptionError {
    /// The annotation key.
    pub annotation: String,
    /// The value as written.
    pub value: String,
    /// The rule it breaks, as a sentence part (`it must be true or false`).
    pub rule: String,
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers with units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, e.g. `10m`, `1h30m`, `1.5h`, `300ms`; `0` alone.
///
/// # Errors
/// A message for anything else (negative durations included).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(format!("{s:?} is not a duration such as 10m or 1h30m"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as 10m or 1h30m"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{s:?} has unknown unit {unit:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total += value * seconds;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{s:?}: {e}"))
}

fn google(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn meta(d: Duration) -> meta_v1::Duration {
    meta_v1::Duration {
        duration: d.as_nanos().min(i64::MAX as u128) as i64,
    }
}

fn from_request(new: Option<&prost_types::Duration>, old: Option<&meta_v1::Duration>) -> Duration {
    match (new, old) {
        (Some(d), _) => Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32),
        (None, Some(d)) => Duration::from_nanos(d.duration.max(0) as u64),
        (None, None) => Duration::ZERO,
    }
}

/// The options of a group with `annotations`, starting from CA's `defaults`, and the option
/// annotations that could not be used. Each unusable annotation keeps CA's default for its own
/// field only; the options are `None` when the group has no usable option annotation (answer
/// `Unimplemented`, so CA keeps every default).
pub fn options(
    annotations: &BTreeMap<String, String>,
    defaults: &NodeGroupAutoscalingOptions,
) -> (Option<NodeGroupAutoscalingOptions>, Vec<OptionError>) {
    let mut r = Reader {
        own: annotations
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|name| (name, v.as_str())))
            .collect(),
        errors: Vec::new(),
        overridden: false,
    };
    let fraction = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|f| (0.0..=1.0).contains(f))
    };
    let boolean = |v: &str| v.trim().parse::<bool>().ok();
    let duration = |v: &str| parse_go_duration(v).ok();

    let utilization = r.get(
        "scaledownutilizationthreshold",
        FRACTION_RULE,
        fraction,
        defaults.scale_down_utilization_threshold,
    );
    let gpu_utilization = r.get(
        "scaledowngpuutilizationthreshold",
        FRACTION_RULE,
        fraction,
        defaults.scale_down_gpu_utilization_threshold,
    );
    let zero_or_max = r.get(
        "zeroormaxnodescaling",
        BOOL_RULE,
        boolean,
        defaults.zero_or_max_node_scaling,
    );
    let ignore_daemon_sets = r.get(
        "ignoredaemonsetsutilization",
        BOOL_RULE,
        boolean,
        defaults.ignore_daemon_sets_utilization,
    );
    let unneeded = r.get(
        "scaledownunneededtime",
        DURATION_RULE,
        duration,
        from_request(
            defaults.scale_down_unneeded_duration.as_ref(),
            defaults.scale_down_unneeded_time.as_ref(),
        ),
    );
    let unready = r.get(
        "scaledownunreadytime",
        DURATION_RULE,
        duration,
        from_request(
            defaults.scale_down_unready_duration.as_ref(),
            defaults.scale_down_unready_time.as_ref(),
        ),
    );
    let provision = r.get(
        "maxnodeprovisiontime",
        DURATION_RULE,
        duration,
        from_request(
            defaults.max_node_provision_duration.as_ref(),
            defaults.max_node_provision_time.as_ref(),
        ),
    );
    if !r.overridden {
        return (None, r.errors);
    }
    let options = NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: utilization,
        scale_down_gpu_utilization_threshold: gpu_utilization,
        zero_or_max_node_scaling: zero_or_max,
        ignore_daemon_sets_utilization: ignore_daemon_sets,
        scale_down_unneeded_time: Some(meta(unneeded)),
        scale_down_unready_time: Some(meta(unready)),
        max_node_provision_time: Some(meta(provision)),
        scale_down_unneeded_duration: Some(google(unneeded)),
        scale_down_unready_duration: Some(google(unready)),
        max_node_provision_duration: Some(google(provision)),
    };
    (Some(options), r.errors)
}

/// The option annotations among `annotations` whose values capow cannot use (the same checks as
/// [`options`], without CA's defaults).
pub fn validate(annotations: &BTreeMap<String, String>) -> Vec<OptionError> {
    options(annotations, &NodeGroupAutoscalingOptions::default()).1
}

/// Reads option annotations one field at a time.
struct Reader<'a> {
    /// Option name (after [`PREFIX`]) → value.
    own: BTreeMap<&'a str, &'a str>,
    errors: Vec<OptionError>,
    /// True once one option was read successfully.
    overridden: bool,
}

impl Reader<'_> {
    /// Option `name` parsed by `parse`; `default` when it is absent or does not parse (then
    /// recorded in `errors` with `rule`).
    fn get<T>(
        &mut self,
        name: &str,
        rule: &str,
        parse: impl Fn(&str) -> Option<T>,
        default: T,
    ) -> T {
        let Some(raw) = self.own.get(name) else {
            return default;
        };
        match parse(raw) {
            Some(v) => {
                self.overridden = true;
                v
            }
            None => {
                self.errors.push(OptionError {
                    annotation: format!("{PREFIX}{name}"),
                    value: (*raw).to_owned(),
                    rule: rule.to_owned(),
                });
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), (*v).to_owned()))
            .collect()
    }

    fn new_wire_defaults() -> NodeGroupAutoscalingOptions {
        NodeGroupAutoscalingOptions {
            scale_down_utilization_threshold: 0.5,
            scale_down_gpu_utilization_threshold: 0.5,
            zero_or_max_node_scaling: false,
            ignore_daemon_sets_utilization: true,
            scale_down_unneeded_duration: Some(google(Duration::from_secs(600))),
            scale_down_unready_duration: Some(google(Duration::from_secs(1200))),
            max_node_provision_duration: Some(google(Duration::from_secs(900))),
            ..Default::default()
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("300ms").unwrap(),
            Duration::from_millis(300)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "-5m", "5d", "m"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_annotations_means_unimplemented() {
        assert_eq!(
            options(&BTreeMap::new(), &new_wire_defaults()),
            (None, vec![])
        );
    }

    #[test]
    fn overrides_and_echoes_every_default_in_both_wire_shapes() {
        let o = options(
            &ann(&[
                ("scaledownutilizationthreshold", "0.3"),
                ("maxnodeprovisiontime", "5m"),
            ]),
            &new_wire_defaults(),
        )
        .0
        .unwrap();
        assert_eq!(o.scale_down_utilization_threshold, 0.3);
        assert_eq!(o.scale_down_gpu_utilization_threshold, 0.5, "echoed");
        assert!(o.ignore_daemon_sets_utilization, "echoed, not zeroed");
        assert_eq!(o.max_node_provision_duration.unwrap().seconds, 300);
        assert_eq!(
            o.max_node_provision_time.unwrap().duration,
            300_000_000_000,
            "old field 5 in nanoseconds"
        );
        assert_eq!(
            o.scale_down_unneeded_duration.unwrap().seconds,
            600,
            "echoed"
        );
        assert_eq!(
            o.scale_down_unneeded_time.unwrap().duration,
            600_000_000_000
        );
        assert_eq!(
            o.scale_down_unready_time.unwrap().duration,
            1_200_000_000_000
        );
    }

    #[test]
    fn old_wire_defaults_are_read_too() {
        let defaults = NodeGroupAutoscalingOptions {
            scale_down_unneeded_time: Some(meta_v1::Duration {
                duration: 420_000_000_000,
            }),
            ..Default::default()
        };
        let o = options(&ann(&[("zeroormaxnodescaling", "true")]), &defaults)
            .0
            .unwrap();
        assert!(o.zero_or_max_node_scaling);
        assert_eq!(o.scale_down_unneeded_duration.unwrap().seconds, 420);
    }

    #[test]
    fn a_bad_value_costs_only_its_own_field() {
        // Before: one unparsable value failed the whole call (FailedPrecondition), dropping the
        // valid overrides with it.
        let (o, errors) = options(
            &ann(&[
                ("scaledownutilizationthreshold", "0.3"),
                ("scaledownunneededtime", "ten minutes"),
                ("zeroormaxnodescaling", "yes"),
            ]),
            &new_wire_defaults(),
        );
        let o = o.unwrap();
        assert_eq!(
            o.scale_down_utilization_threshold, 0.3,
            "valid override kept"
        );
        assert_eq!(
            o.scale_down_unneeded_duration.unwrap().seconds,
            600,
            "CA's default for the bad field"
        );
        assert_eq!(
            o.scale_down_unneeded_time.unwrap().duration,
            600_000_000_000
        );
        assert!(
            !o.zero_or_max_node_scaling,
            "CA's default for the bad field"
        );
        let names: Vec<_> = errors.iter().map(|e| e.annotation.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("{PREFIX}zeroormaxnodescaling"),
                format!("{PREFIX}scaledownunneededtime")
            ]
        );
        assert_eq!(
            errors[1].to_string(),
            format!("annotation {PREFIX}scaledownunneededtime is \"ten minutes\"; {DURATION_RULE}")
        );
    }

    #[test]
    fn only_bad_values_leave_every_default_to_ca() {
        // Nothing usable: Unimplemented (CA keeps all its defaults, MaxNodeStartupTime too).
        let (o, errors) = options(
            &ann(&[("scaledownutilizationthreshold", "1.5")]),
            &new_wire_defaults(),
        );
        assert_eq!(o, None);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].value, "1.5");
        assert_eq!(errors[0].rule, FRACTION_RULE);
        assert_eq!(
            validate(&ann(&[
                ("maxnodeprovisiontime", "5m"),
                ("ignoredaemonsetsutilization", "nope"),
                ("scaledowngpuutilizationthreshold", "-0.1"),
            ]))
            .iter()
            .map(|e| e.value.as_str())
            .collect::<Vec<_>>(),
            ["-0.1", "nope"]
        );
    }
}
