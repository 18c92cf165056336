//! The real cluster-autoscaler (CA) in the e2e harness: one runner for every test that starts
//! it.
//!
//! The binaries are built from the upstream source (kubernetes/autoscaler, tags
//! `cluster-autoscaler-1.36.1` and `cluster-autoscaler-1.34.1`, `-tags externalgrpc`) by
//! `e2e/components/build.sh cluster-autoscaler` and exported by `e2e/dev-env.sh` as
//! [`Wire::New`]'s `CAPOW_E2E_CLUSTER_AUTOSCALER` and [`Wire::Old`]'s
//! `CAPOW_E2E_CLUSTER_AUTOSCALER_OLD_WIRE`. Where they cannot be built (no upstream source
//! beside the repository) a test calls [`binary`], which prints a `SKIPPED` line naming the
//! variable, and returns; `e2e/test.sh` refuses to run without them where the source is present,
//! so CI never skips.
//!
//! A [`ClusterAutoscaler`] runs as a workload cluster's CA does in production: with the
//! workload cluster's kubeconfig, `--cloud-provider=externalgrpc` and the `--cloud-config` file
//! of the credentials Secret capow published ([`crate::hcp::HcpCluster::cloud_config`]). Its
//! one listener (`--address`: `/metrics` and `/health-check`, cluster-autoscaler-1.36.1
//! `main.go`; the same in 1.34.1) is on a free 127.0.0.1 port, and [`ClusterAutoscaler::start`]
//! checks in `/proc` that the process listens on nothing else.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::{Env, Poll, log_tail, openstack, openstack_run, reqwest_get};

/// Which CA wire generation a test runs (capow's README, "externalgrpc cloud provider").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// CA ≥ 1.35 (template node in `nodeBytes`, option durations in fields 8/9/10); the harness
    /// builds 1.36.1.
    New,
    /// CA ≤ 1.34 (template node in field 1, durations in 3/4/5); the harness builds 1.34.1.
    Old,
}

impl Wire {
    /// The variable naming the binary.
    pub fn variable(self) -> &'static str {
        match self {
            Wire::New => "CAPOW_E2E_CLUSTER_AUTOSCALER",
            Wire::Old => "CAPOW_E2E_CLUSTER_AUTOSCALER_OLD_WIRE",
        }
    }

    /// The version the harness builds for this generation.
    pub fn built_version(self) -> &'static str {
        match self {
            Wire::New => "1.36.1",
            Wire::Old => "1.34.1",
        }
    }
}

/// The CA binary of `wire`, or `None` after writing a `SKIPPED` line that names the variable
/// to set (to the process's stderr itself, so the test harness does not swallow it). A set
/// variable naming a missing file fails the test (a broken set-up is not a skip).
pub fn binary(wire: Wire, test: &str) -> Option<PathBuf> {
    use std::io::Write as _;
    let var = wire.variable();
    let Ok(path) = std::env::var(var) else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {var} is not set. Set it to a cluster-autoscaler binary built with \
             -tags externalgrpc (kubernetes/autoscaler tag cluster-autoscaler-{}), or run \
             e2e/test.sh with the upstream source beside the repository so that \
             e2e/components/build.sh cluster-autoscaler builds it",
            wire.built_version()
        );
        return None;
    };
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{var}={} does not exist", path.display());
    Some(path)
}

/// CA flags that make a test's loops short (scan every 5 s, scale-down after 10 s unneeded and
/// 10 s after a scale-up, a node that never registers counts as failed after 2 minutes) and let
/// CA remove kwok's Nodes (no kubelet-managed system pods or local storage on them).
pub const FAST_FLAGS: &[&str] = &[
    "--scan-interval=5s",
    "--scale-down-unneeded-time=10s",
    "--scale-down-delay-after-add=10s",
    "--scale-down-delay-after-delete=5s",
    "--scale-down-delay-after-failure=10s",
    "--max-node-provision-time=2m",
    "--skip-nodes-with-system-pods=false",
    "--skip-nodes-with-local-storage=false",
];

/// How a [`ClusterAutoscaler`] runs.
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// `--expander` (e.g. `priority`, `price`, or a chain such as `priority,price`).
    pub expander: String,
    /// `--namespace`: where CA writes its status ConfigMap and reads the
    /// `cluster-autoscaler-priority-expander` ConfigMap, in the workload cluster.
    pub namespace: String,
    /// Flags after the defaults (a repeated flag wins: Go's flag package keeps the last).
    pub extra_args: Vec<String>,
}

impl Default for CaOptions {
    fn default() -> CaOptions {
        CaOptions {
            expander: "least-waste".into(),
            namespace: "kube-system".into(),
            extra_args: Vec::new(),
        }
    }
}

/// A running cluster-autoscaler process; killed when dropped.
pub struct ClusterAutoscaler {
    child: tokio::process::Child,
    /// Its log (stderr, klog format), one file per process.
    pub log: PathBuf,
    /// `--address`: metrics and health check.
    pub address: SocketAddr,
    bin: PathBuf,
    args: Vec<String>,
    label: String,
    generation: u32,
}

impl ClusterAutoscaler {
    /// Starts `bin` for the workload cluster of `kubeconfig` with the published `cloud_config`,
    /// `--leader-elect=false`, [`FAST_FLAGS`], `--v=4` (the main-loop and scheduling-simulation
    /// lines the tests read) and `options`; waits until `/health-check` answers on its loopback
    /// address and checks that it listens on nothing but loopback. `label` names the log file.
    pub async fn start(
        bin: &Path,
        kubeconfig: &Path,
        cloud_config: &str,
        options: &CaOptions,
        label: &str,
    ) -> ClusterAutoscaler {
        let mut args: Vec<String> = vec![
            "--cloud-provider=externalgrpc".into(),
            format!("--cloud-config={cloud_config}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--namespace={}", options.namespace),
            "--leader-elect=false".into(),
            format!("--expander={}", options.expander),
            "--v=4".into(),
        ];
        args.extend(FAST_FLAGS.iter().map(|s| (*s).to_owned()));
        args.extend(options.extra_args.iter().cloned());
        ClusterAutoscaler::spawn(bin.to_owned(), args, label.to_owned(), 0).await
    }

    async fn spawn(
        bin: PathBuf,
        args: Vec<String>,
        label: String,
        generation: u32,
    ) -> ClusterAutoscaler {
        let env = Env::get();
        let address: SocketAddr = format!("127.0.0.1:{}", crate::free_port()).parse().unwrap();
        let log = env
            .state
            .join(format!("cluster-autoscaler-{label}-{generation}.log"));
        let file = std::fs::File::create(&log).expect("create the cluster-autoscaler log");
        let child = tokio::process::Command::new(&bin)
            .args(&args)
            .arg(format!("--address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start the cluster-autoscaler");
        let mut ca = ClusterAutoscaler {
            child,
            log,
            address,
            bin,
            args,
            label,
            generation,
        };
        let url = format!("http://{address}/health-check");
        Poll::new(
            format!("cluster-autoscaler /health-check on {address}"),
            Duration::from_secs(60),
        )
        .log_tail(&ca.log, 30)
        .until(|| {
            ca.assert_running();
            let url = &url;
            async move { reqwest_get(url).await.is_ok_and(|(s, _)| s == 200) }
        })
        .await;
        let listening = listening_addresses(ca.pid());
        assert!(
            !listening.is_empty() && listening.iter().all(|a| a.ip().is_loopback()),
            "cluster-autoscaler must listen on loopback only, listens on {listening:?}"
        );
        ca
    }

    /// A new process with the same flags (and a new `--address` and log file), as a restarted
    /// pod would be.
    pub async fn restart(&self) -> ClusterAutoscaler {
        ClusterAutoscaler::spawn(
            self.bin.clone(),
            self.args.clone(),
            self.label.clone(),
            self.generation + 1,
        )
        .await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Panics with the end of its log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "cluster-autoscaler exited ({status}); log {}:\n{}",
                self.log.display(),
                log_tail(&self.log, 40)
            );
        }
    }

    /// Kills the process with SIGKILL (a crashed or evicted pod) and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(mut self) {
        crate::terminate(&mut self.child, Duration::from_secs(10)).await;
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines containing `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// How many lines the log has now (a position for [`ClusterAutoscaler::lines_after`]).
    pub fn line_count(&self) -> usize {
        self.log_text().lines().count()
    }

    /// Lines after the first `from` lines.
    pub fn lines_after(&self, from: usize) -> Vec<String> {
        self.log_text()
            .lines()
            .skip(from)
            .map(str::to_owned)
            .collect()
    }

    /// Waits until a log line contains `needle` and returns the first such line; fails after
    /// `timeout` or when the process exits.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        Poll::new(
            format!("a cluster-autoscaler log line with {needle:?}"),
            timeout,
        )
        .log_tail(&self.log, 60)
        .until(|| {
            let line = self.lines(needle).into_iter().next();
            if line.is_none() {
                self.assert_running();
            }
            async move { line }
        })
        .await
    }

    /// The version CA reports at start (`Cluster Autoscaler <version>`, logged at `--v=1`).
    pub fn version(&self) -> Option<String> {
        self.lines("Cluster Autoscaler ").into_iter().find_map(|l| {
            l.split("Cluster Autoscaler ")
                .nth(1)
                .map(|v| v.trim().to_owned())
        })
    }

    /// Fails when the log shows a Go panic (the old wire generation panics on missing fields).
    pub fn assert_no_panic(&self) {
        let text = self.log_text();
        assert!(
            !text.contains("panic:") && !text.contains("goroutine "),
            "cluster-autoscaler panicked; log {}:\n{}",
            self.log.display(),
            log_tail(&self.log, 60)
        );
    }
}

/// The TCP addresses a process listens on, from `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`.
pub fn listening_addresses(pid: u32) -> Vec<SocketAddr> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            if let Some(a) = parse_proc_addr(f[1]) {
                out.push(a);
            }
        }
    }
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6), as the kernel prints
/// `/proc/net/tcp{,6}`: each 32-bit word of the address is the raw network-order bytes printed
/// as a host-order number.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (hex, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if hex.len() % 8 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for i in 0..hex.len() / 8 {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip: IpAddr = match bytes.len() {
        4 => Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).into(),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Makes sure the flavor `name` exists with this shape and these extra specs (idempotent; safe
/// when tests in parallel threads ask for the same flavor). Uses the admin cloud.
pub fn ensure_flavor(name: &str, ram_mib: u64, vcpus: u64, disk_gib: u64, specs: &[(&str, &str)]) {
    let admin = &Env::get().admin_cloud;
    let fits = |f: &Value| {
        f["ram"].as_u64() == Some(ram_mib)
            && f["vcpus"].as_u64() == Some(vcpus)
            && f["disk"].as_u64() == Some(disk_gib)
            && specs
                .iter()
                .all(|(k, v)| f["properties"][*k].as_str() == Some(*v))
    };
    if openstack(admin, &["flavor", "show", name]).is_ok_and(|f| fits(&f)) {
        return;
    }
    if openstack(admin, &["flavor", "show", name]).is_ok() {
        let _ = openstack_run(admin, &["flavor", "delete", name]);
    }
    let (ram, cpus, disk) = (ram_mib.to_string(), vcpus.to_string(), disk_gib.to_string());
    let props: Vec<String> = specs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec![
        "flavor", "create", "--ram", &ram, "--vcpus", &cpus, "--disk", &disk,
    ];
    for p in &props {
        args.extend(["--property", p.as_str()]);
    }
    args.push(name);
    // A concurrent creator may win the race: then the flavor must exist and fit.
    let created = openstack(admin, &args);
    let shown = openstack(admin, &["flavor", "show", name]);
    assert!(
        shown.as_ref().is_ok_and(fits),
        "flavor {name}: create {created:?}, now {shown:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000:0050"),
            Some("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
    }
}
