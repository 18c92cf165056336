//! `osproxy`: a fault-injecting, counting proxy between capow (or any OpenStack client) and the
//! OpenStack cloud of the e2e environment, all on 127.0.0.1.
//!
//! **What.** It forwards Keystone and, through a rewritten service catalog, every catalog
//! endpoint (Nova, Neutron, Glance, Placement, Cinder), counts each request by service, method
//! and normalized operation (`POST /servers`, `DELETE /ports/{id}`), and injects faults by rule:
//! an error answer (500, 503, 429 with `Retry-After`), a delayed answer, or a connection closed
//! without an answer, before or after the upstream did the work, at a seeded rate, within a time
//! window and at most K times. It reports how many requests arrived while a `Retry-After`
//! window it opened was still open.
//!
//! **Why.** The e2e OpenStack never fails on its own; the fault tests need a cloud that does,
//! in a repeatable way, and a count of what capow sent.
//!
//! **How to run.** With the e2e environment up (`source e2e/dev-env.sh` sets
//! `CAPOW_E2E_CLOUDS_YAML`):
//!
//! ```text
//! cargo run -p capow-e2e --bin osproxy -- --write-clouds-yaml /tmp/proxied-clouds.yaml \
//!     --seed 7 --fault '{"service":"compute","method":"POST","path":"^/servers$","rate":0.5,
//!                        "fault":{"kind":"status","code":429,"retry_after":2}}'
//! listening http://127.0.0.1:40123
//! auth_url http://127.0.0.1:40123/v3
//! clouds_yaml /tmp/proxied-clouds.yaml
//!
//! OS_CLIENT_CONFIG_FILE=/tmp/proxied-clouds.yaml openstack --os-cloud osdev-demo server list
//! curl -s http://127.0.0.1:40123/_control/counts
//! curl -s -X PUT http://127.0.0.1:40123/_control/faults -d '{"rules": []}'
//! ```
//!
//! Options: `--listen` (a loopback address, default `127.0.0.1:0`), `--auth-url` (default: the
//! `auth_url` of `--cloud`, default `osdev-demo`, in `--clouds-yaml`, default
//! `$CAPOW_E2E_CLOUDS_YAML`), `--seed`, `--fault` (one rule as JSON, repeatable), `--faults-file`
//! (a whole set as JSON), `--write-clouds-yaml`, `--exit-after` (default 4h: the proxy never
//! outlives a forgotten test run by long).
//!
//! **URL scheme.** `/_control/...` is the control API; `/_/<host:port>/<path>` goes to
//! `http://<host:port>/<path>` (a catalog endpoint); every other path goes to Keystone's origin
//! unchanged (`/v3/...`, or `/identity/v3/...` when the `auth_url` has a path). The details, the
//! rule format and the control API are in `e2e/src/osproxy.rs` and `docs/e2e-environment.md`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use capow_e2e::osproxy::{self, Config, FaultRule, FaultSet, Proxy};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Fault-injecting, counting OpenStack proxy on loopback (e2e tests)")]
struct Cli {
    /// Loopback address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Keystone auth_url (plain HTTP on loopback); default: the cloud's in --clouds-yaml.
    #[arg(long)]
    auth_url: Option<String>,
    /// clouds.yaml to read --cloud from.
    #[arg(long, env = "CAPOW_E2E_CLOUDS_YAML")]
    clouds_yaml: Option<PathBuf>,
    /// Cloud in --clouds-yaml.
    #[arg(long, default_value = "osdev-demo")]
    cloud: String,
    /// Seed of the fault draws (overrides the seed of --faults-file).
    #[arg(long)]
    seed: Option<u64>,
    /// One fault rule as JSON (repeatable; appended after --faults-file's rules).
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// A fault set as JSON: {"seed": N, "rules": [...]}.
    #[arg(long)]
    faults_file: Option<PathBuf>,
    /// Write a copy of --clouds-yaml whose --cloud goes through the proxy here.
    #[arg(long)]
    write_clouds_yaml: Option<PathBuf>,
    /// Exit after this long (e.g. 30m, 2h).
    #[arg(long, default_value = "4h")]
    exit_after: humantime::Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let auth_url = match (&cli.auth_url, &cli.clouds_yaml) {
        (Some(u), _) => u.clone(),
        (None, Some(path)) => osproxy::auth_url_of(path, &cli.cloud)?,
        (None, None) => {
            anyhow::bail!("give --auth-url or --clouds-yaml (or CAPOW_E2E_CLOUDS_YAML)")
        }
    };
    let mut set = match &cli.faults_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            serde_json::from_str::<FaultSet>(&text)
                .with_context(|| format!("parse {}", path.display()))?
        }
        None => FaultSet::default(),
    };
    for f in &cli.faults {
        let rule: FaultRule =
            serde_json::from_str(f).with_context(|| format!("parse --fault {f}"))?;
        set.rules.push(rule);
    }
    set.seed = cli.seed.or(set.seed).or(Some(0));
    let proxy = Proxy::start(Config {
        listen: cli.listen,
        auth_url,
        faults: set,
    })
    .await?;
    // The clouds.yaml is written before the address lines: whoever waits for those lines
    // (`ProxyProcess::spawn`) may read the file at once.
    if let Some(out) = &cli.write_clouds_yaml {
        let from = cli
            .clouds_yaml
            .as_ref()
            .context("--write-clouds-yaml needs --clouds-yaml")?;
        osproxy::write_clouds_yaml_via_proxy(from, &cli.cloud, &proxy.url(), out)?;
    }
    println!("listening {}", proxy.url());
    println!("auth_url {}", proxy.auth_url());
    if let Some(out) = &cli.write_clouds_yaml {
        println!("clouds_yaml {}", out.display());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = tokio::time::sleep(*cli.exit_after) => eprintln!("osproxy: --exit-after reached"),
    }
    proxy.stop().await;
    Ok(())
}
