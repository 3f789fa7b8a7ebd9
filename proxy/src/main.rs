//! attache: a light sidecar HTTP proxy for service meshes. See the README for what it does and
//! `attache --help` for how to run it.

#![forbid(unsafe_code)]

mod admin;
mod body;
mod cli;
mod conn;
mod demo;
mod flags;
mod forward;
mod hop_by_hop;
mod idempotency;
mod inbound;
mod limits;
mod listener;
mod logging;
mod outbound;
mod pool;
mod reload;
mod server;
mod snapshot;
mod telemetry;

// jemalloc returns memory to the OS more readily than glibc's malloc under a proxy's churn of
// short-lived buffers, which keeps RSS flat; measured in bench/RESULTS.md.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
