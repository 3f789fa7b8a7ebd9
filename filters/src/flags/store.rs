//! The flag snapshot requests read (specs/feature-flags.md §5): the documents of every source,
//! merged in order (a later source wins per flag key), swapped in atomically. A document that
//! fails to load leaves its source's last good one in place; the error is kept for the admin
//! port.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::Value;

use super::eval::FlagSet;
use super::parse::LoadError;

/// One source's state: its last good document, and the error of its last load, if any.
#[derive(Debug, Clone, Default)]
struct Source {
    good: Option<Arc<FlagSet>>,
    error: Option<LoadError>,
}

/// The merged flags of every source.
pub struct FlagStore {
    sources: Mutex<Vec<Source>>,
    current: ArcSwap<FlagSet>,
}

impl FlagStore {
    pub fn new(sources: usize) -> Self {
        Self {
            sources: Mutex::new(vec![Source::default(); sources]),
            current: ArcSwap::from_pointee(FlagSet::default()),
        }
    }

    /// The snapshot a request evaluates against.
    pub fn snapshot(&self) -> Arc<FlagSet> {
        self.current.load_full()
    }

    /// [`FlagStore::snapshot`], borrowed for a moment (no reference count touched).
    pub fn current(&self) -> arc_swap::Guard<Arc<FlagSet>> {
        self.current.load()
    }

    /// Loads source `index`'s new document. On error the source keeps its last good
    /// document, and the error is returned (and kept for [`FlagStore::errors`]).
    pub fn update(&self, index: usize, doc: &Value) -> Result<(), LoadError> {
        match FlagSet::parse_source(doc, index) {
            Ok(set) => self.install(index, set),
            Err(e) => {
                self.fail(index, e.clone());
                Err(e)
            }
        }
    }

    /// Makes `set` source `index`'s good document and publishes the new merged snapshot.
    pub fn install(&self, index: usize, set: FlagSet) -> Result<(), LoadError> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let Some(source) = sources.get_mut(index) else {
            return Err(LoadError {
                path: "$".into(),
                message: format!("no source {index}"),
            });
        };
        source.good = Some(Arc::new(set));
        source.error = None;
        let mut merged = FlagSet::default();
        for set in sources.iter().filter_map(|s| s.good.as_ref()) {
            merged
                .flags
                .extend(set.flags.iter().map(|(k, f)| (k.clone(), f.clone())));
            merged.warnings.extend(set.warnings.iter().cloned());
            merged
                .metadata
                .extend(set.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        self.current.store(Arc::new(merged));
        Ok(())
    }

    /// Records a failed load of source `index`; its last good document stays.
    pub fn fail(&self, index: usize, error: LoadError) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(source) = sources.get_mut(index) {
            source.error = Some(error);
        }
    }

    /// Source `index`'s last good document.
    pub fn good(&self, index: usize) -> Option<Arc<FlagSet>> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.get(index).and_then(|s| s.good.clone())
    }

    /// Whether source `index` has loaded a good document at least once.
    pub fn loaded(&self, index: usize) -> bool {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.get(index).is_some_and(|s| s.good.is_some())
    }

    /// The last load error of each source that has one: (source index, error).
    pub fn errors(&self) -> Vec<(usize, LoadError)> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.error.clone().map(|e| (i, e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::eval::Kind;
    use crate::flags::logic::FractionalVersion;
    use serde_json::json;

    fn value(store: &FlagStore, key: &str) -> Option<Value> {
        store
            .snapshot()
            .evaluate(key, &json!({}), 0, Kind::Any, FractionalVersion::V2)
            .value
    }

    fn doc(flags: Value) -> Value {
        json!({ "flags": flags })
    }

    #[test]
    fn later_sources_win_and_bad_documents_keep_the_last_good_one() {
        let store = FlagStore::new(2);
        store
            .update(0, &doc(json!({
                "theme": {"state": "ENABLED", "variants": {"l": "light"}, "defaultVariant": "l"},
                "beta": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}
            })))
            .unwrap();
        store
            .update(
                1,
                &doc(json!({
                    "theme": {"state": "ENABLED", "variants": {"d": "dark"}, "defaultVariant": "d"}
                })),
            )
            .unwrap();
        assert_eq!(
            value(&store, "theme"),
            Some(json!("dark")),
            "the later source wins"
        );
        assert_eq!(value(&store, "beta"), Some(json!(true)));

        let bad = store.update(
            1,
            &doc(json!({"theme": {"state": "MAYBE", "variants": {"d": 1}}})),
        );
        assert_eq!(bad.unwrap_err().path, "flags.theme.state");
        assert_eq!(
            value(&store, "theme"),
            Some(json!("dark")),
            "the last good document stays"
        );
        assert_eq!(store.errors().len(), 1);

        store
            .update(1, &doc(json!({"other": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "x"}})))
            .unwrap();
        assert_eq!(
            value(&store, "theme"),
            Some(json!("light")),
            "source 1 no longer has it"
        );
        assert!(store.errors().is_empty());
    }
}
