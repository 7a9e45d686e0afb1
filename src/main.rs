//! The `fanout` binary: one executable, one subcommand per role.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fanout",
    version,
    about = "ZeroMQ pub/sub fanout fabric with live Kubernetes group membership"
)]
struct Cli {
    #[command(flatten)]
    log: fanout::telemetry::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: reconcile FanoutGroups into proxies, endpoint lists and status.
    Controller(fanout::controller::ControllerArgs),
    /// Run the per-node proxy: XSUB for publishers, XPUB for local subscribers.
    Proxy(fanout::proxy::ProxyArgs),
    /// Give the proxy's socket directory its owner, group and mode (the proxy pod's init
    /// container, run as root with CAP_CHOWN and CAP_FOWNER only).
    #[command(name = fanout::proxy::socket_dir::SUBCOMMAND)]
    PrepareSocketDir(fanout::proxy::socket_dir::PrepareSocketDirArgs),
    /// Publish messages to every proxy of a group.
    Publish(fanout::cli::publish::PublishArgs),
    /// Subscribe to topics on a proxy and print what arrives.
    Subscribe(fanout::cli::subscribe::SubscribeArgs),
    /// Watch a group's membership and print every change.
    Endpoints(fanout::cli::endpoints::EndpointsArgs),
    /// Print the FanoutGroup CustomResourceDefinition as YAML.
    Crd,
    /// Run the whole fabric on this machine, no cluster needed.
    Demo(fanout::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = fanout::telemetry::init(&cli.log) {
        eprintln!("fanout: cannot set up logging: {err}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Controller(args) => fanout::controller::run(args),
        Command::Proxy(args) => fanout::proxy::run(args),
        Command::PrepareSocketDir(args) => fanout::proxy::socket_dir::run(args),
        Command::Publish(args) => fanout::cli::publish::run(args),
        Command::Subscribe(args) => fanout::cli::subscribe::run(args),
        Command::Endpoints(args) => fanout::cli::endpoints::run(args),
        Command::Crd => fanout::crd::print_crd(),
        Command::Demo(args) => fanout::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "fanout exited with an error");
            eprintln!("fanout: {err}");
            ExitCode::FAILURE
        }
    }
}
