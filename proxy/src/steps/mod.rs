//! Config → layer, one step per file: each reads its part of the config and builds the layer
//! the leg's stack (`stack.rs`) puts in place. (Idempotency is still built in
//! `idempotency.rs`, beside the store it keeps across reloads.)

pub mod flags;
pub mod trace_context;
