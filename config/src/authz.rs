//! `spec.authz`: who may call what on the inbound listener, decided by the peer identity the
//! TLS session verified (specs/authorization.md). Absent: no authorization. Present: deny
//! rules, then allow rules, then `default`.
//!
//! ```yaml
//! authz:
//!   default: deny            # deny | authenticated | trust_domain | allow
//!   mode: enforce            # enforce | dry_run
//!   peers:
//!     web: [spiffe://prod.example/ns/web/sa/frontend]
//!   rules:
//!     - { name: web-orders, from: web, to: ["/v1/orders", "/v1/orders/*"] }
//!     - { name: probes, from: any, to: { methods: [GET], paths: [/healthz] } }
//!     - { name: no-debug, action: deny, to: { paths: ["/admin/debug/**"] } }
//! ```
//!
//! This crate checks the shape (unknown keys, names, references to peer sets); the SPIFFE ID
//! and path pattern grammars are checked where the policy is compiled (the `attache` crate),
//! by the same parsers that match them, and reported through [`crate::load_file_with`] with
//! the field's path, line and column.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::flags::Cidr;

/// Authorization of inbound requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Authz {
    /// What applies when no rule matches: `deny` (the default), `authenticated` (any valid
    /// SVID), `trust_domain` (SVIDs of `trust_domain`), `allow`.
    #[serde(default)]
    pub default: AuthzDefault,
    /// The trust domain `default: trust_domain` admits (`prod.example`); when absent, the one
    /// in the SPIFFE ID of attache's own certificate (`spec.inbound.tls.cert_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// `enforce` (the default), or `dry_run`: decide and report every request, refuse none.
    #[serde(default)]
    pub mode: AuthzMode,
    /// Named sets of SPIFFE IDs (or ID patterns) rules refer to in `from`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, Vec<String>>,
    /// The rules. A matching `deny` rule denies; else a matching allow rule allows; else the
    /// default decides. File order only picks which matching rule is named.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
    /// Paths the kubelet or a load balancer probes through the inbound listener (without a
    /// client certificate): `attache validate` warns when the policy would deny them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthzDefault {
    #[default]
    Deny,
    Authenticated,
    TrustDomain,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthzMode {
    #[default]
    Enforce,
    DryRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
}

/// One rule: `from` AND `to` AND every `when`; a part left out matches every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Names the rule in metrics, spans, logs and `attache authz explain` (never in a
    /// response): letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// `allow` (the default) or `deny`.
    #[serde(default)]
    pub action: AuthzAction,
    /// Evaluated in the shadow decision only: reported, never enforced.
    #[serde(default)]
    pub dry_run: bool,
    /// Who: `any` (plaintext too), `authenticated`, a peer set's name, a SPIFFE ID (pattern),
    /// a list of IDs and peer sets, or an object (`ids`, `peers`, `trust_domains`,
    /// `networks`, each with a `not_` twin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<AuthzFrom>,
    /// What: a list of path patterns (`/a`, `/a/*`, `/a/**`), or an object (`methods`,
    /// `paths`, `not_paths`, `hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AuthzTo>,
    /// Conditions on request headers, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthzWhen>,
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AuthzFrom {
    /// `any`, `authenticated`, a peer set's name or a SPIFFE ID (pattern).
    One(String),
    /// SPIFFE IDs (patterns) and peer sets' names, any of which matches.
    List(Vec<String>),
    Fields(AuthzFromFields),
}

/// Fields are ANDed; the entries of one field ORed; a `not_` field excludes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzFromFields {
    /// SPIFFE IDs; a segment that is exactly `*` stands for one whole segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Names of `spec.authz.peers` sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    /// The direct peer's address (not `X-Forwarded-For`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_networks: Vec<Cidr>,
}

/// What a rule is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AuthzTo {
    /// Path patterns, any of which matches.
    Paths(Vec<String>),
    Fields(AuthzToFields),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzToFields {
    /// Methods (any when empty), in upper case as sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path patterns: `/a` exactly, `/a/*` one more segment, `/a/**` `/a` and everything
    /// below; gRPC by its path (`/pkg.Service/Method`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// `Host` (or `:authority`) without port, case-insensitively; `*.domain` for the hosts
    /// below a domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// A condition on a request header: its value is one of `values`, or it is `present` (or,
/// with `present: false`, absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzWhen {
    pub header: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A short form (a string, a list) or an object, told apart by the value's type so that an
/// object's errors (an unknown key, with "did you mean") are its own, not "no variant matched".
fn short_or_object<'de, D, T>(
    d: D,
    one: impl FnOnce(String) -> Option<T>,
    list: impl FnOnce(Vec<String>) -> T,
    object: impl FnOnce(serde_json::Value) -> Result<T, serde_json::Error>,
    expected: &str,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let value = serde_json::Value::deserialize(d)?;
    match value {
        serde_json::Value::String(s) => {
            one(s).ok_or_else(|| D::Error::custom(format!("expected {expected}")))
        }
        serde_json::Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => out.push(s),
                    other => {
                        return Err(D::Error::custom(format!(
                            "list entries are strings, found {other}"
                        )));
                    }
                }
            }
            Ok(list(out))
        }
        v @ serde_json::Value::Object(_) => object(v).map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected {expected}, found {other}"
        ))),
    }
}

impl<'de> Deserialize<'de> for AuthzFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        short_or_object(
            d,
            |s| Some(AuthzFrom::One(s)),
            AuthzFrom::List,
            |v| serde_json::from_value(v).map(AuthzFrom::Fields),
            "`any`, `authenticated`, a peer set, a SPIFFE ID, a list of them, or an object of `ids`, `peers`, `trust_domains`, `networks`",
        )
    }
}

impl<'de> Deserialize<'de> for AuthzTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        short_or_object(
            d,
            |_| None,
            AuthzTo::Paths,
            |v| serde_json::from_value(v).map(AuthzTo::Fields),
            "a list of paths, or an object of `methods`, `paths`, `not_paths`, `hosts`",
        )
    }
}

impl JsonSchema for AuthzFrom {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AuthzFrom".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let fields = generator.subschema_for::<AuthzFromFields>();
        schemars::json_schema!({
            "description": "Who: `any` (plaintext too), `authenticated`, a peer set's name, a SPIFFE ID (a segment `*` stands for one whole segment), a list of IDs and peer sets, or an object",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                fields
            ]
        })
    }
}

impl JsonSchema for AuthzTo {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AuthzTo".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let fields = generator.subschema_for::<AuthzToFields>();
        schemars::json_schema!({
            "description": "What: path patterns (`/a`, `/a/*`, `/a/**`), or an object",
            "anyOf": [
                {"type": "array", "items": {"type": "string"}},
                fields
            ]
        })
    }
}
