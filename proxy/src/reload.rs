//! Hot reload of the config file.
//!
//! Triggers: any change in the file's directory (watched with `notify`; Kubernetes swaps a
//! ConfigMap by re-pointing the `..data` symlink, which changes nothing at the file's own path,
//! so the directory is what must be watched), a periodic check for filesystems without
//! inotify, and SIGHUP. Events are debounced for 200 ms and the file is re-read through its
//! symlinks; unchanged content is a no-op (except on SIGHUP, which always re-applies).
//!
//! An invalid file keeps the running config: the error is logged, counted in
//! `attache_config_reloads_total{result="failure"}` and shown on `/config` until a later
//! reload succeeds.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use attache_filters::telemetry::metrics::ResultLabels;
use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

use crate::server::Shared;

const DEBOUNCE: Duration = Duration::from_millis(200);
const POLL: Duration = Duration::from_secs(5);

/// Watches `path` and reloads on change or on `hup` (SIGHUP, registered by the caller before
/// the listeners open, so that no SIGHUP can find the default action, which ends the process).
///
/// `loaded` is the fingerprint of the file as the running config was read from it: a change
/// made before the watcher starts is found by the first check, not missed until the next one.
pub fn spawn(shared: Arc<Shared>, path: PathBuf, loaded: Option<u64>, hup: Signal) {
    tokio::spawn(async move {
        if let Err(e) = run(shared, path, loaded, hup).await {
            tracing::error!(error = %e, "config reload is disabled");
        }
    });
}

async fn run(
    shared: Arc<Shared>,
    path: PathBuf,
    loaded: Option<u64>,
    mut hup: Signal,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| may_change(&e.kind)) {
            let _ = tx.send(());
        }
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling every 5s");
    }
    let mut poll = tokio::time::interval(POLL);
    poll.tick().await;
    // Watching from here on; what changed before is found by comparing with what was loaded.
    let mut last = loaded;
    let now = fingerprint(&path);
    if now != last && now.is_some() {
        last = now;
        reload(&shared, &path);
    }
    loop {
        let forced = tokio::select! {
            Some(()) = rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                false
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                true
            }
            _ = poll.tick() => false,
        };
        if shared.draining.load(Ordering::Acquire) {
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

/// Whether a watched directory's event may have changed a file's content. Opening, reading
/// and closing a file are events too, and checking a file reads it: were they counted, each
/// check would wake the next. A close after writing counts (the writer is done).
pub(crate) fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    !matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
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

fn reload(shared: &Arc<Shared>, path: &Path) {
    let result = attache_config::load_file(path)
        .map_err(|e| e.to_string())
        .and_then(|config| shared.apply(config).map_err(|e| format!("{e:#}")));
    let now = SystemTime::now();
    let mut status = shared.reload.lock().unwrap_or_else(|p| p.into_inner());
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
    shared
        .metrics
        .config_reloads
        .get_or_create(&ResultLabels { result: outcome })
        .inc();
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    use super::may_change;

    #[test]
    fn only_events_that_may_change_content_count() {
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!may_change(&quiet), "{quiet:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change(&change), "{change:?}");
        }
    }
}
