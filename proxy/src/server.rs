//! The running proxy: startup, the listeners a config's snapshot is installed on, reload
//! application and graceful drain. The state connections share is in `shared.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use attache_config::Config;
use attache_filters::metrics::Metrics;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::conn::Tracker;
use crate::lasting::Lasting;
use crate::listener::Listeners;
use crate::reload::ReloadStatus;
use crate::shared::Shared;
use crate::snapshot::Snapshot;

/// The running server: the shared state and the listeners it installs snapshots on.
pub struct Server {
    pub shared: Arc<Shared>,
    listeners: Mutex<Listeners>,
}

impl crate::reload::Reloadable for Server {
    fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }
    fn apply(self: &Arc<Self>, config: Config) -> anyhow::Result<()> {
        Server::apply(self, config)
    }
    fn status(&self) -> &Mutex<ReloadStatus> {
        &self.shared.reload
    }
    fn counted(&self) -> &crate::metrics::ProxyFamilies {
        &self.shared.proxy_metrics
    }
}

impl Server {
    /// Compiles `config`, binds any new listen addresses, swaps the snapshot in and stops
    /// listening where the config no longer does. On any error nothing changes.
    pub fn apply(&self, config: Config) -> anyhow::Result<()> {
        let snap = Snapshot::build(config, &self.shared.lasting)?;
        self.install(Arc::new(snap))
    }

    /// Binds the snapshot's new addresses, makes it current, and stops listening on the
    /// addresses it no longer has.
    fn install(&self, snap: Arc<Snapshot>) -> anyhow::Result<()> {
        let mut addrs = snap.addresses();
        addrs.push(snap.config.spec.admin.listen.0);
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let bound = listeners.bind_missing(&addrs)?;
        for (addr, _) in &bound {
            let what = match snap.listeners.get(addr) {
                Some(role) => role.direction().as_str(),
                None if snap.ofrep.as_ref().is_some_and(|o| o.0 == *addr) => "ofrep",
                None if snap.context.as_ref().is_some_and(|c| c.0 == *addr) => "context",
                None => "admin",
            };
            tracing::info!(%addr, role = what, "listening");
        }
        if let Some(tls) = &snap.inbound_tls {
            tls.require_svid(snap.authz.is_some());
        }
        let lasting = &self.shared.lasting;
        let closed = lasting.tunnels.revise(snap.authz.as_deref());
        self.shared.snapshot.store(snap);
        if closed > 0 {
            let families: Arc<attache_filters::authz::metrics::AuthzFamilies> =
                lasting.metrics.family();
            families.tunnels_closed.inc_by(closed as u64);
            tracing::info!(
                closed,
                "closed upgraded connections the reloaded authorization policy no longer allows"
            );
        }
        listeners.start(&self.shared, bound);
        listeners.retain(&addrs);
        Ok(())
    }
}

/// Runs attache with `config` until SIGTERM/SIGINT and drain complete. `dev` is `attache dev`
/// (spans on the console unless the file says otherwise).
pub async fn run(config: Config, source: Option<PathBuf>, dev: bool) -> anyhow::Result<()> {
    // What the file held when `config` was read from it (the caller read it just before): the
    // watcher, started once attache is ready, compares with this, so a change made in between
    // is applied rather than taken for the running config.
    let loaded = source.as_deref().map(crate::reload::fingerprint);
    // Before any listener opens: from then on no signal meets its default action.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let hup = signal(SignalKind::hangup())?;
    let metrics = Arc::new(Metrics::new());
    crate::metrics::register_all(&metrics);
    crate::idempotency::refuse_evicting_redis(&config).await?;
    let lasting = Lasting::new(metrics.clone(), dev);
    let snapshot = Arc::new(Snapshot::build(config, &lasting)?);
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::new(snapshot.clone()),
        http_metrics: metrics.family(),
        proxy_metrics: metrics.family(),
        lasting,
        tracker: Arc::new(Tracker::default()),
        shutdown: watch::Sender::new(false),
        started: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        reload: Mutex::new(ReloadStatus::default()),
        source: source.clone(),
    });
    // On a laptop the banner says what runs, and a 2 kB line would bury it: `attache dev`
    // logs the config at debug (and `/config` always shows it).
    if dev {
        tracing::debug!(config = %snapshot.config.redacted(), "effective configuration");
    } else {
        tracing::info!(config = %snapshot.config.redacted(), "effective configuration");
    }
    let server = Arc::new(Server {
        shared: shared.clone(),
        listeners: Mutex::new(Listeners::default()),
    });
    server.install(snapshot)?;
    shared.started.store(true, Ordering::Release);
    announce_ready(&shared);

    // SIGHUP reloads the config file. Without one (`attache dev` with no -c) there is nothing to
    // reload, and a SIGHUP usually means the terminal closed: attache drains and exits, as it
    // would have without a handler, but cleanly.
    let mut hangup_ends = None;
    match source {
        Some(path) => crate::reload::spawn(server.clone(), path, loaded.flatten(), hup),
        None => hangup_ends = Some(hup),
    }
    let hangup = async {
        match hangup_ends.as_mut() {
            Some(h) => h.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = hangup => tracing::info!("SIGHUP received: no config file to reload; exiting"),
    }
    drain(&server, &mut term, &mut int).await;
    let timeout = shared
        .snapshot
        .load()
        .config
        .spec
        .telemetry
        .shutdown_timeout
        .get();
    shared.lasting.telemetry.flush(timeout).await;
    shared.lasting.contexts.save_snapshot();
    Ok(())
}

/// Says that attache is ready, or, when `/ready` still waits for the required flag sources,
/// that it listens, and then when they are in (checked with a backoff, so a source that never
/// loads costs a wakeup every 2 s, not a busy loop).
fn announce_ready(shared: &Arc<Shared>) {
    if shared.is_ready() {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "attache is ready");
        return;
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "listening; /ready waits for the flag sources (see /flags on the admin port)"
    );
    let s = shared.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(50);
        while !s.draining.load(Ordering::Acquire) {
            tokio::time::sleep(wait).await;
            if s.is_ready() {
                tracing::info!("flag sources loaded: attache is ready");
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    });
}

/// Drain: `/ready` fails at once; after `drain.delay` the traffic listeners close; in-flight
/// requests get `drain.grace_period` to finish. A second signal cuts the wait short.
async fn drain(
    server: &Server,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let shared = &server.shared;
    shared.draining.store(true, Ordering::Release);
    let drain = shared.snapshot.load().config.spec.drain;
    tracing::info!(delay = %drain.delay, grace_period = %drain.grace_period, "draining: /ready now fails");
    let waited = async {
        tokio::time::sleep(drain.delay.get()).await;
        {
            let admin = shared.snapshot.load().config.spec.admin.listen.0;
            let mut listeners = server.listeners.lock().unwrap_or_else(|p| p.into_inner());
            listeners.retain(&[admin]);
        }
        shared.shutdown.send_replace(true);
        tokio::time::timeout(drain.grace_period.get(), shared.tracker.wait_idle()).await
    };
    tokio::select! {
        res = waited => match res {
            Ok(()) => tracing::info!("drained: all connections closed"),
            Err(_) => tracing::warn!(open = shared.tracker.live(), "grace period over; closing the remaining connections"),
        },
        _ = term.recv() => tracing::warn!(open = shared.tracker.live(), "second signal: exiting without waiting"),
        _ = int.recv() => tracing::warn!(open = shared.tracker.live(), "second signal: exiting without waiting"),
    }
}
