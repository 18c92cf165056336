//! `NodeGroupGetOptions`: per node group autoscaling options from the in-tree provider's
//! `cluster.x-k8s.io/autoscaling-options-*` annotations (mission-anchors §2.1, §1.5).
//!
//! Rules from CA's client: whatever the server returns replaces CA's defaults field by field,
//! zero values included (kubernetes/autoscaler#5936, #5998), so every field the group does not
//! override echoes the default CA sent; CA ≤ 1.34.1 dereferences the old duration fields 3/4/5
//! and CA ≥ 1.35 reads only 8/9/10, so both are filled (§1.9); and because
//! `MaxNodeStartupTime` has no proto field (kubernetes/autoscaler#10245), a group without
//! option annotations gets `Unimplemented`, which makes CA keep all its defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use super::proto::externalgrpc::NodeGroupAutoscalingOptions;
use super::proto::meta_v1;

/// Annotation prefix of per-group options.
pub const PREFIX: &str = "cluster.x-k8s.io/autoscaling-options-";

/// Why an option annotation is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct OptionError {
    /// The annotation key.
    pub annotation: String,
    /// What is wrong.
    pub message: String,
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

/// The options of a group with `annotations`, starting from CA's `defaults`. `Ok(None)` when
/// the group has no option annotation (answer `Unimplemented`).
///
/// # Errors
/// [`OptionError`] naming the annotation when a value does not parse.
pub fn options(
    annotations: &BTreeMap<String, String>,
    defaults: &NodeGroupAutoscalingOptions,
) -> Result<Option<NodeGroupAutoscalingOptions>, OptionError> {
    let own: BTreeMap<&str, &str> = annotations
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|name| (name, v.as_str())))
        .collect();
    if own.is_empty() {
        return Ok(None);
    }
    let err = |name: &str, message: String| OptionError {
        annotation: format!("{PREFIX}{name}"),
        message,
    };
    let float = |name: &str, default: f64| -> Result<f64, OptionError> {
        match own.get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| err(name, format!("{v:?} is not a number between 0 and 1"))),
        }
    };
    let boolean = |name: &str, default: bool| -> Result<bool, OptionError> {
        match own.get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<bool>()
                .map_err(|_| err(name, format!("{v:?} is not true or false"))),
        }
    };
    let duration = |name: &str, default: Duration| -> Result<Duration, OptionError> {
        match own.get(name) {
            None => Ok(default),
            Some(v) => parse_go_duration(v).map_err(|m| err(name, m)),
        }
    };
    let unneeded = duration(
        "scaledownunneededtime",
        from_request(
            defaults.scale_down_unneeded_duration.as_ref(),
            defaults.scale_down_unneeded_time.as_ref(),
        ),
    )?;
    let unready = duration(
        "scaledownunreadytime",
        from_request(
            defaults.scale_down_unready_duration.as_ref(),
            defaults.scale_down_unready_time.as_ref(),
        ),
    )?;
    let provision = duration(
        "maxnodeprovisiontime",
        from_request(
            defaults.max_node_provision_duration.as_ref(),
            defaults.max_node_provision_time.as_ref(),
        ),
    )?;
    Ok(Some(NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: float(
            "scaledownutilizationthreshold",
            defaults.scale_down_utilization_threshold,
        )?,
        scale_down_gpu_utilization_threshold: float(
            "scaledowngpuutilizationthreshold",
            defaults.scale_down_gpu_utilization_threshold,
        )?,
        zero_or_max_node_scaling: boolean(
            "zeroormaxnodescaling",
            defaults.zero_or_max_node_scaling,
        )?,
        ignore_daemon_sets_utilization: boolean(
            "ignoredaemonsetsutilization",
            defaults.ignore_daemon_sets_utilization,
        )?,
        scale_down_unneeded_time: Some(meta(unneeded)),
        scale_down_unready_time: Some(meta(unready)),
        max_node_provision_time: Some(meta(provision)),
        scale_down_unneeded_duration: Some(google(unneeded)),
        scale_down_unready_duration: Some(google(unready)),
        max_node_provision_duration: Some(google(provision)),
    }))
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
            options(&BTreeMap::new(), &new_wire_defaults()).unwrap(),
            None
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
        .unwrap()
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
            .unwrap()
            .unwrap();
        assert!(o.zero_or_max_node_scaling);
        assert_eq!(o.scale_down_unneeded_duration.unwrap().seconds, 420);
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let e = options(
            &ann(&[("scaledownunneededtime", "ten minutes")]),
            &new_wire_defaults(),
        )
        .unwrap_err();
        assert_eq!(e.annotation, format!("{PREFIX}scaledownunneededtime"));
        let e = options(
            &ann(&[("scaledownutilizationthreshold", "1.5")]),
            &new_wire_defaults(),
        )
        .unwrap_err();
        assert!(e.message.contains("between 0 and 1"));
    }
}
