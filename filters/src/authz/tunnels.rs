//! Upgraded connections (WebSocket) the policy let through, held so that a reload can take
//! them back (spec §3.6): a tunnel outlives the request that opened it, so the next request's
//! decision never reaches it. When the policy changes, each open tunnel's request is decided
//! again under the new one; a tunnel it no longer allows is closed and counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method};
use tokio::sync::Notify;

use super::policy::{Ask, Peer, Policy};
use super::spiffe::SpiffeId;

/// The peer of an [`Ask`], owned.
#[derive(Debug, Clone)]
pub enum OwnedPeer {
    Plaintext,
    Anonymous,
    Svid(SpiffeId),
}

impl OwnedPeer {
    pub fn of(peer: Peer<'_>) -> Self {
        match peer {
            Peer::Plaintext => Self::Plaintext,
            Peer::Anonymous => Self::Anonymous,
            Peer::Svid(id) => Self::Svid(id.clone()),
        }
    }

    pub fn borrow(&self) -> Peer<'_> {
        match self {
            Self::Plaintext => Peer::Plaintext,
            Self::Anonymous => Peer::Anonymous,
            Self::Svid(id) => Peer::Svid(id),
        }
    }
}

/// What a decision read of the request that opened a tunnel, kept to decide it again.
#[derive(Debug, Clone)]
pub struct OwnedAsk {
    pub peer: OwnedPeer,
    pub addr: IpAddr,
    pub method: Method,
    pub path: String,
    pub host: Option<String>,
    pub headers: HeaderMap,
}

impl OwnedAsk {
    pub fn of(ask: &Ask<'_>) -> Self {
        Self {
            peer: OwnedPeer::of(ask.peer),
            addr: ask.addr,
            method: ask.method.clone(),
            path: ask.path.to_owned(),
            host: ask.host.map(str::to_owned),
            headers: ask.headers.clone(),
        }
    }

    pub fn ask(&self) -> Ask<'_> {
        Ask {
            peer: self.peer.borrow(),
            addr: self.addr,
            method: &self.method,
            path: &self.path,
            host: self.host.as_deref(),
            headers: &self.headers,
        }
    }
}

/// The open tunnels, kept across reloads.
#[derive(Default)]
pub struct Tunnels {
    next: AtomicU64,
    live: Mutex<HashMap<u64, (OwnedAsk, Arc<Notify>)>>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("open", &self.open())
            .finish()
    }
}

impl Tunnels {
    pub fn open(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Decides every open tunnel again under `policy` (none: authorization is off, and every
    /// tunnel may stay); closes those it denies, and returns how many.
    pub fn revise(&self, policy: Option<&Policy>) -> usize {
        let Some(policy) = policy else { return 0 };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        live.retain(|_, (ask, close)| {
            if policy.decide(&ask.ask()).enforced.allow {
                return true;
            }
            close.notify_one();
            closed += 1;
            false
        });
        closed
    }
}

/// The policy's leave for one upgrade, in the request's extensions: the forwarder that joins
/// the two connections [`hold`](Grant::hold)s it for as long as the tunnel is open.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tunnels: Arc<Tunnels>,
    pub ask: OwnedAsk,
}

impl Grant {
    /// Registers the tunnel; it stays registered until the returned [`Held`] drops.
    pub fn hold(self) -> Held {
        let id = self.tunnels.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.tunnels
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (self.ask, close.clone()));
        Held {
            tunnels: self.tunnels,
            id,
            close,
        }
    }
}

/// An open tunnel, registered.
pub struct Held {
    tunnels: Arc<Tunnels>,
    id: u64,
    close: Arc<Notify>,
}

impl Held {
    /// Completes when a reloaded policy no longer allows the tunnel.
    pub async fn revoked(&self) {
        self.close.notified().await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.tunnels
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
