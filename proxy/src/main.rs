//! attache: a light sidecar HTTP proxy for service meshes. See the README for what it does and
//! `attache --help` for how to run it.

#![forbid(unsafe_code)]

mod admin;
mod allocator;
mod authz;
mod body;
mod capture;
mod cli;
mod conn;
mod context;
mod context_push;
mod demo;
mod flags;
mod forward;
mod forward_proxy;
mod hop_by_hop;
mod idempotency;
mod inbound;
mod kept;
mod kube;
mod lasting;
mod limits;
mod listener;
mod logging;
mod metrics;
mod outbound;
mod ratelimit;
mod ready;
mod reload;
mod route;
mod serve;
mod server;
mod shared;
mod snapshot;
mod stack;
mod steps;
mod telemetry;
mod tls;
mod upstream;
mod watch;

fn main() -> std::process::ExitCode {
    cli::main()
}
