//! Feature flags (specs/feature-flags.md): flagd's format and evaluation semantics, evaluated
//! for the app behind attache and handed to it, to OpenFeature SDKs and to downstream hops.
//! The flagd testbed's evaluator suite runs against [`eval`] in `tests/tests/flagd_testbed.rs`.
//!
//! - [`murmur3`]: the hash behind `fractional`; [`cbor`]: what its v3 hashes;
//! - [`logic`]: JsonLogic compiled once per flag set, with `fractional`, `starts_with` and
//!   `ends_with`; [`semver`]: `sem_ver`;
//! - [`store`]: the merged snapshot of every source, swapped atomically, last good kept;
//! - [`eval`]: flagd documents (`$evaluators`/`$ref`, metadata) and evaluation with flagd's
//!   reasons and error codes; a static evaluation borrows from the snapshot and allocates
//!   nothing;
//! - [`request`]: the step of the request flow (the layer): evaluates what a leg delivers or
//!   routes on, strips forged decisions, reuses trusted peers' ones, and picks a route;
//!   - [`settings`]: what a leg's step is told to do; [`context`]: the evaluation context
//!     read from the request; [`render`]: decisions written as headers, baggage members and
//!     the combined header; [`decision`]: decisions as a request keeps them (and its span
//!     shows them); [`count`] and [`cache`]: evaluation counters and per-flag caches;
//! - [`plan`]: a snapshot's delivery compiled for one leg: flags looked up once, decisions
//!   that read nothing from the request made once, the context cut to what rules read;
//! - [`fast`]: targeting rules of the common shapes compiled for a plan's flat context (field
//!   and variant indexes, bucket weights), answering as [`logic`] does;
//! - [`intern`]: the header names and values delivered per request, kept for the process's
//!   life so that adding one to a request copies a pointer;
//! - [`ofrep`]: OFREP single and bulk evaluation for OpenFeature SDKs.
//!
//! Sources (files, URLs) and their watchers live in the proxy (`proxy/src/flags.rs`), which
//! feeds [`store`].

pub mod builder;
pub mod cache;
pub mod cbor;
pub mod context;
pub mod count;
pub mod decision;
pub mod eval;
pub mod fast;
pub mod intern;
pub mod logic;
pub mod metrics;
pub mod murmur3;
pub mod ofrep;
pub mod parse;
mod pass;
pub mod plan;
pub mod render;
pub mod request;
pub mod semver;
pub mod settings;
pub mod store;
