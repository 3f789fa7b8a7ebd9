//! attache: a light sidecar HTTP proxy for service meshes. See the README for what it does and
//! `attache --help` for how to run it.

#![forbid(unsafe_code)]

mod admin;
mod allocator;
mod balance;
mod body;
mod cli;
mod conn;
mod connector;
mod demo;
mod flags;
mod forward;
mod hop_by_hop;
mod idempotency;
mod inbound;
mod kept;
mod lasting;
mod limits;
mod listener;
mod logging;
mod metrics;
mod ofrep;
mod outbound;
mod pool;
mod ready;
mod reload;
mod server;
mod shared;
mod snapshot;
mod stack;
mod steps;
mod telemetry;
mod upstream_failure;
mod watch;

fn main() -> std::process::ExitCode {
    cli::main()
}
