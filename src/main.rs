use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: composing and sending a message allocates and
/// frees many small buffers on the runtime's threads, and glibc's arenas spent 13% of
/// the send path's CPU in malloc, free and consolidation (`cargo bench --bench send`
/// under perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    followup::cli::main()
}
