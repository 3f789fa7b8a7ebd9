//! The OFREP listener (specs/feature-flags.md §10): OpenFeature SDKs beside the app evaluate
//! flags against attache's snapshot. Each connection is served like the admin port's, each
//! request through the snapshot's OFREP stack (a SERVER span, then the OFREP service; built
//! from the config by `steps/flags.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use attache_filters::Body;
use http::Request;
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::conn::ConnInfo;
use crate::shared::Shared;

/// Serves OFREP on one connection.
pub async fn serve_ofrep(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stack: crate::stack::Stack,
) {
    let info = ConnInfo::new(
        peer,
        Arc::new(crate::conn::ConnState::default()),
        shared.tracker.clone(),
    );
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req: Request<Body> = req.map(attache_filters::boxed);
        req.extensions_mut().insert(info.clone());
        // Called once it is ready, as on the traffic listeners.
        crate::ready::when_ready(stack.clone(), req)
    });
    crate::admin::serve_side_connection(stream, &shared, svc).await;
}
