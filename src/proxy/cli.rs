//! The `fanout proxy` subcommand: flags (a contract with the controller's DaemonSet), the
//! HTTP endpoint, and SIGTERM/SIGINT handling around a [`Proxy`](super::Proxy).

use super::config::{DEFAULT_HWM, DEFAULT_MAX_MESSAGE_BYTES, ProxyConfig};
use crate::http::Health;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// XSUB bind endpoint for publishers (repeatable), e.g. `tcp://0.0.0.0:7100`.
    #[arg(long = "publishers", value_name = "ENDPOINT", required = true)]
    pub publishers: Vec<String>,
    /// XPUB bind endpoint for local subscribers (repeatable), e.g.
    /// `ipc:///var/run/fanout/ns.name.sock` or `tcp://0.0.0.0:7101`.
    #[arg(long = "subscribers", value_name = "ENDPOINT", required = true)]
    pub subscribers: Vec<String>,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address, e.g. `0.0.0.0:9102`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,
    /// Per-peer queue bound in messages (send and receive high-water marks).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HWM, value_parser = clap::value_parser!(i32).range(0..))]
    pub hwm: i32,
    /// Largest frame accepted from a peer; a peer sending a bigger one is disconnected.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_message_bytes: i64,
    /// ZMTP heartbeat interval in seconds (fractions allowed; 0 disables); peers silent for
    /// three intervals are dropped.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub heartbeat: Duration,
    /// Permission bits of unix socket files, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal permission mode such as 660")),
    }
}

impl From<ProxyArgs> for ProxyConfig {
    fn from(args: ProxyArgs) -> Self {
        ProxyConfig {
            publishers: args.publishers,
            subscribers: args.subscribers,
            hwm: args.hwm,
            max_message_bytes: args.max_message_bytes,
            heartbeat: args.heartbeat,
            socket_mode: args.socket_mode,
        }
    }
}

/// Runs the proxy until SIGTERM or SIGINT, then stops it cleanly and returns (exit 0).
pub fn run(args: ProxyArgs) -> crate::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: ProxyArgs) -> crate::Result<()> {
    let health = Arc::new(Health::default());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;

    let http_addr = args.http;
    let proxy = tokio::task::spawn_blocking(move || super::start(args.into()))
        .await
        .map_err(|e| crate::Error::Other(format!("starting the proxy: {e}")))?
        .map_err(|e| crate::Error::Other(e.to_string()))?;
    let mut registry = Registry::default();
    proxy.metrics().register(&mut registry);
    let registry = Arc::new(registry);

    let http = match http_addr {
        Some(addr) => {
            let mut stop = shutdown_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            let (local, server) = crate::http::bind(addr, health.clone(), registry, shutdown).await?;
            tracing::info!(%local, "serving /healthz, /readyz, /metrics");
            Some(tokio::spawn(server))
        }
        None => None,
    };
    // Every socket is bound: start() returned.
    health.set_ready(true);

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let signal = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = ticker.tick() => {
                if !proxy.is_running() {
                    health.set_live(false);
                    health.set_ready(false);
                }
            }
        }
    };
    tracing::info!(signal, "stopping the proxy");
    health.set_ready(false);
    let stats = tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .map_err(|e| crate::Error::Other(format!("stopping the proxy: {e}")))?;
    let _ = shutdown_tx.send(true);
    if let Some(http) = http {
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        }
    }
    let stats = stats.map_err(|e| crate::Error::Other(e.to_string()))?;
    tracing::info!(?stats, "proxy stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    #[test]
    fn flags_parse_into_a_config() {
        let cli = Cli::try_parse_from([
            "proxy",
            "--publishers",
            "tcp://0.0.0.0:7100",
            "--publishers",
            "tcp://127.0.0.1:7200",
            "--subscribers",
            "ipc:///var/run/fanout/ns.g.sock",
            "--http",
            "0.0.0.0:9102",
            "--hwm",
            "500",
            "--max-message-bytes",
            "65536",
            "--heartbeat",
            "2.5",
            "--socket-mode",
            "600",
        ])
        .expect("valid flags");
        assert_eq!(
            cli.args.http,
            Some("0.0.0.0:9102".parse().expect("literal address"))
        );
        let config = ProxyConfig::from(cli.args);
        assert_eq!(config.publishers, ["tcp://0.0.0.0:7100", "tcp://127.0.0.1:7200"]);
        assert_eq!(config.subscribers, ["ipc:///var/run/fanout/ns.g.sock"]);
        assert_eq!(config.hwm, 500);
        assert_eq!(config.max_message_bytes, 65536);
        assert_eq!(config.heartbeat, Duration::from_millis(2500));
        assert_eq!(config.socket_mode, 0o600);
    }

    #[test]
    fn defaults_and_bad_values() {
        let cli = Cli::try_parse_from([
            "proxy",
            "--publishers",
            "tcp://*:7100",
            "--subscribers",
            "ipc:///x.sock",
        ])
        .expect("valid flags");
        assert_eq!(cli.args.socket_mode, 0o660);
        assert_eq!(cli.args.hwm, DEFAULT_HWM);
        assert!(Cli::try_parse_from(["proxy", "--subscribers", "ipc:///x.sock"]).is_err());
        let bad = |flag: &str, value: &str| {
            Cli::try_parse_from([
                "proxy",
                "--publishers",
                "tcp://*:1",
                "--subscribers",
                "ipc:///x",
                flag,
                value,
            ])
            .is_err()
        };
        assert!(bad("--socket-mode", "999"));
        assert!(bad("--socket-mode", "1777"));
        assert!(bad("--heartbeat", "-1"));
        assert!(bad("--heartbeat", "soon"));
        assert!(bad("--hwm", "-5"));
        assert!(bad("--max-message-bytes", "0"));
    }
}
