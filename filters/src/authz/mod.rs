//! Authorization by the verified peer identity (specs/authorization.md): every inbound
//! request allowed or denied by who is calling (the SPIFFE ID the TLS session verified), the
//! method, the normalized path, the host and headers, with a default that denies.
//!
//! - `path.rs`: the normalized path a decision (and the app) sees, and path patterns;
//! - `spiffe.rs`: SPIFFE IDs, and the one-segment wildcard patterns rules match them by;
//! - `policy.rs`: the decision (deny rules, then allow rules, then the default) and the shadow
//!   decision of dry-run rules;
//! - `layer.rs`: the tower layer on the inbound stack, its responses and reporting;
//! - `metrics.rs`: the families; `tunnels.rs`: upgraded connections a reload may revoke.
//!
//! Compiling `spec.authz` into a [`policy::Policy`] is the `attache` crate's (this crate
//! knows nothing of the config), as are the handshake's SVID rules.

pub mod layer;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod spiffe;
pub mod tunnels;

pub use layer::{AuthzLayer, ConnPeer, PeerReader, Settings};
