//! The `hyper-rt` command: parses the command line, runs the subcommand, maps errors to exit codes.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
