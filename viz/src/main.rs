//! The `workbench` binary.

/// Counts allocated bytes so that `workbench bench` can report peak memory.
#[global_allocator]
static ALLOCATOR: kernels::alloc::CountingAllocator = kernels::alloc::CountingAllocator;

fn main() -> std::process::ExitCode {
    viz::cli::main_with_args(std::env::args_os())
}
