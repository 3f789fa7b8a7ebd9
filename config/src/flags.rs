//! `spec.flags` (specs/feature-flags.md §1): where flag definitions come from, how each
//! request's evaluation context is built, how decisions reach the app, which peers' decisions
//! are trusted, routing by variant, and the OFREP listener.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::{ByteSize, Duration, ListenAddr};

/// Feature flags in flagd's format, evaluated for the app. Present, it is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// Flag documents, merged in order: a later source replaces a whole flag with the same key.
    #[serde(default)]
    pub sources: Vec<FlagSource>,
    /// How often files are checked besides change notifications (for filesystems without
    /// inotify).
    #[serde(default = "default_file_poll")]
    pub file_poll_interval: Duration,
    /// `fractional` bucketing: `v1`, `v2` (default, flagd's current) or `v3`.
    #[serde(default)]
    pub fractional_version: FractionalVersion,
    /// The evaluation context built from each request.
    #[serde(default)]
    pub context: FlagContext,
    /// Which decisions reach the app, and how.
    #[serde(default)]
    pub deliver: Deliver,
    /// Reuse `flag.<key>=<variant>` baggage from `trusted_peers` instead of evaluating, so one
    /// user request sees one variant in every service.
    #[serde(default)]
    pub trust_upstream_decisions: bool,
    /// Peers (CIDRs, or single addresses) whose decisions are reused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_peers: Vec<Cidr>,
    /// Routing by variant: requests for `upstream` (`app`: the inbound app) go to the upstream
    /// a variant maps to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<FlagRoute>,
    /// The OFREP listener for OpenFeature SDKs (`null` disables it).
    #[serde(default = "default_ofrep")]
    pub ofrep: Option<Ofrep>,
    /// `feature_flag.evaluation` span events.
    #[serde(default)]
    pub telemetry: FlagTelemetry,
}

/// One flag document: a file (JSON or YAML) or a URL polled with `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagSource {
    /// How logs, metrics (`source` label) and `/flags` name this source. Default: the file
    /// path, or the URL without its userinfo and query (a token there is never shown, and
    /// rotating it does not start a new metric series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A file path; watched for changes, including ConfigMap symlink swaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An `http://` or `https://` URL polled every `poll_interval`; HTTPS trusts the system's
    /// CA store (`SSL_CERT_FILE` names another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// URL sources: time between polls (±10% jitter).
    #[serde(default = "default_url_poll")]
    pub poll_interval: Duration,
    /// URL sources: a poll slower than this fails.
    #[serde(default = "default_url_timeout")]
    pub timeout: Duration,
    /// URL sources: headers sent with each poll (values are redacted on the admin port).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `true`: readiness does not wait for this source's first load.
    #[serde(default)]
    pub optional: bool,
}

impl FlagSource {
    /// The file path or URL, with the URL's credentials (userinfo, secret query parameters)
    /// redacted, as `/flags` shows it.
    pub fn location(&self) -> String {
        match (&self.file, &self.url) {
            (Some(file), _) => file.clone(),
            (None, Some(url)) => crate::redact_url(url).unwrap_or_else(|| url.clone()),
            (None, None) => String::new(),
        }
    }

    /// The stable, secret-free name of logs and metric labels: `name`, else the file path,
    /// else the URL's scheme, host and path only.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match (&self.file, &self.url) {
            (Some(file), _) => file.clone(),
            (None, Some(url)) => {
                let bare = crate::strip_userinfo(url).map_or_else(|| url.clone(), |(u, _)| u);
                bare.split(['?', '#']).next().unwrap_or_default().to_owned()
            }
            (None, None) => String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FractionalVersion {
    V1,
    #[default]
    V2,
    V3,
}

/// Where a value of the evaluation context comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextSource {
    /// A request header (its first value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A W3C baggage member (percent-decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
    /// Attributes only: the context key; a dotted name nests (`user.plan`). Defaults to the
    /// header, cookie, query or baggage name.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Which part of the request a [`ContextSource`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Header,
    Cookie,
    Query,
    Baggage,
}

impl ContextSource {
    /// The one part of the request it reads, or `None` unless exactly one is set.
    pub fn source(&self) -> Option<(SourceKind, &str)> {
        let all = [
            (SourceKind::Header, &self.header),
            (SourceKind::Cookie, &self.cookie),
            (SourceKind::Query, &self.query),
            (SourceKind::Baggage, &self.baggage),
        ];
        let mut set = all
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)));
        let first = set.next()?;
        set.next().is_none().then_some(first)
    }

    /// The context key an attribute lands under.
    pub fn key(&self) -> &str {
        self.name
            .as_deref()
            .or_else(|| self.source().map(|s| s.1))
            .unwrap_or("")
    }
}

/// The evaluation context (§6), lowest precedence first: `request.*` built-ins, `static`,
/// `attributes`, then `targetingKey`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagContext {
    /// Where `targetingKey` comes from: the first source that is present and non-empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targeting_key: Vec<ContextSource>,
    /// Attributes read from each request; later entries win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<ContextSource>,
    /// Fixed attributes, e.g. `{ env: prod }`.
    #[serde(default, rename = "static", skip_serializing_if = "Map::is_empty")]
    #[schemars(with = "BTreeMap<String, Value>")]
    pub static_attributes: Map<String, Value>,
}

/// How decisions reach the app (§7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deliver {
    /// Flags evaluated for every inbound request; `"*"` means every flag loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Per-flag headers are `<prefix><key>`; `null` disables them.
    #[serde(default = "default_header_prefix")]
    pub header_prefix: Option<String>,
    /// A header with every decision as one JSON object, e.g. `x-flags` (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_header: Option<String>,
    /// Add `flag.<key>=<variant>` to the request's baggage (default true).
    #[serde(default = "yes")]
    pub baggage: bool,
    /// Values sent in per-flag headers when a flag has none (disabled, no default variant,
    /// or an error): the app's code defaults.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schemars(with = "BTreeMap<String, Value>")]
    pub defaults: Map<String, Value>,
}

impl Default for Deliver {
    fn default() -> Self {
        Self {
            flags: Vec::new(),
            header_prefix: default_header_prefix(),
            combined_header: None,
            baggage: true,
            defaults: Map::new(),
        }
    }
}

/// Routing by variant (§9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagRoute {
    /// The upstream whose requests are routed (`app` for the inbound app).
    pub upstream: String,
    /// The flag deciding.
    pub flag: String,
    /// Variant → upstream to send to; other variants keep `upstream`.
    pub variants: BTreeMap<String, String>,
}

/// The OFREP listener (§10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ofrep {
    /// Where OFREP is served; keep it on loopback (8016 is flagd's port).
    #[serde(default = "default_ofrep_listen")]
    pub listen: ListenAddr,
    /// Larger request bodies get 413.
    #[serde(default = "default_ofrep_body")]
    pub max_body_bytes: ByteSize,
}

impl Default for Ofrep {
    fn default() -> Self {
        Self {
            listen: default_ofrep_listen(),
            max_body_bytes: default_ofrep_body(),
        }
    }
}

/// `feature_flag.evaluation` span events (§11).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagTelemetry {
    /// Add an event per evaluation to the active span (default true).
    #[serde(default = "yes")]
    pub events: bool,
    /// Add `feature_flag.result.value` (default false: values may be sensitive).
    #[serde(default)]
    pub include_value: bool,
    /// Add `feature_flag.context.id` (the targeting key; default false).
    #[serde(default)]
    pub include_context_id: bool,
}

impl Default for FlagTelemetry {
    fn default() -> Self {
        Self {
            events: true,
            include_value: false,
            include_context_id: false,
        }
    }
}

impl Default for Flags {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            file_poll_interval: default_file_poll(),
            fractional_version: FractionalVersion::default(),
            context: FlagContext::default(),
            deliver: Deliver::default(),
            trust_upstream_decisions: false,
            trusted_peers: Vec::new(),
            routes: Vec::new(),
            ofrep: default_ofrep(),
            telemetry: FlagTelemetry::default(),
        }
    }
}

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("invalid address block {s:?}: expected e.g. 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?} (0 to {max})"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "description": "An address block, e.g. 10.0.0.0/8"})
    }
}

/// The header name a delivered flag key maps to: lower case, with characters outside
/// `[a-z0-9-]` replaced by `-` (§7).
pub fn flag_header_name(prefix: &str, key: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + key.len());
    for c in prefix.chars().chain(key.chars()) {
        let c = c.to_ascii_lowercase();
        name.push(
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            },
        );
    }
    name
}

fn yes() -> bool {
    true
}
fn default_file_poll() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}
fn default_url_poll() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}
fn default_url_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}
fn default_header_prefix() -> Option<String> {
    Some("x-flag-".to_owned())
}
fn default_ofrep() -> Option<Ofrep> {
    Some(Ofrep::default())
}
fn default_ofrep_listen() -> ListenAddr {
    ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 8016)))
}
fn default_ofrep_body() -> ByteSize {
    ByteSize(1024 * 1024)
}
