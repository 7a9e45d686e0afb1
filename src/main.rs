//! The `fanout` binary: one executable, one subcommand per role (see `fanout::cli`).

fn main() -> std::process::ExitCode {
    fanout::cli::main()
}
