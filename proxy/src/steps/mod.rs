//! Config → layer, one step per file: each reads its part of the config and builds the layer
//! the leg's stack (`stack.rs`) puts in place. What a step keeps across reloads (flag
//! sources, the idempotency store, the exporter) lives beside `Lasting`, not here.

pub mod context;
pub mod flags;
pub mod idempotency;
pub mod ratelimit;
pub mod trace_context;
