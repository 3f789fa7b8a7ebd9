//! The test collector as a process, for the benchmarks: `otlp-collector PORT [http|grpc]`.
//! Counts the spans it accepts and prints the total when it gets SIGTERM or SIGINT.

use attache_tests::otlp::{Collector, Protocol};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(4318);
    let protocol = match args.next().as_deref() {
        Some("grpc") => Protocol::Grpc,
        _ => Protocol::Http,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the collector port");
    let collector = Collector::serve(listener, protocol, true);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!(
        "{} spans in {} batches",
        collector.counted(),
        collector.batches()
    );
}
