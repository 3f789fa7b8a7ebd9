//! Listening sockets and their accept loops; each accepted connection is handed to
//! `serve.rs`.
//!
//! Listeners are keyed by address only; what an address serves (inbound, an outbound
//! upstream, admin or OFREP) is read from the current snapshot. A reload therefore binds only the
//! addresses that are new, stops accepting on those that went away, and leaves every open
//! connection to finish on its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::shared::Shared;

/// The accept loops currently running, by address.
#[derive(Default)]
pub struct Listeners {
    running: HashMap<SocketAddr, oneshot::Sender<()>>,
}

impl Listeners {
    /// Binds every address in `wanted` that is not running yet. Binds all or none: on the
    /// first failure the sockets already bound are closed again.
    pub fn bind_missing(
        &self,
        wanted: &[SocketAddr],
    ) -> anyhow::Result<Vec<(SocketAddr, TcpListener)>> {
        let mut bound = Vec::new();
        for addr in wanted {
            if self.running.contains_key(addr) {
                continue;
            }
            let l = bind(*addr)
                .map_err(|e| anyhow::Error::new(e).context(format!("cannot listen on {addr}")))?;
            bound.push((*addr, l));
        }
        Ok(bound)
    }

    pub fn start(&mut self, shared: &Arc<Shared>, bound: Vec<(SocketAddr, TcpListener)>) {
        for (addr, listener) in bound {
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(accept_loop(listener, addr, shared.clone(), stopped));
            self.running.insert(addr, stop);
        }
    }

    /// Stops accepting on every address not in `keep`.
    pub fn retain(&mut self, keep: &[SocketAddr]) {
        self.running.retain(|addr, _| {
            let kept = keep.contains(addr);
            if !kept {
                tracing::info!(%addr, "no longer listening");
            }
            kept
        });
    }
}

/// A listening socket: `SO_REUSEADDR` so a restart rebinds at once, a deep backlog for bursts.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    crate::serve::connection(stream, peer, addr, &shared);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
