//! Part 1 and 2 of the benchmark: the floor, capow and CAPO side by side, N servers up and down,
//! in one invocation, in an order that rotates with every N and round.
//!
//! - **floor**: N servers POSTed at Nova as the project's user, `concurrency` at a time (capow's
//!   `--concurrency` default, 16), same flavor, image and network, Nova making the port; then all
//!   deleted at the same concurrency. Through a counting proxy of its own, like the providers.
//! - **capow** and **CAPO**: the MachineDeployment of [`super::fixture`] scaled 0 → N and N → 0
//!   through its `scale` subresource.
//!
//! Observed for all three the same way, every 250 ms: Nova's server list by name prefix (as the
//! admin, straight at Nova, so the observer's calls count for nobody) and the Machines. Recorded
//! from the scale write (the floor: the first POST): first `POST /servers` at the proxy, all
//! servers ACTIVE, all Machines Running with a nodeRef (Nodes registered by the node registrar
//! of `capow_e2e::hcp`), and after the scale-down write: all servers gone, all Machines gone.
//! The proxy's counts give the OpenStack calls of the scale-up (to Running) and of the whole
//! lifecycle, by service, method and operation. At one N (`steady_n`) each provider is held at
//! N machines for a window, counting its calls, Keystone token requests among them.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::fixture::{Boot, ProviderCluster, System};
use super::nova::{BootIds, Nova, servers_named};
use super::{Calls, Report, by_method, by_service, diff, flatten, matching, secs, total};
use crate::cloud::AdminCloud;
use crate::osproxy::{Config, Proxy};
use crate::{Env, Poll, clouds_yaml_text};

/// What to run.
#[derive(Clone, Debug)]
pub struct SideOptions {
    /// Numbers of servers.
    pub ns: Vec<usize>,
    /// Repetitions of the whole list.
    pub rounds: usize,
    /// Systems to run.
    pub systems: Vec<System>,
    /// Concurrent POSTs and DELETEs of the floor.
    pub concurrency: usize,
    /// The N at which each provider is held for `steady`.
    pub steady_n: Option<usize>,
    /// Length of the steady window.
    pub steady: Duration,
    /// Extra capow manager flags.
    pub capow_args: Vec<String>,
}

/// One system's measurement at one N.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// `floor`, `capow` or `capo`.
    pub system: String,
    /// Servers.
    pub n: usize,
    /// Round.
    pub round: usize,
    /// Seconds from the scale write to the first `POST /servers` at the proxy.
    pub first_post: Option<f64>,
    /// Seconds to the N-th `POST /servers`.
    pub last_post: Option<f64>,
    /// Seconds to all N servers ACTIVE in Nova.
    pub active: Option<f64>,
    /// Seconds to all N Machines Running with a nodeRef.
    pub running: Option<f64>,
    /// Seconds from the scale-down write to no server left in Nova.
    pub servers_gone: Option<f64>,
    /// Seconds from the scale-down write to no Machine left.
    pub machines_gone: Option<f64>,
    /// Calls of the scale-up, to all Running (floor: to all ACTIVE).
    pub up_calls: Calls,
    /// Calls of the scale-down.
    pub down_calls: Calls,
    /// Calls in the steady window, and its length in seconds.
    pub steady_calls: Option<(Calls, f64)>,
    /// Manager RSS at the end of the scale-up and peak, KiB; CPU seconds of up and down.
    pub manager: Option<Value>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

impl Run {
    fn to_json(&self) -> Value {
        let lifecycle = {
            let mut all = self.up_calls.clone();
            for (k, v) in &self.down_calls {
                *all.entry(k.clone()).or_default() += v;
            }
            all
        };
        let per_machine = |c: &Calls| total(c) as f64 / self.n.max(1) as f64;
        json!({
            "kind": "side", "system": self.system, "n": self.n, "round": self.round,
            "first_post_s": self.first_post, "last_post_s": self.last_post,
            "active_s": self.active, "running_s": self.running,
            "servers_gone_s": self.servers_gone, "machines_gone_s": self.machines_gone,
            "calls_up": total(&self.up_calls), "calls_down": total(&self.down_calls),
            "calls_lifecycle": total(&lifecycle),
            "calls_per_machine_up": per_machine(&self.up_calls),
            "calls_per_machine_down": per_machine(&self.down_calls),
            "calls_per_machine_lifecycle": per_machine(&lifecycle),
            "token_requests_lifecycle": matching(&lifecycle, "identity POST /auth/tokens"),
            "by_service": by_service(&lifecycle), "by_method": by_method(&lifecycle),
            "up_operations": self.up_calls, "down_operations": self.down_calls,
            "steady": self.steady_calls.as_ref().map(|(c, w)| json!({
                "window_s": w, "calls": total(c),
                "calls_per_hour": total(c) as f64 * 3600.0 / w,
                "token_requests": matching(c, "identity POST /auth/tokens"),
                "token_requests_per_hour": matching(c, "identity POST /auth/tokens") as f64 * 3600.0 / w,
                "operations": c})),
            "manager": self.manager, "error": self.error,
        })
    }
}

fn up_timeout(n: usize) -> Duration {
    Duration::from_secs(180 + 6 * n as u64)
}

fn down_timeout(n: usize) -> Duration {
    Duration::from_secs(120 + 3 * n as u64)
}

/// Runs the side-by-side benchmark; one `side` record per system and N, in the report.
///
/// # Errors
/// When the environment cannot be set up (single runs that fail are recorded, not returned).
pub async fn run(opts: &SideOptions, report: &Report) -> Result<Vec<Run>> {
    let env = Env::get();
    let admin = AdminCloud::login().await?;
    let boot = Boot::default();
    let ids = super::nova::boot_ids(&admin, &boot.flavor, &boot.image, &boot.network).await?;
    let mut install = None;
    if opts.systems.contains(&System::Capo) {
        let client = env.client().await;
        report.note("installing CAPO's CRDs, webhooks and RBAC");
        install = Some(
            super::capo::CapoInstall::install(&client, super::capo::CapoPaths::from_env()?).await?,
        );
    }
    let mut clusters = Vec::new();
    let mut setup_error = None;
    for s in &opts.systems {
        if *s == System::Floor {
            continue;
        }
        report.note(&format!("setting up the {} cluster", s.name()));
        match ProviderCluster::start(*s, &boot, install.as_ref(), &opts.capow_args).await {
            Ok(c) => clusters.push(c),
            Err(e) => {
                setup_error = Some(e);
                break;
            }
        }
    }
    let mut runs = Vec::new();
    if setup_error.is_none() {
        let floor_proxy = if opts.systems.contains(&System::Floor) {
            let auth_url = crate::osproxy::auth_url_of(&env.clouds_yaml, &env.cloud)?;
            Some(Proxy::start(Config::new(&auth_url)).await?)
        } else {
            None
        };
        let mut slot = 0usize;
        for round in 0..opts.rounds {
            for &n in &opts.ns {
                let k = opts.systems.len();
                let order: Vec<System> = (0..k).map(|i| opts.systems[(i + slot) % k]).collect();
                slot += 1;
                for s in order {
                    report.note(&format!("round {round}: {} with N = {n}", s.name()));
                    let mut r = match s {
                        System::Floor => match &floor_proxy {
                            Some(p) => floor(p, &admin, &ids, n, opts.concurrency).await,
                            None => continue,
                        },
                        _ => {
                            let Some(c) = clusters.iter().find(|c| c.system == s) else {
                                continue;
                            };
                            let steady =
                                (opts.steady_n == Some(n) && round == 0).then_some(opts.steady);
                            provider(c, &admin, n, steady).await
                        }
                    };
                    r.round = round;
                    report.record(r.to_json());
                    runs.push(r);
                }
            }
        }
        if let Some(p) = floor_proxy {
            p.stop().await;
        }
    }
    for c in clusters {
        report.note(&format!("tearing down the {} cluster", c.system.name()));
        c.finish().await;
    }
    if let Some(i) = &install {
        i.uninstall().await;
    }
    match setup_error {
        Some(e) => Err(e),
        None => Ok(runs),
    }
}

/// The floor: N servers POSTed at Nova, `concurrency` at a time, then deleted.
async fn floor(
    proxy: &Proxy,
    admin: &AdminCloud,
    ids: &BootIds,
    n: usize,
    concurrency: usize,
) -> Run {
    let mut run = Run {
        system: "floor".into(),
        n,
        ..Run::default()
    };
    let env = Env::get();
    let prefix = format!("bench-floor-{:04x}-", std::process::id() % 0xffff);
    let nova = match Nova::login(&clouds_yaml_text(), &env.cloud, &proxy.auth_url()).await {
        Ok(n) => std::sync::Arc::new(n),
        Err(e) => {
            run.error = Some(format!("login: {e:#}"));
            return run;
        }
    };
    proxy.reset_counts();
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (nova, sem, ids) = (nova.clone(), sem.clone(), ids.clone());
        let name = format!("{prefix}{i}");
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            nova.create_server(&name, &ids.flavor, &ids.image, &ids.network)
                .await
        });
    }
    let mut created = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(id)) => created.push(id),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let posts: Vec<Instant> = proxy
        .arrivals_since(started)
        .into_iter()
        .filter(|a| a.service == "compute" && a.operation == "POST /servers")
        .map(|a| a.at)
        .collect();
    run.first_post = posts.first().map(|t| secs(t.duration_since(started)));
    run.last_post = posts.last().map(|t| secs(t.duration_since(started)));
    if !errors.is_empty() {
        run.error = Some(format!("{} creates failed: {}", errors.len(), errors[0]));
    }
    // All ACTIVE.
    let poll = Poll::new(
        "the servers ACTIVE",
        up_timeout(n).saturating_sub(started.elapsed()),
    );
    loop {
        match servers_named(admin, &prefix).await {
            Ok(s) if s.len() == n && s.iter().all(|s| s.status == "ACTIVE") => {
                run.active = Some(secs(started.elapsed()));
                break;
            }
            Ok(s) if s.iter().any(|s| s.status == "ERROR") => {
                run.error = Some(format!(
                    "{} servers in ERROR",
                    s.iter().filter(|s| s.status == "ERROR").count()
                ));
                break;
            }
            _ => {}
        }
        if let Err(e) = poll.try_tick("").await {
            run.error.get_or_insert_with(|| e.to_string());
            break;
        }
    }
    run.up_calls = flatten(&proxy.counts());
    // Delete all (every server with the prefix, also ones whose answer was lost).
    let ids_now: Vec<String> = servers_named(admin, &prefix)
        .await
        .map(|s| s.into_iter().map(|s| s.id).collect())
        .unwrap_or(created);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids_now {
        let (nova, sem) = (nova.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            nova.delete_server(&id).await
        });
    }
    while tasks.join_next().await.is_some() {}
    let deleted = Poll::new(
        "the servers deleted",
        down_timeout(n).saturating_sub(started.elapsed()),
    )
    .try_until(|| async {
        servers_named(admin, &prefix)
            .await
            .is_ok_and(|s| s.is_empty())
    })
    .await;
    match deleted {
        Ok(()) => run.servers_gone = Some(secs(started.elapsed())),
        Err(e) => {
            run.error.get_or_insert_with(|| e.to_string());
        }
    }
    run.down_calls = diff(&flatten(&proxy.counts()), &run.up_calls);
    run
}

/// A provider: MachineDeployment 0 → N (→ steady window) → 0.
async fn provider(
    c: &ProviderCluster,
    admin: &AdminCloud,
    n: usize,
    steady: Option<Duration>,
) -> Run {
    let mut run = Run {
        system: c.system.name().into(),
        n,
        ..Run::default()
    };
    let prefix = format!("{}-", c.md);
    if let Err(e) = up(c, admin, n, &prefix, &mut run).await {
        run.error = Some(format!("{e:#}"));
    }
    let after_up = c.stats();
    if let Some(window) = steady.filter(|_| run.error.is_none()) {
        let before = flatten(&c.proxy.counts());
        let t = Instant::now();
        tokio::time::sleep(window).await;
        run.steady_calls = Some((
            diff(&flatten(&c.proxy.counts()), &before),
            t.elapsed().as_secs_f64(),
        ));
    }
    let before_down = flatten(&c.proxy.counts());
    let cpu_before_down = c.stats().cpu_seconds;
    if let Err(e) = down(c, admin, n, &prefix, &mut run).await {
        run.error.get_or_insert(format!("{e:#}"));
    }
    run.down_calls = diff(&flatten(&c.proxy.counts()), &before_down);
    let end = c.stats();
    run.manager = Some(json!({
        "rss_after_up_kib": after_up.rss_kib, "peak_rss_kib": end.hwm_kib,
        "cpu_s_total": end.cpu_seconds, "cpu_s_down": end.cpu_seconds - cpu_before_down}));
    if run.error.is_some() {
        run.error = run
            .error
            .map(|e| format!("{e}\n{}", crate::log_tail(c.log(), 15)));
    }
    run
}

async fn up(
    c: &ProviderCluster,
    admin: &AdminCloud,
    n: usize,
    prefix: &str,
    run: &mut Run,
) -> Result<()> {
    c.proxy.reset_counts();
    let started = Instant::now();
    c.set_replicas(n).await?;
    let poll = Poll::new(
        format!("{n} servers ACTIVE and {n} Machines Running"),
        up_timeout(n).saturating_sub(started.elapsed()),
    );
    loop {
        let servers = servers_named(admin, prefix).await.unwrap_or_default();
        if run.active.is_none()
            && servers.len() == n
            && servers.iter().all(|s| s.status == "ACTIVE")
        {
            run.active = Some(secs(started.elapsed()));
        }
        if run.running.is_none() && c.machines().await.is_ok_and(|(all, r)| all == n && r == n) {
            run.running = Some(secs(started.elapsed()));
        }
        if run.active.is_some() && run.running.is_some() {
            break;
        }
        let seen = format!(
            "{} of {n} servers ({} ACTIVE), Machines Running: {}",
            servers.len(),
            servers.iter().filter(|s| s.status == "ACTIVE").count(),
            run.running.is_some()
        );
        if let Err(e) = poll.try_tick(seen).await {
            record_up(c, started, n, run);
            return Err(e);
        }
    }
    record_up(c, started, n, run);
    Ok(())
}

/// The scale-up's calls and POST times, recorded also when the scale-up timed out.
fn record_up(c: &ProviderCluster, started: Instant, n: usize, run: &mut Run) {
    run.up_calls = flatten(&c.proxy.counts());
    let posts: Vec<Instant> = c
        .proxy
        .arrivals_since(started)
        .into_iter()
        .filter(|a| a.service == "compute" && a.operation == "POST /servers")
        .map(|a| a.at)
        .collect();
    run.first_post = posts.first().map(|t| secs(t.duration_since(started)));
    run.last_post = posts
        .get(n.saturating_sub(1))
        .map(|t| secs(t.duration_since(started)));
}

async fn down(
    c: &ProviderCluster,
    admin: &AdminCloud,
    n: usize,
    prefix: &str,
    run: &mut Run,
) -> Result<()> {
    let started = Instant::now();
    c.set_replicas(0).await?;
    let poll = Poll::new(
        "the servers and Machines deleted",
        down_timeout(n).saturating_sub(started.elapsed()),
    );
    loop {
        if run.servers_gone.is_none()
            && servers_named(admin, prefix)
                .await
                .is_ok_and(|s| s.is_empty())
        {
            run.servers_gone = Some(secs(started.elapsed()));
        }
        if run.machines_gone.is_none() && c.machines().await.is_ok_and(|(all, _)| all == 0) {
            run.machines_gone = Some(secs(started.elapsed()));
        }
        if run.servers_gone.is_some() && run.machines_gone.is_some() {
            return Ok(());
        }
        poll.try_tick(format_args!(
            "servers gone: {}, Machines gone: {}",
            run.servers_gone.is_some(),
            run.machines_gone.is_some()
        ))
        .await?;
    }
}
