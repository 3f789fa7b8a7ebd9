//! The allocator: jemalloc (the default `jemalloc` feature), tuned so that memory a burst of
//! connections used goes back to the OS once they close.
//!
//! jemalloc keeps freed pages ("dirty") for reuse and purges them with a decay over
//! `dirty_decay_ms` (10 s by default), but only when some thread next allocates: an idle proxy
//! would hold the peak of its last burst for good. A background thread purges on time instead,
//! and a 1 s decay hands pages back soon after a burst without giving up reuse under steady
//! load. Measured with `bench/memory.sh` (bench/RESULTS.md, "Memory after a burst").

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long freed pages stay with jemalloc before they go back to the OS.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
const DECAY_MS: isize = 1000;

/// Applies the tuning; a setting jemalloc refuses is logged and skipped (memory is then
/// returned later, never wrongly).
pub fn tune() {
    #[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
    {
        use tikv_jemalloc_ctl::{Access, AsName, background_thread};
        if let Err(e) = background_thread::write(true) {
            tracing::debug!(error = %e, "jemalloc: no background purging thread");
        }
        // `arenas.*` is the default of arenas made from now on; `arena.4096.*` (jemalloc's
        // MALLCTL_ARENAS_ALL) changes those that already exist.
        for key in [
            &b"arenas.dirty_decay_ms\0"[..],
            b"arena.4096.dirty_decay_ms\0",
        ] {
            if let Err(e) = key.name().write(DECAY_MS) {
                tracing::debug!(error = %e, "jemalloc: dirty_decay_ms not set");
            }
        }
    }
}

#[cfg(all(test, feature = "jemalloc", not(target_env = "msvc")))]
mod tests {
    use tikv_jemalloc_ctl::{Access, AsName, background_thread};

    #[test]
    fn the_tuning_takes() {
        super::tune();
        assert!(background_thread::read().unwrap_or(false));
        let decay: isize = b"arenas.dirty_decay_ms\0".name().read().unwrap_or(-2);
        assert_eq!(decay, super::DECAY_MS);
    }
}
