//! `bench`: the side-by-side benchmark of capow, CAPO and the Nova floor on the e2e environment
//! (issue 13; `capow_e2e::bench`). Run it through `e2e/bench.sh`, which builds what it needs
//! and sets the environment; results go to `$CAPOW_E2E_STATE/bench/results-<time>.jsonl` and
//! to stdout (`result: {...}` lines).
//!
//! ```text
//! bench side [--n 10,30,50] [--rounds 1] [--systems floor,capow,capo] [--steady-n 50] [--steady 300s]
//! bench increase [--count 100]
//! bench scale [--machines 1000,10000] [--window 120s] [--systems capow,capo]
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark program"
)]

use std::time::Duration;

use anyhow::Result;
use capow_e2e::bench::fixture::System;
use capow_e2e::bench::{Report, side};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    part: Part,
}

#[derive(Subcommand)]
enum Part {
    /// Floor, capow and CAPO side by side: scale 0 → N → 0 (parts 1 and 2).
    Side {
        /// Numbers of servers, in order.
        #[arg(long, value_delimiter = ',', default_value = "10,30,50")]
        n: Vec<usize>,
        /// Repetitions of the list (the order of the systems rotates on every step).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Systems.
        #[arg(long, value_delimiter = ',', default_value = "floor,capow,capo")]
        systems: Vec<String>,
        /// Concurrent POSTs of the floor (capow's --concurrency default).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The N at which each provider is held for the steady window (0: none).
        #[arg(long, default_value_t = 50)]
        steady_n: usize,
        /// Length of the steady window.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        steady: Duration,
        /// Extra flags of capow's manager (repeat; e.g. --capow-arg=--build-poll-interval=1s).
        #[arg(long = "capow-arg", allow_hyphen_values = true)]
        capow_args: Vec<String>,
    },
    /// capow's NodeGroupIncreaseSize → first POST /servers (part 5).
    Increase {
        /// Scale-ups.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Extra flags of capow's manager.
        #[arg(long = "capow-arg", allow_hyphen_values = true)]
        capow_args: Vec<String>,
    },
    /// Manager memory and CPU at many machines (part 3).
    Scale {
        /// Machine counts.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        machines: Vec<usize>,
        /// Steady window.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Systems.
        #[arg(long, value_delimiter = ',', default_value = "capow,capo")]
        systems: Vec<String>,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let env = capow_e2e::Env::get();
    let report = Report::new(&env.state.join("bench"));
    eprintln!("results: {}", report.path().display());
    match cli.part {
        Part::Side {
            n,
            rounds,
            systems,
            concurrency,
            steady_n,
            steady,
            capow_args,
        } => {
            let systems = systems
                .iter()
                .map(|s| System::parse(s))
                .collect::<Result<Vec<_>>>()?;
            let opts = side::SideOptions {
                ns: n,
                rounds,
                systems,
                concurrency,
                steady_n: (steady_n > 0).then_some(steady_n),
                steady,
                capow_args,
            };
            side::run(&opts, &report).await?;
        }
        Part::Increase { count, capow_args } => {
            capow_e2e::bench::increase::run(count, &capow_args, &report).await?;
        }
        Part::Scale {
            machines,
            window,
            systems,
        } => {
            let systems = systems
                .iter()
                .map(|s| System::parse(s))
                .collect::<Result<Vec<_>>>()?;
            let opts = capow_e2e::bench::scale::ScaleOptions {
                machines,
                systems,
                groups: 200,
                window,
                settle_max: Duration::from_secs(600),
            };
            capow_e2e::bench::scale::run(&opts, &report).await?;
        }
    }
    Ok(())
}
