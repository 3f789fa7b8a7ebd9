//! attache's one file watcher: for the config file, flag files, and the certificates to come.
//!
//! A file is watched through its directory (with `notify`): Kubernetes updates a mounted
//! ConfigMap or Secret by re-pointing the directory's `..data` symlink, which changes nothing
//! at the file's own path, so only the directory sees it. Events are debounced (an editor's
//! save or a swap is a burst of them), and a periodic tick covers filesystems without inotify
//! (network mounts, some container runtimes). What changed is for the caller to decide: it
//! reads the file again and compares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

/// How long a burst of directory events is let settle before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why [`FileWatch::changed`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Something in the file's directory changed (debounced).
    Event,
    /// The periodic check is due.
    Tick,
}

/// Watches one file's directory, and ticks every `poll`.
pub struct FileWatch {
    events: mpsc::UnboundedReceiver<()>,
    /// Kept for its events; `None` when the platform offers no watcher (ticks only).
    _watcher: Option<RecommendedWatcher>,
    tick: Interval,
}

impl FileWatch {
    /// Starts watching `path`'s directory. When it cannot be watched, a warning names `what`
    /// and the watch falls back on its ticks. The first tick is one `poll` from now.
    pub fn new(path: &Path, poll: Duration, what: &str) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let dir = directory(path);
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| may_change(&e.kind)) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the {what}'s directory; checking every {poll:?}");
                None
            }
        };
        let start = tokio::time::Instant::now() + poll;
        let mut tick = tokio::time::interval_at(start, poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            events,
            _watcher: watcher,
            tick,
        }
    }

    /// Waits for the next reason to look at the file again. Cancel-safe up to the debounce: a
    /// directory event whose wait is cancelled is not reported again (the caller, which
    /// cancelled it for another reason, reads the file anyway).
    pub async fn changed(&mut self) -> Trigger {
        tokio::select! {
            Some(()) = self.events.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while self.events.try_recv().is_ok() {}
                Trigger::Event
            }
            _ = self.tick.tick() => Trigger::Tick,
        }
    }
}

/// The directory that holds `path` (`.` for a bare file name).
fn directory(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Whether a watched directory's event may have changed a file's content. Opening, reading
/// and closing a file are events too, and checking a file reads it: were they counted, each
/// check would wake the next. A close after writing counts (the writer is done).
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    !matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    use super::*;

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

    /// A directory laid out as Kubernetes mounts a ConfigMap: the file is a symlink through
    /// `..data`, itself a symlink to a timestamped directory.
    fn configmap(root: &Path, version: &str, body: &str) {
        let dir = root.join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), body).unwrap();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    }

    #[tokio::test]
    async fn a_configmap_swap_is_an_event_and_quiet_files_tick() {
        let root = std::env::temp_dir().join(format!("attache-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        configmap(&root, "..2026_12_07_1", "a: 1");
        let file = root.join("config.yaml");
        std::os::unix::fs::symlink("..data/config.yaml", &file).unwrap();

        // No tick for an hour: only the swap can wake it.
        let mut watch = FileWatch::new(&file, Duration::from_secs(3600), "test file");
        // Reading the file (as every check does) is not a change.
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a: 1");
        configmap(&root, "..2026_12_07_2", "a: 2");
        let woke = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
        assert_eq!(woke.ok(), Some(Trigger::Event));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a: 2");

        // Nothing changes: the periodic check is what wakes it.
        let mut quiet = FileWatch::new(&file, Duration::from_millis(50), "test file");
        let woke = tokio::time::timeout(Duration::from_secs(10), quiet.changed()).await;
        assert_eq!(woke.ok(), Some(Trigger::Tick));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
