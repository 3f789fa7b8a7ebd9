//! The state every connection, the admin port and the OFREP port share: the current snapshot,
//! what reloads keep, the connection tracker and the drain signal. Listeners are not part of
//! it: the server (`server.rs`) owns them and installs snapshots.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::conn::Tracker;
use crate::lasting::Lasting;
use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;

/// State every connection and the admin port share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// The request families (client errors on connections) and the proxy's own, taken once.
    pub http_metrics: Arc<attache_filters::telemetry::families::HttpFamilies>,
    pub proxy_metrics: Arc<crate::metrics::ProxyFamilies>,
    /// What reloads keep (the metrics registry, pools, exporters, stores, flag sources).
    pub lasting: Lasting,
    pub tracker: Arc<Tracker>,
    /// Flips to true when drain starts; every connection then shuts down gracefully.
    pub shutdown: watch::Sender<bool>,
    /// True once every listener is bound.
    pub started: AtomicBool,
    pub draining: AtomicBool,
    pub reload: Mutex<ReloadStatus>,
    /// The config file, when there is one (watched for changes).
    pub source: Option<PathBuf>,
}

impl Shared {
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.flags_ready()
    }

    /// Every required flag source has loaded once (true without `spec.flags`).
    pub fn flags_ready(&self) -> bool {
        self.snapshot
            .load()
            .flags
            .as_ref()
            .is_none_or(|f| f.ready())
    }
}
