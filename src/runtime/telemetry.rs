//! Logging setup: `tracing` with an `EnvFilter` and plain or JSON output.

use tracing_subscriber::EnvFilter;

use super::cli::LogFormat;

/// Installs the global subscriber.
///
/// # Errors
/// When `filter` is not a valid `RUST_LOG` directive list.
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("failed to install the log subscriber: {e}"))
}
