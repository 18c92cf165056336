//! The `capow` binary: installs the rustls crypto provider, parses the command line and runs it.

use clap::Parser;

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
