//! The command line: every subcommand's flags (clap) live here, one file each, and each turns
//! its flags into the library's options and calls the library's `run`. Global flags (logging)
//! are grouped apart in `--help`; `fanout completions` and `fanout manpage` are generated from
//! these definitions (clap_complete, clap_mangen).

pub mod controller;
pub mod demo;
pub mod endpoints;
pub mod keygen;
pub mod prepare_socket_dir;
pub mod proxy;
pub mod publish;
pub mod subscribe;

use crate::telemetry::LogFormat;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fanout",
    version,
    about = "ZeroMQ pub/sub fanout fabric with live Kubernetes group membership"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `fanout=debug,kube=info`).
    #[arg(long, global = true, env = "FANOUT_LOG", default_value = "info")]
    pub log_level: String,
    /// Log output format.
    #[arg(long, global = true, env = "FANOUT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the operator: reconcile FanoutGroups into proxies, endpoint lists and status.
    Controller(controller::ControllerArgs),
    /// Run the per-node proxy: XSUB for publishers, XPUB for local subscribers.
    Proxy(proxy::ProxyArgs),
    /// Give the proxy's socket directory its owner, group and mode (the proxy pod's init
    /// container, run as root with CAP_CHOWN and CAP_FOWNER only).
    #[command(name = crate::proxy::socket_dir::SUBCOMMAND)]
    PrepareSocketDir(prepare_socket_dir::PrepareSocketDirArgs),
    /// Publish messages to every proxy of a group.
    Publish(publish::PublishArgs),
    /// Subscribe to topics on a proxy and print what arrives.
    Subscribe(subscribe::SubscribeArgs),
    /// Watch a group's membership and print every change.
    Endpoints(endpoints::EndpointsArgs),
    /// Make a CURVE key pair (Z85): print it, or write DIR/public.key and DIR/secret.key.
    Keygen(keygen::KeygenArgs),
    /// Print the FanoutGroup CustomResourceDefinition as YAML.
    Crd,
    /// Run the whole fabric on this machine, no cluster needed.
    Demo(demo::DemoArgs),
    /// GET an http:// URL and succeed on a 2xx answer (the chart's `helm test`).
    Probe {
        /// The URL, e.g. http://fanout-metrics.fanout-system:8080/readyz.
        url: String,
        /// Seconds allowed for connecting, sending and reading each.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Manpage,
}

impl Command {
    pub fn run(self) -> crate::Result<()> {
        match self {
            Command::Controller(args) => args.run(),
            Command::Proxy(args) => args.run(),
            Command::PrepareSocketDir(args) => args.run(),
            Command::Publish(args) => args.run(),
            Command::Subscribe(args) => args.run(),
            Command::Endpoints(args) => args.run(),
            Command::Keygen(args) => args.run(),
            Command::Crd => {
                print!("{}", crate::crd::crd_yaml()?);
                Ok(())
            }
            Command::Demo(args) => args.run(),
            Command::Probe { url, timeout } => {
                let timeout = publish::seconds("timeout", timeout)?;
                let status = crate::probe::probe(&url, timeout)?;
                println!("{url}: {status}");
                Ok(())
            }
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut Cli::command(), "fanout", &mut std::io::stdout());
                Ok(())
            }
            Command::Manpage => {
                clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
                Ok(())
            }
        }
    }
}

/// The whole program: parse, set up logging, run; an error is printed once, to stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = crate::telemetry::init(&cli.log.log_level, cli.log.log_format) {
        eprintln!("fanout: {err}");
        return ExitCode::FAILURE;
    }
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fanout: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_are_grouped_apart_in_help() {
        let help = Cli::command().render_long_help().to_string();
        let global = help.find("Global options:").expect("a Global options heading");
        assert!(help[global..].contains("--log-level"), "{help}");
        assert!(help[global..].contains("--log-format"), "{help}");
    }

    #[test]
    fn completions_and_the_man_page_render() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "fanout",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("fanout") && bash.contains("publish"), "{bash}");
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH fanout"), "{man}");
        assert!(man.contains("controller"), "{man}");
    }

    #[test]
    fn endpoints_takes_an_output_format() {
        let cli = Cli::try_parse_from(["fanout", "endpoints", "--group", "g", "-o", "json"]).unwrap();
        let Command::Endpoints(args) = cli.command else {
            panic!("endpoints")
        };
        assert_eq!(args.output, crate::membership::print::OutputFormat::Json);
    }
}
