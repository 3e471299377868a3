//! The `workbench` binary: without arguments it opens the desktop app (feature `gui`), with
//! arguments it is the command line.

/// Counts allocated bytes so that `workbench bench` can report peak memory.
#[global_allocator]
static ALLOCATOR: kernels::alloc::CountingAllocator = kernels::alloc::CountingAllocator;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "gui")]
    if std::env::args_os().len() <= 1 {
        return match viz::app::launch(|k| std::env::var_os(k)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    viz::cli::main_with_args(std::env::args_os())
}
