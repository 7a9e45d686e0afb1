//! Logging set-up shared by every subcommand: `tracing` with a level filter and text or JSON
//! output, chosen on the command line or through `RUST_LOG`.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `fanout=debug,kube=info`).
    #[arg(long, global = true, env = "FANOUT_LOG", default_value = "info")]
    pub log_level: String,
    /// Log output format.
    #[arg(long, global = true, env = "FANOUT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. Logs go to stderr so that stdout stays for data
/// (`fanout subscribe` and `fanout crd` print their output there).
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(&args.log_level).map_err(|e| format!("--log-level {:?}: {e}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| e.to_string())
}
