//! The side-by-side benchmark of issue 13 on the e2e environment: capow against CAPO
//! (cluster-api-provider-openstack, the provider users would pick instead) and against the Nova
//! floor (the same servers POSTed straight at Nova), measured in one invocation so that the
//! ratios hold however busy the shared machine is. The program is `e2e/src/bin/bench.rs`; the
//! entry point that builds and runs everything is `e2e/bench.sh`; the recorded results and
//! their commands are in `docs/benchmarks.md`.
//!
//! | module | what it measures |
//! |---|---|
//! | [`side`] | scale 0 → N → 0 for the floor, capow and CAPO in alternating order: time to all servers ACTIVE, all Machines Running, all deleted; OpenStack calls per machine lifecycle by service and operation (each system behind its own counting [`crate::osproxy::Proxy`]); calls and Keystone token requests in a steady window |
//! | [`increase`] | capow's `NodeGroupIncreaseSize` → the first `POST /servers` at the proxy, over many scale-ups |
//! | [`scale`] | manager memory and CPU with 1k and 10k machines on a private API server, Nova answering from a recorded cloud state ([`fakecloud`]) |
//!
//! Every wait is bounded (timeouts scale with N) and every loop is bounded in count; every
//! server the benchmark starts listens on 127.0.0.1; everything it creates in OpenStack and in
//! the shared API server is deleted at the end of its part.

#![allow(
    clippy::too_many_lines,
    reason = "benchmark steps read best in one piece"
)]

pub mod capo;
pub mod fakecloud;
pub mod fixture;
pub mod increase;
pub mod nova;
pub mod scale;
pub mod side;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::osproxy::Counts;

/// OpenStack calls, flat: `"<service> <METHOD> <operation path>"` → count.
pub type Calls = BTreeMap<String, u64>;

/// The counts of a proxy as [`Calls`].
pub fn flatten(c: &Counts) -> Calls {
    let mut out = Calls::new();
    for (service, s) in &c.services {
        for (op, n) in &s.operations {
            out.insert(format!("{service} {op}"), *n);
        }
    }
    out
}

/// `after - before`, per key (keys with 0 left out).
pub fn diff(after: &Calls, before: &Calls) -> Calls {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Sum of all calls.
pub fn total(c: &Calls) -> u64 {
    c.values().sum()
}

/// Calls whose key starts with `prefix` (e.g. `identity POST /auth/tokens`).
pub fn matching(c: &Calls, prefix: &str) -> u64 {
    c.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| *v)
        .sum()
}

/// Calls summed per service.
pub fn by_service(c: &Calls) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, v) in c {
        let service = k.split(' ').next().unwrap_or("").to_owned();
        *out.entry(service).or_default() += v;
    }
    out
}

/// Calls summed per service and HTTP method (`compute GET`).
pub fn by_method(c: &Calls) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, v) in c {
        let mut parts = k.split(' ');
        let key = format!(
            "{} {}",
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("")
        );
        *out.entry(key).or_default() += v;
    }
    out
}

/// The 1, 5 and 15 minute load averages of the machine (`/proc/loadavg`).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds with millisecond precision.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The `q` quantile (0–1) of `samples` (nearest rank); 0 when empty.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Where results go: one JSON object per line in `<dir>/results-<unix time>.jsonl`, and the
/// same lines on stdout.
pub struct Report {
    path: PathBuf,
}

impl Report {
    /// A new results file under `dir`.
    pub fn new(dir: &std::path::Path) -> Report {
        let _ = std::fs::create_dir_all(dir);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Report {
            path: dir.join(format!("results-{now}.jsonl")),
        }
    }

    /// The results file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends `record` (with the load average) and prints it.
    pub fn record(&self, mut record: Value) {
        if let Some(o) = record.as_object_mut() {
            o.insert("loadavg".into(), Value::String(loadavg()));
        }
        let line = record.to_string();
        println!("result: {line}");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Prints a note (progress, not a result).
    pub fn note(&self, text: &str) {
        eprintln!("[bench {}] {text} (load {})", clock(), loadavg());
    }
}

/// Wall-clock time of day, `HH:MM:SS` UTC.
fn clock() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A variable the benchmark needs (set by `e2e/bench.sh`).
///
/// # Errors
/// When it is not set.
pub fn need_var(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .map_err(|_| anyhow::anyhow!("{name} is not set: run the benchmark through e2e/bench.sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn call_maps_diff_and_group() {
        let before: Calls = [("compute GET /servers/detail".to_owned(), 2)].into();
        let after: Calls = [
            ("compute GET /servers/detail".to_owned(), 5),
            ("network POST /ports".to_owned(), 1),
        ]
        .into();
        let d = diff(&after, &before);
        assert_eq!(total(&d), 4);
        assert_eq!(by_service(&d)["compute"], 3);
        assert_eq!(by_method(&d)["network POST"], 1);
        assert_eq!(matching(&d, "compute GET"), 3);
    }
}
