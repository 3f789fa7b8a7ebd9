//! The one pattern for state kept across reloads (see `lasting.rs`): a value, and the key it
//! was made from.

use std::sync::Mutex;

/// A value kept while the key it was made from stays the same.
pub struct Kept<K, V> {
    slot: Mutex<Option<(K, V)>>,
}

impl<K, V> Default for Kept<K, V> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }
}

impl<K: PartialEq, V: Clone> Kept<K, V> {
    /// The value for `key`: the kept one when `key` is the key it was made from, else the one
    /// `make` returns, kept from then on. `make` sees the value it replaces (flag sources carry
    /// their loaded documents over); when it fails, the kept value stays.
    pub fn get_or_make<E>(
        &self,
        key: K,
        make: impl FnOnce(&K, Option<&V>) -> Result<V, E>,
    ) -> Result<V, E> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, v)) = slot.as_ref()
            && *k == key
        {
            return Ok(v.clone());
        }
        let made = make(&key, slot.as_ref().map(|(_, v)| v))?;
        *slot = Some((key, made.clone()));
        Ok(made)
    }

    /// [`Kept::get_or_make`] for a `make` that cannot fail.
    pub fn get_or_insert(&self, key: K, make: impl FnOnce(&K, Option<&V>) -> V) -> V {
        match self.get_or_make::<std::convert::Infallible>(key, |k, old| Ok(make(k, old))) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// The kept value, whatever it was made from.
    pub fn current(&self) -> Option<V> {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|(_, v)| v.clone())
    }

    /// Drops the kept value (its part of the config is gone).
    pub fn clear(&self) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Runs `chore` on `kept` every `every` until the value is dropped (a reload replaced it): the
/// upkeep of kept state, such as sweeping what expired.
pub fn tend<T: Send + Sync + 'static>(
    kept: std::sync::Weak<T>,
    every: std::time::Duration,
    chore: impl Fn(&T) + Send + 'static,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(value) = kept.upgrade() else {
                return;
            };
            chore(&value);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    fn a_value_is_kept_while_its_key_is_unchanged() {
        let kept: Kept<u32, String> = Kept::default();
        let mut made = 0;
        let mut get = |key: u32| {
            kept.get_or_make::<()>(key, |k, old| {
                made += 1;
                Ok(format!("{k} after {old:?}"))
            })
        };
        assert_eq!(get(1), Ok("1 after None".to_owned()));
        assert_eq!(get(1), Ok("1 after None".to_owned()));
        assert_eq!(get(2), Ok("2 after Some(\"1 after None\")".to_owned()));
        assert_eq!(made, 2);
        // A failed make leaves the kept value in place.
        assert_eq!(kept.get_or_make(3, |_, _| Err("bad")), Err("bad"));
        assert_eq!(
            kept.current().as_deref(),
            Some("2 after Some(\"1 after None\")")
        );
        kept.clear();
        assert_eq!(kept.current(), None);
    }
}
