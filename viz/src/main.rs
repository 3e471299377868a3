//! The `workbench` binary.

fn main() -> std::process::ExitCode {
    viz::cli::main_with_args(std::env::args_os())
}
