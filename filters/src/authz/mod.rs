//! Authorization by the verified peer identity (specs/authorization.md, issue 28), being built
//! in stages. Built so far, and tested on its own: the normalized path a decision (and the
//! app) sees (`path.rs`), SPIFFE IDs with the patterns rules match them by (`spiffe.rs`), and
//! the decision itself (`policy.rs`: deny rules, allow rules, the default; the shadow decision
//! of dry-run rules). `spec.authz` compiled into a `Policy`, its layer on the inbound stack,
//! the handshake's SVID rules and `attache authz explain` are next; nothing on the request path
//! uses this module yet.

pub mod path;
pub mod policy;
pub mod spiffe;
