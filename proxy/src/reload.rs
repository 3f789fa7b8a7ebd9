//! Hot reload of the config file.
//!
//! Triggers: the file's [`FileWatch`] (any change in its directory, debounced, which covers a
//! Kubernetes ConfigMap swap, and a check every 5 s for filesystems without inotify) and
//! SIGHUP. The file is re-read through its symlinks; unchanged content is a no-op (except on
//! SIGHUP, which always re-applies).
//!
//! An invalid file keeps the running config: the error is logged, counted in
//! `attache_config_reloads_total{result="failure"}` and shown on `/config` until a later
//! reload succeeds.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::Signal;

use crate::metrics::ProxyFamilies;
use crate::watch::FileWatch;

const POLL: Duration = Duration::from_secs(5);

/// What the watcher reloads: the running server, seen through what reloading needs of it.
pub trait Reloadable: Send + Sync + 'static {
    /// Drain has begun: reloads stop.
    fn draining(&self) -> bool;
    /// Compiles and installs `config`; on an error nothing changes.
    fn apply(self: &Arc<Self>, config: attache_config::Config) -> anyhow::Result<()>;
    /// Where attempts are recorded for `/config`.
    fn status(&self) -> &std::sync::Mutex<ReloadStatus>;
    /// Where attempts are counted.
    fn counted(&self) -> &ProxyFamilies;
}

/// The last reload attempts, for admin `/config`.
#[derive(Default, Clone)]
pub struct ReloadStatus {
    pub last_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    /// The error of the last attempt, until a later one succeeds.
    pub last_error: Option<String>,
}

/// Watches `path` and reloads on change or on `hup` (SIGHUP, registered by the caller before
/// the listeners open, so that no SIGHUP can find the default action, which ends the process).
///
/// `loaded` is the fingerprint of the file as the running config was read from it: a change
/// made before the watcher starts is found by the first check, not missed until the next one.
pub fn spawn<T: Reloadable>(shared: Arc<T>, path: PathBuf, loaded: Option<u64>, hup: Signal) {
    tokio::spawn(async move {
        if let Err(e) = run(shared, path, loaded, hup).await {
            tracing::error!(error = %e, "config reload is disabled");
        }
    });
}

async fn run<T: Reloadable>(
    shared: Arc<T>,
    path: PathBuf,
    loaded: Option<u64>,
    mut hup: Signal,
) -> anyhow::Result<()> {
    let mut watch = FileWatch::new(&path, POLL, "config file");
    // Watching from here on; what changed before is found by comparing with what was loaded.
    let mut last = loaded;
    let now = fingerprint(&path);
    if now != last && now.is_some() {
        last = now;
        reload(&shared, &path);
    }
    loop {
        let forced = tokio::select! {
            _ = watch.changed() => false,
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                true
            }
        };
        if shared.draining() {
            continue;
        }
        let now = fingerprint(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        reload(&shared, &path);
    }
}

/// A hash of the file's content; `None` when it cannot be read (mid-swap, say).
pub fn fingerprint(path: &Path) -> Option<u64> {
    // No more than a config may hold (and one byte more, so that growing past it shows).
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(path).ok()?,
            attache_config::MAX_CONFIG_BYTES + 1,
        ),
        &mut bytes,
    )
    .ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

fn reload<T: Reloadable>(shared: &Arc<T>, path: &Path) {
    let result = attache_config::load_file_with(path, &crate::authz::check)
        .map_err(|e| e.to_string())
        .and_then(|config| shared.apply(config).map_err(|e| format!("{e:#}")));
    let now = SystemTime::now();
    let mut status = shared.status().lock().unwrap_or_else(|p| p.into_inner());
    status.last_attempt = Some(now);
    let outcome = match result {
        Ok(()) => {
            status.last_success = Some(now);
            status.last_error = None;
            tracing::info!(path = %path.display(), "config reloaded");
            "success"
        }
        Err(e) => {
            tracing::error!("config reload failed; keeping the running config: {e}");
            status.last_error = Some(e);
            "failure"
        }
    };
    shared.counted().config_reload(outcome);
}
