//! The `capow` binary: installs the rustls crypto provider, parses the command line and runs it.

use clap::Parser;

/// jemalloc instead of the C library's allocator: the manager's caches hold many small
/// objects that tokio's worker threads allocate and free, and glibc's per-thread arenas kept
/// the freed memory resident (docs/benchmarks.md, "Manager memory and CPU at 1k and 10k
/// machines").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a rustls crypto provider was already installed");
    }
    capow::runtime::run(capow::runtime::cli::Cli::parse()).await
}
