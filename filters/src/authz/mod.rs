//! Authorization by the verified peer identity (specs/authorization.md, issue 28), being built
//! in stages. This first stage is its ground, tested on its own: the normalized path a
//! decision (and the app) sees (`path.rs`), and SPIFFE IDs with the patterns rules match them
//! by (`spiffe.rs`). The policy, its layer on the inbound stack, `spec.authz` and
//! `attache authz explain` are next; nothing on the request path uses this module yet.

pub mod path;
pub mod spiffe;
