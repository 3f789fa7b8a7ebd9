//! The floor under any proxy built on hyper's HTTP/1.1: the least a hyper server connection and
//! a hyper client connection cost per proxied request, with nothing of attache's in between.
//!
//! It accepts HTTP/1.1 connections, opens one upstream connection per client connection, and
//! hands each request to the upstream unchanged (no header rewriting, limits, metrics, pool or
//! timers). `bench/floor.sh` counts its instructions per request beside attache's and nginx's,
//! to tell how much of attache's cost is its own and how much is the HTTP library underneath.
//!
//! ```sh
//! cargo run --release -p attache --example hyper_floor -- 127.0.0.1:18002 127.0.0.1:18080 spawned
//! ```
//!
//! The third argument picks how the upstream connection is driven:
//! - `spawned`: in a task of its own, as a pooled client does (attache's shape);
//! - `inline`: in the client connection's task, joined with the server connection, so a request
//!   and its response never cross between tasks.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Body = BoxBody<Bytes, hyper::Error>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN UPSTREAM [spawned|inline]");
        std::process::exit(2);
    };
    let inline = match args.next().as_deref() {
        None | Some("spawned") => false,
        Some("inline") => true,
        Some(other) => {
            eprintln!("hyper_floor: unknown mode {other:?} (spawned or inline)");
            std::process::exit(2);
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, Arc::from(upstream), inline))
}

async fn serve(listen: String, upstream: Arc<str>, inline: bool) -> std::io::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &upstream, inline).await {
                eprintln!("hyper_floor: {e}");
            }
        });
    }
}

async fn connection(stream: TcpStream, upstream: &str, inline: bool) -> anyhow::Result<()> {
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, upstream_conn) = client::handshake::<_, Incoming>(TokioIo::new(up)).await?;
    let sender = Arc::new(Mutex::new(sender));
    let service = service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move { Ok::<_, Infallible>(exchange(&sender, req).await) }
    });
    let downstream = server::Builder::new().serve_connection(TokioIo::new(stream), service);
    if inline {
        // One task drives both connections: whichever is woken, both are polled.
        let (down, up) = tokio::join!(downstream, upstream_conn);
        down?;
        up?;
    } else {
        tokio::spawn(upstream_conn);
        downstream.await?;
    }
    Ok(())
}

async fn exchange(
    sender: &Mutex<client::SendRequest<Incoming>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let sent = {
        let mut sender = sender.lock().await;
        match sender.ready().await {
            Ok(()) => sender.send_request(req),
            Err(e) => return bad_gateway(&e),
        }
    };
    match sent.await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(e) => bad_gateway(&e),
    }
}

fn bad_gateway(e: &hyper::Error) -> Response<Body> {
    eprintln!("hyper_floor: upstream: {e}");
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
