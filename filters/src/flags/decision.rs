//! A request's decisions as its extensions and its span keep them: a reference to the compiled
//! flag and the variant's index, so recording a decision copies no strings. Handed up as a
//! [`Fact`](crate::facts::Fact): one `feature_flag.evaluation` event each.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::count::error_type;
use super::eval::{Decision, ErrorCode, Flag, Reason};
use super::settings::EventSettings;

/// One decision, as the request's extensions and its span keep it: a reference to the
/// compiled flag and the variant's index, so recording a decision copies no strings.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagDecision {
    pub key: Arc<str>,
    /// The flag, when the snapshot has it.
    pub flag: Option<Arc<Flag>>,
    /// The variant's index in `flag.variants`.
    variant: Option<u32>,
    pub reason: Reason,
    pub error: Option<(ErrorCode, String)>,
}

/// A request's decisions, in its extensions (and handed up with its response as a
/// [`Fact`](crate::facts::Fact): one `feature_flag.evaluation` event each on the span).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagDecisions {
    pub decisions: Vec<FlagDecision>,
    /// The targeting key, when `include_context_id` asks for it.
    pub context_id: Option<String>,
    pub events: EventSettings,
}

impl crate::facts::Fact for FlagDecisions {
    /// The `feature_flag.evaluation` events (specs/feature-flags.md §11), stable
    /// semantic-convention attributes only.
    fn events(&self, event: crate::facts::Events<'_>) {
        use crate::facts::Value as Attr;
        for d in &self.decisions {
            event("feature_flag.evaluation", &|attr| {
                attr("feature_flag.key", Attr::from(&*d.key));
                attr("feature_flag.provider.name", Attr::from("attache"));
                if let Some(v) = d.variant() {
                    attr("feature_flag.result.variant", Attr::from(v));
                }
                attr(
                    "feature_flag.result.reason",
                    Attr::from(d.reason.as_lower()),
                );
                if let Some(s) = d.set_id() {
                    attr("feature_flag.set.id", Attr::Str(s));
                }
                if let Some(v) = d.version() {
                    attr("feature_flag.version", Attr::Str(v));
                }
                if let Some((code, message)) = &d.error {
                    attr("error.type", Attr::from(error_type(*code)));
                    attr("feature_flag.error.message", Attr::from(message.as_str()));
                }
                if self.events.include_value
                    && let Some(v) = d.value()
                {
                    attr("feature_flag.result.value", Attr::Str(v.to_string().into()));
                }
                if let Some(id) = &self.context_id {
                    attr("feature_flag.context.id", Attr::from(id.as_str()));
                }
            });
        }
    }
}

fn metadata_str<'a>(m: &'a Map<String, Value>, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    match m.get(key)? {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Null => None,
        other => Some(std::borrow::Cow::Owned(other.to_string())),
    }
}

impl FlagDecision {
    pub fn of(key: Arc<str>, flag: Option<&Arc<Flag>>, d: &Decision<'_>) -> Self {
        let vi = d.index;
        Self::at(key, flag, d, vi)
    }

    pub(super) fn at(
        key: Arc<str>,
        flag: Option<&Arc<Flag>>,
        d: &Decision<'_>,
        vi: Option<usize>,
    ) -> Self {
        let variant = vi.and_then(|i| u32::try_from(i).ok());
        Self {
            key,
            flag: flag.cloned(),
            variant,
            reason: d.reason,
            error: d.error.clone(),
        }
    }

    pub fn variant(&self) -> Option<&str> {
        let i = usize::try_from(self.variant?).ok()?;
        self.flag
            .as_ref()?
            .variants
            .keys()
            .nth(i)
            .map(String::as_str)
    }

    pub fn value(&self) -> Option<&Value> {
        let i = usize::try_from(self.variant?).ok()?;
        self.flag.as_ref()?.variants.values().nth(i)
    }

    /// Metadata `flagSetId`, for the span event.
    pub fn set_id(&self) -> Option<std::borrow::Cow<'_, str>> {
        metadata_str(&self.flag.as_ref()?.metadata, "flagSetId")
    }

    /// Metadata `version`, for the span event.
    pub fn version(&self) -> Option<std::borrow::Cow<'_, str>> {
        metadata_str(&self.flag.as_ref()?.metadata, "version")
    }
}
