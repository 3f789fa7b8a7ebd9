//! Feature flags (specs/feature-flags.md), in progress: flagd's evaluation semantics, built
//! bottom-up. What exists so far is pure, unit-tested, and passes the flagd testbed's evaluator
//! runs 1 and 2 (`tests/tests/flagd_testbed.rs`); sources, delivery to the app, OFREP and
//! routing come next, and `spec.flags` stays reserved in the config until they do.
//!
//! - [`murmur3`]: the hash behind `fractional`; [`cbor`]: what its v3 hashes;
//! - [`logic`]: JsonLogic compiled once per flag set, with `fractional`, `starts_with` and
//!   `ends_with`; [`semver`]: `sem_ver`;
//! - [`store`]: the merged snapshot of every source, swapped atomically, last good kept;
//! - [`eval`]: flagd documents (`$evaluators`/`$ref`, metadata) and evaluation with flagd's
//!   reasons and error codes.

pub mod cbor;
pub mod eval;
pub mod logic;
pub mod murmur3;
pub mod ofrep;
pub mod request;
pub mod semver;
pub mod store;
