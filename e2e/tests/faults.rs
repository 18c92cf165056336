//! Faults of the world around capow, on a hosted-control-plane cluster with the real CAPI core:
//!
//! - the manager killed with SIGKILL at random moments while a MachineDeployment scales up and
//!   down, with OpenStack slowed down (a busy API: every server create queued for 4 s and
//!   carried out even when its sender died meanwhile, so kills land while creates are in
//!   flight);
//! - OpenStack answering 5xx, 429 with `Retry-After`, too slowly, or resetting connections, at a
//!   set rate, through `osproxy`;
//! - the management kube-apiserver restarted during a scale-up, after etcd was compacted, so
//!   every watch resumes with 410 Gone;
//! - nova-api stopped during a delete.
//!
//! Every test ends with exact counts in Nova and Neutron: as many servers and ports as Machines,
//! then none. The tests stop shared services (the API server, nova-api), so they run one at a
//! time ([`SERIAL`]) and this file is its own test binary (cargo runs test binaries one after
//! another).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use capow::autoscaler::proto::externalgrpc as pb;
use capow_e2e::cloud::AdminCloud;
use capow_e2e::hcp::{HcpCluster, HcpOptions, dynamic, probe};
use capow_e2e::osproxy::{Config, Fault, FaultRule, FaultSet, Proxy};
use capow_e2e::{Env, Poll, clouds_yaml_text};
use kube::api::{Api, ListParams};
use prost::Message;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small deterministic generator (xorshift), seeded per run and recorded, so a failing run
/// can be repeated with `CAPOW_E2E_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> (Rng, u64) {
        let seed = std::env::var("CAPOW_E2E_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        (Rng(seed), seed)
    }

    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

fn rule(service: &str, method: Option<&str>, path: Option<&str>, fault: Fault) -> FaultRule {
    let mut r = FaultRule::new(fault);
    r.service = Some(service.into());
    r.method = method.map(Into::into);
    r.path = path.map(Into::into);
    r
}

async fn proxy_with(rules: Vec<FaultRule>, seed: u64) -> (Proxy, String) {
    let env = Env::get();
    let auth_url = capow_e2e::osproxy::auth_url_of(&env.clouds_yaml, &env.cloud).unwrap();
    let proxy = Proxy::start(Config {
        faults: FaultSet {
            seed: Some(seed),
            rules,
        },
        ..Config::new(&auth_url)
    })
    .await
    .unwrap();
    let yaml = proxy.clouds_yaml(&clouds_yaml_text(), &env.cloud).unwrap();
    (proxy, yaml)
}

/// Servers tagged with the cluster and their ports (capow's or Nova's), counted with the admin
/// client.
async fn counts(cloud: &AdminCloud, cluster_uid: &str) -> (usize, usize) {
    let tag = format!("capow-cluster-uid={cluster_uid}");
    (
        cloud.servers_tagged(&tag).await.unwrap().len(),
        cloud.machine_ports(&tag).await.unwrap().len(),
    )
}

/// Waits until the cluster has exactly `n` servers and `n` ports (duplicates removed, leftovers
/// deleted); returns how long that took.
async fn wait_counts(c: &HcpCluster, cloud: &AdminCloud, n: usize, timeout: Duration) -> Duration {
    let poll = Poll::new(format!("{n} servers and {n} ports"), timeout)
        .every(Duration::from_millis(500))
        .log_tail(&c.manager.log, 40);
    loop {
        let got = counts(cloud, &c.cluster_uid).await;
        if got == (n, n) {
            return poll.elapsed();
        }
        poll.tick(format_args!("have {got:?}")).await;
    }
}

async fn event_count(c: &HcpCluster, reason: &str) -> usize {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), &c.ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1) as usize))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn random_kills_during_scale_up_and_down_with_a_busy_cloud_leave_exactly_what_was_asked() {
    let _serial = SERIAL.lock().await;
    let env = Env::get();
    let (mut rng, seed) = Rng::new();
    let busy = vec![
        // Nova queues each create for 4 s and processes it even when its sender died.
        rule(
            "compute",
            Some("POST"),
            Some("^/servers$"),
            Fault::Busy { ms: 4000 },
        ),
        rule(
            "compute",
            Some("DELETE"),
            None,
            Fault::Delay {
                ms: 800,
                before: false,
            },
        ),
        rule(
            "network",
            None,
            None,
            Fault::Delay {
                ms: 150,
                before: true,
            },
        ),
    ];
    let (proxy, yaml) = proxy_with(busy, seed).await;
    let mut c = HcpCluster::start_with(
        "kills",
        HcpOptions {
            clouds_yaml: Some(yaml),
            manager_args: vec!["--server-create-settle".into(), "8s".into()],
            ..HcpOptions::default()
        },
    )
    .await;
    let cloud = AdminCloud::login().await.unwrap();
    c.add_machine_deployment("workers", "m1.tiny", 6).await;
    let started = Instant::now();
    c.set_replicas("workers", 5).await;
    let mut kills = 0;
    let mut in_flight_at_kills = Vec::new();
    for _ in 0..3 {
        // Kill while creates are queued in the busy Nova: at a random moment after the next
        // create reached it (or after 3 s when none comes).
        let posts = proxy.counts().operation("compute", "POST /servers");
        let _ = Poll::new("the next create at Nova", Duration::from_secs(3))
            .every(Duration::from_millis(50))
            .try_until(|| async { proxy.counts().operation("compute", "POST /servers") != posts })
            .await;
        tokio::time::sleep(rng.millis(300, 1500)).await;
        in_flight_at_kills.push(proxy.counts().operation("compute", "POST /servers") - posts);
        c.kill_and_restart_manager().await;
        kills += 1;
    }
    c.wait_running("workers", 5, Duration::from_secs(300)).await;
    let up = wait_counts(&c, &cloud, 5, Duration::from_secs(120)).await;
    let up_total = started.elapsed();

    let started = Instant::now();
    c.set_replicas("workers", 0).await;
    for _ in 0..3 {
        tokio::time::sleep(rng.millis(300, 3000)).await;
        c.kill_and_restart_manager().await;
        kills += 1;
    }
    c.wait_running("workers", 0, Duration::from_secs(300)).await;
    wait_counts(&c, &cloud, 0, Duration::from_secs(120)).await;
    let duplicates = event_count(&c, "DuplicateServerDeleted").await;
    env.record(&format!(
        "random kills (seed {seed}): {kills} SIGKILLs during 0 -> 5 -> 0 with a busy cloud (server creates sent within the second before each scale-up kill: {in_flight_at_kills:?}); 5 servers/5 ports after {:.1} s (+{:.1} s to settle), 0/0 after {:.1} s; {duplicates} duplicate server(s) made by lost creates and deleted by capow",
        up_total.as_secs_f64(),
        up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    c.finish().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn openstack_errors_timeouts_and_resets_at_a_rate_converge_without_leaks() {
    let _serial = SERIAL.lock().await;
    let env = Env::get();
    let (_, seed) = Rng::new();
    let limited = |mut r: FaultRule, rate: f64, max: u64| {
        r.rate = rate;
        r.max_count = Some(max);
        r
    };
    let rules = vec![
        limited(
            rule(
                "compute",
                Some("POST"),
                Some("^/servers$"),
                Fault::ResetAfter,
            ),
            0.3,
            2,
        ),
        limited(
            rule(
                "compute",
                Some("POST"),
                Some("^/servers$"),
                Fault::Status {
                    code: 503,
                    retry_after: None,
                },
            ),
            0.3,
            3,
        ),
        limited(
            rule(
                "network",
                Some("POST"),
                Some("^/ports$"),
                Fault::Status {
                    code: 500,
                    retry_after: None,
                },
            ),
            0.3,
            3,
        ),
        limited(
            rule(
                "network",
                Some("GET"),
                None,
                Fault::Status {
                    code: 429,
                    retry_after: Some(2),
                },
            ),
            0.1,
            3,
        ),
        limited(
            rule(
                "compute",
                Some("GET"),
                Some("^/servers/detail$"),
                Fault::Delay {
                    ms: 7000,
                    before: false,
                },
            ),
            0.1,
            2,
        ),
        limited(rule("network", None, None, Fault::ResetBefore), 0.05, 3),
        limited(
            rule(
                "compute",
                Some("DELETE"),
                None,
                Fault::Status {
                    code: 500,
                    retry_after: None,
                },
            ),
            0.3,
            3,
        ),
        limited(
            rule(
                "network",
                Some("DELETE"),
                Some("^/ports/"),
                Fault::Status {
                    code: 503,
                    retry_after: Some(1),
                },
            ),
            0.3,
            3,
        ),
    ];
    let (proxy, yaml) = proxy_with(rules, seed).await;
    let c = HcpCluster::start_with(
        "faults",
        HcpOptions {
            clouds_yaml: Some(yaml),
            // capow's own ports (`--port-creation neutron`), so the port faults below meet
            // requests; the default lets Nova make a plain port, a subset of these calls.
            manager_args: vec![
                "--openstack-timeout".into(),
                "5s".into(),
                "--server-create-settle".into(),
                "8s".into(),
                "--port-creation".into(),
                "neutron".into(),
            ],
            ..HcpOptions::default()
        },
    )
    .await;
    let cloud = AdminCloud::login().await.unwrap();
    c.add_machine_deployment("workers", "m1.tiny", 6).await;
    let started = Instant::now();
    c.set_replicas("workers", 5).await;
    c.wait_running("workers", 5, Duration::from_secs(400)).await;
    wait_counts(&c, &cloud, 5, Duration::from_secs(120)).await;
    let up = started.elapsed();
    let started = Instant::now();
    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(400)).await;
    wait_counts(&c, &cloud, 0, Duration::from_secs(120)).await;
    let down = started.elapsed();
    let counts = proxy.counts();
    let injected: Vec<String> = counts
        .faults
        .iter()
        .map(|f| {
            format!(
                "{}x {:?} on {} {}",
                f.stats.injected,
                f.rule.fault,
                f.rule.method.as_deref().unwrap_or("*"),
                f.rule
                    .path
                    .as_deref()
                    .unwrap_or(f.rule.service.as_deref().unwrap_or("*"))
            )
        })
        .collect();
    let windows: Vec<_> = counts
        .faults
        .iter()
        .flat_map(|f| f.windows.iter())
        .map(|w| {
            format!(
                "{} {} s: {} arrived",
                w.operation, w.retry_after_secs, w.arrived
            )
        })
        .collect();
    env.record(&format!(
        "OpenStack faults (seed {seed}): 0 -> 5 in {:.1} s, 5 -> 0 in {:.1} s, 0 duplicates, 0 leaks; injected: {}; Retry-After windows: {}",
        up.as_secs_f64(),
        down.as_secs_f64(),
        injected.join("; "),
        windows.join("; ")
    ));
    let total: u64 = counts.faults.iter().map(|f| f.stats.injected).sum();
    assert!(total > 0, "no fault was injected: {counts:?}");
    c.finish().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn an_api_server_restart_with_expired_watches_during_a_scale_up_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let env = Env::get();
    let c = HcpCluster::start("apirestart").await;
    let cloud = AdminCloud::login().await.unwrap();
    c.add_machine_deployment("workers", "m1.tiny", 6).await;
    c.set_replicas("workers", 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let out = std::process::Command::new(format!("{}/kube/restart-apiserver.sh", env_dir()))
        .args(["--compact", "--down", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restart = started.elapsed();
    c.wait_running("workers", 4, Duration::from_secs(240)).await;
    wait_counts(&c, &cloud, 4, Duration::from_secs(60)).await;
    // The externalgrpc index resumed too: it answers the new size and scales from it.
    let cloud_config = c.cloud_config().await;
    let group = format!("MachineDeployment/{}/workers", c.ns);
    let size = pb::NodeGroupTargetSizeResponse::decode(
        probe(
            &cloud_config,
            "NodeGroupTargetSize",
            &pb::NodeGroupTargetSizeRequest { id: group.clone() },
        )
        .as_slice(),
    )
    .unwrap()
    .target_size;
    assert_eq!(
        size, 4,
        "the index sees the Machines made across the restart"
    );
    probe(
        &cloud_config,
        "NodeGroupIncreaseSize",
        &pb::NodeGroupIncreaseSizeRequest {
            id: group.clone(),
            delta: 1,
        },
    );
    c.wait_running("workers", 5, Duration::from_secs(120)).await;
    wait_counts(&c, &cloud, 5, Duration::from_secs(60)).await;
    env.record(&format!(
        "kube-apiserver restarted with etcd compacted (410 Gone on every watch) {:.1} s into a 0 -> 4 scale-up: 4 servers, then IncreaseSize +1 through the resumed index: 5 servers",
        restart.as_secs_f64()
    ));
    c.set_replicas("workers", 0).await;
    c.wait_running("workers", 0, Duration::from_secs(180)).await;
    wait_counts(&c, &cloud, 0, Duration::from_secs(60)).await;
    c.finish().await;
}

fn env_dir() -> String {
    std::env::var("CAPOW_E2E_DIR").expect("CAPOW_E2E_DIR (set by e2e/test.sh)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn nova_down_during_a_delete_keeps_the_finalizer_until_the_delete_completes() {
    let _serial = SERIAL.lock().await;
    let env = Env::get();
    // capow's own ports (`--port-creation neutron`): the test shows that capow deletes no
    // port before its server; Nova deletes the ports it made itself.
    let c = HcpCluster::start_with(
        "novadown",
        HcpOptions {
            manager_args: vec!["--port-creation".into(), "neutron".into()],
            ..HcpOptions::default()
        },
    )
    .await;
    let cloud = AdminCloud::login().await.unwrap();
    c.add_machine_deployment("workers", "m1.tiny", 3).await;
    c.set_replicas("workers", 2).await;
    c.wait_running("workers", 2, Duration::from_secs(180)).await;
    wait_counts(&c, &cloud, 2, Duration::from_secs(60)).await;

    let osdev = std::env::var("OSDEV_STATE")
        .unwrap_or_else(|_| env.state.join("openstack").display().to_string());
    let stop = std::process::Command::new(format!("{}/openstack/down.sh", env_dir()))
        .args(["--only", "nova-api"])
        .env("OSDEV_STATE", &osdev)
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let stopped = Instant::now();
    c.set_replicas("workers", 0).await;

    // While Nova is down the machines keep their finalizer and say why.
    let machines = dynamic(
        &c.client,
        &c.ns,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerMachine",
    )
    .await;
    let reason = Poll::new(
        "a machine to report the unreachable Nova",
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(500))
    .log_tail(&c.manager.log, 30)
    .until(|| async {
        let mut reason = None;
        for m in machines.list(&ListParams::default()).await.unwrap().items {
            let v = serde_json::to_value(&m).unwrap();
            if v["metadata"]["deletionTimestamp"].is_string()
                && let Some(cond) = v["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                && cond["message"].as_str().is_some_and(|m| m.contains("Nova"))
            {
                reason = Some(cond["message"].as_str().unwrap().to_owned());
            }
        }
        reason
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = machines
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(
        held, 2,
        "the finalizers hold both machines while Nova is down"
    );
    let ports = cloud
        .neutron_tagged("ports", &format!("capow-cluster-uid={}", c.cluster_uid))
        .await
        .unwrap()
        .len();
    assert_eq!(ports, 2, "no port goes before its server");

    let start = std::process::Command::new(format!("{}/openstack/up.sh", env_dir()))
        .env("OSDEV_STATE", &osdev)
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let down_for = stopped.elapsed();
    let recovered = Instant::now();
    c.wait_running("workers", 0, Duration::from_secs(180)).await;
    wait_counts(&c, &cloud, 0, Duration::from_secs(60)).await;
    env.record(&format!(
        "nova-api down for {:.1} s during a 2 -> 0 scale-down: finalizers held (\"{}\"), deleted {:.1} s after Nova came back, 0 servers and ports left",
        down_for.as_secs_f64(),
        reason.chars().take(160).collect::<String>(),
        recovered.elapsed().as_secs_f64()
    ));
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e environment: run e2e/test.sh"]
async fn a_failing_listing_keeps_the_cluster_finalizer_until_the_sweep_can_see_everything() {
    let _serial = SERIAL.lock().await;
    let env = Env::get();
    let (proxy, yaml) = proxy_with(Vec::new(), 1).await;
    let c = HcpCluster::start_with(
        "sweepfail",
        HcpOptions {
            clouds_yaml: Some(yaml),
            manager_args: Vec::new(),
            ..HcpOptions::default()
        },
    )
    .await;
    // Trunk and volume listings fail for 20 s from now.
    let mut trunks = rule(
        "network",
        Some("GET"),
        Some("^/trunks"),
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    );
    trunks.stop_after_secs = Some(20.0);
    let mut volumes = rule(
        "block-storage",
        Some("GET"),
        Some("^/volumes"),
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    );
    volumes.stop_after_secs = Some(20.0);
    proxy
        .set_faults(&FaultSet {
            seed: Some(1),
            rules: vec![trunks, volumes],
        })
        .unwrap();
    let clusters = dynamic(&c.client, &c.ns, "cluster.x-k8s.io", "v1beta2", "Cluster").await;
    let _ = clusters
        .delete(capow_e2e::hcp::CLUSTER, &Default::default())
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let oswc = dynamic(
        &c.client,
        &c.ns,
        "infrastructure.cluster.x-k8s.io",
        "v1alpha1",
        "OpenStackWorkerCluster",
    )
    .await;
    let held = oswc
        .get_opt(capow_e2e::hcp::CLUSTER)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap());
    let held = held.expect("the finalizer holds the OpenStackWorkerCluster while listings fail");
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    let message = held["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["message"].to_string())
        .unwrap_or_default();
    assert!(
        message.contains("deletion is blocked") && message.contains("trunks"),
        "the condition says why the deletion waits: {message}"
    );
    let network = held["status"]["network"]["id"].as_str().unwrap().to_owned();
    env.record(&format!(
        "cluster deletion with failing trunk/volume listings: finalizer held for 10 s ({message}); released once they answer"
    ));
    let started = Instant::now();
    c.finish().await;
    let cloud = AdminCloud::login().await.unwrap();
    assert!(
        cloud
            .neutron("networks", &format!("id={network}"))
            .await
            .unwrap()
            .is_empty(),
        "the cluster's network is gone"
    );
    env.record(&format!(
        "  deleted {:.1} s after the listings recovered",
        started.elapsed().as_secs_f64()
    ));
    proxy.stop().await;
}
